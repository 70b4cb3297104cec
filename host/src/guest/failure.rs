//! Why a guest's call was stopped, as errors its outcome carries: the
//! handler turns each into the status the client gets and the line the log
//! gets.

use std::fmt;
use std::time::Duration;

/// Stopped at its deadline (`--request-timeout`): 504.
#[derive(Debug)]
pub struct TimedOut(pub Duration);

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the guest timed out: it ran past --request-timeout ({:?})",
            self.0
        )
    }
}

impl std::error::Error for TimedOut {}

/// Stopped to free its slot for a waiting request, its client having
/// stopped reading ([`super::eviction`]).
#[derive(Debug)]
pub struct Evicted;

impl fmt::Display for Evicted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("its client stopped taking the response while other requests waited for an instance slot")
    }
}

impl std::error::Error for Evicted {}

/// Context for a guest failure that followed a refused memory growth.
#[derive(Debug)]
pub struct MemoryLimitHit;

impl fmt::Display for MemoryLimitHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the guest hit --max-memory")
    }
}
