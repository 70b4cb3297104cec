//! Connections: one accept loop hands each connection to a worker thread,
//! which serves HTTP/1.1 (keep-alive) and HTTP/2 over cleartext on it within
//! the connection limits and timeouts of the command line; and a graceful
//! shutdown that stops accepting and lets in-flight requests finish within a
//! bounded drain time.
//!
//! Thread per core: each worker runs its own single-threaded runtime, and a
//! connection (with every request on it) stays on the worker it was given to.
//! A multi-threaded runtime balances better but pays for it in wakeups and
//! work stealing across threads on every request (measured in
//! BENCHMARKS.md); handing over a connection costs one wakeup per connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::guest_output::RequestId;
use crate::handler::Handler;
use crate::metrics::METRICS;
use crate::response::ResponseBody;

/// How long to pause after a failed `accept` (typically EMFILE: out of file
/// descriptors) before trying again, so the loop does not spin while
/// connections close and free some.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Connections the kernel queues for `accept` while the server is busy
/// (capped by `net.core.somaxconn`, 4096 on current kernels). Thousands of
/// clients connecting at once overflow tokio's default of 1024, and each
/// overflowed one waits a second for its SYN to be retried.
const LISTEN_BACKLOG: u32 = 4096;

/// Listens on `addr` with [`LISTEN_BACKLOG`]; with `shared`, on the port a
/// supervisor holds (see [`reserve`]).
pub fn bind(addr: SocketAddr, shared: bool) -> std::io::Result<TcpListener> {
    socket(addr, shared)?.listen(LISTEN_BACKLOG)
}

/// Binds `addr` without listening, for serving processes to listen on
/// together (`--processes`): each listens with `SO_REUSEPORT`, and the kernel
/// spreads new connections evenly between them by a hash of the client's
/// address. (With one socket shared by all, whichever process woke first
/// accepted a whole burst of connections and the other core idled.) Only
/// listening sockets are given connections, so this one never is; it keeps
/// the port while a serving process restarts, and the kernel lets only
/// processes of the same user join it.
pub fn reserve(addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    socket(addr, true)
}

fn socket(addr: SocketAddr, shared: bool) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std and tokio do on Unix: a restart can bind while old connections
    // linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(shared)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// An accepted connection on its way to a worker, with its connection slot.
struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
}

/// How connections are served, as the command line sets it.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `--threads`: worker threads, each with its own event loop.
    pub threads: usize,
    /// `--access-log`: a line per request.
    pub access_log: bool,
    /// `--max-header-size`, in bytes.
    pub max_header_size: usize,
    /// `--header-read-timeout`.
    pub header_read_timeout: Duration,
    /// `--idle-timeout`.
    pub idle_timeout: Duration,
    /// `--write-timeout`.
    pub write_timeout: Duration,
    /// `--max-streams-per-connection` (HTTP/2).
    pub max_streams_per_connection: u32,
    /// `--max-connections`, as derived from the open file limit if not given.
    pub max_connections: usize,
    /// `--shutdown-timeout`.
    pub shutdown_timeout: Duration,
}

/// The worker threads; `drain` stops them.
pub struct Workers {
    inboxes: Vec<mpsc::UnboundedSender<Accepted>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Starts `--threads` worker threads, each serving the connections it is
/// given with `handler` on its own single-threaded runtime.
pub fn spawn(handler: Arc<Handler>, settings: Arc<Settings>) -> std::io::Result<Workers> {
    let mut workers = Workers {
        inboxes: Vec::new(),
        threads: Vec::new(),
    };
    for i in 0..settings.threads.max(1) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (inbox, incoming) = mpsc::unbounded_channel();
        let (handler, settings) = (handler.clone(), settings.clone());
        let thread = std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || runtime.block_on(serve(incoming, handler, &settings)))?;
        workers.inboxes.push(inbox);
        workers.threads.push(thread);
    }
    Ok(workers)
}

