//! Compile once: the engine, the compiled component, its linker and its
//! pre-instantiation. Everything here runs before the server listens, so a bad
//! component stops the process with one clear line instead of failing requests.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use wasmtime::component::{Component, ComponentNamedList, Lift, Linker, LinkerInstance, Resource};
use wasmtime::error::Context;
use wasmtime::wasmparser::Parser;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Result,
    StoreContextMut, bail,
};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpView};

use crate::cache;
use crate::state::{MAX_AUTHORITY, MAX_METHOD, RequestState};

/// How often the engine's epoch advances: the granularity of
/// `--request-timeout` for a guest that spins, and the longest a running guest
/// keeps its thread before yielding to other requests. A tick costs one atomic
/// increment, so 10 ms is cheap and keeps co-scheduled requests responsive.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Core wasm instances one component may create. A Rust component has one to
/// three (its module plus adapter shims); composed or interpreter-based
/// components have more. Sizes the pool, so it is generous.
const CORE_INSTANCES_PER_COMPONENT: u32 = 32;

/// Linear memories and tables one component may hold; typical components have
/// one of each.
const MEMORIES_PER_COMPONENT: u32 = 2;
const TABLES_PER_COMPONENT: u32 = 4;

/// Largest table a component may declare or grow, matching the limiter's cap
/// in `state.rs`.
const TABLE_ELEMENTS: usize = 100_000;

/// Bytes of each linear memory and table slot kept resident between
/// instances. Resetting a slot then means zeroing (or restoring the initial
/// image of) that much in place with `memset`, instead of `madvise`-ing it
/// away: `madvise` on memory that other threads may have touched forces a TLB
/// shootdown on every core, which dominated the per-request cost. 1 MiB covers
/// the whole footprint of small guests; larger guests fall back to `madvise`
/// for the rest. Costs up to this much RSS per warm slot.
const KEEP_RESIDENT: usize = 1 << 20;

/// The engines instances run on: one for WASI 0.2 components, and one, made
/// when the first WASI 0.3 component is loaded, with the component model's
/// async ABI on. A store of an engine with that ABI on sets up its
/// concurrency machinery for every instance, which made each WASI 0.2
/// request cost 40% more CPU (17.5 -> 24.3 us, BENCHMARKS.md); 0.2
/// components never need it.
pub struct Engines {
    /// What the engines' instance pools are sized for.
    pool: Pool,
    p2: Engine,
    p3: OnceLock<Engine>,
}

/// The sizes of an engine's instance pool.
#[derive(Clone, Copy, Debug)]
pub struct Pool {
    /// Instances alive at once (`--max-concurrent-requests`).
    pub slots: usize,
    /// Largest linear memory of one instance (`--max-memory`).
    pub max_memory: usize,
}

impl Engines {
    /// Builds the WASI 0.2 engine; the 0.3 one waits for a 0.3 component.
    pub fn new(pool: Pool) -> Result<Self> {
        let p2 = engine(pool, false)?;
        Ok(Self {
            pool,
            p2,
            p3: OnceLock::new(),
        })
    }

    fn p3(&self) -> Result<&Engine> {
        if let Some(engine) = self.p3.get() {
            return Ok(engine);
        }
        let engine = engine(self.pool, true)?;
        // Only the reload task and startup load components, one at a time.
        Ok(self.p3.get_or_init(|| engine))
    }
}

