//! One request, one instance: takes an instance slot ([`crate::slots`]),
//! builds a fresh `Store`, hands the request to the guest's handler, WASI 0.2
//! or 0.3 ([`crate::wasi_p2`], [`crate::wasi_p3`]), on a call run by
//! [`crate::guest_task`], and turns what the guest does into a hyper response
//! (written by [`crate::response`]).

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::body::Body;
use hyper::{Request, Response, StatusCode, header};
use tokio::sync::oneshot::error::RecvError;
use tokio::time::Instant;
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::component::GuestPre;
use crate::guest_output::RequestId;
use crate::guest_task::{self, GuestTask, Shared, TimedOut};
use crate::keyvalue::Ticket;
use crate::metrics::METRICS;
use crate::request_body::CappedBody;
use crate::response::{self, ResponseBody};
use crate::slots::{Slot, Slots};
use crate::state::{RequestState, Sandbox};
use crate::{wasi_p2, wasi_p3};

/// What a request may use, as the command line sets it.
pub struct Limits {
    /// What every request's store is built with.
    pub sandbox: Sandbox,
    /// `--max-concurrent-requests`: instances alive at once.
    pub max_concurrent_requests: usize,
    /// `--queue-timeout`: how long a request waits for an instance slot.
    pub queue_timeout: Duration,
    /// `--request-timeout`: an instance's whole life.
    pub request_timeout: Duration,
    /// `--max-body`, in bytes.
    pub max_body: u64,
}

/// Serves requests with fresh instances of one pre-linked component.
pub struct Handler {
    /// The component, compiled and linked once; per request only
    /// instantiation is left. `replace` swaps it whole: each request takes the
    /// one current when it starts and keeps it to the end.
    pre: ArcSwap<GuestPre>,
    /// What every request's store is built with.
    sandbox: Sandbox,
    /// One per live instance (`--max-concurrent-requests`).
    slots: Slots,
    /// `--request-timeout`: an instance's whole life, instantiation included.
    request_timeout: Duration,
    /// `--max-body`, in bytes.
    max_body: u64,
}

