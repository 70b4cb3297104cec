//! One connection's watchdog: closes it when it has had no request in
//! flight for `--idle-timeout`, or when its responses have waited on a
//! client that took none of them for `--write-timeout`. hyper's own
//! header-read timeout cannot do the first job (it does not start until the
//! auto builder has seen the first bytes, and HTTP/2 has no equivalent), and
//! hyper has no write timeout at all. Time is read on the one clock of
//! client progress ([`crate::guest::stall`]), which eviction reads too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::guest::stall::Stamp;

/// A connection's requests in flight, when it last had none, and whether its
/// client is taking its responses.
pub struct Activity {
    in_flight: AtomicUsize,
    /// When the last request finished (or the connection opened).
    idle_since: AtomicU64,
    /// Response bodies that wait on the client: their last poll handed
    /// hyper a frame.
    waiting_on_client: AtomicUsize,
    /// When hyper last came back for any response body of this connection.
    progress: AtomicU64,
}

/// Why the watchdog closed a connection.
pub enum Closed {
    Idle,
    Stalled,
}

/// A stamp kept in an atomic.
fn load(stamp: &AtomicU64) -> Stamp {
    Stamp::from_nanos(stamp.load(Ordering::Acquire))
}

fn store(stamp: &AtomicU64) {
    stamp.store(Stamp::now().nanos(), Ordering::Release);
}

impl Activity {
    pub fn new() -> Arc<Self> {
        let now = Stamp::now().nanos();
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now),
            waiting_on_client: AtomicUsize::new(0),
            progress: AtomicU64::new(now),
        })
    }

    /// Resolves once the connection has had no request in flight for
    /// `idle`, or has had responses waiting on a client that took none of
    /// them for `write`.
    pub async fn watch(&self, idle: Duration, write: Duration) -> Closed {
        loop {
            let now = Stamp::now();
            let wake_at = if self.waiting_on_client.load(Ordering::Acquire) > 0 {
                let deadline = load(&self.progress).after(write);
                if now >= deadline {
                    return Closed::Stalled;
                }
                deadline
            } else if self.in_flight.load(Ordering::Acquire) == 0 {
                let deadline = load(&self.idle_since).after(idle);
                if now >= deadline {
                    return Closed::Idle;
                }
                deadline
            } else {
                now.after(write)
            };
            // A response may start waiting on its client right after this
            // look, and must then be caught within `write`; so look again
            // at least that often.
            let wake_at = wake_at.min(now.after(write));
            tokio::time::sleep_until(wake_at.instant()).await;
        }
    }

    /// hyper came back for a body: the client took what it was given.
    pub fn progress(&self) {
        store(&self.progress);
    }

    /// A response body starts (`true`) or stops waiting on the client.
    pub fn set_waiting(&self, waiting: bool) {
        if waiting {
            self.waiting_on_client.fetch_add(1, Ordering::AcqRel);
        } else {
            self.waiting_on_client.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Counts one request as in flight until dropped with its response body.
pub struct InFlight(Arc<Activity>);

impl InFlight {
    pub fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity)
    }

    pub fn activity(&self) -> &Activity {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        store(&self.0.idle_since);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
