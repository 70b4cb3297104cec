//! Accepting one connection within a connection limit: the step both the
//! server's listener and the admin endpoint's loop on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

/// How long to pause after a failed `accept` (typically EMFILE: out of file
/// descriptors) before trying again, so the loop does not spin while
/// connections close and free some.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// An accepted connection and its slot among the limit's.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub permit: OwnedSemaphorePermit,
}

/// Takes a slot from `connections`, then accepts a connection on
/// `listener`. The slot is taken first, so past the limit (`limit` names it
/// in the log) new clients wait in the kernel's backlog instead of being
/// served. Cancel-safe: dropped while waiting, it gives the slot back.
pub async fn next(
    listener: &TcpListener,
    connections: &Arc<Semaphore>,
    limit: &dyn std::fmt::Display,
) -> Accepted {
    let permit = match connections.clone().try_acquire_owned() {
        Ok(permit) => permit,
        Err(_) => {
            warn!("{limit} reached; accepting again when one closes");
            connections
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed")
        }
    };
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                return Accepted {
                    stream,
                    peer,
                    permit,
                };
            }
            Err(err) => {
                warn!("accept failed: {err}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}
