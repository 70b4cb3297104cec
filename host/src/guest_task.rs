//! A guest's `handle` call, run on a task of its own under the request
//! deadline, so that neither its progress nor its deadline depends on the
//! client reading the response.
//!
//! The call is polled once inline, on the connection's task: a guest that
//! answers without waiting (the common case, hello included) finishes there
//! and costs no spawn. One that waits is moved onto its own task, where the
//! deadline keeps counting however slowly the client reads; when it passes,
//! the task drops the instance and its slot at once. A client that goes away
//! before its response ended aborts the task.
//!
//! A running call whose client has stopped taking its response still holds
//! an instance slot. When every slot is taken, a request waiting for one
//! evicts the call that has waited longest on its client (see
//! [`evict_stalled`]), so clients that stop reading cannot lock others out
//! until their deadlines pass.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use slab::Slab;

use tokio::task::AbortHandle;
use tracing::warn;

use crate::guest_output::RequestId;
use crate::metrics::METRICS;

/// What the connection side and the guest's task share about one call.
pub struct Shared {
    id: RequestId,
    /// When the response body last handed hyper a frame that hyper has not
    /// come back for: hyper polls again only once the client has taken it.
    /// Nanoseconds after [`CLOCK`]; 0 while hyper is waiting on the guest.
    stalled_since_ns: AtomicU64,
    /// The call's key in [`RUNNING`], once it runs on its own task.
    running_key: OnceLock<usize>,
    /// Nanoseconds spent inside polls of the call: the guest's own work and
    /// the host calls it makes, not the time it waited.
    busy_ns: AtomicU64,
    /// How the call ended; set before the instance is dropped, so whoever
    /// sees a channel of the guest's close can read why.
    outcome: OnceLock<wasmtime::Result<()>>,
    /// Set once the response head went to the client: a failure after that
    /// can only cut the body off, and is logged by whoever sees it first.
    head_sent: AtomicBool,
    /// Set once the client has the whole response: a failure after that
    /// (work after the answer, or a WASI 0.3 task running on) cost the
    /// client nothing, and is logged as such.
    body_complete: AtomicBool,
}

/// The origin of the stall timestamps.
static CLOCK: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ns() -> u64 {
    // Never 0, which means "not stalled".
    (CLOCK.elapsed().as_nanos() as u64).max(1)
}

impl Shared {
    pub fn new(id: RequestId) -> Self {
        Self {
            id,
            stalled_since_ns: AtomicU64::new(0),
            running_key: OnceLock::new(),
            busy_ns: AtomicU64::new(0),
            outcome: OnceLock::new(),
            head_sent: AtomicBool::new(false),
            body_complete: AtomicBool::new(false),
        }
    }

    /// Called by the response body: `true` when it has just given hyper a
    /// frame (from now on it waits on the client), `false` when hyper is
    /// back for more.
    pub fn set_waiting_on_client(&self, waiting: bool) {
        let since = if waiting { now_ns() } else { 0 };
        self.stalled_since_ns.store(since, Ordering::Relaxed);
    }

    /// How long the response has waited on its client, if it is waiting.
    fn stalled_for(&self) -> Option<Duration> {
        match self.stalled_since_ns.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_nanos(now_ns().saturating_sub(since))),
        }
    }
    /// Records how the call ended, counts it in the metrics and, when the
    /// head already went out, logs the failure (before the head, the handler
    /// logs it with the status it answers). The call must record this before
    /// it drops its instance.
    pub fn finish(&self, result: wasmtime::Result<()>, id: RequestId) {
        if let Err(err) = &result {
            // An eviction is counted and logged where it happens.
            if err.is::<Evicted>() {
                let _ = self.outcome.set(result);
                return;
            }
            if err.is::<TimedOut>() {
                METRICS.timeout();
            } else {
                METRICS.trap();
            }
            if self.body_complete.load(Ordering::Acquire) {
                warn!(%id, "the guest failed after its response was complete: {err:#}");
            } else if self.head_sent.load(Ordering::Acquire) {
                log_cut_off(id, err);
            }
        }
        let _ = self.outcome.set(result);
    }

    /// The call's failure, if it has ended with one.
    pub fn failure(&self) -> Option<&wasmtime::Error> {
        self.outcome.get().and_then(|result| result.as_ref().err())
    }

    /// Whether the call has ended without setting a failure.
    pub fn returned(&self) -> bool {
        matches!(self.outcome.get(), Some(Ok(())))
    }

    /// Marks the head as sent; returns the failure if the call had already
    /// failed, which the caller then logs.
    pub fn mark_head_sent(&self) -> Option<&wasmtime::Error> {
        self.head_sent.store(true, Ordering::Release);
        self.failure()
    }

    /// Marks the response as wholly with the client.
    pub fn mark_body_complete(&self) {
        self.body_complete.store(true, Ordering::Release);
    }

    pub fn busy(&self) -> Duration {
        Duration::from_nanos(self.busy_ns.load(Ordering::Relaxed))
    }
}

