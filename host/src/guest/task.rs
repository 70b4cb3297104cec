//! A guest's `handle` call, run on a task of its own under the request
//! deadline, so that neither its progress nor its deadline depends on the
//! client reading the response.
//!
//! The call is polled once inline, on the connection's task: a guest that
//! answers without waiting (the common case, hello included) finishes there
//! and costs no spawn. One that waits is moved onto its own task, inside the
//! request's span, where the deadline keeps counting however slowly the
//! client reads; when it passes, the task drops the instance and its slot at
//! once. A client that goes away before its response ended aborts the task.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::task::AbortHandle;
use tracing::Span;

use super::call::CallState;
use super::eviction::Evictable;
use crate::log::InRequest;

/// A guest's call, inline or on its own task. Dropping it aborts the task
/// unless [`GuestTask::detach`] was called.
pub struct GuestTask {
    state: Arc<CallState>,
    abort: Option<AbortHandle>,
}

/// The future that runs a call: instantiate, `handle`, under the deadline,
/// then [`CallState::finish`], then drop the instance.
pub type Call = Pin<Box<dyn Future<Output = ()> + Send>>;

impl GuestTask {
    /// Starts `call`, which reports to `state`; if it waits, it becomes
    /// `evictable`.
    pub async fn start(call: Call, state: Arc<CallState>, evictable: &Arc<Evictable>) -> Self {
        let mut timed = TimedCall {
            call,
            state: state.clone(),
            done: false,
            evictable: None,
        };
        // One inline poll: a guest that does not wait finishes here.
        let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut timed).poll(cx))).await;
        let abort = match first {
            Poll::Ready(()) => None,
            Poll::Pending => {
                let span = Span::current();
                timed.evictable = Some(evictable.clone());
                let abort = tokio::spawn(InRequest::current(timed)).abort_handle();
                // The spawned task cannot run before this returns (the
                // runtime is single-threaded), so its key is set before it
                // can look for it.
                let key = evictable.register(state.clone(), abort.clone(), span);
                let _ = state.running_key.set(key);
                Some(abort)
            }
        };
        Self { state, abort }
    }

    pub fn state(&self) -> &CallState {
        &self.state
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

/// Drives the call, adding up the time spent in it.
struct TimedCall {
    call: Call,
    state: Arc<CallState>,
    done: bool,
    /// Where the call is registered, once it runs on its own task.
    evictable: Option<Arc<Evictable>>,
}

impl Future for TimedCall {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(());
        }
        let started = Instant::now();
        let poll = this.call.as_mut().poll(cx);
        let spent = started.elapsed().as_nanos() as u64;
        this.state.add_busy(spent);
        this.done = poll.is_ready();
        poll
    }
}

impl Drop for TimedCall {
    /// Finished or aborted, the call no longer holds a slot to evict.
    fn drop(&mut self) {
        if let (Some(evictable), Some(&key)) = (&self.evictable, self.state.running_key.get()) {
            evictable.unregister(key, &self.state);
        }
    }
}
