//! `wasi-http-server COMPONENT [--addr ADDR]`: glue. Parse the command line,
//! set up logging, choose this process's role, build the settings once, and
//! run. Errors end the process with one line and a non-zero exit code.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use wasi_http_server::cli::Cli;
use wasi_http_server::ops::supervisor;
use wasi_http_server::server::{self, Role, Settings};
use wasi_http_server::{log, trace};

/// Every request builds and drops a store, a WASI context and hyper's request
/// and response: dozens of small allocations. mimalloc's thread-local free
/// lists serve them faster than glibc's malloc (measured in BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    // SIGHUP reloads, once the component has loaded and its handler is in
    // place; until then (a large component compiles for seconds) it must
    // not end the process, as its default action would. Serving processes
    // inherit this across fork and exec, for the same stretch of theirs.
    // SAFETY: setting a signal's disposition to "ignore" has no
    // preconditions; tokio's handler replaces it later.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    // A supervisor forks its first serving process before logging or the
    // runtime start a thread; in that child `cli` becomes its.
    let begun = match (cli.serving_process_on, cli.processes()) {
        (None, processes) if processes > 1 => {
            // SAFETY: no thread has started yet.
            unsafe { supervisor::begin(&mut cli) }
        }
        _ => Ok(None),
    };
    // Traces are a serving process's: a supervisor serves nothing. A bad
    // `OTEL_*` value fails the start like a bad flag.
    let traces = match &begun {
        Ok(None) => trace::Settings::from_env(),
        _ => Ok(None),
    };
    let (flush_on_exit, traces) = match traces {
        Ok(traces) => log::init(cli.log_format, cli.serving_process_index, traces),
        Err(err) => {
            let (flush, _) = log::init(cli.log_format, cli.serving_process_index, None);
            (flush, Err(err))
        }
    };
    let result = traces.and_then(|traces| {
        let result = begun.and_then(|begun| run(&cli, begun));
        drop(traces);
        result
    });
    drop(flush_on_exit);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is::<supervisor::AlreadyReported>() => ExitCode::FAILURE,
        // A serving process started again by its supervisor: the server
        // runs on, and the line says which process failed.
        Err(err) if cli.serving_process_on.is_some() && !cli.first_serving_process => {
            let index = cli.serving_process_index.unwrap_or_default();
            let pid = std::process::id();
            eprintln!("error: serving process {index} (pid {pid}): {err:#}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli, begun: Option<supervisor::Begun>) -> Result<()> {
    // This thread accepts connections and watches for signals; the workers
    // serve them. A supervisor does only the watching.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let role = match (begun, cli.serving_process_on) {
        (Some(begun), _) => {
            // The settings and the component are the first serving
            // process's to check and load: it fails before listening on a
            // bad one, with the usual one `error:` line, and fills the
            // compile cache for the others. This process serves nothing,
            // and checking them here too would only delay the first
            // answer by that much (a cold start).
            return runtime.block_on(supervisor::run(supervisor::Plan {
                begun,
                processes: cli.processes(),
                shutdown_timeout: cli.shutdown_timeout,
                https: cli.tls_cert.is_some(),
            }));
        }
        (None, Some(on)) => Role::Serving {
            on,
            first: cli.first_serving_process,
        },
        (None, None) => Role::Single,
    };
    // Redis connections are driven by a runtime of their own: the workers'
    // runtimes serve requests and the main one accepts, and neither runs
    // while the other drains at shutdown.
    let store_io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("keyvalue-io")
        .enable_all()
        .build()
        .context("starting the key-value runtime")?;
    let settings = Settings::from_cli(cli, &store_io)?;
    server::run(settings, role, &runtime)
}
