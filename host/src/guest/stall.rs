//! The one clock of client progress: when a response began waiting on its
//! client. A response body waits on its client from the moment it hands
//! hyper a frame until hyper comes back for the next, which hyper does only
//! once the client has taken the last (its TCP window over HTTP/1.1, its
//! stream window over HTTP/2). The connection's `--write-timeout`
//! (the connection watchdog in `http`) and the eviction of stalled calls
//! ([`super::eviction`]) both read these stamps.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The origin of every stamp.
static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// A moment on this clock, in nanoseconds after its origin; never 0, so
/// that 0 can mean "not waiting".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(u64);

impl Stamp {
    pub fn now() -> Self {
        Self((ORIGIN.elapsed().as_nanos() as u64).max(1))
    }

    /// How long ago this was.
    pub fn elapsed(self) -> Duration {
        Duration::from_nanos(Self::now().0.saturating_sub(self.0))
    }

    /// This moment as a tokio instant, to sleep until it.
    pub fn instant(self) -> Instant {
        *ORIGIN + Duration::from_nanos(self.0)
    }

    /// Kept as a number, in an atomic.
    pub fn nanos(self) -> u64 {
        self.0
    }

    pub fn from_nanos(nanos: u64) -> Self {
        Self(nanos.max(1))
    }

    /// `after` later.
    pub fn after(self, after: Duration) -> Self {
        Self(self.0.saturating_add(after.as_nanos() as u64))
    }
}

/// A stamp that may be unset ("not waiting"), shared between threads.
#[derive(Debug, Default)]
pub struct Waiting(AtomicU64);

impl Waiting {
    /// Marks the start of a wait (`Some(Stamp::now())`) or its end (`None`).
    pub fn set(&self, since: Option<Stamp>) {
        self.0
            .store(since.map_or(0, |stamp| stamp.0), Ordering::Release);
    }

    /// Since when it has waited, if it is waiting.
    pub fn since(&self) -> Option<Stamp> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            since => Some(Stamp(since)),
        }
    }
}
