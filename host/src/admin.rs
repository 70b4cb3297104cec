//! The admin endpoint (`--admin-addr`): `/healthz` and `/metrics` on a
//! listener of their own, so they never shadow a path of the guest's.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

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

use crate::fd_limit::ADMIN_CONNECTIONS;
use crate::metrics::METRICS;

/// Time an admin client has to send its request headers: a scraper sends
/// them at once, so a few seconds only ever stops a slowloris.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest an admin connection stays open, keep-alive included: scrapers
/// reconnect cheaply, and a connection cannot be held for ever.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serves the admin endpoint on `listener` for as long as the task runs. It
/// is bound after the component compiled and instantiated, so `/healthz`
/// answering means the server is ready. At most
/// [`ADMIN_CONNECTIONS`] connections at once, so a flood of them cannot use
/// up the descriptors client connections need.
pub async fn serve(listener: TcpListener, metrics: Metrics) {
    let connections = Arc::new(Semaphore::new(ADMIN_CONNECTIONS));
    loop {
        let permit = connections
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                warn!("admin endpoint: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(|request| answer(request, metrics.clone())),
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
/// supervisor (`--processes`) the sum of its serving processes'. An error
/// says why there is no answer now (503).
pub type Metrics =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

/// This process's own metrics.
pub fn own_metrics() -> Metrics {
    Arc::new(|| Box::pin(std::future::ready(Ok(METRICS.encode()))))
}

async fn answer(
    request: Request<Incoming>,
    metrics: Metrics,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match request.uri().path() {
        "/healthz" => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
        "/metrics" => match metrics().await {
            Ok(text) => (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text.into(),
            ),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{why}\n").into(),
            ),
        },
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
