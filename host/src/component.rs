//! Compile once: the engine, the compiled component, its linker and its
//! pre-instantiation. Everything here runs before the server listens, so a bad
//! component stops the process with one clear line instead of failing requests.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::info;
use wasmtime::component::{Component, ComponentNamedList, Lift, Linker, LinkerInstance, Resource};
use wasmtime::error::Context;
use wasmtime::wasmparser::Parser;
use wasmtime::{Config, Engine, Result, StoreContextMut, bail};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpView};

use crate::cache::{self, Origin};
use crate::footprint::Footprint;
use crate::pool::{Pool, Shape};
use crate::state::{MAX_AUTHORITY, MAX_METHOD, RequestState};

/// How often the engine's epoch advances: the granularity of
/// `--request-timeout` for a guest that spins, and the longest a running guest
/// keeps its thread before yielding to other requests. A tick costs one atomic
/// increment, so 10 ms is cheap and keeps co-scheduled requests responsive.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The engines instances run on, one per kind of component and pool shape.
///
/// WASI 0.2 components run on an engine with the component model's async ABI
/// off: a store of an engine with it on sets up its concurrency machinery for
/// every instance, which made each WASI 0.2 request cost 40% more CPU (17.5 ->
/// 24.3 us, BENCHMARKS.md). WASI 0.3 components need it on.
///
/// The pool is sized for the component (`pool.rs`), so a reload to a
/// component of another shape gets an engine of its own; the old engine lives
/// on in the old component's instances until they finish.
pub struct Engines {
    /// What the operator fixed for every pool.
    pool: Pool,
    /// The last engine built for each kind (`false`: WASI 0.2, `true`: 0.3)
    /// and its shape, reused by the next component of that kind and shape.
    /// Only startup and the reload task load components, one at a time.
    built: Mutex<Vec<(bool, Shape, Engine)>>,
}

impl Engines {
    /// Engines for pools under `pool`; each is built when a component needs it.
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            built: Mutex::new(Vec::new()),
        }
    }

    /// The engine for a component of this kind and shape.
    fn get(&self, wasi_p3: bool, shape: Shape) -> Result<Engine> {
        let mut built = self
            .built
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, _, engine)) = built
            .iter()
            .find(|(p3, s, _)| *p3 == wasi_p3 && *s == shape)
        {
            return Ok(engine.clone());
        }
        let engine = engine(shape, wasi_p3)?;
        built.retain(|(p3, _, _)| *p3 != wasi_p3);
        built.push((wasi_p3, shape, engine.clone()));
        Ok(engine)
    }
}

/// Builds an engine, with the component model's async ABI (WASI 0.3) on or
/// off, and starts the one thread that advances its epoch for its life.
fn engine(shape: Shape, wasi_p3: bool) -> Result<Engine> {
    let mut config = Config::new();
    config.allocation_strategy(shape.strategy());
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
    let footprint = Footprint::of(&bytes)
        .with_context(|| format!("{} is not a valid component", path.display()))?;
    let shape = Shape::new(engines.pool, &footprint);
    // Compiling a large component takes seconds (5 s for a 20 MB Python
    // guest on 2 cores): say so before, and after, what it took.
    info!(
        "preparing {} ({}): compiling it, unless the compile cache has it",
        path.display(),
        bytesize::ByteSize(bytes.len() as u64)
    );
    let started = Instant::now();
    let cache_dir = cache_dir.map(cache::CacheDir::open).transpose()?;
    let cache_dir = cache_dir.as_ref();
    // A component that the WASI 0.2 engine cannot compile uses the async ABI
    // (or is broken): the 0.3 engine, which takes a superset, compiles it or
    // says what is wrong.
    let ((component, origin), wasi_p3) =
        match cache::load_or_compile(&engines.get(false, shape)?, &bytes, cache_dir) {
            Ok(compiled) => (compiled, false),
            Err(_) => {
                let compiled =
                    cache::load_or_compile(&engines.get(true, shape)?, &bytes, cache_dir)
                        .with_context(|| format!("{} is not a valid component", path.display()))?;
                (compiled, true)
            }
        };
    info!(
        "{} ready in {:.2?}: {}; its instances each keep {} of linear memory resident{} ({} core instances, initial memory {})",
        path.display(),
        started.elapsed(),
        match origin {
            Origin::Cache => "loaded from the compile cache",
            Origin::Compiled if cache_dir.is_some() => "compiled",
            Origin::Compiled => "compiled (--no-cache)",
        },
        bytesize::ByteSize(shape.memory_keep_resident as u64),
        if shape.dirty_pages_only {
            ", restoring only the pages a request wrote"
        } else {
            ""
        },
        footprint.core_instances,
        bytesize::ByteSize(footprint.largest_memory),
    );
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
    // Configuration and state, as `wasmtime serve -S config -S keyvalue`
    // and Spin give them: components built for those import them.
    wasmtime_wasi_config::add_to_linker(&mut linker, RequestState::config)?;
    crate::keyvalue::add_to_linker(&mut linker, RequestState::keyvalue)?;
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
