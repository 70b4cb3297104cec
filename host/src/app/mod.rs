//! What the server serves: one component, or a Spin application of many
//! (`spin.toml`, [`manifest`]), each component with its own instance pool,
//! sandbox and runner, chosen per request by path ([`routes`]). A request
//! still gets a fresh instance of the one component it is routed to.

mod files;
mod grants;
mod internal;
pub mod manifest;
mod routes;
mod templates;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, bail};
use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::body::Body;
use hyper::{Request, Response, StatusCode};

use crate::compile::Engines;
use crate::guest::link;
use crate::guest::loaded::Guest;
use crate::guest::response::{self, ResponseBody};
use crate::guest::runner::{RequestLimits, Runner};
use crate::guest::state::Sandbox;
use crate::imports::http_hooks::{Internal, InternalHandle};
use crate::metrics::Served;
use files::Placed;
use routes::{Route, Routes};

/// Spin's health path, answered by the server itself as Spin does.
const HEALTH: &str = "/.well-known/spin/health";

/// One component, or an application's components and routes.
pub struct App {
    runners: Vec<Arc<Runner>>,
    /// Each component's name, for the log.
    names: Vec<String>,
    /// `None` for a single component, served on every path without Spin's
    /// headers, as `wasmtime serve` serves it.
    routes: Option<Routes>,
    /// Given to every component's requests; points here once [`App::connect`]ed.
    internal: InternalHandle,
    /// Each component's file, in the order of `runners`.
    sources: Vec<PathBuf>,
    /// The manifest and a hash of its text, for an application.
    manifest: Option<(PathBuf, u64)>,
    /// Each component's files, kept (staged copies included) while served.
    _files: Vec<Placed>,
    /// Each component's engines, for an application. An engine's pool holds
    /// `--max-concurrent-requests` instances and each component admits that
    /// many requests at once, so two components sharing one engine (same
    /// ABI and shape) would find it full while their own limits let them in.
    engines: Vec<Engines>,
    /// For an application, what loads it again.
    recipe: Option<Recipe>,
}

/// What is served now: a reload that reads a changed manifest swaps in a
/// new [`App`] whole; a request keeps the one it started with.
pub type Current = ArcSwap<App>;

/// What an application was loaded with beside its manifest, to load it
/// again when the manifest changes.
struct Recipe {
    sandbox: Sandbox,
    limits: RequestLimits,
    config: Vec<(String, String)>,
    cache_dir: Option<PathBuf>,
}

/// What the command line gives every component, beside what its manifest
/// entry adds.
pub struct Base<'a> {
    pub engines: &'a Engines,
    pub sandbox: &'a Sandbox,
    pub limits: RequestLimits,
    pub cache_dir: Option<&'a Path>,
    /// `--config`: values for the application's variables.
    pub config: &'a [(String, String)],
}

impl App {
    /// A single component, loaded from `source`.
    pub fn single(runner: Arc<Runner>, source: &Path) -> Self {
        Self {
            runners: vec![runner],
            names: Vec::new(),
            routes: None,
            internal: Arc::new(OnceLock::new()),
            sources: vec![source.to_path_buf()],
            manifest: None,
            _files: Vec::new(),
            engines: Vec::new(),
            recipe: None,
        }
    }

