//! One request, one instance: takes an instance slot ([`super::slots`]),
//! builds a fresh `Store`, hands the request to the guest, WASI 0.2 or 0.3
//! ([`super::kind`]), on a call run by [`super::task`], and turns what the
//! guest does into a hyper response (written by [`super::response`]).

use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::body::Body;
use hyper::{Request, Response, StatusCode, header};
use tokio::time::Instant;
use wasmtime::{Engine, Store, UpdateDeadline};

use super::call::{self, CallState};
use super::failure::{MemoryLimitHit, TimedOut};
use super::kind::Kind;
use super::loaded::Guest;
use super::p2::P2;
use super::p3::P3;
use super::request_body::CappedBody;
use super::response::{self, ResponseBody};
use super::slots::{Slot, Slots};
use super::state::{RequestState, Sandbox};
use super::task::GuestTask;
use crate::compile::pool::PoolSettings;
use crate::imports::keyvalue::Ticket;
use crate::metrics::METRICS;
use crate::trace::spans;
use tracing::Instrument;

/// How long a request may take, as the command line sets it.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    /// `--queue-timeout`: how long a request waits for an instance slot.
    pub queue_timeout: Duration,
    /// `--request-timeout`: an instance's whole life, instantiation included.
    pub request_timeout: Duration,
    /// `--max-body`, in bytes.
    pub max_body: u64,
}

/// Serves requests with fresh instances of one linked component.
pub struct Runner {
    /// The component, compiled and linked once; per request only
    /// instantiation is left. `replace` swaps it whole: each request takes the
    /// one current when it starts and keeps it to the end.
    guest: ArcSwap<Guest>,
    /// What every request's store is built with.
    sandbox: Sandbox,
    /// `--max-memory`: all of an instance's linear memories together.
    max_memory: usize,
    /// One per live instance, as many as the pool has.
    slots: Slots,
    limits: RequestLimits,
}

impl Runner {
    pub fn new(guest: Guest, pool: PoolSettings, sandbox: Sandbox, limits: RequestLimits) -> Self {
        Self {
            guest: ArcSwap::from_pointee(guest),
            sandbox,
            max_memory: pool.max_memory,
            slots: Slots::new(pool.slots, limits.queue_timeout),
            limits,
        }
    }

