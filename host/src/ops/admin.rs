//! The admin endpoint (`--admin-addr`): `/healthz`, `/readyz` and `/metrics`
//! on a listener of their own, so they never shadow a path of the guest's,
//! served by a thread of their own, so they answer until the process exits:
//! while the component loads, while it drains, and whatever the serving
//! threads are doing.
//!
//! Two probes, as Kubernetes asks for them:
//! - `/healthz` (liveness) answers 200 `ok` for as long as the process runs.
//!   Nothing a restart would fix makes it fail: a component that does not
//!   load (after a reload, or a serving process that keeps failing) stays
//!   broken in a restarted container too, and a drain must not be cut short.
//! - `/readyz` (readiness) answers 200 `ready` while the server takes new
//!   requests, and 503 with the reason while it does not: it is starting
//!   (the component still compiling), draining (SIGTERM), or, with
//!   `--processes`, no serving process is up. A load balancer polling it
//!   sends traffic exactly while it is 200.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::http::fd_limit::ADMIN_CONNECTIONS;
use crate::http::{Accepted, accept_one};
use crate::metrics::METRICS;

/// Time an admin client has to send its request headers: a scraper sends
/// them at once, so a few seconds only ever stops a slowloris.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest an admin connection stays open, keep-alive included: scrapers
/// reconnect cheaply, and a connection cannot be held for ever.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Set once the server serves: the component has loaded and it listens.
static STARTED: AtomicBool = AtomicBool::new(false);

/// Set once the server has stopped taking new requests.
static DRAINING: AtomicBool = AtomicBool::new(false);

/// Marks the server as serving: `/readyz` answers 200 from now on, until
/// it drains.
pub fn set_started() {
    STARTED.store(true, Ordering::Relaxed);
}

/// Marks the server as draining: `/readyz` answers 503 from now on.
pub fn set_draining() {
    DRAINING.store(true, Ordering::Relaxed);
}

/// What the admin endpoint reports.
pub struct Reports {
    /// `/metrics`.
    pub metrics: MetricsText,
    /// `/readyz`, beside starting and draining: `Err` with the reason when
    /// nothing serves.
    pub serving: Serving,
}

/// Whether anything serves (see [`Reports::serving`]).
pub type Serving = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Binds `--admin-addr`, if given. Without an async runtime: a supervisor
/// binds it before it forks its first serving process, so a busy address
/// fails the server before anything starts.
pub fn bind(addr: Option<SocketAddr>) -> anyhow::Result<Option<std::net::TcpListener>> {
    let Some(addr) = addr else { return Ok(None) };
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
        .with_context(|| format!("cannot listen on {addr} (--admin-addr)"))?;
    Ok(Some(listener))
}

/// Serves the admin endpoint on `listener`, on a thread of its own with its
/// own event loop, until the process exits. Started before the component
/// loads, so that `/readyz` says "starting" meanwhile rather than leaving a
/// probe's connection unanswered.
/// Returns the address it answers on.
pub fn spawn(listener: std::net::TcpListener, reports: Reports) -> anyhow::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the admin endpoint")?;
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener, Arc::new(reports)).await,
                    Err(err) => warn!("admin endpoint: cannot listen: {err}"),
                }
            })
        })
        .context("starting the admin endpoint")?;
    Ok(addr)
}

/// At most [`ADMIN_CONNECTIONS`] connections at once, so a flood of them
/// cannot use up the descriptors client connections need.
async fn serve(listener: TcpListener, reports: Arc<Reports>) {
    let connections = Arc::new(Semaphore::new(ADMIN_CONNECTIONS));
    let limit = format!("admin endpoint: {ADMIN_CONNECTIONS} connections");
    loop {
        let Accepted { stream, permit, .. } = accept_one(&listener, &connections, &limit).await;
        let reports = reports.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(|request| answer(request, reports.clone())),
                );
            match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                Ok(Err(err)) => debug!("admin connection ended with an error: {err}"),
                Err(_) => debug!("closed an admin connection open for {CONNECTION_LIFETIME:?}"),
                Ok(Ok(())) => {}
            }
        });
    }
}

/// Where `/metrics` comes from: this process's own metrics, or in a
/// supervisor (`--processes`) the sum of its serving processes'.
pub type MetricsText = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// A process that serves itself: its own metrics, and it serves for as
/// long as it runs.
pub fn own_reports() -> Reports {
    Reports {
        metrics: Arc::new(|| Box::pin(std::future::ready(METRICS.encode()))),
        serving: Arc::new(|| Ok(())),
    }
}

async fn answer(
    request: Request<Incoming>,
    reports: Arc<Reports>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match request.uri().path() {
        "/healthz" => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
        "/readyz" => match readiness(&reports) {
            Ok(()) => (StatusCode::OK, "text/plain", Bytes::from_static(b"ready\n")),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{why}\n").into(),
            ),
        },
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            (reports.metrics)().await.into(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"Not Found\n"),
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    Ok(response)
}

/// Whether the server takes new requests, and why not.
fn readiness(reports: &Reports) -> Result<(), String> {
    if DRAINING.load(Ordering::Relaxed) {
        Err("draining: new requests are refused".to_string())
    } else if !STARTED.load(Ordering::Relaxed) {
        Err("starting: the component is loading".to_string())
    } else {
        (reports.serving)()
    }
}
