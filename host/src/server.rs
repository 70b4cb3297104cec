//! The accept loop: HTTP/1.1 (keep-alive) and HTTP/2 over cleartext on one
//! port, each connection on its own task, and a graceful shutdown that stops
//! accepting and lets in-flight requests finish within a bounded drain time.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::handler::Handler;

/// How long to pause after a failed `accept` (typically EMFILE: out of file
/// descriptors) before trying again, so the loop does not spin while
/// connections close and free some.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `handler` on `listener` until `shutdown` resolves, then drains
/// in-flight requests for at most `drain`.
pub async fn run(
    listener: TcpListener,
    handler: Arc<Handler>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let mut http = auto::Builder::new(TokioExecutor::new());
    // hyper's timeouts (header read, keep-alive) only run with a timer.
    http.http1().timer(TokioTimer::new());
    http.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
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
        let handler = handler.clone();
        let service = service_fn(move |request| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler.handle(request).await) }
        });
        let connection = http
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // Clients that reset or send garbage end up here; the log is the
            // only place that needs to know.
            if let Err(err) = connection.await {
                debug!(%peer, "connection ended with an error: {err}");
            }
        });
    }

    drop(listener);
    info!("shutting down: no longer accepting, draining in-flight requests for up to {drain:?}");
    tokio::select! {
        () = graceful.shutdown() => info!("all connections closed"),
        () = tokio::time::sleep(drain) => warn!("drain time over; closing the remaining connections"),
    }
}