/// Builds an engine, with the component model's async ABI (WASI 0.3) on or
/// off, and starts the one thread that advances its epoch for its life.
fn engine(pool: Pool, wasi_p3: bool) -> Result<Engine> {
    let mut config = Config::new();
    config.allocation_strategy(pooling(pool));
    // Compiled code checks the epoch at function entries and loop headers, so
    // a guest that never calls the host can still be stopped.
    config.epoch_interruption(true);
    // A trap's wasm backtrace is a list of bare offsets for the stripped
    // release builds guests ship, costs a stack walk per trap, and spreads
    // each log entry over many lines; the trap's cause is kept without it.
    config.wasm_backtrace_max_frames(None);
    // WASI 0.3 components use the component model's async ABI (streams,
    // futures, async functions), which wasmtime marks experimental.
    config.wasm_component_model_async(wasi_p3);
    config.concurrency_support(wasi_p3);
    let engine = Engine::new(&config).context("configuring the wasm engine")?;
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("epoch-ticker".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .context("starting the epoch ticker")?;
    Ok(engine)
}

/// The pooling allocator: every resource an instance needs (memories, tables,
/// stacks, instance state) is reserved once at startup in slots, one set per
/// `--max-concurrent-requests`, and reused; a fresh instance takes a slot
/// instead of mapping new memory. The pool and the handler's semaphore share
/// the same count, so a request that got a permit always finds a slot.
fn pooling(sizes: Pool) -> InstanceAllocationStrategy {
    let slots = u32::try_from(sizes.slots).unwrap_or(u32::MAX);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_core_instances(slots.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .total_memories(slots.saturating_mul(MEMORIES_PER_COMPONENT))
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .total_tables(slots.saturating_mul(TABLES_PER_COMPONENT))
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .table_elements(TABLE_ELEMENTS)
        .total_stacks(slots)
        .max_memory_size(sizes.max_memory)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT)
        // Measured: for small guests, zeroing their few resident pages is
        // cheaper than asking the kernel which ones are dirty (PAGEMAP_SCAN
        // walks the page tables: 9.7 us per request against 8.7 us).
        .pagemap_scan(Enabled::No);
    InstanceAllocationStrategy::Pooling(pool)
}

/// A component compiled and linked, ready to instantiate, by the kind of
/// handler it exports.
pub enum GuestPre {
    /// WASI 0.2: exports `wasi:http/incoming-handler@0.2.x`.
    P2(ProxyPre<RequestState>),
    /// WASI 0.3: exports `wasi:http/handler@0.3.x`.
    P3(ServicePre<RequestState>),
}

impl GuestPre {
    /// Which WASI the component is written for, for the log.
    pub fn kind(&self) -> &'static str {
        match self {
            GuestPre::P2(_) => "WASI 0.2 (wasi:http/incoming-handler)",
            GuestPre::P3(_) => "WASI 0.3 (wasi:http/handler)",
        }
    }
}

/// Compiles the component at `path`, links it against WASI 0.2 and 0.3 and
/// wasi:http, and finds which handler it exports.
pub fn load(engines: &Engines, path: &Path, cache_dir: Option<&Path>) -> Result<GuestPre> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    // wasmtime's own message for these two cases is a parser error at offset 0;
    // say what the file is instead.
    if Parser::is_core_wasm(&bytes) {
        bail!(
            "{} is a core wasm module, not a component; wrap it with `wasm-tools component new`",
            path.display()
        );
    }
    if !Parser::is_component(&bytes) {
        bail!("{} is not a WebAssembly component", path.display());
    }
    // A component that the WASI 0.2 engine cannot compile uses the async ABI
    // (or is broken): the 0.3 engine, which takes a superset, compiles it or
    // says what is wrong.
    let (component, wasi_p3) = match cache::load_or_compile(&engines.p2, &bytes, cache_dir) {
        Ok(component) => (component, false),
        Err(_) => {
            let component = cache::load_or_compile(engines.p3()?, &bytes, cache_dir)
                .with_context(|| format!("{} is not a valid component", path.display()))?;
            (component, true)
        }
    };
    link(&component, wasi_p3).with_context(|| format!("cannot serve {}", path.display()))
}

/// Links `component` against all of WASI 0.2 and 0.3 plus wasi:http and
/// resolves its handler export, so that per request only instantiation is
/// left. A component exporting `wasi:http/handler@0.3.x` is served as WASI
/// 0.3, one exporting `wasi:http/incoming-handler@0.2.x` as WASI 0.2.
pub fn link(component: &Component, wasi_p3: bool) -> Result<GuestPre> {
    let mut linker = Linker::new(component.engine());
    // All of WASI 0.2 (and 0.3 on its engine), as `wasmtime serve -S cli`
    // links them: a plain std build imports `wasi:cli/environment` and
    // friends.
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    if wasi_p3 {
        wasmtime_wasi::p3::add_to_linker(&mut linker)?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
    }
    bound_request_strings(&mut linker, wasi_p3)?;
    let pre = linker
        .instantiate_pre(component)
        .context("the component imports something this server does not provide")?;
    if let Ok(service) = ServicePre::new(pre.clone()) {
        return Ok(GuestPre::P3(service));
    }
    match ProxyPre::new(pre) {
        Ok(proxy) => Ok(GuestPre::P2(proxy)),
        Err(_) => bail!(
            "the component exports neither `wasi:http/handler@0.3.x` (WASI 0.3) nor \
             `wasi:http/incoming-handler@0.2.x` (WASI 0.2)"
        ),
    }
}

