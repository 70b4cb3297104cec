//! Done once per component, before it serves: read it, size the instance
//! pool for it, pick its engine, and compile it (or load it from the compile
//! cache). Everything here runs before the server listens or a reload
//! switches over, so a bad component stops with one clear line instead of
//! failing requests.

pub mod cache;
pub mod engine;
pub mod footprint;
pub mod pool;

use std::path::Path;
use std::time::Instant;

use tracing::info;
use wasmtime::component::Component;
use wasmtime::error::Context;
use wasmtime::wasmparser::Parser;
use wasmtime::{Result, bail};

use cache::Origin;
pub use engine::{Abi, Engines};
use footprint::Footprint;
use pool::Shape;

/// A component compiled for its engine.
pub struct Compiled {
    pub component: Component,
    /// The ABI it was compiled for, which decides its kind of guest.
    pub abi: Abi,
}

/// Compiles the component at `path`, or loads it from `cache_dir`, on the
/// engine for its ABI and pool shape. A component that the engine without
/// the async ABI cannot compile uses it (or is broken): the other engine,
/// which takes a superset, compiles it or says what is wrong.
pub fn compile(engines: &Engines, path: &Path, cache_dir: Option<&Path>) -> Result<Compiled> {
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
    let shape = Shape::new(engines.pool(), &footprint);
    // Compiling a large component takes seconds: say so before, and after,
    // what it took.
    info!(
        "preparing {} ({}): compiling it, unless the compile cache has it",
        path.display(),
        bytesize::ByteSize(bytes.len() as u64)
    );
    let started = Instant::now();
    let cache_dir = cache_dir.map(cache::CacheDir::open).transpose()?;
    let cache_dir = cache_dir.as_ref();
    // A component that uses the async ABI goes straight to its engine: the
    // other one would only fail to compile it, after being built for it
    // (a pool and a thread), at every start (BENCHMARKS.md step 23).
    let sync = match footprint.async_abi {
        true => None,
        false => cache::load_or_compile(&engines.get(Abi::Sync, shape)?, &bytes, cache_dir).ok(),
    };
    let ((component, origin), abi) = match sync {
        Some(compiled) => (compiled, Abi::Sync),
        None => {
            let compiled =
                cache::load_or_compile(&engines.get(Abi::Async, shape)?, &bytes, cache_dir)
                    .with_context(|| format!("{} is not a valid component", path.display()))?;
            (compiled, Abi::Async)
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
    Ok(Compiled { component, abi })
}
