//! A request's side of its key-value calls: its deadline, whether it still
//! waits for them, and which of its writes are committing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The end of a request's time that its key-value calls leave to the guest:
/// a call still waiting for a lock gives up this much before the deadline,
/// so the guest, told the store is busy, answers its client itself (a whole
/// 503) instead of being cut off by the deadline in the middle of that
/// answer. A quarter of the request's time, at most a second: a guest needs
/// microseconds to answer, a loaded machine some milliseconds to run it.
const ANSWER_MARGIN: Duration = Duration::from_secs(1);

/// One request's side of its key-value calls: until when they may run, and
/// whether a write of it is committing. A write commits only while its
/// request still waits for it (not abandoned, and short of the margin
/// its deadline leaves the guest), and the
/// request's answer after its deadline waits for a commit that had already
/// begun ([`Ticket::settled`]): so a client told its request failed never
/// sees a write of it land later.
pub struct Ticket {
    /// Until when calls may run: the request's deadline less its margin.
    calls_until: Instant,
    /// Set when the guest's call went away mid-call (its client left, or it
    /// was evicted).
    abandoned: AtomicBool,
    /// Writes of this request between their last check and the end of their
    /// commit.
    committing: AtomicUsize,
    committed: tokio::sync::Notify,
}

impl Ticket {
    /// The ticket of a request starting now that must be answered by
    /// `deadline`.
    pub fn new(deadline: Instant) -> Self {
        let time = deadline.saturating_duration_since(Instant::now());
        Self {
            calls_until: deadline - (time / 4).min(ANSWER_MARGIN),
            abandoned: AtomicBool::new(false),
            committing: AtomicUsize::new(0),
            committed: tokio::sync::Notify::new(),
        }
    }

    /// Whether the request still waits for its calls.
    pub(super) fn waiting(&self) -> bool {
        !self.abandoned.load(Ordering::SeqCst) && Instant::now() < self.calls_until
    }

    /// Marks the request abandoned if the returned guard is dropped before
    /// [`Abandon::disarm`].
    pub(super) fn abandon_on_drop(&self) -> Abandon<'_> {
        Abandon(self)
    }

    /// Starts a commit if the request still waits; the commit must be done
    /// when the returned guard is dropped.
    pub(super) fn begin_commit(&self) -> Option<Committing<'_>> {
        // Counted before the check: whoever sees the deadline passed after
        // this check also sees the count (both SeqCst) and waits for it.
        self.committing.fetch_add(1, Ordering::SeqCst);
        let committing = Committing(self);
        self.waiting().then_some(committing)
    }

    /// Resolves once no write of this request is committing; past the
    /// deadline, none will start again.
    pub async fn settled(&self) {
        loop {
            let committed = self.committed.notified();
            let mut committed = std::pin::pin!(committed);
            committed.as_mut().enable();
            if self.committing.load(Ordering::SeqCst) == 0 {
                return;
            }
            committed.await;
        }
    }
}

/// See [`Ticket::abandon_on_drop`].
pub(super) struct Abandon<'a>(&'a Ticket);

impl Abandon<'_> {
    pub(super) fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        self.0.abandoned.store(true, Ordering::SeqCst);
    }
}

/// A commit in progress; see [`Ticket::begin_commit`].
pub(super) struct Committing<'a>(&'a Ticket);

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        self.0.committing.fetch_sub(1, Ordering::SeqCst);
        self.0.committed.notify_waiters();
    }
}
