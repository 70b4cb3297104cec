//! One request, one instance: builds a fresh `Store`, instantiates the
//! pre-linked component in it, calls `wasi:http/incoming-handler.handle`, and
//! turns what the guest does into a hyper response.
//!
//! The guest's call is not spawned onto a task of its own. It is polled by the
//! request future until the guest sets the response head, then by the response
//! body while the guest streams it; this keeps the hot path free of a spawn,
//! and a client that goes away drops (and so cancels) the instance with it.

use std::error::Error as StdError;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper::{Request, Response, StatusCode, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;
use tracing::{error, warn};
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::cli::Cli;
use crate::guest_output::RequestId;
use crate::metrics::METRICS;
use crate::request_body::CappedBody;
use crate::state::{RequestState, Sandbox};

/// Serves requests with fresh instances of one pre-linked component.
pub struct Handler {
    /// The component, compiled and linked once; per request only
    /// instantiation is left. `replace` swaps it whole: each request takes the
    /// one current when it starts and keeps it to the end.
    pre: ArcSwap<ProxyPre<RequestState>>,
    /// What every request's store is built with.
    sandbox: Sandbox,
    /// One permit per live instance (`--max-concurrent-requests`), held until
    /// the instance's store is dropped.
    instances: Arc<Semaphore>,
    /// `--queue-timeout`: how long a request waits for a permit.
    queue_timeout: Duration,
    /// `--request-timeout`: an instance's whole life, instantiation included.
    request_timeout: Duration,
    /// `--max-body`, in bytes.
    max_body: u64,
}

impl Handler {
    pub fn new(pre: ProxyPre<RequestState>, cli: &Cli) -> Self {
        let to_usize = |bytes: u64| usize::try_from(bytes).unwrap_or(usize::MAX);
        Self {
            pre: ArcSwap::from_pointee(pre),
            sandbox: Sandbox {
                max_memory: to_usize(cli.max_memory.as_u64()),
                max_fields_size: to_usize(cli.max_guest_fields_size.as_u64()),
                max_resources: cli.max_guest_resources,
                allowed_outbound: cli.allow_outbound.clone().into(),
                env: cli.env.clone().into(),
            },
            instances: Arc::new(Semaphore::new(cli.max_concurrent_requests)),
            queue_timeout: cli.queue_timeout,
            request_timeout: cli.request_timeout,
            max_body: cli.max_body.as_u64(),
        }
    }

    /// Instantiates the component once and drops it, so that a component that
    /// cannot be instantiated (it needs more than the pool's per-component
    /// limits, or traps in a start function) fails at startup rather than on
    /// every request.
    pub async fn check(&self) -> wasmtime::Result<()> {
        self.try_instantiate(&self.pre.load()).await
    }

    /// Serves `pre` from now on, once it has instantiated; requests already
    /// running finish on the component they started with. On error the
    /// current component stays.
    pub async fn replace(&self, pre: ProxyPre<RequestState>) -> wasmtime::Result<()> {
        self.try_instantiate(&pre).await?;
        self.pre.store(Arc::new(pre));
        Ok(())
    }

    async fn try_instantiate(&self, pre: &ProxyPre<RequestState>) -> wasmtime::Result<()> {
        let mut store = self.new_store(pre, RequestId::next());
        let deadline = Instant::now() + self.request_timeout;
        match tokio::time::timeout_at(deadline, pre.instantiate_async(&mut store)).await {
            Ok(instance) => instance.map(drop),
            Err(_) => Err(wasmtime::Error::new(TimedOut(self.request_timeout))),
        }
    }

    /// A fresh store for `pre` with this server's limits, memory cap and
    /// epoch deadline.
    fn new_store(&self, pre: &ProxyPre<RequestState>, id: RequestId) -> Store<RequestState> {
        let mut store = Store::new(pre.engine(), RequestState::new(&self.sandbox, id));
        store.limiter(|state| &mut state.limiter);
        // At every epoch tick a running guest yields to the runtime, so other
        // requests share its thread and the request deadline fires even while
        // it spins. The closure captures nothing: boxing it does not allocate.
        store.epoch_deadline_callback(|_| {
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        });
        store.set_epoch_deadline(1);
        store
    }

    /// Runs `request` in a new instance. Never fails: whatever the guest does,
    /// the client gets a response (a 4xx or 5xx if the request or the guest
    /// failed before the guest set one) and the cause is logged.
    pub async fn handle<B>(&self, request: Request<B>, id: RequestId) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        if declared_length(&request).is_some_and(|len| len > self.max_body) {
            return too_large(id, self.max_body);
        }
        // The common case takes a free permit without arming a timer.
        let permit = match self.instances.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let wait = self.instances.clone().acquire_owned();
                match tokio::time::timeout(self.queue_timeout, wait).await {
                    Ok(Ok(permit)) => permit,
                    _ => {
                        warn!(
                            %id,
                            "answered 503: no free instance slot within --queue-timeout ({:?})",
                            self.queue_timeout
                        );
                        return plain(id, StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable\n");
                    }
                }
            }
        };
        let deadline = Instant::now() + self.request_timeout;

        let pre = self.pre.load_full();
        let mut store = self.new_store(&pre, id);
        let (mut parts, body) = request.into_parts();
        drop_connection_headers(&mut parts.headers);
        let (body, mut over_limit) = CappedBody::new(body, self.max_body);
        let (head_sender, mut head) = oneshot::channel();
        let mut http = store.data_mut().http();
        let request = match http
            .new_incoming_request(Scheme::Http, Request::from_parts(parts, body))
        {
            Ok(request) => request,
            // In practice: neither an absolute URI nor a `Host` header.
            Err(err) => return plain(id, StatusCode::BAD_REQUEST, format!("Bad Request: {err}\n")),
        };
        let response_out = match http.new_response_outparam(head_sender) {
            Ok(response_out) => response_out,
            Err(err) => {
                return internal_error(id, format_args!("creating response-outparam: {err:#}"));
            }
        };

        let timeout = self.request_timeout;
        METRICS.instance_started();
        let mut instance = Instance {
            store,
            _permit: permit,
        };
        let mut guest = GuestCall::new(Box::pin(async move {
            let store = &mut instance.store;
            let run = async {
                let started = std::time::Instant::now();
                let proxy = pre.instantiate_async(&mut *store).await?;
                METRICS.instantiated(started.elapsed());
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut *store, request, response_out)
                    .await
            };
            // Most guests finish within their first poll, before any epoch
            // tick; the deadline's timer is armed only for those that wait or
            // yield, and it still counts from the request's start.
            let result = {
                let mut run = std::pin::pin!(run);
                match poll_fn(|cx| Poll::Ready(run.as_mut().poll(cx))).await {
                    Poll::Ready(result) => result,
                    Poll::Pending => match tokio::time::timeout_at(deadline, run).await {
                        Ok(result) => result,
                        Err(_) => Err(wasmtime::Error::new(TimedOut(timeout))),
                    },
                }
            };
            if store.data().limiter.hit {
                METRICS.memory_limit_hit();
                return result.map_err(|err| err.context(MemoryLimitHit));
            }
            result
            // `instance` is dropped when this future is, finished or not.
        }));

        // Until the guest sets the response head, drive its call here. The
        // sender lives in the store, so `head` also resolves if the store goes.
        let head = poll_fn(|cx| {
            guest.poll(cx);
            if over_limit.poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Pin::new(&mut head).poll(cx).map(Some)
        })
        .await;

        let busy = guest.busy;
        let response = match head {
            None => too_large(id, self.max_body),
            Some(Ok(Ok(response))) => {
                return response.map(|body| ResponseBody::streaming(body, guest, id));
            }
            Some(Ok(Err(code))) => internal_error(
                id,
                format_args!("the guest responded with an error: {code:?}"),
            ),
            Some(Err(_)) => match guest.state {
                Call::Failed(err) if err.is::<TimedOut>() => {
                    error!(%id, "answered 504: {err}");
                    plain(id, StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout\n")
                }
                Call::Failed(err) => internal_error(id, format_args!("the guest failed: {err:#}")),
                Call::Returned => internal_error(
                    id,
                    format_args!("the guest returned without setting a response"),
                ),
                Call::Running(_) => internal_error(
                    id,
                    format_args!("the guest dropped response-outparam without setting a response"),
                ),
            },
        };
        let mut response = response;
        response.body_mut().guest_busy = busy;
        response
    }
}

