//! What goes back to the client: the guest's response body as it writes it,
//! cut off if the guest fails mid-way, and the short plain-text responses the
//! host writes itself when there is no guest response to send.

use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};
use hyper::{HeaderMap, Method, Response, StatusCode, header};
use tracing::{error, warn};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::task::GuestTask;

/// A response body: the guest's, or one the host wrote.
pub struct ResponseBody {
    inner: HyperOutgoingBody,
    /// The guest's call, if one ran for this request.
    guest: Option<GuestTask>,
    /// Set once `inner` has ended, so that `drop` can tell a finished response
    /// from one whose client went away.
    ended: bool,
    /// Body bytes after which the client has the whole response: its
    /// `content-length`, or 0 when none is sent (`HEAD`, 204, 304). hyper's
    /// HTTP/1.1 side stops there and drops the body without polling it to
    /// its end, so reaching it counts as ended.
    complete_at: Option<u64>,
    /// Body bytes handed to hyper so far.
    sent: u64,
}

impl ResponseBody {
    /// The guest's body, written by `guest` on its own task; `complete_at`
    /// as [`ResponseBody::complete_at`] says.
    pub fn streaming(inner: HyperOutgoingBody, guest: GuestTask, complete_at: Option<u64>) -> Self {
        Self {
            inner,
            guest: Some(guest),
            ended: false,
            complete_at,
            sent: 0,
        }
    }

    /// Where the client has the whole of a response to `method` with this
    /// head: no body at all for `HEAD`, 1xx, 204 and 304 (RFC 9110, 6.4.1),
    /// else its `content-length`, if it has one.
    pub fn complete_at(method: &Method, status: StatusCode, headers: &HeaderMap) -> Option<u64> {
        if method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Some(0);
        }
        headers
            .get(header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    }

    /// How long the guest has run for this request so far.
    pub fn guest_time(&self) -> Duration {
        self.guest
            .as_ref()
            .map_or(Duration::ZERO, |guest| guest.state().busy())
    }

    /// Tells the guest's call whether this body now waits on its client
    /// (see [`super::stall`]): the connection's watchdog, which sees hyper
    /// take each frame, says so for both of them.
    pub fn set_waiting_on_client(&self, waiting: bool) {
        if let Some(guest) = &self.guest {
            guest.state().set_waiting_on_client(waiting);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.complete_at == Some(0) {
            // No body goes out for this response (HTTP/2 would send one, and
            // its client reset the stream): the head was all of it.
            return Poll::Ready(None);
        }
        let call = this.guest.as_ref().map(|guest| guest.state());
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.ended = true;
                // The guest's task records its failure before it drops the
                // body's sender, so a body that ended because the guest
                // failed is known here. An error makes hyper abort the
                // response (no final chunk in HTTP/1, RST_STREAM in HTTP/2):
                // the client sees it was cut off, not a short complete body.
                if call.is_some_and(|call| call.failure().is_some()) {
                    return Poll::Ready(Some(Err("the guest failed mid-response".into())));
                }
                if let Some(call) = call {
                    call.mark_body_complete();
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => {
                if let Ok(frame) = &frame
                    && let Some(data) = frame.data_ref()
                {
                    this.sent += data.len() as u64;
                }
                Poll::Ready(Some(frame.map_err(Into::into)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.complete_at == Some(0) || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.complete_at == Some(0) {
            return SizeHint::with_exact(0);
        }
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // The body is complete but `handle` may not have returned yet: let it
        // run to its end (its deadline still holds), as other wasi-http hosts
        // do. A body dropped before its end means the client went away, and
        // dropping the task aborts the guest with it.
        let complete = self.ended || self.complete_at.is_some_and(|end| self.sent >= end);
        if complete && let Some(guest) = &mut self.guest {
            // Its client has it all: nothing it does now waits on the
            // client, so it is no candidate for eviction.
            guest.state().set_waiting_on_client(false);
            guest.state().mark_body_complete();
            guest.detach();
        }
    }
}

/// A response the host writes itself, with a `content-length`: `guest` is
/// the call that ran for this request, if any, for its time in the access
/// log.
pub fn plain(
    status: StatusCode,
    text: impl Into<Bytes>,
    guest: Option<GuestTask>,
) -> Response<ResponseBody> {
    let text = text.into();
    let length = text.len();
    let body = Full::new(text)
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(ResponseBody {
        inner: body,
        guest,
        ended: false,
        complete_at: None,
        sent: 0,
    });
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(length));
    response
}

pub fn too_large(max_body: u64, guest: Option<GuestTask>) -> Response<ResponseBody> {
    warn!("answered 413: request body over --max-body ({max_body} bytes)");
    plain(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large\n", guest)
}

pub fn unavailable(queue_timeout: Duration) -> Response<ResponseBody> {
    warn!("answered 503: no free instance slot within --queue-timeout ({queue_timeout:?})");
    plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable\n",
        None,
    )
}

pub fn timed_out(err: impl std::fmt::Display, guest: Option<GuestTask>) -> Response<ResponseBody> {
    error!("answered 504: {err}");
    plain(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout\n", guest)
}

/// Logs why a request failed and gives the client a 500 that says no more
/// than that: guest internals stay in the log.
pub fn internal_error(
    cause: std::fmt::Arguments<'_>,
    guest: Option<GuestTask>,
) -> Response<ResponseBody> {
    error!("answered 500: {cause}");
    plain(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal Server Error\n",
        guest,
    )
}