impl Workers {
    /// Closes the workers' inboxes, so each drains its in-flight requests (for
    /// at most `--shutdown-timeout`), and waits for them to finish.
    pub fn drain(self) {
        drop(self.inboxes);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Accepts connections until `shutdown` resolves and deals them out to the
/// workers in turn.
pub async fn accept(
    listener: TcpListener,
    workers: &Workers,
    shutdown: impl Future<Output = ()>,
    settings: &Settings,
) {
    let max_connections = settings.max_connections;
    let connections = Arc::new(Semaphore::new(max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    for next in (0..workers.inboxes.len()).cycle() {
        // Take a connection slot before accepting, so past --max-connections
        // new clients wait in the kernel's backlog instead of being served.
        let permit = match connections.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                warn!(
                    "--max-connections ({max_connections}) reached; accepting again when one closes"
                );
                tokio::select! {
                    permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!("accept failed: {err}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Responses are small and written whole: do not wait for Nagle.
        if let Err(err) = stream.set_nodelay(true) {
            debug!(%peer, "set_nodelay failed: {err}");
        }
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                warn!(%peer, "cannot hand the connection to a worker: {err}");
                continue;
            }
        };
        // A worker's inbox only closes when its thread has died; the
        // connection is then dropped with its slot.
        let _ = workers.inboxes[next].send(Accepted {
            stream,
            peer,
            permit,
        });
    }
    info!(
        "shutting down: no longer accepting, draining in-flight requests for up to {:?}",
        settings.shutdown_timeout
    );
}

/// One worker: serves each connection it is given on a task of its own, then,
/// once its inbox closes, drains.
async fn serve(
    mut incoming: mpsc::UnboundedReceiver<Accepted>,
    handler: Arc<Handler>,
    settings: &Settings,
) {
    let mut http = auto::Builder::new(TokioExecutor::new());
    // hyper's timeouts only run with a timer. A head that does not fit the
    // read buffer is answered 431; hyper's floor for the buffer is 8 KiB.
    let max_head = settings.max_header_size;
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(max_head.max(8192));
    http.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
        .max_concurrent_streams(settings.max_streams_per_connection);
    let graceful = GracefulShutdown::new();

    while let Some(Accepted {
        stream,
        peer,
        permit,
    }) = incoming.recv().await
    {
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(err) => {
                warn!(%peer, "cannot serve the connection: {err}");
                continue;
            }
        };
        let activity = Arc::new(Activity::new());
        let handler = handler.clone();
        let tracker = activity.clone();
        let access_log = settings.access_log;
        let service = service_fn(move |request: Request<Incoming>| {
            let handler = handler.clone();
            let in_flight = InFlight::start(tracker.clone());
            let id = RequestId::next();
            let access = access_log.then(|| Access::start(id, &request));
            let started = Instant::now();
            async move {
                let response = handler.handle(request, id).await;
                let status = response.status();
                Ok::<_, Infallible>(
                    response.map(|body| Tracked::new(body, in_flight, status, started, access)),
                )
            }
        });
        let connection = http
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        let (idle_timeout, write_timeout) = (settings.idle_timeout, settings.write_timeout);
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                // Clients that reset or send garbage end up here; the log is
                // the only place that needs to know.
                result = connection => if let Err(err) = result {
                    debug!(%peer, "connection ended with an error: {err}");
                },
                closed = activity.watch(idle_timeout, write_timeout) => match closed {
                    Closed::Idle => debug!(%peer, "closing a connection idle for --idle-timeout ({idle_timeout:?})"),
                    Closed::Stalled => {
                        METRICS.stalled_connection();
                        warn!(%peer, "closing a connection whose client took none of its response for --write-timeout ({write_timeout:?})");
                    }
                },
            }
        });
    }

    tokio::select! {
        () = graceful.shutdown() => info!("all connections closed"),
        () = tokio::time::sleep(settings.shutdown_timeout) => {
            warn!("--shutdown-timeout over; closing the remaining connections");
        }
    }
}

/// One connection's requests in flight, when it last had none, and whether
/// its client is taking its responses: for `--idle-timeout` and
/// `--write-timeout`. hyper's own header-read timeout cannot do the first
/// job (it does not start until the auto builder has seen the first bytes,
/// and HTTP/2 has no equivalent), and hyper has no write timeout at all.
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `opened` at which the last request finished.
    idle_since_ms: AtomicU64,
    /// Response bodies whose last poll handed hyper a frame: hyper comes back
    /// for the next only once the client has taken it (its TCP window over
    /// HTTP/1.1, its stream window over HTTP/2).
    waiting_on_client: AtomicUsize,
    /// Milliseconds after `opened` at which hyper last came back for any
    /// response body of this connection.
    progress_ms: AtomicU64,
}

