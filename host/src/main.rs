//! `wasi-http-server COMPONENT [--addr ADDR]`: glue between the command line,
//! logging, the runtime and the server. Errors end the process with one line
//! and a non-zero exit code.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;
use tracing_appender::non_blocking::NonBlockingBuilder;
use tracing_subscriber::EnvFilter;
use wasi_http_server::cli::{Cli, LogFormat};
use wasi_http_server::handler::{Handler, Limits};
use wasi_http_server::pool::Pool;
use wasi_http_server::reload::{self, Reloader, Source};
use wasi_http_server::state::{HostBudget, Sandbox};
use wasi_http_server::{admin, component, fd_limit, guest_output, keyvalue, server, supervisor};

/// Every request builds and drops a store, a WASI context and hyper's request
/// and response: dozens of small allocations. mimalloc's thread-local free
/// lists serve them faster than glibc's malloc (measured in BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Log lines waiting for stderr. When stderr falls this far behind, new
/// lines are dropped instead of making the server wait: at most
/// [`guest_output::MAX_LINE`] each, so the queue holds 32 MiB at worst.
const LOG_QUEUE_LINES: usize = 2048;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Log lines (the server's and the guests') are written by a thread of
    // their own: a stderr nobody reads fills its pipe, and a worker that
    // wrote to it directly would stop serving.
    let (writer, flush_on_exit) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("log-writer")
        .finish(std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(writer.clone());
    match cli.log_format {
        LogFormat::Text => {
            guest_output::write_text_to(writer);
            logs.with_ansi(std::io::stderr().is_terminal()).init();
        }
        LogFormat::Json => logs.json().init(),
    }
    let result = run(cli);
    drop(flush_on_exit);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is::<supervisor::AlreadyReported>() => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sizes given on the command line, as the layers below take them.
fn bytes(size: bytesize::ByteSize) -> usize {
    usize::try_from(size.as_u64()).unwrap_or(usize::MAX)
}

fn run(cli: Cli) -> Result<()> {
    // SIGHUP reloads, once the component has loaded and its handler is in
    // place; until then (a large component compiles for seconds) one must
    // not end the process, as its default action would. Serving processes
    // inherit this across exec, for the same stretch of theirs.
    // SAFETY: setting a signal's disposition to "ignore" has no
    // preconditions; tokio's handler replaces it later.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    // The command line becomes each layer's settings here; nothing below
    // sees it. With --processes, the limits of the whole server are split.
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
    // Redis connections are driven by a runtime of their own: the workers'
    // runtimes serve requests and the main one accepts, and neither runs
    // while the other drains at shutdown.
    let store_io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("keyvalue-io")
        .enable_all()
        .build()
        .context("starting the key-value runtime")?;
    let stores = {
        let _in_io_runtime = store_io.enter();
        keyvalue::Stores::new(
            &cli.keyvalue,
            cli.default_keyvalue_path(),
            keyvalue_limits,
            slots,
        )
        .map_err(anyhow::Error::msg)?
    };
    let limits = Limits {
        sandbox: Sandbox {
            max_memory: bytes(cli.max_memory),
            host,
            max_output: bytes(cli.max_guest_output),
            allowed_outbound: cli.allow_outbound.clone().into(),
            env: cli.env.clone().into(),
            config: Arc::new(cli.config.iter().cloned().collect()),
            keyvalue: Arc::new(stores),
        },
        max_concurrent_requests: slots,
        queue_timeout: cli.queue_timeout,
        request_timeout: cli.request_timeout,
        max_body: cli.max_body.as_u64(),
    };
    let pool = Pool {
        slots,
        max_memory: bytes(cli.max_memory),
        serving_threads: cli.threads(),
    };
    let source = Source {
        path: cli.component.clone(),
        cache_dir: cli.cache_dir(),
        watch: cli.watch,
    };
    // This thread accepts connections and watches for signals; the workers
    // serve them. A supervisor does only the watching.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if cli.processes > 1 && cli.serving_process_on.is_none() {
        // The settings are valid; the component is the first serving
        // process's to load (it fails before listening if broken, and fills
        // the compile cache for the others). This process serves nothing.
        drop((limits, store_io));
        return runtime.block_on(supervise(&cli));
    }

    // Compile and link before listening: a bad component never gets a port.
    let engines = Arc::new(component::Engines::new(pool));
    let loaded = reload::stamp(&source.path);
    let pre = component::load(&engines, &source.path, source.cache_dir.as_deref())?;
    let kind = pre.kind();
    let stores = limits.sandbox.keyvalue.clone();
    let handler = Arc::new(Handler::new(pre, limits));

    runtime
        .block_on(handler.check())
        .map_err(anyhow::Error::from)
        .with_context(|| {
            format!(
                "cannot serve {}: instantiating it failed",
                cli.component.display()
            )
        })?;
    // What the server serves and with what, said once per server: with
    // --processes, by the serving process started first.
    let mut summary = vec![format!(
        "serving {}, a {kind} component",
        cli.component.display()
    )];
    summary.extend(
        stores
            .describe()
            .into_iter()
            .map(|store| format!("key-value store {store}")),
    );
    summary.push(format!(
        "each instance may hold {} resources in the host, {} at most \
         (--max-guest-host-memory), beside {} of linear memory (--max-memory)",
        host.resources,
        bytesize::ByteSize(host.bound() as u64),
        cli.max_memory
    ));
    if cli.serving_process_on.is_some() && !cli.first_serving_process {
        summary.clear();
    }
    let (listener, shutdown, reloader, admin) = runtime.block_on(async {
        let addr = cli.serving_process_on.unwrap_or(cli.addr);
        let listener = server::bind(addr, cli.serving_process_on.is_some())
            .with_context(|| format!("cannot listen on {addr}"))?;
        let shutdown = shutdown_signal().context("installing signal handlers")?;
        let reloader = Reloader::new(engines, handler.clone(), source, loaded)
            .context("installing the SIGHUP handler")?;
        // A serving process's metrics reach the admin endpoint through its
        // supervisor.
        let admin = match cli.admin_addr.filter(|_| cli.serving_process_on.is_none()) {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (--admin-addr)"))?,
            ),
            None => None,
        };
        anyhow::Ok((listener, shutdown, reloader, admin))
    })?;
    // Once nothing can fail any more, so that a failed start says one line.
    let outbound = if cli.allow_outbound.is_empty() {
        0
    } else {
        slots * wasi_http_server::state::MAX_OUTBOUND
    };
    let settings = Arc::new(server::Settings {
        threads: cli.threads(),
        access_log: cli.access_log,
        max_header_size: bytes(cli.max_header_size),
        header_read_timeout: cli.header_read_timeout,
        idle_timeout: cli.idle_timeout,
        write_timeout: cli.write_timeout,
        max_streams_per_connection: cli.max_streams_per_connection,
        max_connections: fd_limit::max_connections(max_connections, outbound),
        shutdown_timeout: cli.shutdown_timeout,
    });
    for line in &summary {
        info!("{line}");
    }
    release_free_memory();
    let workers =
        server::spawn(handler, settings.clone()).context("starting the worker threads")?;
    // The first line on stdout; scripts and tests wait for it (and so does a
    // supervisor). With --admin-addr a second line gives the admin
    // endpoint's address.
    println!("Server running at http://{}/", listener.local_addr()?);
    if let Some(admin) = admin {
        println!("Admin endpoint at http://{}/", admin.local_addr()?);
        admin::spawn(admin, admin::own_reports()).context("starting the admin endpoint")?;
    }
    // A serving process also stops when its supervisor is gone.
    let orphaned = match cli.serving_process_on {
        Some(_) => supervisor::answer_supervisor(),
        None => Box::pin(std::future::pending()),
    };
    runtime.block_on(async {
        tokio::select! {
            () = server::accept(listener, &workers, shutdown, &settings) => {}
            () = reloader.run() => {}
            () = orphaned => info!("the supervisor is gone: shutting down"),
        }
    });
    admin::set_draining();
    workers.drain();
    Ok(())
}

