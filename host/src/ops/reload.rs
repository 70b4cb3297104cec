//! Reload without a restart: on SIGHUP, or with `--watch` when the component
//! file changes, compile the new component in the background and, if it
//! compiles, links and instantiates, send new requests to it; requests in
//! flight finish on the old one. If anything fails, the old component keeps
//! serving and the log says why.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{error, info};

use crate::compile::Engines;
use crate::guest::link;
use crate::guest::runner::Runner;

/// How often `--watch` looks at the component file. Polling size and mtime
/// survives editors and deploy tools that replace the file by renaming
/// another over it, which a watch on the file itself does not; half a second
/// is quick for a person and nothing for the machine.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// What `--watch` compares: a change in either means a new file.
pub type Stamp = Option<(u64, SystemTime)>;

/// The component file's stamp now; taken before a load, so that a change
/// made while it compiles is seen.
pub fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// Watches for the reasons to reload. Created before the server announces
/// itself, so a SIGHUP sent right after the "Server running" line is seen.
pub struct Reloader {
    hangup: Signal,
    /// The stamp of the file the current component was loaded from.
    loaded: Stamp,
    engines: Arc<Engines>,
    /// The single component's runner; `None` for an application, which is
    /// not reloaded yet.
    runner: Option<Arc<Runner>>,
    source: Source,
}

/// Where the component comes from, and whether to watch it.
pub struct Source {
    /// The component file.
    pub path: PathBuf,
    /// The compile cache, unless `--no-cache`.
    pub cache_dir: Option<PathBuf>,
    /// `--watch`: reload when the file changes, not only on SIGHUP.
    pub watch: bool,
}

impl Reloader {
    /// `loaded` is the file's stamp from before the running component was
    /// compiled, so a change made while it compiled is not missed.
    pub fn new(
        engines: Arc<Engines>,
        runner: Option<Arc<Runner>>,
        source: Source,
        loaded: Stamp,
    ) -> std::io::Result<Self> {
        Ok(Self {
            hangup: signal(SignalKind::hangup())?,
            loaded,
            engines,
            runner,
            source,
        })
    }

    /// Reloads on every SIGHUP and, with `--watch`, every settled change of
    /// the component file. Never returns.
    pub async fn run(mut self) {
        let mut ticks = tokio::time::interval(WATCH_INTERVAL);
        let mut current = self.loaded;
        let mut changing: Option<Stamp> = None;
        loop {
            tokio::select! {
                _ = self.hangup.recv() => info!("SIGHUP received: reloading {}", self.source.path.display()),
                _ = ticks.tick(), if self.source.watch => {
                    let now = stamp(&self.source.path);
                    if now == current {
                        changing = None;
                        continue;
                    }
                    // Reload only once the file has held still for a tick, so
                    // a copy in progress is not compiled half-written.
                    if changing != Some(now) {
                        changing = Some(now);
                        continue;
                    }
                    info!("{} changed: reloading", self.source.path.display());
                }
            }
            current = stamp(&self.source.path);
            changing = None;
            self.reload().await;
        }
    }

    async fn reload(&self) {
        let Some(runner) = &self.runner else {
            error!(
                "reloading an application is not supported yet: restart the server to load its changes"
            );
            return;
        };
        let engines = self.engines.clone();
        let (path, cache_dir) = (self.source.path.clone(), self.source.cache_dir.clone());
        let compiled =
            tokio::task::spawn_blocking(move || link::load(&engines, &path, cache_dir.as_deref()))
                .await;
        let result = match compiled {
            Ok(Ok(guest)) => {
                let kind = guest.kind();
                runner.replace(guest).await.map(|()| kind)
            }
            Ok(Err(err)) => Err(err),
            Err(panicked) => Err(wasmtime::format_err!("compiling panicked: {panicked}")),
        };
        match result {
            Ok(kind) => info!(
                "reloaded {}, a {kind} component: new requests go to the new component",
                self.source.path.display()
            ),
            Err(err) => error!("reload failed, still serving the previous component: {err:#}"),
        }
    }
}
