//! What one request's `Store` holds: the WASI and wasi-http contexts, the
//! resource table they share, the outbound policy and the memory limiter. A
//! new one is built for every request and dropped with it, so nothing a guest
//! does outlives its request.

use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::compile::pool::MAX_TABLE_ELEMENTS;
use crate::imports::allowed::Destination;
use crate::imports::http_hooks::{InternalHandle, OutboundPolicy};
use crate::imports::keyvalue::{KeyValue, Stores, Ticket};
use crate::imports::outbound::Outbound;
use crate::imports::output::GuestOutput;
use crate::imports::variables::{Config, Variables};

use super::budget::{HostBudget, MAX_RANDOM_BYTES};

/// The limits every request's sandbox is built with, derived once from the
/// command line.
#[derive(Clone)]
pub struct Sandbox {
    /// `--max-guest-host-memory`: what the guest may make the host keep.
    pub host: HostBudget,
    /// `--allow-outbound`: where the guest may send HTTP requests.
    pub allowed_outbound: Arc<[Destination]>,
    /// The serving process's pooled outbound client, with
    /// `--outbound-connect-timeout`, `--outbound-first-byte-timeout` and
    /// `--outbound-ca`.
    pub outbound: Arc<Outbound>,
    /// `--max-guest-output`: bytes a request may write to stdout and stderr.
    pub max_output: usize,
    /// `--env`: the guest's whole environment.
    pub env: Arc<[(String, String)]>,
    /// `--config`: what `wasi:config/store` and Spin's variables answer.
    pub config: Arc<Variables>,
    /// `--keyvalue`: the stores `wasi:keyvalue` opens.
    pub keyvalue: Arc<Stores>,
    /// The store labels the component may open (a Spin component's
    /// `key_value_stores`); `None`: every store given.
    pub stores_allowed: Option<Arc<[String]>>,
    /// Host folders the component sees read-only, and where (a Spin
    /// component's `files`).
    pub files: Arc<[(PathBuf, String)]>,
    /// The application the component belongs to, for its requests to
    /// `NAME.spin.internal`; `None` for a single component.
    pub internal: Option<InternalHandle>,
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
    config: Arc<Variables>,
    keyvalue: Arc<Stores>,
    stores_allowed: Option<Arc<[String]>>,
    /// The request's deadline and commits, for its key-value calls.
    pub ticket: Arc<Ticket>,
}

impl RequestState {
    /// A request's state, for a request whose linear memories may take
    /// `max_memory` together and that must be done by `deadline`.
    pub fn new(sandbox: &Sandbox, max_memory: usize, deadline: std::time::Instant) -> Self {
        let mut table = ResourceTable::new();
        table.set_max_capacity(sandbox.host.resources);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(sandbox.host.fields_size);
        let (stdout, stderr) = GuestOutput::pair(sandbox.max_output);
        let mut wasi = WasiCtx::builder();
        // The guest's stdout and stderr go to the server's stderr, where the
        // logs are, a line at a time with the request id: stdout carries
        // only the "Server running" line. Network access through
        // wasi:sockets stays at WASI's default: denied.
        wasi.stdout(stdout)
            .stderr(stderr)
            .max_random_size(MAX_RANDOM_BYTES)
            .envs(&sandbox.env);
        for (host, guest) in sandbox.files.iter() {
            // Checked at load; a folder removed since is left out, and the
            // guest finds no such file.
            let _ = wasi.preopened_dir(host, guest, FsPerms::ReadOnly);
        }
        Self {
            table,
            wasi: wasi.build(),
            http,
            outbound: OutboundPolicy::new(
                sandbox.allowed_outbound.clone(),
                sandbox.outbound.clone(),
                sandbox.internal.clone(),
            ),
            limiter: MemoryLimiter::new(max_memory),
            config: sandbox.config.clone(),
            keyvalue: sandbox.keyvalue.clone(),
            stores_allowed: sandbox.stores_allowed.clone(),
            ticket: Arc::new(Ticket::new(deadline)),
        }
    }

    /// What `wasi:config` and Spin's variables see.
    pub fn config(&mut self) -> Config<'_> {
        Config(&self.config)
    }

    /// What `wasi:keyvalue` sees: its buckets live in the request's one
    /// resource table, under the same cap as every other resource.
    pub fn keyvalue(&mut self) -> KeyValue<'_> {
        KeyValue {
            table: &mut self.table,
            stores: &self.keyvalue,
            allowed: self.stores_allowed.as_deref(),
            ticket: &self.ticket,
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

/// Refuses memory growth that would take the instance's linear memories,
/// all of them together, past `--max-memory` (the guest sees `memory.grow`
/// fail, as on a machine out of memory), and tables past
/// [`MAX_TABLE_ELEMENTS`].
pub struct MemoryLimiter {
    max_memory: usize,
    /// Bytes of all the instance's linear memories. A memory is created by a
    /// growth from 0 and never shrinks, so growths are all it takes.
    used: usize,
    /// Set when a growth was refused, so the failure can be logged as a limit
    /// hit rather than a bare trap.
    pub hit: bool,
}

impl MemoryLimiter {
    pub fn new(max_memory: usize) -> Self {
        Self {
            max_memory,
            used: 0,
            hit: false,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = (self.used - current.min(self.used)).saturating_add(desired);
        let allowed = total <= self.max_memory;
        if allowed {
            self.used = total;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two memories of 12 MiB each do not fit a 16 MiB cap, though each
    /// alone would: the cap is on their sum.
    #[test]
    fn limiter_sums_all_memories() {
        let mib = 1 << 20;
        let mut limiter = MemoryLimiter::new(16 * mib);
        assert!(limiter.memory_growing(0, 12 * mib, None).unwrap());
        assert!(!limiter.memory_growing(0, 12 * mib, None).unwrap());
        assert!(limiter.hit);
        assert!(limiter.memory_growing(0, 4 * mib, None).unwrap());
        assert!(!limiter.memory_growing(4 * mib, 5 * mib, None).unwrap());
        assert!(limiter.memory_growing(12 * mib, 12 * mib, None).unwrap());
    }
}