    /// Compiles and links every component of the application at `manifest`
    /// (not yet instantiated: see [`App::check`]).
    pub fn load(manifest: &Path, base: &Base<'_>) -> Result<Self> {
        let text_hash = manifest_hash(manifest)?;
        let app = manifest::read(manifest).map_err(anyhow::Error::msg)?;
        let values = templates::values(&app.variables, base.config, |name| {
            std::env::var(format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase())).ok()
        })
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("{}: application variables", manifest.display()))?;
        let internal: InternalHandle = Arc::new(OnceLock::new());
        let mut runners = Vec::new();
        let mut placed = Vec::new();
        let mut own_engines = Vec::new();
        for component in &app.components {
            let files = files::place(&app.root, &component.files, &component.exclude_files);
            let mut sandbox = files
                .and_then(|files| {
                    let sandbox = grants::sandbox(component, base.sandbox, &values, &files.mounts);
                    placed.push(files);
                    sandbox
                })
                .map_err(anyhow::Error::msg)
                .with_context(|| {
                    format!("{}: component `{}`", manifest.display(), component.name)
                })?;
            sandbox.internal = Some(internal.clone());
            let engines = Engines::new(base.engines.pool());
            let guest = link::load(&engines, &component.source, base.cache_dir)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("component `{}`", component.name))?;
            own_engines.push(engines);
            runners.push(Arc::new(Runner::new(
                guest,
                base.engines.pool(),
                sandbox,
                base.limits,
            )));
        }
        let names: Vec<String> = app.components.iter().map(|c| c.name.clone()).collect();
        let routes = Routes::new(
            app.routes.iter().map(|(route, component)| Route {
                route,
                component: *component,
            }),
            |component| names[component].clone(),
        )
        .map_err(anyhow::Error::msg)?;
        Ok(Self {
            runners,
            names,
            routes: Some(routes),
            internal,
            sources: app.components.iter().map(|c| c.source.clone()).collect(),
            manifest: Some((manifest.to_path_buf(), text_hash)),
            _files: placed,
            engines: own_engines,
            recipe: Some(Recipe {
                sandbox: base.sandbox.clone(),
                limits: base.limits,
                config: base.config.to_vec(),
                cache_dir: base.cache_dir.map(Path::to_path_buf),
            }),
        })
    }

    /// The files a reload reads: the manifest, if any, and every component.
    pub fn watched(&self) -> Vec<PathBuf> {
        let manifest = self.manifest.iter().map(|(path, _)| path.clone());
        manifest.chain(self.sources.iter().cloned()).collect()
    }

    /// Whether this is an application whose manifest changed since it was
    /// loaded.
    pub fn manifest_changed(&self) -> Result<bool> {
        match &self.manifest {
            Some((manifest, loaded)) => Ok(manifest_hash(manifest)? != *loaded),
            None => Ok(false),
        }
    }

    /// The application as its manifest says now, loaded with what this one
    /// was loaded with (not yet instantiated: see [`App::check`]).
    pub fn reread(&self, engines: &Engines) -> Result<App> {
        let (Some((manifest, _)), Some(recipe)) = (&self.manifest, &self.recipe) else {
            bail!("a single component has no manifest to read again");
        };
        let base = Base {
            engines,
            sandbox: &recipe.sandbox,
            limits: recipe.limits,
            cache_dir: recipe.cache_dir.as_deref(),
            config: &recipe.config,
        };
        App::load(manifest, &base)
    }

    /// Compiles every component anew from its file, for a reload (`engines`
    /// serves a single component; an application's have their own).
    pub fn compile(&self, engines: &Engines, cache_dir: Option<&Path>) -> Result<Vec<Guest>> {
        let mut guests = Vec::new();
        for (index, source) in self.sources.iter().enumerate() {
            let engines = self.engines.get(index).unwrap_or(engines);
            let guest = link::load(engines, source, cache_dir).map_err(anyhow::Error::from);
            guests.push(match self.names.get(index) {
                Some(name) => guest.with_context(|| format!("component `{name}`"))?,
                None => guest?,
            });
        }
        Ok(guests)
    }

    /// Serves `guests` (from [`App::compile`]) from now on, all of them or,
    /// if any fails to instantiate, none: requests in flight finish on the
    /// components they started with.
    pub async fn replace(&self, guests: Vec<Guest>) -> Result<()> {
        for (index, (runner, guest)) in self.runners.iter().zip(&guests).enumerate() {
            if let Err(err) = runner.check_guest(guest).await {
                match self.names.get(index) {
                    Some(name) => bail!("component `{name}`: instantiating it failed: {err:#}"),
                    None => bail!("instantiating it failed: {err:#}"),
                }
            }
        }
        for (runner, guest) in self.runners.iter().zip(guests) {
            runner.swap(guest);
        }
        Ok(())
    }

    /// Lets the components call one another (`NAME.spin.internal`) through
    /// this application, once it is shared.
    pub fn connect(self: &Arc<Self>) {
        let app: Arc<dyn Internal> = self.clone();
        let _ = self.internal.set(Arc::downgrade(&app));
    }

    /// Instantiates every component once, before the server listens.
    pub async fn check(&self) -> Result<()> {
        for (index, runner) in self.runners.iter().enumerate() {
            if let Err(err) = runner.check().await {
                match self.names.get(index) {
                    Some(name) => bail!("component `{name}`: instantiating it failed: {err:#}"),
                    None => bail!("instantiating it failed: {err:#}"),
                }
            }
        }
        Ok(())
    }

    /// What is served, for the startup log.
    pub fn describe(&self) -> String {
        if self.routes.is_none() {
            return format!("a {} component", self.runners[0].kind());
        }
        let parts: Vec<String> = self
            .names
            .iter()
            .zip(&self.runners)
            .map(|(name, runner)| format!("`{name}` ({})", runner.kind()))
            .collect();
        let count = match parts.len() {
            1 => "1 component".to_string(),
            n => format!("{n} components"),
        };
        format!("an application of {count}: {}", parts.join(", "))
    }

    /// Serves `request` from `client` with the component its path routes to;
    /// for an application, with the route that took it.
    pub async fn handle<B>(
        &self,
        mut request: Request<B>,
        client: SocketAddr,
    ) -> (Response<ResponseBody>, Option<Arc<Served>>)
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let Some(routes) = &self.routes else {
            return (self.runners[0].handle(request).await, None);
        };
        let uri = request.uri().clone();
        if uri.path() == HEALTH {
            return (response::plain(StatusCode::OK, "OK", None), None);
        }
        let Some(matched) = routes.find(uri.path()) else {
            let response = response::plain(StatusCode::NOT_FOUND, "Not Found\n", None);
            return (response, None);
        };
        let scheme = crate::http::scheme_of(&request);
        matched.set_headers(request.headers_mut(), &uri, scheme, Some(client));
        let served = matched.served().clone();
        let runner = &self.runners[matched.component];
        (runner.handle(request).await, Some(served))
    }
}

/// A hash of the manifest's text, to tell a reload whether it changed.
fn manifest_hash(path: &Path) -> Result<u64> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(xxhash_rust::xxh3::xxh3_64(&text))
}