/// A request's store with its instance slot. Fields drop in order: the store
/// (and every pooled resource its instance holds) before the permit, so a slot
/// is never handed to a new request while its old instance still occupies the
/// pool.
struct Instance {
    store: Store<RequestState>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Instance {
    fn drop(&mut self) {
        METRICS.instance_ended();
    }
}

/// Removes the headers a client's `Connection` header names: they are
/// hop-by-hop for this one connection (RFC 9110, 7.6.1) and not for the guest.
/// The fixed hop-by-hop set is filtered by the wasi-http hooks.
fn drop_connection_headers(headers: &mut header::HeaderMap) {
    let Some(connection) = headers.get(header::CONNECTION) else {
        return;
    };
    let named: Vec<header::HeaderName> = connection
        .to_str()
        .unwrap_or_default()
        .split(',')
        .filter_map(|name| header::HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// The request's `content-length`, if it has a valid one.
fn declared_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Why a guest was stopped at its deadline.
#[derive(Debug)]
struct TimedOut(Duration);

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the guest timed out: it ran past --request-timeout ({:?})",
            self.0
        )
    }
}

impl StdError for TimedOut {}

/// Context for a guest failure that followed a refused memory growth.
#[derive(Debug)]
struct MemoryLimitHit;

impl fmt::Display for MemoryLimitHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the guest hit --max-memory")
    }
}