/// Why the watchdog closed a connection.
enum Closed {
    Idle,
    Stalled,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            waiting_on_client: AtomicUsize::new(0),
            progress_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    /// Resolves once the connection has had no request in flight for
    /// `idle`, or has had responses waiting on a client that took none of
    /// them for `write`.
    async fn watch(&self, idle: Duration, write: Duration) -> Closed {
        let ms = |at: u64| Duration::from_millis(at);
        loop {
            let now = self.now_ms();
            let wake_at = if self.waiting_on_client.load(Ordering::Acquire) > 0 {
                let deadline = ms(self.progress_ms.load(Ordering::Acquire)) + write;
                if ms(now) >= deadline {
                    return Closed::Stalled;
                }
                deadline
            } else if self.in_flight.load(Ordering::Acquire) == 0 {
                let deadline = ms(self.idle_since_ms.load(Ordering::Acquire)) + idle;
                if ms(now) >= deadline {
                    return Closed::Idle;
                }
                deadline
            } else {
                ms(now) + write
            };
            // A response may start waiting on its client right after this
            // look, and must then be caught within `write`; so look again
            // at least that often.
            let wake_at = wake_at.min(ms(now) + write);
            tokio::time::sleep_until(self.opened + wake_at).await;
        }
    }

    /// hyper came back for a body: the client took what it was given.
    fn progress(&self) {
        self.progress_ms.store(self.now_ms(), Ordering::Release);
    }
}

/// Counts one request as in flight until dropped with its response body.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.0.now_ms();
        self.0.idle_since_ms.store(now, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight until hyper
/// is done with it, and then counts it in the metrics and writes its
/// access-log line.
struct Tracked {
    body: ResponseBody,
    in_flight: InFlight,
    /// Whether this body counts in `waiting_on_client`.
    waiting: bool,
    status: StatusCode,
    started: Instant,
    access: Option<Access>,
}

/// What the access-log line of one request says, beyond status and time.
struct Access {
    id: RequestId,
    method: Method,
    path: String,
    bytes: u64,
}

impl Access {
    fn start<B>(id: RequestId, request: &Request<B>) -> Self {
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        Self {
            id,
            method: request.method().clone(),
            path,
            bytes: 0,
        }
    }
}

impl Tracked {
    fn new(
        body: ResponseBody,
        in_flight: InFlight,
        status: StatusCode,
        started: Instant,
        access: Option<Access>,
    ) -> Self {
        let mut tracked = Self {
            body,
            in_flight,
            waiting: false,
            status,
            started,
            access,
        };
        // Handed to hyper: from now on it is up to the client.
        tracked.set_waiting(true);
        tracked.in_flight.0.progress();
        tracked
    }

    fn set_waiting(&mut self, waiting: bool) {
        if waiting != self.waiting {
            self.waiting = waiting;
            let counter = &self.in_flight.0.waiting_on_client;
            if waiting {
                counter.fetch_add(1, Ordering::AcqRel);
            } else {
                counter.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = <ResponseBody as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.waiting {
            this.in_flight.0.progress();
            this.set_waiting(false);
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &frame {
            this.set_waiting(true);
            if let (Some(access), Some(data)) = (&mut this.access, frame.data_ref()) {
                access.bytes += data.len() as u64;
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Tracked {
    /// hyper drops the body when the response is sent or abandoned: that is
    /// the request's end.
    fn drop(&mut self) {
        self.set_waiting(false);
        let elapsed = self.started.elapsed();
        METRICS.request(self.status.as_u16(), elapsed);
        if let Some(access) = &self.access {
            info!(
                target: "access",
                id = %access.id,
                status = self.status.as_u16(),
                bytes = access.bytes,
                total_ms = %format_args!("{:.3}", elapsed.as_secs_f64() * 1e3),
                guest_ms = %format_args!("{:.3}", self.body.guest_time().as_secs_f64() * 1e3),
                "{} {}",
                access.method,
                access.path,
            );
        }
    }
}
