//! A wasi-http server that runs every request in a fresh instance of one
//! WebAssembly component.
//!
//! The request path, in the order a request meets it: [`server`] accepts the
//! connection and speaks HTTP; [`handler`] takes an instance slot
//! ([`slots`]), gives the request a new `Store` and instance, and turns what
//! the guest does into a response ([`response`]); [`wasi_p2`] and
//! [`wasi_p3`] hold what differs between the two kinds of guest;
//! [`guest_task`] runs the guest's call under its deadline; [`component`]
//! did everything that can be done once (engines, compilation, linking) at
//! startup; [`state`] is what each instance's `Store` holds.

pub mod admin;
pub mod cache;
pub mod cli;
pub mod component;
pub mod fd_limit;
pub mod footprint;
pub mod guest_output;
pub mod guest_task;
pub mod handler;
pub mod keyvalue;
pub mod metrics;
pub mod outbound;
pub mod pool;
pub mod reload;
pub mod request_body;
pub mod response;
pub mod server;
pub mod slots;
pub mod state;
pub mod supervisor;
pub mod wasi_p2;
pub mod wasi_p3;
