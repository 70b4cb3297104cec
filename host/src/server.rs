//! One serving process, or the whole server without `--processes`: load
//! the component and try it (before listening, so a bad one never gets a
//! port), listen, serve until SIGINT or SIGTERM (or, for a serving process,
//! until its supervisor is gone), then drain.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::runtime::Runtime;
use tracing::info;

use crate::app::{self, App, Current, manifest};
use crate::cli::Cli;
use crate::compile::Engines;
use crate::compile::pool::PoolSettings;
use crate::guest::budget::HostBudget;
use crate::guest::link;
use crate::guest::runner::{RequestLimits, Runner};
use crate::guest::state::Sandbox;
use crate::http::{self, Workers, fd_limit};
use crate::imports::http_hooks::MAX_OUTBOUND;
use crate::imports::keyvalue;
use crate::imports::outbound::{Outbound, OutboundTimeouts};
use crate::ops::reload::{self, Reloader, Source};
use crate::ops::{admin, link as supervisor_link, shutdown};

/// What a serving process is (a supervisor serves nothing: it runs
/// `ops::supervisor::run` instead).
#[derive(Clone, Copy, Debug)]
pub enum Role {
    /// The whole server, in this process.
    Single,
    /// One of a supervisor's serving processes, listening on the address it
    /// holds; the `first` says what the server serves.
    Serving { on: SocketAddr, first: bool },
}

/// Everything a serving process is built from, derived once from the
/// command line.
pub struct Settings {
    pub source: Source,
    pub pool: PoolSettings,
    pub sandbox: Sandbox,
    /// `--config`, as given: an application's variables take their values
    /// from it.
    pub config: Vec<(String, String)>,
    pub limits: RequestLimits,
    pub http: http::Settings,
    /// `--max-connections` for this process, if given; else derived from
    /// the open-file limit once the process is about to serve.
    pub max_connections: Option<usize>,
    /// `--addr`.
    pub addr: SocketAddr,
    /// `--admin-addr`.
    pub admin_addr: Option<SocketAddr>,
}

/// Loads the component, listens, and serves until shutdown.
pub fn run(settings: Settings, role: Role, runtime: &Runtime) -> Result<()> {
    let Settings {
        source,
        pool,
        sandbox,
        config,
        limits,
        http: mut http_settings,
        max_connections,
        addr,
        admin_addr,
    } = settings;
    let host = sandbox.host;
    let stores = sandbox.keyvalue.clone();
    let outbound = if sandbox.allowed_outbound.is_empty() {
        0
    } else {
        pool.slots * MAX_OUTBOUND
    };
    // Answering from now on, so that `/readyz` says "starting" while the
    // component loads. A serving process's metrics and readiness reach the
    // admin endpoint through its supervisor.
    let admin = match role {
        Role::Single => admin::bind(admin_addr)?,
        Role::Serving { .. } => None,
    };
    let admin = admin
        .map(|admin| admin::spawn(admin, admin::own_reports()))
        .transpose()?;
    let (engines, app, loaded) = load(&source, &config, pool, sandbox, limits, runtime)?;
    // What the server serves and with what, said once per server: with
    // --processes, by the serving process started first.
    let summary = match role {
        Role::Serving { first: false, .. } => Vec::new(),
        _ => summary(&source, &app, &stores, host, pool.max_memory),
    };
    let current = Arc::new(Current::new(app));
    let (listener, shutdown, reloader) = runtime.block_on(async {
        let (addr, shared) = match role {
            Role::Single => (addr, false),
            Role::Serving { on, .. } => (on, true),
        };
        let listener =
            http::bind(addr, shared).with_context(|| format!("cannot listen on {addr}"))?;
        let shutdown = shutdown::signal().context("installing signal handlers")?;
        let certificate = http_settings
            .tls
            .as_ref()
            .map(|tls| tls.certificate.clone());
        let reloader = Reloader::new(engines, current.clone(), source, loaded, certificate)
            .context("installing the SIGHUP handler")?;
        anyhow::Ok((listener, shutdown, reloader))
    })?;
    // Once nothing can fail any more, so that a failed start says one line.
    http_settings.max_connections = fd_limit::max_connections(max_connections, outbound);
    let http_settings = Arc::new(http_settings);
    for line in &summary {
        info!("{line}");
    }
    release_free_memory();
    let workers =
        Workers::spawn(current, http_settings.clone()).context("starting the worker threads")?;
    let scheme = if http_settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    // Ready before the lines that say so: whoever reads them may ask
    // `/readyz` at once (the listener is bound and the workers run).
    admin::set_started();
    http::announce(scheme, listener.local_addr()?, admin);
    // A serving process also stops when its supervisor is gone.
    let orphaned = match role {
        Role::Serving { .. } => supervisor_link::answer_supervisor(),
        Role::Single => Box::pin(std::future::pending()),
    };
    runtime.block_on(async {
        tokio::select! {
            () = http::serve(listener, &workers, shutdown, &http_settings) => {}
            () = reloader.run() => {}
            () = orphaned => info!("the supervisor is gone: shutting down"),
        }
    });
    admin::set_draining();
    workers.drain();
    Ok(())
}

