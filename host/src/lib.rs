//! A wasi-http server that runs every request in a fresh instance of a
//! WebAssembly component: one component, or a Spin application of many.
//!
//! [`server`] is one serving process: load, listen, serve, drain. The
//! folders follow a request, and dependencies run one way, down this list:
//! [`ops`] operates the server (admin endpoint, reload, supervisor);
//! [`http`] is the client side (listener, connections, the watchdog of
//! client progress, the access log); [`app`] is what is served (a component,
//! or an application's manifest, routes and variables); [`guest`] serves one request in one
//! fresh instance (slots, the store, the guest's task, request and response
//! bodies, the one place WASI 0.2 and 0.3 differ); [`imports`] is what
//! guests call (outbound HTTP, output, key-value); [`compile`] is done once
//! per component (engines, pool shape, compile cache). [`metrics`],
//! [`log`] and [`trace`] (OpenTelemetry) are used by all of them; [`cli`]
//! is every flag.

pub mod app;
pub mod cli;
pub mod compile;
pub mod guest;
pub mod http;
pub mod imports;
pub mod log;
pub mod metrics;
pub mod ops;
pub mod server;
pub mod trace;
