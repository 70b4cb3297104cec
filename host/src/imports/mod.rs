//! What guests call beyond WASI itself: the wasi-http hooks (outbound HTTP,
//! body buffers), their stdout and stderr, key-value stores and variables,
//! each in every version that wasmtime and Spin link.

pub mod allowed;
pub mod http_hooks;
pub mod keyvalue;
pub mod outbound;
pub mod output;
pub mod spin_only;
pub mod variables;
