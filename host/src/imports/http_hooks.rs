//! The wasi-http hooks of a request. Outbound HTTP
//! (`wasi:http/outgoing-handler`) is denied unless the operator allowed the
//! destination with `--allow-outbound`: a denied request fails inside the
//! guest with the wasi:http error `HTTP-request-denied`, and the host carries
//! on. Hop-by-hop headers never cross into or out of a guest.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};

use hyper::http::{HeaderName, Request, Response, header};
use tracing::{Instrument, Span, warn};

use super::allowed::{Destination, SELF_HOSTS};
use super::outbound::Outbound;
use crate::metrics::METRICS;
use crate::trace::spans;
use wasmtime_wasi_http::{
    DEFAULT_FORBIDDEN_HEADERS, Error, ForbiddenHeaderFilter, RequestOptions, WasiBody,
    WasiHttpHooks,
};

/// Bytes of a guest's response body the host takes per write, and how many
/// such writes it buffers before the guest waits for the client: a body
/// holds at most (chunks + 1) written chunks plus one being written. 16 KiB
/// is an HTTP/2 frame; wasmtime-wasi-http's default of 1 MiB would let each
/// body resource hold 3 MiB.
pub const BODY_CHUNK: usize = 16 << 10;
pub const BODY_BUFFER_CHUNKS: usize = 1;

/// Longest method and authority a guest may give an outgoing request. The
/// host keeps them as given, and wasi:http sets no bound of its own (a path
/// is capped at 64 KiB by the `http` crate): real methods are a word and
/// real authorities a host name and port.
pub const MAX_METHOD: usize = 64;
pub const MAX_AUTHORITY: usize = 1024;

/// Outbound requests one instance may have in flight, each holding a client
/// connection with hyper's read and write buffers (up to about 400 KiB and
/// 100 KiB by default, so [`OUTBOUND_BYTES`] each).
pub const MAX_OUTBOUND: usize = 8;
pub const OUTBOUND_BYTES: usize = 512 << 10;

/// The suffix of the hosts that name a component of the same application
/// (`http://NAME.spin.internal/...`), served in process as Spin serves them.
pub const INTERNAL_SUFFIX: &str = ".spin.internal";

/// An application's components, for the requests a guest sends to another
/// of them: handled in process, never on the network.
pub trait Internal: Send + Sync {
    /// Serves `request` with the component `name`, if the application has
    /// one of that name.
    fn call(&self, name: &str, request: Request<WasiBody>) -> Option<InternalCall>;

    /// Serves `request` with the component its path routes to (a request to
    /// `http://self`), as if it came from outside.
    fn route(&self, request: Request<WasiBody>) -> InternalCall;
}

/// The response of an in-process call.
pub type InternalCall = Pin<Box<dyn Future<Output = Response<WasiBody>> + Send>>;

/// Where each request finds its application, set once the application is
/// built (its components' sandboxes are built before it).
pub type InternalHandle = Arc<OnceLock<Weak<dyn Internal>>>;

/// The wasi-http hooks of one request: the outbound allow-list, at most
/// [`MAX_OUTBOUND`] outbound requests in flight, sent by the process's
/// pooled client, and body buffers of [`BODY_CHUNK`]s; everything else is
/// wasmtime-wasi-http's default.
pub struct OutboundPolicy {
    /// Shared by every request; built once from the command line.
    allowed: Arc<[Destination]>,
    client: Arc<Outbound>,
    /// The application, for requests to `NAME.spin.internal`.
    internal: Option<InternalHandle>,
    /// Outbound requests in flight, created with the first one so that
    /// requests that make none allocate nothing.
    in_flight: Option<Arc<()>>,
}

impl OutboundPolicy {
    pub fn new(
        allowed: Arc<[Destination]>,
        client: Arc<Outbound>,
        internal: Option<InternalHandle>,
    ) -> Self {
        Self {
            allowed,
            client,
            internal,
            in_flight: None,
        }
    }
}

type SendResult = wasmtime_wasi_http::Result<(
    Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
)>;

/// Headers that describe one connection, not the message (RFC 9110, 7.6.1):
/// wasmtime-wasi-http's defaults plus the two it leaves out.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    DEFAULT_FORBIDDEN_HEADERS.contains(name) || name == header::TE || name == header::TRAILER
}

impl WasiHttpHooks for OutboundPolicy {
    fn is_forbidden_header(&mut self, name: &HeaderName) -> bool {
        is_hop_by_hop(name)
    }

    fn forbidden_header_filter(&mut self) -> ForbiddenHeaderFilter {
        Arc::new(is_hop_by_hop)
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK
    }

    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        BODY_BUFFER_CHUNKS
    }

    /// A WASI 0.3 body is copied out of the guest this much at a time, so
    /// its buffer fits the same bound as a 0.2 body's.
    fn p3_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK
    }

    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        if !self.allowed.iter().any(|d| d.allows(request.uri())) {
            warn!(uri = %request.uri(), "outbound request denied (see --allow-outbound, or allowed_outbound_hosts)");
            METRICS.outbound_denied();
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        // Each clone of the counter is one request in flight, held until
        // the guest drops its response (or the call fails).
        let in_flight = self.in_flight.get_or_insert_with(Arc::default).clone();
        if Arc::strong_count(&in_flight) > MAX_OUTBOUND + 1 {
            warn!(uri = %request.uri(), "outbound request refused: the guest already has {MAX_OUTBOUND} in flight");
            return Box::new(async { Err(Error::ConnectionLimitReached) });
        }
        // What wasmtime-wasi-http does by default, which we cannot call
        // once we override this method.
        drop(fut);
        let mut request = request;
        let span = spans::outbound(&mut request);
        let host = request
            .uri()
            .host()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let component = host.strip_suffix(INTERNAL_SUFFIX);
        if component.is_some() || SELF_HOSTS.contains(&host.as_str()) {
            let app = self
                .internal
                .as_ref()
                .and_then(|handle| handle.get()?.upgrade());
            let call = app.and_then(|app| match component {
                Some(name) => app.call(name, request),
                None => Some(app.route(request)),
            });
            let Some(call) = call else {
                return Box::new(async { Err(Error::DestinationNotFound) });
            };
            return Box::new(
                async move {
                    let response = call.await;
                    drop(in_flight);
                    spans::respond(&Span::current(), response.status(), None);
                    Ok((
                        response,
                        Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
                    ))
                }
                .instrument(span),
            );
        }
        let client = self.client.clone();
        Box::new(
            async move {
                let response = client.send(request, options, in_flight).await;
                match &response {
                    Ok(response) => spans::respond(&Span::current(), response.status(), None),
                    Err(err) => spans::failed(&Span::current(), &format!("{err:?}")),
                }
                Ok((
                    response?,
                    Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
                ))
            }
            .instrument(span),
        )
    }
}
