//! `--processes N`: this process supervises N single-threaded serving
//! processes that listen on its address together.
//!
//! Why processes: resetting a large instance's memory (`madvise`) makes the
//! kernel flush the TLB of every core the process is running on, by
//! interrupting them; with JS and Python guests that was half the CPU time.
//! A process with one serving thread runs on one core, so nothing is
//! interrupted (BENCHMARKS.md).
//!
//! The supervisor parses the command line, binds the address (without
//! listening: `http::reserve`), and forks the first serving process before
//! it starts a thread ([`begin`]; see `fork.rs` for why). That one checks
//! the settings and loads the component (a bad one fails it before it
//! listens, with the usual one `error:` line, and the supervisor exits with
//! it) and fills the compile cache. Once it serves, the supervisor starts
//! its own binary again for the others, with the same command line plus
//! `--serving-process-on ADDR` and the process's index; they find the
//! component compiled. Any serving process that dies is started again that
//! way. The supervisor never loads the component or builds the
//! settings itself: it would only add that to the startup time and its
//! memory to the server's. The serving processes each listen on that address
//! with `SO_REUSEPORT`, and the kernel spreads connections between them.
//! Each one's stderr is the supervisor's, so their log lines go where the
//! operator looks; stdin and stdout are pipes to the supervisor:
//! - the first line on stdout is the usual "Server running at ...": ready;
//! - `metrics N` on stdin is answered with `# reply N` and the metrics text,
//!   which ends with `# EOF`; the admin endpoint sums them;
//! - stdin closing means the supervisor is gone (even killed): the serving
//!   process shuts down gracefully, so none is left serving on its own.

