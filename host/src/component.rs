//! Compile once: the engine, the compiled component, its linker and its
//! pre-instantiation. Everything here runs before the server listens, so a bad
//! component stops the process with one clear line instead of failing requests.

use std::path::Path;
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::error::Context;
use wasmtime::wasmparser::Parser;
use wasmtime::{Config, Engine, Result, bail};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::state::RequestState;

/// How often the engine's epoch advances: the granularity of
/// `--request-timeout` for a guest that spins, and the longest a running guest
/// keeps its thread before yielding to other requests. A tick costs one atomic
/// increment, so 10 ms is cheap and keeps co-scheduled requests responsive.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Builds the engine every instance runs on, and starts the one thread that
/// advances its epoch for the life of the engine.
pub fn engine() -> Result<Engine> {
    let mut config = Config::new();
    // Compiled code checks the epoch at function entries and loop headers, so
    // a guest that never calls the host can still be stopped.
    config.epoch_interruption(true);
    // A trap's wasm backtrace is a list of bare offsets for the stripped
    // release builds guests ship, costs a stack walk per trap, and spreads
    // each log entry over many lines; the trap's cause is kept without it.
    config.wasm_backtrace_max_frames(None);
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

/// Compiles the component at `path`, links it against WASI 0.2 and wasi:http,
/// and checks that it exports `wasi:http/incoming-handler`.
pub fn load(engine: &Engine, path: &Path) -> Result<ProxyPre<RequestState>> {
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
    let component = Component::new(engine, &bytes)
        .with_context(|| format!("{} is not a valid component", path.display()))?;
    link(engine, &component).with_context(|| format!("cannot serve {}", path.display()))
}

/// Links `component` against all of WASI 0.2 plus wasi:http and resolves its
/// `wasi:http/incoming-handler` export, so that per request only
/// instantiation is left.
pub fn link(engine: &Engine, component: &Component) -> Result<ProxyPre<RequestState>> {
    let mut linker = Linker::new(engine);
    // All of WASI 0.2, as `wasmtime serve -S cli` links it: a plain std
    // `wasm32-wasip2` build imports `wasi:cli/environment` and friends.
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    let pre = linker
        .instantiate_pre(component)
        .context("the component imports something this server does not provide")?;
    ProxyPre::new(pre).context("the component does not export `wasi:http/incoming-handler@0.2.x`")
}