/// One guest's `handle` call and the time spent running it.
struct GuestCall {
    state: Call,
    /// Time spent inside `poll` of the call: the guest's own work and the host
    /// calls it makes, not the time it waited.
    busy: Duration,
}

enum Call {
    Running(Pin<Box<dyn Future<Output = wasmtime::Result<()>> + Send>>),
    Returned,
    Failed(wasmtime::Error),
}

impl GuestCall {
    fn new(call: Pin<Box<dyn Future<Output = wasmtime::Result<()>> + Send>>) -> Self {
        Self {
            state: Call::Running(call),
            busy: Duration::ZERO,
        }
    }

    /// Makes progress on the call if it is still running; the outcome is
    /// recorded in `self`. The store is dropped before this returns, so every
    /// channel the guest held is closed by the time a caller looks at them.
    fn poll(&mut self, cx: &mut Context<'_>) {
        if let Call::Running(call) = &mut self.state {
            let started = std::time::Instant::now();
            let poll = call.as_mut().poll(cx);
            self.busy += started.elapsed();
            if let Poll::Ready(result) = poll {
                self.state = match result {
                    Ok(()) => Call::Returned,
                    Err(err) => {
                        if err.is::<TimedOut>() {
                            METRICS.timeout();
                        } else {
                            METRICS.trap();
                        }
                        Call::Failed(err)
                    }
                };
            }
        }
    }
}

/// A response body as the guest writes it, which also drives the guest's call
/// to completion.
pub struct ResponseBody {
    /// What the guest writes to its outgoing-body stream.
    inner: HyperOutgoingBody,
    /// The call that writes `inner`; polled alongside it.
    guest: GuestCall,
    /// The request's id, for the log lines this body may write.
    id: RequestId,
    /// Time the guest ran before this body took over its call (a body the
    /// host wrote after the guest failed has only this).
    guest_busy: Duration,
    /// Set once `inner` has ended, so that `drop` can tell a finished response
    /// from one whose client went away.
    ended: bool,
}

impl ResponseBody {
    fn streaming(inner: HyperOutgoingBody, guest: GuestCall, id: RequestId) -> Self {
        Self {
            inner,
            guest,
            id,
            guest_busy: Duration::ZERO,
            ended: false,
        }
    }

    /// How long the guest has run for this request so far.
    pub fn guest_time(&self) -> Duration {
        self.guest_busy + self.guest.busy
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
        // Poll the guest first: if it has just failed, its store (and so the
        // body's sender) is gone, and `inner` ends as if it were complete.
        this.guest.poll(cx);
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.ended = true;
                if let Call::Failed(err) = &this.guest.state {
                    // An error here makes hyper abort the response (no final
                    // chunk in HTTP/1, RST_STREAM in HTTP/2) so the client sees
                    // it was cut off, not a short but complete body.
                    warn!(id = %this.id, "the guest failed while writing the response body; cut it off: {err:#}");
                    return Poll::Ready(Some(Err("the guest failed mid-response".into())));
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => Poll::Ready(Some(frame.map_err(Into::into))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // The guest finished its body but `handle` has not returned yet: let it
        // run to the end on its own task, as other wasi-http hosts do. A body
        // dropped before its end means the client went away, and the guest is
        // cancelled with it.
        if self.ended
            && let Call::Running(call) = std::mem::replace(&mut self.guest.state, Call::Returned)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let id = self.id;
            runtime.spawn(async move {
                if let Err(err) = call.await {
                    warn!(%id, "the guest failed after finishing its response: {err:#}");
                }
            });
        }
    }
}

/// A response the host writes itself.
fn plain(id: RequestId, status: StatusCode, text: impl Into<Bytes>) -> Response<ResponseBody> {
    let body = Full::new(text.into())
        .map_err(|never| match never {})
        .boxed_unsync();
    let returned = GuestCall {
        state: Call::Returned,
        busy: Duration::ZERO,
    };
    let mut response = Response::new(ResponseBody::streaming(body, returned, id));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    response
}

fn too_large(id: RequestId, max_body: u64) -> Response<ResponseBody> {
    warn!(%id, "answered 413: request body over --max-body ({max_body} bytes)");
    plain(id, StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large\n")
}

/// Logs why a request failed and gives the client a 500 that says no more
/// than that: guest internals stay in the log.
fn internal_error(id: RequestId, cause: std::fmt::Arguments<'_>) -> Response<ResponseBody> {
    error!(%id, "answered 500: {cause}");
    plain(
        id,
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal Server Error\n",
    )
}
