//! The process's open-file limit, and how many client connections it can
//! hold. Every connection is a file descriptor; with the soft limit most
//! systems start processes with (1024), a server could hold barely a
//! thousand clients, so at startup the soft limit is raised to the hard
//! limit (as Node.js, Go's runtime and nginx do) and the default
//! `--max-connections` is derived from what it then is.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tracing::{info, warn};

/// Descriptors kept for everything that is not a client connection: stdio,
/// the listeners, the event loops' epoll and wakeup descriptors, signal
/// handling, the log writer, compile-cache and component files on reload.
const RESERVED: u64 = 64;

/// The most client connections the default `--max-connections` allows,
/// whatever the open-file limit (over a million in many containers). Each
/// idle HTTP/1.1 connection keeps about 33 KiB of the server's memory
/// ([`IDLE_CONNECTION_KIB`]), so this bounds idle connections to about
/// half a GiB per serving process; a server meant to hold more says so with
/// `--max-connections`.
const DEFAULT_CAP: usize = 16_384;

/// Memory an idle HTTP/1.1 connection keeps, in KiB (hyper's buffers and
/// the connection's task, measured in BENCHMARKS.md), for the startup log.
const IDLE_CONNECTION_KIB: usize = 33;

/// Connections the admin endpoint serves at once: a scraper and a health
/// checker or two, with room to spare.
pub const ADMIN_CONNECTIONS: usize = 16;

/// Raises the soft open-file limit to the hard limit and returns the new soft
/// limit; on failure returns what it was. No limit counts as `u64::MAX`.
fn raise() -> u64 {
    let limit = getrlimit(Resource::Nofile);
    let (Some(before), max) = (limit.current, limit.maximum) else {
        return u64::MAX;
    };
    if max.is_some_and(|max| max <= before) {
        return before;
    }
    match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: max,
            ..limit
        },
    ) {
        Ok(()) => {
            let now = max.unwrap_or(u64::MAX);
            info!("raised the open file limit from {before} to {now}");
            now
        }
        Err(err) => {
            warn!("cannot raise the open file limit from {before}: {err}");
            before
        }
    }
}

/// Raises the open-file limit, then returns how many client connections to
/// hold: `requested` if given, else all the descriptors left after the
/// reserve, the admin endpoint and the guests' outbound connections
/// (`outbound` at most at once).
pub fn max_connections(requested: Option<usize>, outbound: usize) -> usize {
    let soft = raise();
    let spare = RESERVED + ADMIN_CONNECTIONS as u64 + outbound as u64;
    let fits = usize::try_from(soft.saturating_sub(spare)).unwrap_or(usize::MAX);
    match requested {
        Some(requested) => {
            if requested > fits {
                warn!(
                    "--max-connections {requested} is more than the open file limit ({soft}) leaves \
                     room for ({fits}); clients past that are accepted only as others close"
                );
            }
            requested
        }
        None => {
            let derived = fits.clamp(1, DEFAULT_CAP);
            info!(
                "serving up to {derived} connections at once (--max-connections, from the open \
                 file limit of {soft}, at most {DEFAULT_CAP}); idle, they may hold about {} MiB",
                derived * IDLE_CONNECTION_KIB / 1024
            );
            derived
        }
    }
}