impl Handler {
    pub fn new(pre: GuestPre, limits: Limits) -> Self {
        Self {
            pre: ArcSwap::from_pointee(pre),
            sandbox: limits.sandbox,
            slots: Slots::new(limits.max_concurrent_requests, limits.queue_timeout),
            request_timeout: limits.request_timeout,
            max_body: limits.max_body,
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
    pub async fn replace(&self, pre: GuestPre) -> wasmtime::Result<()> {
        self.try_instantiate(&pre).await?;
        self.pre.store(Arc::new(pre));
        Ok(())
    }

    /// Instantiates `pre` once and drops it, holding an instance slot like a
    /// request does: the pool has exactly one set of resources per slot, so
    /// without one this could take a request's, or find none free.
    async fn try_instantiate(&self, pre: &GuestPre) -> wasmtime::Result<()> {
        let _slot = self.slots.wait().await;
        let deadline = Instant::now() + self.request_timeout;
        let mut store = self.new_store(engine(pre), RequestId::next(), deadline);
        let ticket = store.data().ticket.clone();
        let instantiate = async {
            match pre {
                GuestPre::P2(pre) => pre.instantiate_async(&mut store).await.map(drop),
                GuestPre::P3(pre) => pre.instantiate_async(&mut store).await.map(drop),
            }
        };
        within(deadline, self.request_timeout, &ticket, instantiate).await
    }

    /// A fresh store on `engine` with this server's limits, memory cap and
    /// epoch deadline, for a request due by `deadline`.
    fn new_store(&self, engine: &Engine, id: RequestId, deadline: Instant) -> Store<RequestState> {
        let state = RequestState::new(&self.sandbox, id, deadline.into_std());
        let mut store = Store::new(engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_hostcall_fuel(self.sandbox.host.hostcall_fuel());
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
            return response::too_large(id, self.max_body, None);
        }
        let Some(slot) = self.slots.take().await else {
            return response::unavailable(id, self.slots.queue_timeout());
        };
        let deadline = Instant::now() + self.request_timeout;

        let pre = self.pre.load_full();
        let mut store = self.new_store(engine(&pre), id, deadline);
        let (mut parts, body) = request.into_parts();
        let method = parts.method.clone();
        drop_connection_headers(&mut parts.headers);
        let (body, mut over_limit) = CappedBody::new(body, self.max_body);
        let request = Request::from_parts(parts, body);
        let prepared = match &*pre {
            GuestPre::P2(_) => wasi_p2::prepare(&mut store, request)
                .map(|(prepared, head)| (Prepared::P2(prepared), HeadRx::P2(head))),
            GuestPre::P3(_) => wasi_p3::prepare(&mut store, request)
                .map(|(prepared, head)| (Prepared::P3(prepared), HeadRx::P3(head))),
        };
        let (prepared, mut head) = match prepared {
            Ok(prepared) => prepared,
            Err(reason) => {
                return response::plain(
                    StatusCode::BAD_REQUEST,
                    format!("Bad Request: {reason}\n"),
                    None,
                );
            }
        };

        let timeout = self.request_timeout;
        METRICS.instance_started();
        let mut instance = Instance { store, _slot: slot };
        let shared = Arc::new(Shared::new(id));
        let reporter = shared.clone();
        let call = Box::pin(async move {
            let ticket = instance.store.data().ticket.clone();
            let store = &mut instance.store;
            let mut result = match (&*pre, prepared) {
                (GuestPre::P2(pre), Prepared::P2(prepared)) => {
                    within(deadline, timeout, &ticket, prepared.run(pre, store)).await
                }
                (GuestPre::P3(pre), Prepared::P3(prepared)) => {
                    within(deadline, timeout, &ticket, prepared.run(pre, store)).await
                }
                _ => unreachable!("prepared for the kind of `pre`"),
            };
            if store.data().limiter.hit {
                METRICS.memory_limit_hit();
                result = result.map_err(|err| err.context(MemoryLimitHit));
            }
            reporter.finish(result, id);
            // Only now does the store go, and with it every channel the guest
            // held, so the head or body that sees its end can read why.
            drop(instance);
        });
        let guest = GuestTask::start(call, shared).await;

        // Wait for the response head. Its sender goes with the store or the
        // call, so `head` also resolves when the guest's call ends without one.
        let head = poll_fn(|cx| {
            if over_limit.poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            head.poll(cx).map(Some)
        })
        .await;

        match head {
            None => response::too_large(id, self.max_body, Some(guest)),
            Some(Ok(Ok(response))) => {
                if let Some(err) = guest.shared().mark_head_sent() {
                    guest_task::log_cut_off(id, err);
                }
                let complete_at =
                    ResponseBody::complete_at(&method, response.status(), response.headers());
                response.map(|body| ResponseBody::streaming(body, guest, complete_at))
            }
            Some(Ok(Err(code))) => response::internal_error(
                id,
                format_args!("the guest responded with an error: {code}"),
                Some(guest),
            ),
            Some(Err(_)) => match guest.shared().failure() {
                Some(err) if err.is::<TimedOut>() => {
                    let err = err.to_string();
                    response::timed_out(id, err, Some(guest))
                }
                Some(err) => {
                    let cause = format!("{err:#}");
                    response::internal_error(
                        id,
                        format_args!("the guest failed: {cause}"),
                        Some(guest),
                    )
                }
                None if guest.shared().returned() => response::internal_error(
                    id,
                    format_args!("the guest returned without setting a response"),
                    Some(guest),
                ),
                None => response::internal_error(
                    id,
                    format_args!("the guest dropped response-outparam without setting a response"),
                    Some(guest),
                ),
            },
        }
    }
}

/// The request as prepared for the guest's kind.
enum Prepared {
    P2(wasi_p2::Prepared),
    P3(wasi_p3::Prepared),
}

/// Where the guest's response head arrives, for either kind.
enum HeadRx {
    P2(wasi_p2::Head),
    P3(wasi_p3::Head),
}

/// A response head, or the wasi:http error code the guest answered with
/// instead (as text: the two kinds have their own types).
type HeadResult = Result<Response<HyperOutgoingBody>, String>;

impl HeadRx {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<HeadResult, RecvError>> {
        match self {
            HeadRx::P2(head) => Pin::new(head)
                .poll(cx)
                .map(|head| head.map(|head| head.map_err(|code| format!("{code:?}")))),
            HeadRx::P3(head) => Pin::new(head)
                .poll(cx)
                .map(|head| head.map(|head| head.map_err(|code| format!("{code:?}")))),
        }
    }
}

/// The engine `pre` was compiled for.
fn engine(pre: &GuestPre) -> &Engine {
    match pre {
        GuestPre::P2(pre) => pre.engine(),
        GuestPre::P3(pre) => pre.engine(),
    }
}

/// Runs `run` until `deadline`, then fails it with [`TimedOut`]. Most guests
/// finish within their first poll, before any epoch tick; the deadline's
/// timer is armed only for those that wait or yield, and it still counts from
/// the request's start.
///
/// At the deadline `run` is kept (and with it every channel the response
/// could go out by) until a key-value write that had begun to commit has
/// ended ([`Ticket::settled`]): the 504 that follows is final, and nothing
/// of the request is written after it.
async fn within(
    deadline: Instant,
    timeout: Duration,
    ticket: &Ticket,
    run: impl Future<Output = wasmtime::Result<()>>,
) -> wasmtime::Result<()> {
    let mut run = std::pin::pin!(run);
    match poll_fn(|cx| Poll::Ready(run.as_mut().poll(cx))).await {
        Poll::Ready(result) => result,
        Poll::Pending => match tokio::time::timeout_at(deadline, run.as_mut()).await {
            Ok(result) => result,
            Err(_) => {
                ticket.settled().await;
                Err(wasmtime::Error::new(TimedOut(timeout)))
            }
        },
    }
}

/// A request's store with its instance slot. Fields drop in order: the store
/// (and every pooled resource its instance holds) before the slot, so a slot
/// is never handed to a new request while its old instance still occupies the
/// pool.
struct Instance {
    store: Store<RequestState>,
    _slot: Slot,
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
    if !headers.contains_key(header::CONNECTION) {
        return;
    }
    // Every `Connection` line counts: a list may be split over several.
    let named: Vec<header::HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|line| line.to_str().unwrap_or_default().split(','))
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

/// Context for a guest failure that followed a refused memory growth.
#[derive(Debug)]
struct MemoryLimitHit;

impl fmt::Display for MemoryLimitHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the guest hit --max-memory")
    }
}
