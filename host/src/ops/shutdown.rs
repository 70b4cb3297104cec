//! The signals that stop the server: SIGINT and SIGTERM.

use tracing::info;

/// Resolves on the first SIGINT or SIGTERM. The handlers are installed when
/// this is called, not when it is first polled, so a signal that arrives right
/// after the "Server running" line is not lost.
pub fn signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => info!("SIGINT received"),
            _ = terminate.recv() => info!("SIGTERM received"),
        }
    })
}
