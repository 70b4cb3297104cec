//! What one request's `Store` holds: the WASI and wasi-http contexts and the
//! resource table they share. A new one is built for every request and dropped
//! with it, so nothing a guest does outlives its request.

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

pub struct RequestState {
    /// Handles to every resource the guest holds (requests, bodies, streams).
    table: ResourceTable,
    /// WASI 0.2 beyond wasi:http (clocks, random, cli), so that components
    /// built with a plain std `wasm32-wasip2` toolchain run too.
    wasi: WasiCtx,
    /// wasi:http's own settings.
    http: WasiHttpCtx,
}

impl RequestState {
    pub fn new() -> Self {
        Self {
            table: ResourceTable::new(),
            // The guest's stdout and stderr go to the server's stderr, where the
            // logs are: stdout carries only the "Server running" line.
            wasi: WasiCtx::builder()
                .stdout(wasmtime_wasi::cli::stderr())
                .inherit_stderr()
                .build(),
            http: WasiHttpCtx::new(),
        }
    }
}

impl Default for RequestState {
    fn default() -> Self {
        Self::new()
    }
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: Default::default(),
        }
    }
}