/// Compiles and links the component, or every component of the
/// application, at `source`, and instantiates each once, before the server
/// listens: a bad one never gets a port. Returns the engines (for reloads),
/// what is served, and the stamp of the file loaded.
fn load(
    source: &Source,
    config: &[(String, String)],
    pool: PoolSettings,
    sandbox: Sandbox,
    limits: RequestLimits,
    runtime: &Runtime,
) -> Result<(Arc<Engines>, Arc<App>, reload::Stamp)> {
    let engines = Arc::new(Engines::new(pool));
    // Taken before compiling, so that a change made meanwhile is seen; an
    // application's component files are known once its manifest is read.
    let before = reload::stamp(std::slice::from_ref(&source.path));
    let cache_dir = source.cache_dir.as_deref();
    let app = match manifest::find(&source.path) {
        Some(manifest) => {
            let base = app::Base {
                engines: &engines,
                sandbox: &sandbox,
                limits,
                cache_dir,
                config,
            };
            App::load(&manifest, &base)?
        }
        None => {
            let guest = link::load(&engines, &source.path, cache_dir)?;
            App::single(
                Arc::new(Runner::new(guest, pool, sandbox, limits)),
                &source.path,
            )
        }
    };
    let app = Arc::new(app);
    app.connect();
    let watched = app.watched();
    let loaded = if watched == [source.path.clone()] {
        before
    } else {
        reload::stamp(&watched)
    };
    runtime
        .block_on(app.check())
        .with_context(|| format!("cannot serve {}", source.path.display()))?;
    Ok((engines, app, loaded))
}

/// The startup lines that say what the server serves and with what.
fn summary(
    source: &Source,
    app: &App,
    stores: &keyvalue::Stores,
    host: HostBudget,
    max_memory: usize,
) -> Vec<String> {
    let mut lines = vec![format!(
        "serving {}, {}",
        source.path.display(),
        app.describe()
    )];
    lines.extend(
        stores
            .describe()
            .into_iter()
            .map(|store| format!("key-value store {store}")),
    );
    lines.push(format!(
        "each instance may hold {} resources in the host, {} at most \
         (--max-guest-host-memory), beside {} of linear memory (--max-memory)",
        host.resources,
        bytesize::ByteSize(host.bound() as u64),
        bytesize::ByteSize(max_memory as u64),
    ));
    lines
}

