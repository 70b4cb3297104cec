//! The worker threads: each runs its own single-threaded runtime and serves
//! the connections dealt to it, HTTP/1.1 (keep-alive) and HTTP/2, over
//! cleartext or TLS (`tls.rs`), within the connection limits and timeouts
//! of the command line; and, once its inbox closes, drains them within a
//! bounded time.
//!
//! Thread per core: a connection (with every request on it) stays on the
//! worker it was given to. A multi-threaded runtime balances better but pays
//! for it in wakeups and work stealing across threads on every request
//! (measured in BENCHMARKS.md); handing over a connection costs one wakeup
//! per connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::Request;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::Settings;
use super::access::{Access, ClientBody, End};
use super::watchdog::{Activity, Closed, InFlight};
use crate::app::Current;
use crate::log::{self, InRequest, RequestId};
use crate::metrics::METRICS;
use crate::trace::spans;

/// hyper's floor for an HTTP/1.1 connection's read buffer, which bounds the
/// request head: `--max-header-size` below it still gets this much.
const MIN_READ_BUFFER: usize = 8192;

/// An accepted connection on its way to a worker, with its connection slot.
pub(super) struct Handoff {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
    pub permit: OwnedSemaphorePermit,
}

/// The worker threads; `drain` stops them.
pub struct Workers {
    pub(super) inboxes: Vec<mpsc::UnboundedSender<Handoff>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts `--threads` worker threads, each serving the connections it
    /// is given with `app` on its own single-threaded runtime.
    pub fn spawn(app: Arc<Current>, settings: Arc<Settings>) -> std::io::Result<Self> {
        let mut workers = Self {
            inboxes: Vec::new(),
            threads: Vec::new(),
        };
        for i in 0..settings.threads.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (inbox, incoming) = mpsc::unbounded_channel();
            let (app, settings) = (app.clone(), settings.clone());
            let thread = std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || runtime.block_on(work(incoming, app, &settings)))?;
            workers.inboxes.push(inbox);
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// Closes the workers' inboxes, so each drains its in-flight requests (for
    /// at most `--shutdown-timeout`), and waits for them to finish.
    pub fn drain(self) {
        drop(self.inboxes);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// One worker: serves each connection it is given on a task of its own, then,
/// once its inbox closes, drains.
async fn work(
    mut incoming: mpsc::UnboundedReceiver<Handoff>,
    app: Arc<Current>,
    settings: &Settings,
) {
    let mut http = auto::Builder::new(TokioExecutor::new());
    // hyper's timeouts only run with a timer. A head that does not fit the
    // read buffer is answered 431.
    let max_head = settings.max_header_size;
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(max_head.max(MIN_READ_BUFFER));
    http.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
        .max_concurrent_streams(settings.max_streams_per_connection);
    let graceful = GracefulShutdown::new();

    while let Some(Handoff {
        stream,
        peer,
        permit,
    }) = incoming.recv().await
    {
        serve_connection(&http, &graceful, stream, peer, permit, &app, settings);
    }

    tokio::select! {
        () = graceful.shutdown() => info!("all connections closed"),
        () = tokio::time::sleep(settings.shutdown_timeout) => {
            warn!("--shutdown-timeout over; closing the remaining connections");
        }
    }
}

/// Serves one connection on a task of its own, under its watchdog.
fn serve_connection(
    http: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    app: &Arc<Current>,
    settings: &Settings,
) {
    let stream = match TcpStream::from_std(stream) {
        Ok(stream) => stream,
        Err(err) => {
            warn!(%peer, "cannot serve the connection: {err}");
            return;
        }
    };
    let activity = Activity::new();
    let (idle_timeout, write_timeout) = (settings.idle_timeout, settings.write_timeout);
    let Some(tls) = &settings.tls else {
        let service = service(
            app.clone(),
            &activity,
            settings.access_log,
            peer,
            None,
            false,
        );
        let connection = http
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _permit = permit;
            watch(connection, activity, peer, idle_timeout, write_timeout).await;
        });
        return;
    };
    // The handshake runs on the connection's task: a client that sends
    // nothing, or half a ClientHello, holds its connection slot only for
    // `--tls-handshake-timeout`.
    let (acceptor, handshake_timeout) = (tls.acceptor.clone(), tls.handshake_timeout);
    let subject_header = tls.subject_header.clone();
    let (app, access_log) = (app.clone(), settings.access_log);
    let (http, graceful) = (http.clone(), graceful.watcher());
    tokio::spawn(async move {
        let _permit = permit;
        let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => return debug!(%peer, "TLS handshake failed: {err}"),
            Err(_) => {
                return debug!(%peer, "TLS handshake not done within --tls-handshake-timeout ({handshake_timeout:?}); closed");
            }
        };
        let subject = subject_header.map(|name| {
            let subject = super::tls::client_subject(stream.get_ref().1);
            (name, subject.and_then(|s| HeaderValue::try_from(s).ok()))
        });
        let service = service(app, &activity, access_log, peer, subject, true);
        let connection = http
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        watch(connection, activity, peer, idle_timeout, write_timeout).await;
    });
}

/// The service of one connection. `subject`: the header
/// `--tls-client-subject-header` names and the verified client certificate's
/// subject, set on every request in place of anything the client sent under
/// that name; `https`: the connection is TLS.
fn service(
    app: Arc<Current>,
    activity: &Arc<Activity>,
    access_log: bool,
    peer: SocketAddr,
    subject: Option<(HeaderName, Option<HeaderValue>)>,
    https: bool,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = hyper::Response<ClientBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<hyper::Response<ClientBody>, Infallible>> + Send + 'static,
> + Send
+ 'static {
    let watched = activity.clone();
    service_fn(move |mut request: Request<Incoming>| {
        if https {
            request.extensions_mut().insert(super::Https);
        }
        if let Some((name, value)) = &subject {
            request.headers_mut().remove(name);
            if let Some(value) = value {
                request.headers_mut().insert(name.clone(), value.clone());
            }
        }
        // What is served now: a reload of the manifest swaps it, and a
        // request keeps the one it started with.
        let app = app.load_full();
        let in_flight = InFlight::start(watched.clone());
        let id = RequestId::next();
        let span = log::request_span(id);
        let trace = spans::server(&request, peer, https);
        let access = access_log.then(|| Access::start(id, &request));
        let started = Instant::now();
        InRequest::new(id, span, trace.clone(), async move {
            let (response, served) = app.handle(request, peer).await;
            let status = response.status();
            let end = End {
                status,
                started,
                served,
                access,
                trace,
            };
            Ok::<_, Infallible>(response.map(|body| ClientBody::new(body, in_flight, end)))
        })
    })
}

/// Runs `connection` until it ends, or its watchdog closes it.
async fn watch<E: std::fmt::Display>(
    connection: impl Future<Output = Result<(), E>>,
    activity: Arc<Activity>,
    peer: SocketAddr,
    idle_timeout: std::time::Duration,
    write_timeout: std::time::Duration,
) {
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
}
