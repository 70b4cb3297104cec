//! What a guest writes to stdout and stderr: forwarded to the server's stderr
//! line by line, each line prefixed with the request's id and stream, so that
//! the output of concurrent requests never interleaves mid-line.

use std::fmt;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line kept waiting for its newline. A guest that writes more without
/// one has it forwarded in pieces of this size, so it cannot make the host
/// buffer without limit.
pub const MAX_LINE: usize = 16 * 1024;

/// Identifies one request in the logs: a per-process random prefix (so ids
/// from different runs or processes do not collide) and a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId(u64);

/// Random per process, from the OS-seeded keys of std's hasher.
static PROCESS: LazyLock<u32> = LazyLock::new(|| {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish() as u32
});
static NEXT: AtomicU64 = AtomicU64::new(1);

impl RequestId {
    pub fn next() -> Self {
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}-{}", *PROCESS, self.0)
    }
}

/// One request's stdout or stderr. Every stream the guest opens on it shares
/// the same pending line.
#[derive(Clone)]
pub struct GuestOutput(Arc<Mutex<Lines>>);

struct Lines {
    id: RequestId,
    stream: &'static str,
    /// The unfinished last line; empty (and unallocated) until the guest
    /// writes.
    pending: Vec<u8>,
}

impl GuestOutput {
    pub fn new(id: RequestId, stream: &'static str) -> Self {
        Self(Arc::new(Mutex::new(Lines {
            id,
            stream,
            pending: Vec::new(),
        })))
    }

    fn write(&self, mut bytes: &[u8]) {
        // A poisoned lock only means another stream of this request panicked
        // mid-write; its text is still worth forwarding.
        let mut lines = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            lines.pending.extend_from_slice(&bytes[..newline]);
            lines.emit();
            bytes = &bytes[newline + 1..];
        }
        lines.pending.extend_from_slice(bytes);
        while lines.pending.len() >= MAX_LINE {
            let rest = lines.pending.split_off(MAX_LINE);
            lines.emit();
            lines.pending = rest;
        }
    }
}

impl Lines {
    /// Writes the pending line to the server's stderr in one `write` under
    /// stderr's lock, so no other line can land inside it.
    fn emit(&mut self) {
        let mut line = format!("[{} {}] ", self.id, self.stream).into_bytes();
        line.append(&mut self.pending);
        line.push(b'\n');
        let _ = std::io::stderr().lock().write_all(&line);
    }
}

impl Drop for Lines {
    /// The request is over: forward what is left of its last line.
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        GuestOutput::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_LINE)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        GuestOutput::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
