//! What one request's `Store` holds: the WASI and wasi-http contexts, the
//! resource table they share, the outbound policy and the memory limiter. A
//! new one is built for every request and dropped with it, so nothing a guest
//! does outlives its request.

use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};

use crate::guest_output::{GuestOutput, RequestId};
use crate::keyvalue::{KeyValue, Stores, Ticket};
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
pub const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// Bytes of a guest's response body the host takes per write, and how many
/// such writes it buffers before the guest waits for the client: a body
/// holds at most (chunks + 1) written chunks plus one being written. 16 KiB
/// is an HTTP/2 frame; wasmtime-wasi-http's default of 1 MiB would let each
/// body resource hold 3 MiB.
pub const BODY_CHUNK: usize = 16 << 10;
pub const BODY_BUFFER_CHUNKS: usize = 1;

/// Longest method and authority a guest may give an outgoing request. The
/// host keeps them as given, and wasi:http sets no bound of its own (a path
/// is capped at 64 KiB by the `http` crate): real methods are a word and
/// real authorities a host name and port.
pub const MAX_METHOD: usize = 64;
pub const MAX_AUTHORITY: usize = 1024;
const MAX_PATH: usize = 64 << 10;

/// Outbound requests one instance may have in flight, each holding a client
/// connection with hyper's read and write buffers (up to about 400 KiB and
/// 100 KiB by default, so [`OUTBOUND_BYTES`] each).
pub const MAX_OUTBOUND: usize = 8;
const OUTBOUND_BYTES: usize = 512 << 10;

/// Bookkeeping of one table entry beyond the data counted above: the
/// entry's struct, its table slot and allocator rounding.
const ENTRY_OVERHEAD: usize = 1 << 10;

/// How much host memory one instance can make the server keep, and the
/// resource count that keeps it there. The host keeps guest data in its
/// resource table (header fields, requests and responses, body buffers,
/// streams, pollables); every kind of entry has a bounded size, so the
/// table's capacity times the largest entry, plus the fixed per-instance
/// buffers (outbound connections, guest output lines, one `wasi:random`
/// call, one key-value call), is the bound.
#[derive(Clone, Copy, Debug)]
pub struct HostBudget {
    /// `--max-guest-fields-size`: the cap wasmtime-wasi-http enforces on one
    /// header set, in its own accounting.
    pub fields_size: usize,
    /// Resource table entries one instance may hold at once.
    pub resources: usize,
    /// The most one key-value call makes the host hold (see
    /// [`HostBudget::keyvalue_call`]).
    keyvalue_call: usize,
}

impl HostBudget {
    /// The largest a single table entry can get: an outgoing request with
    /// full headers (a `HeaderMap` takes up to about twice what
    /// wasmtime-wasi-http counts), a full path, authority and method; or a
    /// response body's buffered chunks.
    pub fn largest_entry(fields_size: usize) -> usize {
        let request = 2 * fields_size + MAX_PATH + MAX_AUTHORITY + MAX_METHOD;
        let body = (BODY_BUFFER_CHUNKS + 2) * BODY_CHUNK;
        request.max(body) + ENTRY_OVERHEAD
    }

    /// What one key-value call can make the host hold: a batch of the
    /// largest keys and values, twice (the guest's copy, and the store's
    /// request or reply buffer).
    pub fn keyvalue_call(max_key: usize, max_value: usize, max_batch: usize) -> usize {
        2 * max_batch.max(1) * (max_key + max_value)
    }

    /// What an instance holds whatever its table holds.
    fn fixed(&self) -> usize {
        MAX_OUTBOUND * OUTBOUND_BYTES
            + 2 * crate::guest_output::MAX_LINE
            + MAX_RANDOM_BYTES as usize
            + self.keyvalue_call
    }

    /// Fits the resource table to `total` bytes of host memory, beside one
    /// key-value call of `keyvalue_call` bytes. Fails when the budget cannot
    /// hold [`MIN_RESOURCES`] entries.
    pub fn new(total: usize, fields_size: usize, keyvalue_call: usize) -> Result<Self, String> {
        let mut budget = Self {
            fields_size,
            resources: 0,
            keyvalue_call,
        };
        let entry = Self::largest_entry(fields_size);
        budget.resources = total.saturating_sub(budget.fixed()) / entry;
        if budget.resources < MIN_RESOURCES {
            let size = |bytes: usize| bytesize::ByteSize(bytes as u64);
            return Err(format!(
                "--max-guest-host-memory ({}) holds only {} resources of up to {} each \
                 after {} of fixed buffers (of which {} for one key-value call); give it at \
                 least {}, or lower --max-guest-fields-size, --keyvalue-max-value or \
                 --keyvalue-max-batch",
                size(total),
                budget.resources,
                size(entry),
                size(budget.fixed()),
                size(keyvalue_call),
                size(budget.fixed() + MIN_RESOURCES * entry)
            ));
        }
        Ok(budget)
    }

