//! What the connection side and the guest's task both know about one call:
//! how it ended, whether its response is out, whether it waits on its
//! client, and the guest's own time.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tracing::warn;

use super::failure::{Evicted, TimedOut};
use super::stall::{Stamp, Waiting};
use crate::metrics::METRICS;

/// What the connection side and the guest's task know about one call.
#[derive(Default)]
pub struct CallState {
    /// Since when the response has waited on its client ([`super::stall`]);
    /// unset while hyper is waiting on the guest.
    waiting: Waiting,
    /// The call's key in the eviction registry, once it runs on its own task.
    pub(super) running_key: OnceLock<usize>,
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

impl CallState {
    /// Called as hyper takes the response body: `true` when the body has
    /// just given hyper a frame (from now on it waits on the client),
    /// `false` when hyper is back for more.
    pub fn set_waiting_on_client(&self, waiting: bool) {
        self.waiting.set(waiting.then(Stamp::now));
    }

    /// How long the response has waited on its client, if it is waiting.
    pub(super) fn stalled_for(&self) -> Option<Duration> {
        self.waiting.since().map(Stamp::elapsed)
    }

    /// Whether the call has ended (or was cut off).
    pub(super) fn ended(&self) -> bool {
        self.outcome.get().is_some()
    }

    /// Records how the call ended, counts it in the metrics and, when the
    /// head already went out, logs the failure (before the head, the handler
    /// logs it with the status it answers). The call must record this before
    /// it drops its instance.
    pub fn finish(&self, result: wasmtime::Result<()>) {
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
                warn!("the guest failed after its response was complete: {err:#}");
            } else if self.head_sent.load(Ordering::Acquire) {
                log_cut_off(err);
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

    /// Adds `nanos` spent inside a poll of the call.
    pub(super) fn add_busy(&self, nanos: u64) {
        self.busy_ns.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The guest's own time so far, for the access log.
    pub fn busy(&self) -> Duration {
        Duration::from_nanos(self.busy_ns.load(Ordering::Relaxed))
    }
}

/// The log line for a guest that failed after its response head went out.
pub fn log_cut_off(err: &wasmtime::Error) {
    warn!("the guest failed while writing the response body; cut it off: {err:#}");
}
