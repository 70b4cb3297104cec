//! Reload without a restart: on SIGHUP, or with `--watch` when the component
//! file changes (for an application, its manifest or any of its components'
//! files), compile the new components in the background and, if every one
//! compiles, links and instantiates, send new requests to them; requests in
//! flight finish on the old ones. A changed manifest is read whole, as at
//! start (routes, grants, variables, files), and the new application is
//! swapped in as one. If anything fails, the old components keep serving,
//! all of them, and the log says why. SIGHUP also reads the TLS certificate
//! and key again (`--tls-cert`): new connections get them, and a pair that
//! does not load leaves the old one in use.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{error, info};

use crate::app::{App, Current};
use crate::compile::Engines;
use crate::http::tls::Certificate;

/// How often `--watch` looks at the component files. Polling size and
/// mtime survives editors and deploy tools that replace a file by renaming
/// another over it, which a watch on the file itself does not; half a second
/// is quick for a person and nothing for the machine.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// What `--watch` compares, per file watched: a change in any means new
/// files.
pub type Stamp = Vec<Option<(u64, SystemTime)>>;

/// The files' stamps now; taken before a load, so that a change made while
/// it compiles is seen.
pub fn stamp(paths: &[PathBuf]) -> Stamp {
    paths
        .iter()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.len(), meta.modified().ok()?))
        })
        .collect()
}

/// Watches for the reasons to reload. Created before the server announces
/// itself, so a SIGHUP sent right after the "Server running" line is seen.
pub struct Reloader {
    hangup: Signal,
    /// The stamp of the files the current components were loaded from.
    loaded: Stamp,
    engines: Arc<Engines>,
    current: Arc<Current>,
    source: Source,
    certificate: Option<Arc<Certificate>>,
}

/// Where the component comes from, and whether to watch it.
pub struct Source {
    /// The component file, or the application's manifest or its folder.
    pub path: PathBuf,
    /// The compile cache, unless `--no-cache`.
    pub cache_dir: Option<PathBuf>,
    /// `--watch`: reload when a file changes, not only on SIGHUP.
    pub watch: bool,
}

impl Reloader {
    /// `loaded` is the files' stamp from before the running components were
    /// compiled, so a change made while they compiled is not missed.
    pub fn new(
        engines: Arc<Engines>,
        current: Arc<Current>,
        source: Source,
        loaded: Stamp,
        certificate: Option<Arc<Certificate>>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            hangup: signal(SignalKind::hangup())?,
            loaded,
            engines,
            current,
            source,
            certificate,
        })
    }

    /// Reloads on every SIGHUP and, with `--watch`, every settled change of
    /// the files. Never returns.
    pub async fn run(mut self) {
        let mut ticks = tokio::time::interval(WATCH_INTERVAL);
        let mut watched = self.current.load().watched();
        let mut current = std::mem::take(&mut self.loaded);
        let mut changing: Option<Stamp> = None;
        loop {
            tokio::select! {
                _ = self.hangup.recv() => {
                    info!("SIGHUP received: reloading {}", self.source.path.display());
                    self.reload_certificate();
                }
                _ = ticks.tick(), if self.source.watch => {
                    let now = stamp(&watched);
                    if now == current {
                        changing = None;
                        continue;
                    }
                    // Reload only once the files have held still for a tick,
                    // so a copy in progress is not compiled half-written.
                    if changing.as_ref() != Some(&now) {
                        changing = Some(now);
                        continue;
                    }
                    info!("{} changed: reloading", self.source.path.display());
                }
            }
            current = stamp(&watched);
            changing = None;
            self.reload().await;
            // A new manifest may name other files: watched from now on.
            let now_watched = self.current.load().watched();
            if now_watched != watched {
                watched = now_watched;
                current = stamp(&watched);
            }
        }
    }

    fn reload_certificate(&self) {
        let Some(certificate) = &self.certificate else {
            return;
        };
        match certificate.reload() {
            Ok(()) => info!(
                "reloaded the TLS certificate and key from {}: new connections get them",
                certificate.files()
            ),
            Err(err) => {
                error!("TLS certificate reload failed, still serving the previous one: {err:#}")
            }
        }
    }

    async fn reload(&self) {
        let app = self.current.load_full();
        let result = match app.manifest_changed() {
            Ok(true) => self.reread(app).await,
            Ok(false) => self.recompile(app).await,
            Err(err) => Err(err),
        };
        match result {
            Ok(()) => info!(
                "reloaded {}, {}: new requests go to the new component",
                self.source.path.display(),
                self.current.load().describe()
            ),
            Err(err) => error!("reload failed, still serving the previous component: {err:#}"),
        }
    }

    /// The same components, compiled anew from their files and swapped in.
    async fn recompile(&self, app: Arc<App>) -> anyhow::Result<()> {
        let (engines, compiling) = (self.engines.clone(), app.clone());
        let cache_dir = self.source.cache_dir.clone();
        let compiled =
            tokio::task::spawn_blocking(move || compiling.compile(&engines, cache_dir.as_deref()))
                .await;
        match compiled {
            Ok(guests) => app.replace(guests?).await,
            Err(panicked) => Err(anyhow::anyhow!("compiling panicked: {panicked}")),
        }
    }

    /// The application as its changed manifest says, loaded and tried whole,
    /// then served in place of the old one.
    async fn reread(&self, app: Arc<App>) -> anyhow::Result<()> {
        let engines = self.engines.clone();
        let loaded = tokio::task::spawn_blocking(move || app.reread(&engines)).await;
        let new = match loaded {
            Ok(new) => Arc::new(new?),
            Err(panicked) => return Err(anyhow::anyhow!("loading panicked: {panicked}")),
        };
        new.connect();
        new.check().await?;
        self.current.store(new);
        Ok(())
    }
}
