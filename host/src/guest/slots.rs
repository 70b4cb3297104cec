//! Instance slots: one per instance alive at once
//! (`--max-concurrent-requests`), matching the instance pool's slots one for
//! one, so a request that holds a slot always finds room in the pool. A
//! request waits for one up to `--queue-timeout`, and while it waits it
//! evicts responses stalled on clients that stopped reading.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::eviction::Evictable;

/// How long a response must have waited on its client before a request
/// that finds every instance slot taken may cut it off and take its slot.
/// A client that is reading comes back for more within a round trip; half a
/// second without taking a byte, while others queue, is a client that has
/// stopped. Short enough that the request waiting gets its slot well within
/// the default `--queue-timeout` (1 s).
const EVICTION_GRACE: Duration = Duration::from_millis(500);

/// How often a waiting request looks for a stalled call to evict: a fraction
/// of the grace, so a call is cut off soon after it qualifies.
const EVICTION_POLL: Duration = Duration::from_millis(125);

/// An instance slot, given back when dropped.
pub type Slot = OwnedSemaphorePermit;

pub struct Slots {
    /// One permit per slot.
    permits: Arc<Semaphore>,
    /// `--queue-timeout`: how long a request waits for a slot.
    queue_timeout: Duration,
    /// The calls holding slots that a waiting request may evict.
    evictable: Arc<Evictable>,
}

impl Slots {
    pub fn new(count: usize, queue_timeout: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(count)),
            queue_timeout,
            evictable: Arc::default(),
        }
    }

    pub fn queue_timeout(&self) -> Duration {
        self.queue_timeout
    }

    /// Where a call that runs on its own task registers to be evictable.
    pub fn evictable(&self) -> &Arc<Evictable> {
        &self.evictable
    }

    /// Takes a slot for a request: at once if one is free (without arming a
    /// timer), else within `--queue-timeout`, else `None`. While it waits it
    /// evicts calls whose clients have stopped reading, so those cannot hold
    /// every slot until their deadlines.
    pub async fn take(&self) -> Option<Slot> {
        if let Ok(slot) = self.permits.clone().try_acquire_owned() {
            return Some(slot);
        }
        let give_up = tokio::time::sleep(self.queue_timeout);
        let mut give_up = std::pin::pin!(give_up);
        // One wait, kept across the evictions, so the request keeps its place
        // in the semaphore's queue.
        let mut wait = std::pin::pin!(self.permits.clone().acquire_owned());
        loop {
            self.evictable.evict_stalled(EVICTION_GRACE);
            tokio::select! {
                slot = &mut wait => return slot.ok(),
                () = &mut give_up => return None,
                () = tokio::time::sleep(EVICTION_POLL) => {}
            }
        }
    }

    /// Waits for a slot however long it takes: for a reload's trial
    /// instantiation, which must not take a request's slot, nor fail for
    /// want of one.
    pub async fn wait(&self) -> Slot {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }
}