/// Gives memory the allocator holds free back to the kernel. Loading a
/// component reads and parses it whole (the JS guest: 12 MiB, plus its
/// instantiation check), and mimalloc keeps what was freed for reuse; the
/// server never needs that much again, and with `--processes` every process
/// would hold it.
fn release_free_memory() {
    // SAFETY: mi_collect only frees what mimalloc itself holds unused.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

impl Settings {
    /// The command line as the layers take it. With `--processes`, the
    /// limits of the whole server are split between the processes here.
    pub fn from_cli(cli: &Cli, store_io: &Runtime) -> Result<Self> {
        let slots = cli
            .per_process(cli.max_concurrent_requests, "--max-concurrent-requests")
            .map_err(anyhow::Error::msg)?;
        let max_connections = cli
            .max_connections
            .map(|total| cli.per_process(total, "--max-connections"))
            .transpose()
            .map_err(anyhow::Error::msg)?;
        let keyvalue_limits = keyvalue::Limits {
            max_key: bytes(cli.keyvalue_max_key),
            max_value: bytes(cli.keyvalue_max_value),
            max_batch: cli.keyvalue_max_batch,
        };
        let host = HostBudget::new(
            bytes(cli.max_guest_host_memory),
            bytes(cli.max_guest_fields_size),
            HostBudget::keyvalue_call(
                keyvalue_limits.max_key,
                keyvalue_limits.max_value,
                keyvalue_limits.max_batch,
            ),
        )
        .map_err(anyhow::Error::msg)?;
        let stores = {
            // Redis connections are driven by the key-value runtime.
            let _in_io_runtime = store_io.enter();
            keyvalue::Stores::new(
                &cli.keyvalue,
                cli.default_keyvalue_path(),
                keyvalue_limits,
                slots,
            )
            .map_err(anyhow::Error::msg)?
        };
        Ok(Self {
            source: Source {
                path: cli.component.clone(),
                cache_dir: cli.cache_dir(),
                watch: cli.watch,
            },
            pool: PoolSettings {
                slots,
                max_memory: bytes(cli.max_memory),
                serving_threads: cli.threads(),
            },
            sandbox: Sandbox {
                host,
                max_output: bytes(cli.max_guest_output),
                allowed_outbound: cli.allow_outbound.clone().into(),
                outbound: Arc::new(Outbound::new(
                    OutboundTimeouts {
                        connect: cli.outbound_connect_timeout,
                        first_byte: cli.outbound_first_byte_timeout,
                    },
                    cli.outbound_ca.as_deref(),
                )?),
                env: cli.env.clone().into(),
                config: Arc::new(cli.config.iter().cloned().collect()),
                keyvalue: Arc::new(stores),
                stores_allowed: None,
                files: Arc::new([]),
                internal: None,
            },
            config: cli.config.clone(),
            limits: RequestLimits {
                queue_timeout: cli.queue_timeout,
                request_timeout: cli.request_timeout,
                max_body: cli.max_body.as_u64(),
            },
            http: http::Settings {
                threads: cli.threads(),
                access_log: cli.access_log,
                max_header_size: bytes(cli.max_header_size),
                header_read_timeout: cli.header_read_timeout,
                idle_timeout: cli.idle_timeout,
                write_timeout: cli.write_timeout,
                max_streams_per_connection: cli.max_streams_per_connection,
                // Set by `run` from the open-file limit, once nothing can fail.
                max_connections: 0,
                shutdown_timeout: cli.shutdown_timeout,
                tls: match (&cli.tls_cert, &cli.tls_key) {
                    (Some(cert), Some(key)) => {
                        let (acceptor, certificate) =
                            http::tls::acceptor(cert, key, cli.tls_client_ca.as_deref())?;
                        Some(http::Tls {
                            acceptor,
                            certificate,
                            handshake_timeout: cli.tls_handshake_timeout,
                            subject_header: cli.tls_client_subject_header.clone(),
                        })
                    }
                    _ => None,
                },
            },
            max_connections,
            addr: cli.addr,
            admin_addr: cli.admin_addr,
        })
    }
}

/// A size given on the command line, as the layers below take it.
pub fn bytes(size: bytesize::ByteSize) -> usize {
    usize::try_from(size.as_u64()).unwrap_or(usize::MAX)
}
