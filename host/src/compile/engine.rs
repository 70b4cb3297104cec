//! The engines instances run on: one per ABI and pool shape, each with the
//! thread that advances its epoch.

use std::sync::Mutex;
use std::time::Duration;

use wasmtime::error::Context;
use wasmtime::{Config, Engine, Result};

use super::pool::{PoolSettings, Shape};

/// How often the engine's epoch advances: the granularity of
/// `--request-timeout` for a guest that spins, and the longest a running guest
/// keeps its thread before yielding to other requests. A tick costs one atomic
/// increment, so 10 ms is cheap and keeps co-scheduled requests responsive.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Which ABI an engine compiles for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abi {
    /// WASI 0.2: the component model's async ABI off. A store of an engine
    /// with it on sets up its concurrency machinery for every instance, which
    /// costs a WASI 0.2 request 40% more CPU (BENCHMARKS.md).
    Sync,
    /// WASI 0.3: streams, futures and async functions, which need it on.
    Async,
}

/// The engines built so far.
///
/// The pool is sized for the component (`pool.rs`), so a reload to a
/// component of another shape gets an engine of its own; the old engine lives
/// on in the old component's instances until they finish.
pub struct Engines {
    /// What the operator fixed for every pool.
    pool: PoolSettings,
    /// The last engine built for each ABI, with its shape, reused by the
    /// next component of that ABI and shape. Only startup and the reload
    /// task load components, one at a time.
    built: Mutex<Vec<(Abi, Shape, Engine)>>,
}

impl Engines {
    /// Engines for pools under `pool`; each is built when a component needs it.
    pub fn new(pool: PoolSettings) -> Self {
        Self {
            pool,
            built: Mutex::new(Vec::new()),
        }
    }

    /// What the operator fixed for every pool.
    pub fn pool(&self) -> PoolSettings {
        self.pool
    }

    /// The engine for a component of this ABI and shape.
    pub fn get(&self, abi: Abi, shape: Shape) -> Result<Engine> {
        let mut built = self
            .built
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, _, engine)) = built.iter().find(|(a, s, _)| *a == abi && *s == shape) {
            return Ok(engine.clone());
        }
        let engine = engine(shape, abi)?;
        built.retain(|(a, _, _)| *a != abi);
        built.push((abi, shape, engine.clone()));
        Ok(engine)
    }
}

/// Builds an engine for `abi` and starts the one thread that advances its
/// epoch for its life.
fn engine(shape: Shape, abi: Abi) -> Result<Engine> {
    let mut config = Config::new();
    config.allocation_strategy(shape.strategy());
    // Compiled code checks the epoch at function entries and loop headers, so
    // a guest that never calls the host can still be stopped.
    config.epoch_interruption(true);
    // A trap's wasm backtrace is a list of bare offsets for the stripped
    // release builds guests ship, costs a stack walk per trap, and spreads
    // each log entry over many lines; the trap's cause is kept without it.
    config.wasm_backtrace_max_frames(None);
    // wasmtime marks the async ABI experimental.
    let async_abi = abi == Abi::Async;
    config.wasm_component_model_async(async_abi);
    config.concurrency_support(async_abi);
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
