//! The client side: the listener and the open-file limit, one accept loop
//! dealing connections out to the worker threads, each connection's
//! watchdog of client progress, and the response body as the client takes
//! it (metrics and the access log). Entry point: [`serve`].

mod accept;
mod access;
pub mod fd_limit;
pub mod listener;
pub mod tls;
mod watchdog;
mod workers;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{info, warn};

pub use accept::{Accepted, next as accept_one};
pub use listener::{bind, reserve};
pub use workers::Workers;

/// The first line a serving process writes on stdout, followed by its URL:
/// scripts, tests and the supervisor wait for it.
pub const SERVER_RUNNING: &str = "Server running at ";

/// Says on stdout where the server listens, and where its admin endpoint
/// does: one write, and its failure ignored, as a reader that closed our
/// stdout (a supervisor that read the first line) must not stop the server.
pub fn announce(scheme: &str, addr: std::net::SocketAddr, admin: Option<std::net::SocketAddr>) {
    use std::io::Write;
    let mut lines = format!("{SERVER_RUNNING}{scheme}://{addr}/\n");
    if let Some(admin) = admin {
        lines.push_str(&format!("Admin endpoint at http://{admin}/\n"));
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(lines.as_bytes())
        .and_then(|()| stdout.flush());
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
    /// `--tls-cert` and `--tls-key`: connections are TLS.
    pub tls: Option<Tls>,
}

/// Marks a request that came in over TLS: the guest is told its scheme is
/// `https`, and otherwise `http`, whatever the client claimed (an absolute
/// URI, or HTTP/2's `:scheme`), as the connection is what the server knows.
#[derive(Clone, Copy, Debug)]
pub struct Https;

/// The scheme the client reached the server with.
pub fn scheme_of<B>(request: &hyper::Request<B>) -> &'static str {
    if request.extensions().get::<Https>().is_some() {
        "https"
    } else {
        "http"
    }
}

/// Inbound TLS, from the command line.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// What SIGHUP reloads.
    pub certificate: Arc<tls::Certificate>,
    /// `--tls-handshake-timeout`.
    pub handshake_timeout: Duration,
    /// `--tls-client-subject-header`.
    pub subject_header: Option<hyper::header::HeaderName>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// Accepts connections on `listener` until `shutdown` resolves and deals
/// them out to `workers` in turn.
pub async fn serve(
    listener: TcpListener,
    workers: &Workers,
    shutdown: impl Future<Output = ()>,
    settings: &Settings,
) {
    let max_connections = settings.max_connections;
    let limit = format!("--max-connections ({max_connections})");
    let connections = Arc::new(Semaphore::new(max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    for next in (0..workers.inboxes.len()).cycle() {
        let Accepted {
            stream,
            peer,
            permit,
        } = tokio::select! {
            accepted = accept_one(&listener, &connections, &limit) => accepted,
            () = &mut shutdown => break,
        };
        // Responses are small and written whole: do not wait for Nagle.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%peer, "set_nodelay failed: {err}");
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
        let _ = workers.inboxes[next].send(workers::Handoff {
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