/// A guest's call, inline or on its own task. Dropping it aborts the task
/// unless [`GuestTask::detach`] was called.
pub struct GuestTask {
    shared: Arc<Shared>,
    abort: Option<AbortHandle>,
}

/// The future that runs a call: instantiate, `handle`, under the deadline,
/// then [`Shared::finish`], then drop the instance.
pub type Call = Pin<Box<dyn Future<Output = ()> + Send>>;

impl GuestTask {
    /// Starts `call`, which reports to `shared`.
    pub async fn start(call: Call, shared: Arc<Shared>) -> Self {
        let mut run = Run {
            call,
            shared: shared.clone(),
            done: false,
        };
        // One inline poll: a guest that does not wait finishes here.
        let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut run).poll(cx))).await;
        let abort = match first {
            Poll::Ready(()) => None,
            Poll::Pending => {
                let abort = tokio::spawn(run).abort_handle();
                // The spawned task cannot run before this returns (the
                // runtime is single-threaded), so its key is set before it
                // can look for it.
                let key = lock_running().insert((shared.clone(), abort.clone()));
                let _ = shared.running_key.set(key);
                Some(abort)
            }
        };
        Self { shared, abort }
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Lets the call run to its end (or its deadline) on its own: the
    /// response is complete and nobody waits for the call any more.
    pub fn detach(&mut self) {
        self.abort = None;
    }
}

impl Drop for GuestTask {
    fn drop(&mut self) {
        if let Some(abort) = self.abort.take() {
            abort.abort();
        }
    }
}

/// Calls running on their own tasks, for [`evict_stalled`]. Only calls
/// that wait are here: one that finishes within its first poll never is.
static RUNNING: LazyLock<Mutex<Running>> = LazyLock::new(|| Mutex::new(Slab::new()));

/// Each running call with the handle that aborts its task.
type Running = Slab<(Arc<Shared>, AbortHandle)>;

fn lock_running() -> std::sync::MutexGuard<'static, Running> {
    // The slab is consistent after any panic: every change is one call.
    RUNNING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Cuts off the running call whose client has not taken its response for
/// the longest time, at least `grace`, and aborts it, freeing its instance
/// slot for a waiting request. Returns whether one was found.
///
/// A client that stops reading holds its instance until `--request-timeout`
/// (or `--write-timeout` closes its connection); with every slot held that
/// way, everybody else would get 503 until then.
pub fn evict_stalled(grace: Duration) -> bool {
    let mut running = lock_running();
    let oldest = running
        .iter()
        .filter(|(_, (shared, abort))| !abort.is_finished() && shared.outcome.get().is_none())
        .filter_map(|(key, (shared, _))| Some((key, shared.stalled_for()?)))
        .filter(|(_, stalled)| *stalled >= grace)
        .max_by_key(|(_, stalled)| *stalled);
    let Some((key, stalled)) = oldest else {
        return false;
    };
    let (shared, abort) = running.remove(key);
    drop(running);
    warn!(
        id = %shared.id,
        "every instance slot is taken: cut off this response, whose client has taken nothing for {stalled:.1?}, and freed its slot"
    );
    METRICS.evicted();
    shared.finish(Err(wasmtime::Error::new(Evicted)), shared.id);
    abort.abort();
    true
}

/// Why a guest was stopped to free its slot.
#[derive(Debug)]
pub struct Evicted;

impl std::fmt::Display for Evicted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("its client stopped taking the response while other requests waited for an instance slot")
    }
}

impl std::error::Error for Evicted {}

/// Drives the call, adding up the time spent in it.
struct Run {
    call: Call,
    shared: Arc<Shared>,
    done: bool,
}

impl Future for Run {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(());
        }
        let started = std::time::Instant::now();
        let poll = this.call.as_mut().poll(cx);
        let spent = started.elapsed().as_nanos() as u64;
        this.shared.busy_ns.fetch_add(spent, Ordering::Relaxed);
        this.done = poll.is_ready();
        poll
    }
}

impl Drop for Run {
    /// Finished or aborted, the call no longer holds a slot to evict.
    fn drop(&mut self) {
        if let Some(&key) = self.shared.running_key.get() {
            let mut running = lock_running();
            // The key may have been evicted and reused by another call.
            if running
                .get(key)
                .is_some_and(|(shared, _)| Arc::ptr_eq(shared, &self.shared))
            {
                running.remove(key);
            }
        }
    }
}

/// The log line for a guest that failed after its response head went out.
pub fn log_cut_off(id: RequestId, err: &wasmtime::Error) {
    warn!(%id, "the guest failed while writing the response body; cut it off: {err:#}");
}

/// Why a guest was stopped at its deadline.
#[derive(Debug)]
pub struct TimedOut(pub Duration);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the guest timed out: it ran past --request-timeout ({:?})",
            self.0
        )
    }
}

impl std::error::Error for TimedOut {}