/// Gives memory the allocator holds free back to the kernel. Loading a
/// component reads and parses it whole (the JS guest: 12 MiB, plus its
/// instantiation check), and mimalloc keeps what was freed for reuse; the
/// server never needs that much again, and with `--processes` every process
/// would hold it (24 MiB each for the JS guest, BENCHMARKS.md step 14).
fn release_free_memory() {
    // SAFETY: mi_collect only frees what mimalloc itself holds unused.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Runs the serving processes of `--processes` until SIGINT or SIGTERM.
async fn supervise(cli: &Cli) -> Result<()> {
    let port =
        server::reserve(cli.addr).with_context(|| format!("cannot listen on {}", cli.addr))?;
    let mut shutdown = Box::pin(shutdown_signal().context("installing signal handlers")?);
    let hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let admin = match cli.admin_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--admin-addr)"))?,
        ),
        None => None,
    };
    let addr = port.local_addr()?;
    // A large component can take the first serving process seconds to
    // compile; SIGTERM meanwhile stops the server then, not once it serves.
    // Nothing is served yet, so the processes starting are simply killed
    // (dropping them does).
    let processes = tokio::select! {
        started = supervisor::start(port, usize::from(cli.processes), cli.shutdown_timeout) => started?,
        () = &mut shutdown => {
            info!("stopped before the serving processes were ready");
            return Ok(());
        }
    };
    println!("Server running at http://{addr}/");
    if let Some(admin) = admin {
        println!("Admin endpoint at http://{}/", admin.local_addr()?);
        admin::spawn(admin, processes.reports()).context("starting the admin endpoint")?;
    }
    processes.run(shutdown, hangup).await;
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM. The handlers are installed when
/// this is called, not when it is first polled, so a signal that arrives right
/// after the "Server running" line is not lost.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => info!("SIGINT received"),
            _ = terminate.recv() => info!("SIGTERM received"),
        }
    })
}
