//! The host-memory budget of one instance (`--max-guest-host-memory`):
//! how much host memory a guest can make the server keep beyond its linear
//! memory, and the resource-table size that keeps it there.

use crate::imports::http_hooks::{
    BODY_BUFFER_CHUNKS, BODY_CHUNK, MAX_AUTHORITY, MAX_METHOD, MAX_OUTBOUND, OUTBOUND_BYTES,
};
use crate::imports::output::MAX_LINE;

/// Largest `wasi:random` request a guest may make; larger ones trap. The host
/// allocates the whole buffer before copying it into the guest, so
/// wasmtime-wasi's default of 64 MiB per call would let each instance make the
/// host allocate far past `--max-memory`. Keys and seeds need bytes, not MiB.
pub const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// Longest path of a request a guest builds: the `http` crate's own cap.
const MAX_PATH: usize = 64 << 10;

/// Bookkeeping of one table entry beyond the data counted above: the
/// entry's struct, its table slot and allocator rounding.
const ENTRY_OVERHEAD: usize = 1 << 10;

/// How much host memory one instance can make the server keep, and the
/// resource count that keeps it there. The host keeps guest data in its
/// resource table (header fields, requests and responses, body buffers,
/// streams, pollables); every kind of entry has a bounded size, so the
/// table's capacity times the largest entry, plus the fixed per-instance
/// buffers (outbound connections, guest output lines, one `wasi:random`
/// call, one key-value call), is the bound.
#[derive(Clone, Copy, Debug)]
pub struct HostBudget {
    /// `--max-guest-fields-size`: the cap wasmtime-wasi-http enforces on one
    /// header set, in its own accounting.
    pub fields_size: usize,
    /// Resource table entries one instance may hold at once.
    pub resources: usize,
    /// The most one key-value call makes the host hold (see
    /// [`HostBudget::keyvalue_call`]).
    keyvalue_call: usize,
}

impl HostBudget {
    /// The largest a single table entry can get: an outgoing request with
    /// full headers (a `HeaderMap` takes up to about twice what
    /// wasmtime-wasi-http counts), a full path, authority and method; or a
    /// response body's buffered chunks.
    pub fn largest_entry(fields_size: usize) -> usize {
        let request = 2 * fields_size + MAX_PATH + MAX_AUTHORITY + MAX_METHOD;
        let body = (BODY_BUFFER_CHUNKS + 2) * BODY_CHUNK;
        request.max(body) + ENTRY_OVERHEAD
    }

    /// What one key-value call can make the host hold: a batch of the
    /// largest keys and values, twice (the guest's copy, and the store's
    /// request or reply buffer).
    pub fn keyvalue_call(max_key: usize, max_value: usize, max_batch: usize) -> usize {
        2 * max_batch.max(1) * (max_key + max_value)
    }

    /// What an instance holds whatever its table holds.
    fn fixed(&self) -> usize {
        MAX_OUTBOUND * OUTBOUND_BYTES
            + 2 * MAX_LINE
            + MAX_RANDOM_BYTES as usize
            + self.keyvalue_call
    }

    /// Fits the resource table to `total` bytes of host memory, beside one
    /// key-value call of `keyvalue_call` bytes. Fails when the budget cannot
    /// hold [`MIN_RESOURCES`] entries.
    pub fn new(total: usize, fields_size: usize, keyvalue_call: usize) -> Result<Self, String> {
        let mut budget = Self {
            fields_size,
            resources: 0,
            keyvalue_call,
        };
        let entry = Self::largest_entry(fields_size);
        budget.resources = total.saturating_sub(budget.fixed()) / entry;
        if budget.resources < MIN_RESOURCES {
            let size = |bytes: usize| bytesize::ByteSize(bytes as u64);
            return Err(format!(
                "--max-guest-host-memory ({}) holds only {} resources of up to {} each \
                 after {} of fixed buffers (of which {} for one key-value call); give it at \
                 least {}, or lower --max-guest-fields-size, --keyvalue-max-value or \
                 --keyvalue-max-batch",
                size(total),
                budget.resources,
                size(entry),
                size(budget.fixed()),
                size(keyvalue_call),
                size(budget.fixed() + MIN_RESOURCES * entry)
            ));
        }
        Ok(budget)
    }

    /// What one call from the guest may make the host copy out of it
    /// (wasmtime's "hostcall fuel", 128 MiB unless set): the largest call a
    /// guest within its limits makes, a key-value batch or a resource entry,
    /// so that a larger one traps before the host allocates it, not after.
    pub fn hostcall_fuel(&self) -> usize {
        self.keyvalue_call
            .max(Self::largest_entry(self.fields_size))
    }

    /// The bound this budget holds the host to, per instance.
    pub fn bound(&self) -> usize {
        self.resources * Self::largest_entry(self.fields_size) + self.fixed()
    }
}

/// Fewer resources than this and ordinary guests fail: a request handled
/// with one outbound call uses about twenty.
const MIN_RESOURCES: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    /// The default budget holds a few hundred resources, and the bound it
    /// states stays within it.
    #[test]
    fn default_budget_fits() {
        let keyvalue = HostBudget::keyvalue_call(1 << 10, 1 << 20, 8);
        let budget = HostBudget::new(64 << 20, 32 << 10, keyvalue).unwrap();
        assert!(budget.resources >= 256, "{budget:?}");
        assert!(budget.bound() <= 64 << 20);
        assert!(HostBudget::new(1 << 20, 32 << 10, 0).is_err());
        // Key-value limits that leave no room for resources are refused.
        let huge = HostBudget::keyvalue_call(1 << 10, 1 << 20, 100);
        assert!(HostBudget::new(64 << 20, 32 << 10, huge).is_err());
    }
}
