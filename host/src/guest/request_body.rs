//! The request body as the guest sees it: at most `--max-body` bytes. The
//! chunk that would cross the limit is never handed over; the guest's stream
//! fails instead, and the handler is told so it can answer 413.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;
use wasmtime_wasi_http::Error;

pub struct CappedBody<B> {
    inner: B,
    /// Bytes the guest may still receive.
    remaining: u64,
    /// Fired once, when the client sends more than the limit.
    exceeded: Option<oneshot::Sender<()>>,
}

/// Resolves when the body it belongs to went over the limit.
pub struct Exceeded(Option<oneshot::Receiver<()>>);

impl<B> CappedBody<B> {
    pub fn new(inner: B, limit: u64) -> (Self, Exceeded) {
        let (sender, receiver) = oneshot::channel();
        let body = Self {
            inner,
            remaining: limit,
            exceeded: Some(sender),
        };
        (body, Exceeded(Some(receiver)))
    }
}

impl<B> Body for CappedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Error>,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(err)) => return Poll::Ready(Some(Err(err.into()))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > self.remaining {
                if let Some(exceeded) = self.exceeded.take() {
                    let _ = exceeded.send(());
                }
                return Poll::Ready(Some(Err(Error::HttpRequestBodySize(None))));
            }
            self.remaining -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Exceeded {
    /// Ready once the body went over its limit; pending forever otherwise
    /// (including after the body ended within it).
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(receiver) = &mut self.0
            && let Poll::Ready(result) = Pin::new(receiver).poll(cx)
        {
            self.0 = None;
            if result.is_ok() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}
