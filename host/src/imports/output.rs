//! What a guest writes to stdout and stderr: forwarded to the server's log
//! line by line, each line tagged with the request's id and stream, so that
//! the output of concurrent requests never interleaves mid-line.
//!
//! A guest cannot flood or stall the server through it: a request's output
//! is capped at `--max-guest-output` bytes, lines never block a worker (they
//! go through the same non-blocking writer as the logs, which drops lines
//! rather than wait when stderr is not being read), and a line's control
//! bytes are escaped so a guest cannot forge log lines or terminal escapes.
//! With `--log-format json` each line is a JSON log event like any other.

use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tracing::info;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::log::{self, RequestId};

/// Longest line kept waiting for its newline. A guest that writes more without
/// one has it forwarded in pieces of this size, so it cannot make the host
/// buffer without limit.
pub const MAX_LINE: usize = 16 * 1024;

/// One request's stdout or stderr. Every stream the guest opens on them
/// shares the request's output state.
#[derive(Clone)]
pub struct GuestOutput {
    output: Arc<Mutex<Output>>,
    stream: Stream,
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A request's output: the unfinished last line of each stream, and what is
/// left of its `--max-guest-output`.
struct Output {
    id: RequestId,
    /// Empty (and unallocated) until the guest writes.
    pending: [Vec<u8>; 2],
    remaining: usize,
    /// Set once the cap was hit and said so.
    truncated: bool,
}

impl GuestOutput {
    /// The stdout and stderr of the current request, which may write
    /// `max_bytes` between them.
    pub fn pair(max_bytes: usize) -> (GuestOutput, GuestOutput) {
        let output = Arc::new(Mutex::new(Output {
            id: RequestId::current(),
            pending: [Vec::new(), Vec::new()],
            remaining: max_bytes,
            truncated: false,
        }));
        let stdout = GuestOutput {
            output: output.clone(),
            stream: Stream::Stdout,
        };
        let stderr = GuestOutput {
            output,
            stream: Stream::Stderr,
        };
        (stdout, stderr)
    }

    fn write(&self, bytes: &[u8]) {
        // A poisoned lock only means another stream of this request panicked
        // mid-write; its text is still worth forwarding.
        let mut output = self
            .output
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        output.write(self.stream, bytes);
    }
}

impl Output {
    fn write(&mut self, stream: Stream, bytes: &[u8]) {
        let cut = bytes.len() > self.remaining;
        let mut bytes = &bytes[..bytes.len().min(self.remaining)];
        self.remaining -= bytes.len();
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            self.pending[stream as usize].extend_from_slice(&bytes[..newline]);
            self.emit(stream);
            bytes = &bytes[newline + 1..];
        }
        let i = stream as usize;
        self.pending[i].extend_from_slice(bytes);
        while self.pending[i].len() >= MAX_LINE {
            let rest = self.pending[i].split_off(MAX_LINE);
            self.emit(stream);
            self.pending[i] = rest;
        }
        if cut && !self.truncated {
            self.truncated = true;
            self.emit(stream);
            let note = b"(output cut off here: over --max-guest-output)";
            self.pending[stream as usize].extend_from_slice(note);
            self.emit(stream);
        }
    }

    /// Forwards the pending line of `stream`, whole, in one write.
    fn emit(&mut self, stream: Stream) {
        let pending = std::mem::take(&mut self.pending[stream as usize]);
        let line = escape(&pending);
        match log::text_sink() {
            Some(sink) => {
                let text = format!(
                    "{}[{} {}] {line}\n",
                    log::text_prefix(),
                    self.id,
                    stream.name()
                );
                // The writer never blocks: when the log thread is behind it
                // drops the line.
                let _ = sink.clone().write_all(text.as_bytes());
            }
            None => info!(target: "guest", id = %self.id, stream = stream.name(), "{line}"),
        }
    }
}

/// The line as text, with control characters (terminal escapes, carriage
/// returns) written as escapes, so that a guest cannot forge log lines or
/// drive the terminal of whoever reads the log. Tabs stay.
fn escape(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return text.into_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl Drop for Output {
    /// The request is over: forward what is left of its last lines.
    fn drop(&mut self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            if !self.pending[stream as usize].is_empty() {
                self.emit(stream);
            }
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
