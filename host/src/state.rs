//! What one request's `Store` holds: the WASI and wasi-http contexts, the
//! resource table they share, the outbound policy and the memory limiter. A
//! new one is built for every request and dropped with it, so nothing a guest
//! does outlives its request.

use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::guest_output::{GuestOutput, RequestId};
use crate::outbound::{Destination, OutboundPolicy};

/// Largest table (of function references) an instance may grow. Compilers
/// emit one entry per address-taken function: a few hundred for typical
/// guests, so 100,000 (about 1 MiB of host memory) is never in the way of real
/// code while still stopping a guest that grows tables to eat host memory.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Largest `wasi:random` request a guest may make; larger ones trap. The host
/// allocates the whole buffer before copying it into the guest, so
/// wasmtime-wasi's default of 64 MiB per call would let each instance make the
/// host allocate far past `--max-memory`. Keys and seeds need bytes, not MiB.
const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// The limits every request's sandbox is built with, derived once from the
/// command line.
#[derive(Clone)]
pub struct Sandbox {
    pub max_memory: usize,
    pub max_fields_size: usize,
    pub max_resources: usize,
    pub allowed_outbound: Arc<[Destination]>,
    /// `--env`: the guest's whole environment.
    pub env: Arc<[(String, String)]>,
}

pub struct RequestState {
    /// Handles to every resource the guest holds (requests, bodies, streams).
    table: ResourceTable,
    /// WASI 0.2 beyond wasi:http (clocks, random, cli), so that components
    /// built with a plain std `wasm32-wasip2` toolchain run too.
    wasi: WasiCtx,
    /// wasi:http's own settings.
    http: WasiHttpCtx,
    /// Which outbound requests the guest may make.
    outbound: OutboundPolicy,
    /// Caps linear memory; remembers whether the guest ran into the cap.
    pub limiter: MemoryLimiter,
}

impl RequestState {
    pub fn new(sandbox: &Sandbox, id: RequestId) -> Self {
        let mut table = ResourceTable::new();
        table.set_max_capacity(sandbox.max_resources);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(sandbox.max_fields_size);
        Self {
            table,
            // The guest's stdout and stderr go to the server's stderr, where the
            // logs are, a line at a time with the request id: stdout carries
            // only the "Server running" line. Network access through
            // wasi:sockets stays at WASI's default: denied.
            wasi: WasiCtx::builder()
                .stdout(GuestOutput::new(id, "stdout"))
                .stderr(GuestOutput::new(id, "stderr"))
                .max_random_size(MAX_RANDOM_BYTES)
                .envs(&sandbox.env)
                .build(),
            http,
            outbound: OutboundPolicy::new(sandbox.allowed_outbound.clone()),
            limiter: MemoryLimiter {
                max_memory: sandbox.max_memory,
                hit: false,
            },
        }
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
            hooks: &mut self.outbound,
        }
    }
}

/// Refuses memory growth past `--max-memory` (the guest sees `memory.grow`
/// fail, as on a machine out of memory) and tables past
/// [`MAX_TABLE_ELEMENTS`].
pub struct MemoryLimiter {
    max_memory: usize,
    /// Set when a growth was refused, so the failure can be logged as a limit
    /// hit rather than a bare trap.
    pub hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.max_memory;
        self.hit |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