    /// Which WASI the component served now is written for, for the log.
    pub fn kind(&self) -> &'static str {
        self.guest.load().kind()
    }

    /// Instantiates the component once and drops it, so that a component that
    /// cannot be instantiated (it needs more than the pool's per-component
    /// limits, or traps in a start function) fails at startup rather than on
    /// every request.
    pub async fn check(&self) -> wasmtime::Result<()> {
        self.try_instantiate(&self.guest.load()).await
    }

    /// Instantiates `guest` once, as [`Runner::check`] does for the current
    /// one: what a reload does before it [`Runner::swap`]s.
    pub async fn check_guest(&self, guest: &Guest) -> wasmtime::Result<()> {
        self.try_instantiate(guest).await
    }

    /// Serves `guest` from now on; requests already running finish on the
    /// component they started with, in the same slots.
    pub fn swap(&self, guest: Guest) {
        self.guest.store(Arc::new(guest));
    }

    /// Instantiates `guest` once and drops it, holding an instance slot like
    /// a request does: the pool has exactly one set of resources per slot, so
    /// without one this could take a request's, or find none free.
    async fn try_instantiate(&self, guest: &Guest) -> wasmtime::Result<()> {
        let _slot = self.slots.wait().await;
        let deadline = Instant::now() + self.limits.request_timeout;
        let mut store = self.new_store(guest.engine(), deadline);
        let ticket = store.data().ticket.clone();
        let timeout = self.limits.request_timeout;
        until_deadline(deadline, timeout, &ticket, guest.instantiate(&mut store)).await
    }

    /// A fresh store on `engine` with this server's limits, memory cap and
    /// epoch deadline, for a request due by `deadline`.
    fn new_store(&self, engine: &Engine, deadline: Instant) -> Store<RequestState> {
        let state = RequestState::new(&self.sandbox, self.max_memory, deadline.into_std());
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
    /// failed before the guest set one) and the cause is logged, in the
    /// caller's request span.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let max_body = self.limits.max_body;
        if declared_length(&request).is_some_and(|len| len > max_body) {
            return response::too_large(max_body, None);
        }
        let Some(slot) = self.slots.take().await else {
            return response::unavailable(self.slots.queue_timeout());
        };
        // The one choice between the two kinds of guest, per request.
        match Guest::clone(&self.guest.load()) {
            Guest::P2(pre) => self.serve::<P2, _>(pre, request, slot).await,
            Guest::P3(pre) => self.serve::<P3, _>(pre, request, slot).await,
        }
    }

    /// [`Runner::handle`] for a guest of kind `K`, once it has its slot.
    async fn serve<K: Kind, B>(
        &self,
        pre: Arc<K::Pre>,
        request: Request<B>,
        slot: Slot,
    ) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let RequestLimits {
            request_timeout: timeout,
            max_body,
            ..
        } = self.limits;
        let deadline = Instant::now() + timeout;
        let mut store = self.new_store(K::engine(&pre), deadline);
        let (mut parts, body) = request.into_parts();
        let method = parts.method.clone();
        drop_connection_headers(&mut parts.headers);
        let (body, mut over_limit) = CappedBody::new(body, max_body);
        let (prepared, mut head) = match K::prepare(&mut store, Request::from_parts(parts, body)) {
            Ok(prepared) => prepared,
            Err(reason) => {
                return response::plain(
                    StatusCode::BAD_REQUEST,
                    format!("Bad Request: {reason}\n"),
                    None,
                );
            }
        };

        METRICS.instance_started();
        let mut instance = Instance { store, _slot: slot };
        let state = Arc::new(CallState::default());
        let reporter = state.clone();
        let call = Box::pin(async move {
            let ticket = instance.store.data().ticket.clone();
            let store = &mut instance.store;
            let run = async {
                let started = std::time::Instant::now();
                let instance = K::instantiate(&pre, &mut *store)
                    .instrument(spans::instantiate())
                    .await?;
                METRICS.instantiated(started.elapsed());
                K::call(instance, prepared, &mut *store)
                    .instrument(spans::handle())
                    .await
            };
            let mut result = until_deadline(deadline, timeout, &ticket, run).await;
            if store.data().limiter.hit {
                METRICS.memory_limit_hit();
                result = result.map_err(|err| err.context(MemoryLimitHit));
            }
            reporter.finish(result);
            // Only now does the store go, and with it every channel the guest
            // held, so the head or body that sees its end can read why.
            drop(instance);
        });
        let guest = GuestTask::start(call, state, self.slots.evictable()).await;

        // Wait for the response head. Its sender goes with the store or the
        // call, so `head` also resolves when the guest's call ends without one.
        let head = poll_fn(|cx| {
            if over_limit.poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            std::pin::Pin::new(&mut head).poll(cx).map(Some)
        })
        .await;

        match head {
            None => response::too_large(max_body, Some(guest)),
            Some(Ok(Ok(response))) => {
                if let Some(err) = guest.state().mark_head_sent() {
                    call::log_cut_off(err);
                }
                let complete_at =
                    ResponseBody::complete_at(&method, response.status(), response.headers());
                response.map(|body| ResponseBody::streaming(body, guest, complete_at))
            }
            Some(Ok(Err(code))) => response::internal_error(
                format_args!("the guest responded with an error: {code}"),
                Some(guest),
            ),
            Some(Err(_)) => no_response(guest),
        }
    }
}

/// The answer when the guest's call ended without a response head: why,
/// as far as its outcome tells.
fn no_response(guest: GuestTask) -> Response<ResponseBody> {
    let call = guest.state();
    match call.failure() {
        Some(err) if err.is::<TimedOut>() => {
            let err = err.to_string();
            response::timed_out(err, Some(guest))
        }
        Some(err) => {
            let cause = format!("{err:#}");
            response::internal_error(format_args!("the guest failed: {cause}"), Some(guest))
        }
        None if call.returned() => response::internal_error(
            format_args!("the guest returned without setting a response"),
            Some(guest),
        ),
        None => response::internal_error(
            format_args!("the guest dropped response-outparam without setting a response"),
            Some(guest),
        ),
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
async fn until_deadline(
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