use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use rustix::process::{Pid, Signal, kill_process};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpSocket;
use tokio::process::Command;
use tokio::signal::unix::{Signal as SignalStream, SignalKind, signal as signal_stream};
use tokio::sync::{Mutex, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::cli::Cli;
use crate::http::{self, SERVER_RUNNING};

use super::fork::{self, Forked, ForkedChild, Side};
use super::link::{self, Link};
use super::{admin, shutdown};

/// Wait before starting a serving process again after one died, so a
/// process that dies at once is not restarted in a busy loop.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// While a serving process keeps failing (its component file replaced by a
/// broken one, the machine out of memory), each wait before the next try is
/// twice the last, up to this: a broken file costs a start and a log line a
/// minute, not a second, and a fixed one is picked up within a minute.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);

/// A serving process that served this long before it died was not failing:
/// the next restart waits [`RESTART_DELAY`] again. Past the longest
/// back-off, so that a process dying after every restart keeps backing off.
const RECOVERED_AFTER: Duration = Duration::from_secs(90);

/// Beyond `--shutdown-timeout`, how long a serving process may take to exit
/// after SIGTERM before it is killed: its drain is bounded by the timeout,
/// so this only covers dropping its instances and flushing its log.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// What a supervisor holds once it has forked its first serving process.
pub struct Begun {
    /// The address, reserved (see `http::reserve`).
    port: TcpSocket,
    /// `--admin-addr`, bound.
    admin: Option<std::net::TcpListener>,
    /// `--no-cache`: the serving processes share a compile cache made for
    /// this run, so the first compiles and the others load its result.
    cache: Option<tempfile::TempDir>,
    /// The first serving process.
    first: Forked,
}

/// Reserves `cli.addr`, binds `--admin-addr`, makes the private compile
/// cache of `--no-cache`, and forks the first serving process: what can
/// fail for the supervisor fails before anything starts. Returns `None` in that process, whose
/// `cli` is now serving process 0's, as if the supervisor had started it
/// with `--serving-process-on`.
///
/// # Safety
/// The process must have one thread (see `fork.rs`): call it before
/// logging and the async runtime start.
pub unsafe fn begin(cli: &mut Cli) -> Result<Option<Begun>> {
    let port = http::reserve(cli.addr).with_context(|| format!("cannot listen on {}", cli.addr))?;
    let admin = admin::bind(cli.admin_addr)?;
    // Made by this process, so its owner and mode pass the cache's checks.
    let cache = cli
        .no_cache
        .then(|| {
            tempfile::Builder::new()
                .prefix("wasi-http-server-cache-")
                .tempdir()
                .context("making a compile cache for this run (--no-cache)")
        })
        .transpose()?;
    let on = port.local_addr()?;
    // SAFETY: one thread, as the caller promises.
    match unsafe { fork::fork_first() }.context("starting the first serving process")? {
        Side::Supervisor(first) => Ok(Some(Begun {
            port,
            admin,
            cache,
            first,
        })),
        Side::ServingProcess => {
            cli.serving_process_on = Some(on);
            cli.serving_process_index = Some(0);
            cli.first_serving_process = true;
            // The supervisor removes it; this process only uses it.
            cli.serving_cache_dir = cache.map(tempfile::TempDir::keep);
            Ok(None)
        }
    }
}

/// What a supervisor runs, from the command line.
pub struct Plan {
    /// From [`begin`].
    pub begun: Begun,
    /// `--processes`, or its default.
    pub processes: usize,
    /// `--shutdown-timeout`.
    pub shutdown_timeout: Duration,
    /// `--tls-cert`: the serving processes speak HTTPS.
    pub https: bool,
}

/// Runs the serving processes of `plan` until SIGINT or SIGTERM.
pub async fn run(plan: Plan) -> Result<()> {
    let Plan {
        mut begun,
        processes,
        shutdown_timeout,
        https,
    } = plan;
    let mut shutdown = Box::pin(shutdown::signal().context("installing signal handlers")?);
    let hangup = signal_stream(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let addr = begun.port.local_addr()?;
    // Answering from now on: `/readyz` says "starting" until the serving
    // processes are ready.
    let links: Links = (0..processes).map(|_| Mutex::new(None)).collect();
    let up = Arc::new(AtomicUsize::new(0));
    let admin = (begun.admin.take())
        .map(|admin| admin::spawn(admin, reports(links.clone(), up.clone())))
        .transpose()?;
    // A large component can take the first serving process seconds to
    // compile; SIGTERM meanwhile stops the server then, not once it serves.
    // Nothing is served yet, so the processes starting are simply killed
    // (dropping them does).
    let processes = tokio::select! {
        started = start(begun, links, up, shutdown_timeout) => started?,
        () = &mut shutdown => {
            info!("stopped before the serving processes were ready");
            return Ok(());
        }
    };
    let scheme = if https { "https" } else { "http" };
    // Ready before the lines that say so: whoever reads them may ask
    // `/readyz` at once.
    admin::set_started();
    http::announce(scheme, addr, admin);
    processes.run(shutdown, hangup).await;
    Ok(())
}

/// What the admin endpoint reports: `/metrics` sums the metrics of the
/// serving processes that answer, with how many do; `/readyz` fails while
/// none is up.
fn reports(links: Links, up: Arc<AtomicUsize>) -> admin::Reports {
    admin::Reports {
        metrics: Arc::new(move || {
            let links = links.clone();
            Box::pin(async move { link::scrape(&links).await })
        }),
        serving: Arc::new(move || match up.load(Ordering::Relaxed) {
            0 => Err("no serving process is up".to_string()),
            _ => Ok(()),
        }),
    }
}

/// The serving processes, once each has said it is ready.
pub struct Processes {
    stop: watch::Sender<bool>,
    hangups: watch::Sender<u64>,
    keepers: JoinSet<()>,
}

/// A serving process failed to start and has said why on stderr itself:
/// the server exits with no further line.
#[derive(Debug)]
pub struct AlreadyReported;

impl fmt::Display for AlreadyReported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a serving process failed to start")
    }
}

impl std::error::Error for AlreadyReported {}

/// Where each serving process's [`Link`] is while it is up, by index.
type Links = Arc<[Mutex<Option<Link>>]>;

/// Starts a serving process for each of `links` on the address `begun`
/// holds and waits until each is ready: the first (forked already) alone,
/// then the others together. If one cannot start, stops the others and
/// fails. `up` counts those up.
async fn start(
    begun: Begun,
    links: Links,
    up: Arc<AtomicUsize>,
    shutdown_timeout: Duration,
) -> Result<Processes> {
    let count = links.len();
    let Begun {
        port, cache, first, ..
    } = begun;
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    args.extend([
        "--serving-process-on".into(),
        port.local_addr()?.to_string().into(),
    ]);
    if let Some(cache) = &cache {
        args.extend(["--serving-cache-dir".into(), cache.path().into()]);
    }
    let launcher = Arc::new(Launcher {
        exe: std::env::current_exe().context("finding this program's file")?,
        args,
        forked: std::sync::Mutex::new(Some(first)),
        _port: port,
        _cache: cache,
    });
    let (stop, _) = watch::channel(false);
    let (hangups, _) = watch::channel(0);
    let mut processes = Processes {
        stop,
        hangups,
        keepers: JoinSet::new(),
    };
    for batch in [0..1, 1..count] {
        let mut readiness = Vec::new();
        for index in batch {
            let (ready, first) = oneshot::channel();
            readiness.push((index, first));
            processes.keepers.spawn(
                Keeper {
                    index,
                    launcher: launcher.clone(),
                    links: links.clone(),
                    up: up.clone(),
                    stop: processes.stop.subscribe(),
                    hangups: processes.hangups.subscribe(),
                    shutdown_timeout,
                }
                .run(ready),
            );
        }
        for (index, first) in readiness {
            let failure = match first.await {
                Ok(Ok(())) => continue,
                // Exit status 1 is main's: it has written its `error:` line.
                Ok(Err(NotReady::Exited(status))) if status.code() == Some(1) => {
                    anyhow::Error::new(AlreadyReported)
                }
                Ok(Err(why)) => anyhow!("serving process {index} did not start: {why}"),
                Err(_) => anyhow!("serving process {index} did not start: its task ended"),
            };
            processes.stop().await;
            return Err(failure);
        }
    }
    info!("{count} serving processes ready");
    Ok(processes)
}

