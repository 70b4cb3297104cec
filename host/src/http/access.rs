//! The response body as its client takes it: it keeps its request counted
//! as in flight until hyper is done with it, tells the connection's
//! watchdog and the guest's call whether it waits on the client, and at its
//! end counts the request in the metrics and writes its access-log line.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::{Method, Request, StatusCode};
use tokio::time::Instant;
use tracing::{Span, info};

use super::watchdog::InFlight;
use crate::guest::response::ResponseBody;
use crate::log::RequestId;
use crate::metrics::{METRICS, Served};

pub struct ClientBody {
    body: ResponseBody,
    in_flight: InFlight,
    /// Whether this body waits on the client now.
    waiting: bool,
    end: End,
}

/// What the request's end counts and logs.
pub struct End {
    pub status: StatusCode,
    pub started: Instant,
    /// The application's route that took it, if any.
    pub served: Option<Arc<Served>>,
    pub access: Option<Access>,
    /// The request's trace span: it ends with the response.
    pub trace: Span,
}

/// What the access-log line of one request says, beyond status and time.
/// It carries its own id, like any access log: it is written as hyper drops
/// the body, outside the request's span.
pub struct Access {
    id: RequestId,
    method: Method,
    path: String,
    bytes: u64,
}

impl Access {
    pub fn start<B>(id: RequestId, request: &Request<B>) -> Self {
        Self {
            id,
            method: request.method().clone(),
            path: path_and_query(request).to_owned(),
            bytes: 0,
        }
    }
}

/// The request's path and query, as the logs show it.
pub fn path_and_query<B>(request: &Request<B>) -> &str {
    request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str())
}

impl ClientBody {
    pub fn new(body: ResponseBody, in_flight: InFlight, end: End) -> Self {
        let mut this = Self {
            body,
            in_flight,
            waiting: false,
            end,
        };
        // Handed to hyper: from now on it is up to the client.
        this.set_waiting(true);
        this.in_flight.activity().progress();
        this
    }

    fn set_waiting(&mut self, waiting: bool) {
        if waiting != self.waiting {
            self.waiting = waiting;
            self.in_flight.activity().set_waiting(waiting);
            self.body.set_waiting_on_client(waiting);
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = <ResponseBody as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.waiting {
            this.in_flight.activity().progress();
            this.set_waiting(false);
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &frame {
            this.set_waiting(true);
            if let (Some(access), Some(data)) = (&mut this.end.access, frame.data_ref()) {
                access.bytes += data.len() as u64;
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for ClientBody {
    /// hyper drops the body when the response is sent or abandoned: that is
    /// the request's end.
    fn drop(&mut self) {
        self.set_waiting(false);
        let End {
            status,
            started,
            served,
            access,
            trace,
        } = &self.end;
        crate::trace::spans::respond(trace, *status, served.as_ref().map(|s| s.route.as_str()));
        let elapsed = started.elapsed();
        METRICS.request(status.as_u16(), elapsed);
        if let Some(served) = served {
            served.request(status.as_u16());
        }
        if let Some(access) = access {
            info!(
                target: "access",
                id = %access.id,
                status = status.as_u16(),
                component = served.as_ref().map(|served| served.component.as_str()),
                route = served.as_ref().map(|served| served.route.as_str()),
                bytes = access.bytes,
                total_ms = %format_args!("{:.3}", elapsed.as_secs_f64() * 1e3),
                guest_ms = %format_args!("{:.3}", self.body.guest_time().as_secs_f64() * 1e3),
                "{} {}",
                access.method,
                access.path,
            );
        }
    }
}
