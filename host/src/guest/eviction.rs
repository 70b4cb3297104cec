//! Eviction of calls whose clients stopped reading. A running call whose
//! client has stopped taking its response still holds an instance slot.
//! When every slot is taken, a request waiting for one evicts the call that
//! has waited longest on its client, so clients that stop reading cannot
//! lock others out until their deadlines pass. The calls that may be
//! evicted belong to the slots they hold ([`super::slots::Slots`]).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use slab::Slab;
use tokio::task::AbortHandle;
use tracing::{Span, warn};

use super::call::CallState;
use super::failure::Evicted;
use crate::metrics::METRICS;

/// A call on its own task: what it knows, how to abort it, and its
/// request's span, for the line that says it was cut off.
struct Running {
    call: Arc<CallState>,
    abort: AbortHandle,
    span: Span,
}

/// Calls running on their own tasks. Only calls that wait are here: one
/// that finishes within its first poll never is.
#[derive(Default)]
pub struct Evictable(Mutex<Slab<Running>>);

impl Evictable {
    fn running(&self) -> MutexGuard<'_, Slab<Running>> {
        // The slab is consistent after any panic: every change is one call.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes a call that now runs on its own task a candidate for eviction;
    /// returns its key.
    pub(super) fn register(&self, call: Arc<CallState>, abort: AbortHandle, span: Span) -> usize {
        self.running().insert(Running { call, abort, span })
    }

    /// Forgets the call at `key`, unless it was evicted and the key reused.
    pub(super) fn unregister(&self, key: usize, call: &Arc<CallState>) {
        let mut running = self.running();
        if running
            .get(key)
            .is_some_and(|entry| Arc::ptr_eq(&entry.call, call))
        {
            running.remove(key);
        }
    }

    /// Cuts off the running call whose client has not taken its response for
    /// the longest time, at least `grace`, and aborts it, freeing its instance
    /// slot for a waiting request. Returns whether one was found.
    ///
    /// A client that stops reading holds its instance until `--request-timeout`
    /// (or `--write-timeout` closes its connection); with every slot held that
    /// way, everybody else would get 503 until then.
    pub(super) fn evict_stalled(&self, grace: Duration) -> bool {
        let mut running = self.running();
        let oldest = running
            .iter()
            .filter(|(_, entry)| !entry.abort.is_finished() && !entry.call.ended())
            .filter_map(|(key, entry)| Some((key, entry.call.stalled_for()?)))
            .filter(|(_, stalled)| *stalled >= grace)
            .max_by_key(|(_, stalled)| *stalled);
        let Some((key, stalled)) = oldest else {
            return false;
        };
        let Running { call, abort, span } = running.remove(key);
        drop(running);
        span.in_scope(|| {
        warn!(
            "every instance slot is taken: cut off this response, whose client has taken nothing for {stalled:.1?}, and freed its slot"
        )
    });
        METRICS.evicted();
        call.finish(Err(wasmtime::Error::new(Evicted)));
        abort.abort();
        true
    }
}