/// Why a serving process did not become ready.
enum NotReady {
    Exited(ExitStatus),
    Failed(String),
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReady::Exited(status) => write!(f, "it exited ({status}) before it was ready"),
            NotReady::Failed(why) => f.write_str(why),
        }
    }
}

impl Processes {
    /// Passes SIGHUP on until `shutdown` resolves, then stops the serving
    /// processes (each drains, as on its own SIGTERM) and waits for them.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>, mut hangup: SignalStream) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = hangup.recv() => {
                    info!("SIGHUP received: passing it on to the serving processes");
                    self.hangups.send_modify(|count| *count += 1);
                }
            }
        }
        info!("shutting down the serving processes");
        admin::set_draining();
        self.stop().await;
    }

    async fn stop(&mut self) {
        self.stop.send_replace(true);
        while self.keepers.join_next().await.is_some() {}
    }
}

/// How serving processes are started: this program, with this command line.
struct Launcher {
    exe: PathBuf,
    args: Vec<OsString>,
    /// The first serving process, forked by [`begin`], until its first
    /// launch takes it.
    forked: std::sync::Mutex<Option<Forked>>,
    /// Held so that the port stays this server's while a serving process
    /// restarts.
    _port: TcpSocket,
    /// With `--no-cache`, the compile cache of this run, removed with it.
    _cache: Option<tempfile::TempDir>,
}

impl Launcher {
    /// Starts serving process `index` and waits for its "Server running"
    /// line. The `first` one, which says what the server serves, is the
    /// forked one.
    async fn launch(&self, index: usize, first: bool) -> Result<(Child, Link), NotReady> {
        let forked = first.then(|| self.forked.lock().ok()?.take()).flatten();
        let (mut child, stdin, stdout): (_, link::Stdin, link::Stdout) = match forked {
            Some(forked) => {
                let (child, stdin, stdout) = forked
                    .into_parts()
                    .map_err(|err| NotReady::Failed(format!("cannot link to it: {err}")))?;
                (Child::Forked(child), Box::new(stdin), Box::new(stdout))
            }
            None => self.spawn(index)?,
        };
        let mut stdout = BufReader::new(stdout).lines();
        match stdout.next_line().await {
            Ok(Some(line)) if line.starts_with(SERVER_RUNNING) => {
                Ok((child, Link::new(stdin, stdout)))
            }
            _ => {
                child.start_kill();
                match child.wait().await {
                    Ok(status) => Err(NotReady::Exited(status)),
                    Err(err) => Err(NotReady::Failed(format!(
                        "it failed before it was ready: {err}"
                    ))),
                }
            }
        }
    }

    /// Starts serving process `index` as a new run of this program.
    fn spawn(&self, index: usize) -> Result<(Child, link::Stdin, link::Stdout), NotReady> {
        let mut child = Command::new(&self.exe)
            .args(&self.args)
            .arg("--serving-process-index")
            .arg(index.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| NotReady::Failed(format!("cannot run {}: {err}", self.exe.display())))?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        Ok((Child::Spawned(child), Box::new(stdin), Box::new(stdout)))
    }
}

/// A serving process: the forked first one, or one started as a new run of
/// this program.
enum Child {
    Forked(ForkedChild),
    Spawned(tokio::process::Child),
}