    /// What one call from the guest may make the host copy out of it
    /// (wasmtime's "hostcall fuel", 128 MiB unless set): the largest call a
    /// guest within its limits makes, a key-value batch or a resource entry,
    /// so that a larger one traps before the host allocates it, not after.
    pub fn hostcall_fuel(&self) -> usize {
        self.keyvalue_call
            .max(Self::largest_entry(self.fields_size))
    }

    /// The bound this budget holds the host to, per instance.
    pub fn bound(&self) -> usize {
        self.resources * Self::largest_entry(self.fields_size) + self.fixed()
    }
}

/// Fewer resources than this and ordinary guests fail: a request handled
/// with one outbound call uses about twenty.
const MIN_RESOURCES: usize = 64;

/// The limits every request's sandbox is built with, derived once from the
/// command line.
#[derive(Clone)]
pub struct Sandbox {
    /// `--max-memory`: all of an instance's linear memories together.
    pub max_memory: usize,
    /// `--max-guest-host-memory`: what the guest may make the host keep.
    pub host: HostBudget,
    /// `--allow-outbound`: where the guest may send HTTP requests.
    pub allowed_outbound: Arc<[Destination]>,
    /// `--max-guest-output`: bytes a request may write to stdout and stderr.
    pub max_output: usize,
    /// `--env`: the guest's whole environment.
    pub env: Arc<[(String, String)]>,
    /// `--config`: what `wasi:config/store` answers.
    pub config: Arc<WasiConfigVariables>,
    /// `--keyvalue`: the stores `wasi:keyvalue` opens.
    pub keyvalue: Arc<Stores>,
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
    config: Arc<WasiConfigVariables>,
    keyvalue: Arc<Stores>,
    /// The request's deadline and commits, for its key-value calls.
    pub ticket: Arc<Ticket>,
}

impl RequestState {
    /// A request's state, for a request that must be done by `deadline`.
    pub fn new(sandbox: &Sandbox, id: RequestId, deadline: std::time::Instant) -> Self {
        let mut table = ResourceTable::new();
        table.set_max_capacity(sandbox.host.resources);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(sandbox.host.fields_size);
        let (stdout, stderr) = GuestOutput::pair(id, sandbox.max_output);
        Self {
            table,
            // The guest's stdout and stderr go to the server's stderr, where the
            // logs are, a line at a time with the request id: stdout carries
            // only the "Server running" line. Network access through
            // wasi:sockets stays at WASI's default: denied.
            wasi: WasiCtx::builder()
                .stdout(stdout)
                .stderr(stderr)
                .max_random_size(MAX_RANDOM_BYTES)
                .envs(&sandbox.env)
                .build(),
            http,
            outbound: OutboundPolicy::new(sandbox.allowed_outbound.clone()),
            limiter: MemoryLimiter::new(sandbox.max_memory),
            config: sandbox.config.clone(),
            keyvalue: sandbox.keyvalue.clone(),
            ticket: Arc::new(Ticket::new(deadline)),
        }
    }

    /// What `wasi:config` sees.
    pub fn config(&mut self) -> WasiConfig<'_> {
        WasiConfig::new(&self.config)
    }

    /// What `wasi:keyvalue` sees: its buckets live in the request's one
    /// resource table, under the same cap as every other resource.
    pub fn keyvalue(&mut self) -> KeyValue<'_> {
        KeyValue {
            table: &mut self.table,
            stores: &self.keyvalue,
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

    /// The default budget holds a few hundred resources, and the bound it
    /// states stays within it.
    #[test]
    fn default_budget_fits() {
        let keyvalue = HostBudget::keyvalue_call(1 << 10, 1 << 20, 8);
        let budget = HostBudget::new(64 << 20, 32 << 10, keyvalue).unwrap();
        assert!(budget.resources >= 256, "{budget:?}");
        assert!(budget.bound() <= 64 << 20);
        assert!(HostBudget::new(1 << 20, 32 << 10, 0).is_err());
        // Key-value limits that leave no room for resources are refused.
        let huge = HostBudget::keyvalue_call(1 << 10, 1 << 20, 100);
        assert!(HostBudget::new(64 << 20, 32 << 10, huge).is_err());
    }
}