/// The `wasi:http/types` versions our linker provides (wasmtime-wasi-http's
/// WIT); older guests of each are matched to them.
const WASI_HTTP_TYPES_P2: &str = "wasi:http/types@0.2.12";
const WASI_HTTP_TYPES_P3: &str = "wasi:http/types@0.3.0";

/// Replaces the setters of an outgoing request's method and authority, in
/// WASI 0.2 and 0.3, with versions that refuse a method longer than
/// [`MAX_METHOD`] or an authority longer than [`MAX_AUTHORITY`], as they
/// refuse invalid ones. wasi:http keeps both strings as given, so without
/// this a guest could make the host hold its whole linear memory per request
/// resource, outside any budget.
fn bound_request_strings(linker: &mut Linker<RequestState>, wasi_p3: bool) -> Result<()> {
    use wasmtime_wasi_http::p2::bindings::http::types as p2;
    use wasmtime_wasi_http::p3::Request as P3Request;
    use wasmtime_wasi_http::p3::bindings::http::types as p3;

    let long_p2_method =
        |method: &p2::Method| matches!(method, p2::Method::Other(m) if m.len() > MAX_METHOD);
    let long_p3_method =
        |method: &p3::Method| matches!(method, p3::Method::Other(m) if m.len() > MAX_METHOD);
    let long_authority =
        |authority: &Option<String>| authority.as_ref().is_some_and(|a| a.len() > MAX_AUTHORITY);

    linker.allow_shadowing(true);
    let mut types = linker.instance(WASI_HTTP_TYPES_P2)?;
    refuse_long::<p2::OutgoingRequest, _>(
        &mut types,
        "[method]outgoing-request.set-method",
        long_p2_method,
        |http, request, method| p2::HostOutgoingRequest::set_method(http, request, method),
    )?;
    refuse_long::<p2::OutgoingRequest, _>(
        &mut types,
        "[method]outgoing-request.set-authority",
        long_authority,
        |http, request, authority| p2::HostOutgoingRequest::set_authority(http, request, authority),
    )?;
    if !wasi_p3 {
        linker.allow_shadowing(false);
        return Ok(());
    }
    let mut types = linker.instance(WASI_HTTP_TYPES_P3)?;
    refuse_long::<P3Request, _>(
        &mut types,
        "[method]request.set-method",
        long_p3_method,
        |http, request, method| p3::HostRequest::set_method(http, request, method),
    )?;
    refuse_long::<P3Request, _>(
        &mut types,
        "[method]request.set-authority",
        long_authority,
        |http, request, authority| p3::HostRequest::set_authority(http, request, authority),
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A wasi:http setter as wasmtime-wasi-http implements it: `Err(())` for a
/// value it refuses.
type Setter<R, A> =
    fn(&mut WasiHttpCtxView<'_>, Resource<R>, A) -> Result<std::result::Result<(), ()>>;

/// Defines `name` in `types` as a setter that answers `Err(())` (what
/// wasi:http answers for an invalid value) when `too_long(value)`, and calls
/// wasmtime-wasi-http's own `set` otherwise.
fn refuse_long<R, A>(
    types: &mut LinkerInstance<'_, RequestState>,
    name: &str,
    too_long: fn(&A) -> bool,
    set: Setter<R, A>,
) -> Result<()>
where
    R: 'static,
    A: 'static,
    (Resource<R>, A): ComponentNamedList + Lift + Send + Sync + 'static,
{
    types.func_wrap(
        name,
        move |mut store: StoreContextMut<'_, RequestState>, (target, value): (Resource<R>, A)| {
            if too_long(&value) {
                return Ok((Err(()),));
            }
            Ok((set(&mut store.data_mut().http(), target, value)?,))
        },
    )
}