impl Child {
    /// Its pid, until it has been waited for.
    fn id(&self) -> Option<Pid> {
        match self {
            Child::Forked(child) => child.id(),
            Child::Spawned(child) => child.id().and_then(|pid| Pid::from_raw(pid as i32)),
        }
    }

    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self {
            Child::Forked(child) => child.wait().await,
            Child::Spawned(child) => child.wait().await,
        }
    }

    fn start_kill(&mut self) {
        match self {
            Child::Forked(child) => child.start_kill(),
            Child::Spawned(child) => {
                let _ = child.start_kill();
            }
        }
    }

    async fn kill(&mut self) {
        let _ = match self {
            Child::Forked(child) => child.kill().await,
            Child::Spawned(child) => child.kill().await,
        };
    }
}

/// Keeps serving process `index` running: starts it, passes SIGHUP on,
/// starts it again if it dies, and stops it when told to.
struct Keeper {
    index: usize,
    launcher: Arc<Launcher>,
    links: Links,
    /// Serving processes up now (started and not yet seen to exit).
    up: Arc<AtomicUsize>,
    stop: watch::Receiver<bool>,
    hangups: watch::Receiver<u64>,
    shutdown_timeout: Duration,
}

/// How long to wait before the next start of a serving process: doubled
/// after each failure in a row, up to [`MAX_RESTART_DELAY`].
struct Backoff(Duration);

impl Backoff {
    /// The wait before the next try; the one after it is twice as long.
    fn next(&mut self) -> Duration {
        let delay = self.0;
        self.0 = (delay * 2).min(MAX_RESTART_DELAY);
        delay
    }
}

impl Keeper {
    /// `ready` hears whether the first start worked; after a failed first
    /// start there is no retry, as the server is not running yet. Process 0's
    /// first start is the server's first: it says what is served.
    async fn run(mut self, ready: oneshot::Sender<Result<(), NotReady>>) {
        let index = self.index;
        let mut ready = Some(ready);
        let mut backoff = Backoff(RESTART_DELAY);
        loop {
            let launched = tokio::select! {
                launched = self.launcher.launch(index, index == 0 && ready.is_some()) => launched,
                _ = self.stop.changed() => return,
            };
            let mut child = match launched {
                Ok((child, link)) => {
                    *self.links[index].lock().await = Some(link);
                    self.up.fetch_add(1, Ordering::Relaxed);
                    child
                }
                Err(why) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(Err(why));
                        return;
                    }
                    let delay = backoff.next();
                    error!(
                        "serving process {index} did not start again: {why}; next try in {}",
                        humantime::format_duration(delay)
                    );
                    if self.after(delay).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let started = tokio::time::Instant::now();
            match ready.take() {
                Some(ready) => {
                    let _ = ready.send(Ok(()));
                }
                None => info!("serving process {index} is serving again"),
            }
            let exited = loop {
                tokio::select! {
                    exited = child.wait() => break exited,
                    _ = self.hangups.changed() => signal(&child, Signal::HUP),
                    _ = self.stop.changed() => {
                        self.terminate(child).await;
                        self.links[index].lock().await.take();
                        self.up.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                }
            };
            self.links[index].lock().await.take();
            self.up.fetch_sub(1, Ordering::Relaxed);
            if started.elapsed() >= RECOVERED_AFTER {
                backoff = Backoff(RESTART_DELAY);
            }
            // A Ctrl-C in a terminal reaches every process of the group at
            // once: a serving process may exit before this one is told to
            // stop. That is not a death to report.
            if self.after(backoff.next()).await.is_err() {
                return;
            }
            match exited {
                Ok(status) => error!("serving process {index} exited ({status}); starting another"),
                Err(err) => error!("serving process {index} was lost ({err}); starting another"),
            }
        }
    }

    /// Waits `delay`, or fails if told to stop meanwhile.
    async fn after(&mut self, delay: Duration) -> Result<(), ()> {
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(()),
            _ = self.stop.changed() => Err(()),
        }
    }

    /// SIGTERM, then as long as a serving process's own shutdown may take,
    /// then SIGKILL.
    async fn terminate(&self, mut child: Child) {
        signal(&child, Signal::TERM);
        let deadline = self.shutdown_timeout + EXIT_GRACE;
        if tokio::time::timeout(deadline, child.wait()).await.is_err() {
            warn!(
                "serving process {} still running {deadline:?} after SIGTERM: killing it",
                self.index
            );
            child.kill().await;
        }
    }
}

/// Sends `signal` to a serving process not yet waited for (so its pid is
/// still its own).
fn signal(child: &Child, signal: Signal) {
    if let Some(pid) = child.id() {
        let _ = kill_process(pid, signal);
    }
}
