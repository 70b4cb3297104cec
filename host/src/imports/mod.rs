//! What guests call beyond WASI itself: the wasi-http hooks (outbound HTTP,
//! body buffers), their stdout and stderr, and `wasi:keyvalue`.
//! (`wasi:config` is wasmtime-wasi-config's, given the variables of
//! `--config`.)

pub mod http_hooks;
pub mod keyvalue;
pub mod output;
