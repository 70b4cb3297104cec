//! The pooling allocator, sized for the component being served.
//!
//! Every resource an instance needs (memories, tables, stacks, instance
//! state) is reserved once in slots, one set per `--max-concurrent-requests`,
//! and reused: a fresh instance takes a slot instead of mapping new memory.
//! What dominates a request's cost is then resetting the linear memory it
//! used, and the cheapest way depends on the component's memory, read from
//! the component before it is compiled (`footprint.rs`); BENCHMARKS.md has
//! the figures for each guest and strategy.
//!
//! Memory not restored in place is given back with `madvise`, and an
//! `madvise` on memory that another core touched interrupts every core to
//! flush its TLB. Restoring only the pages a request wrote (found with
//! `PAGEMAP_SCAN`) avoids it while the request wrote at most 32 runs of
//! pages: wasmtime 48 takes 32 per scan and gives back everything past the
//! 32nd. Interpreters write more, so for them the whole memory is copied
//! back from its image instead, which costs memory bandwidth but no
//! interrupts or faults. Unless only one thread serves (`--processes`, or
//! `--threads 1`): an `madvise` in a process that runs on one core
//! interrupts no other, and restoring dirty pages wins again.

use wasmtime::{Enabled, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::compile::footprint::Footprint;

/// The sizes of an engine's instance pool that the operator sets: the
/// settings every pool is built from, not a pool.
#[derive(Clone, Copy, Debug)]
pub struct PoolSettings {
    /// Instances alive at once (`--max-concurrent-requests`).
    pub slots: usize,
    /// Largest linear memory of one instance (`--max-memory`).
    pub max_memory: usize,
    /// Threads running instances in this process (`--threads`).
    pub serving_threads: usize,
}

/// The pool's settings for one component: what `PoolSettings` fixes plus what the
/// component's footprint decides. Two components with the same shape share
/// an engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pool_slots: u32,
    max_memory: usize,
    core_instances: u32,
    memories: u32,
    tables: u32,
    table_elements: usize,
    /// Bytes of each linear memory restored in place between instances
    /// rather than given back to the kernel.
    pub memory_keep_resident: usize,
    /// Whether only the pages an instance wrote are restored (found with
    /// `PAGEMAP_SCAN`), rather than all of `memory_keep_resident`.
    pub dirty_pages_only: bool,
}

/// Up to this much initial linear memory, restoring all of it is cheaper
/// than asking the kernel which pages were written: the scan walks page
/// tables at a fixed cost per call (measured on the Rust hello).
const SMALL_MEMORY: u64 = 1 << 20;

/// What a small guest keeps resident: its whole memory and some growth.
const SMALL_KEEP_RESIDENT: usize = 1 << 20;

/// From this much initial memory on, a guest is taken to be an interpreter
/// whose heap a request writes all over (more than the 32 runs of pages one
/// scan reports), and its memory is copied back whole. Between the two, a
/// compiled guest with a larger data image or stack writes few runs, and
/// restoring only those wins (the WASI 0.3 hello: 4 runs per request).
const INTERPRETER_MEMORY: u64 = 4 << 20;

/// Growth above its initial memory that a guest may make per request and
/// still have restored in place rather than given back: an interpreter's
/// heap grows while it serves a request. Only what the instance made
/// accessible is ever restored, so headroom costs nothing unused.
const GROWTH_KEPT_RESIDENT: usize = 16 << 20;

/// Bytes kept resident for each table: 131,072 elements, more than the
/// largest guest we serve declares (the JS engine: 7,777).
const TABLE_KEEP_RESIDENT: usize = 1 << 20;

/// Largest table (of function references) an instance may declare or
/// grow; raised for a component that starts with a larger one, and the
/// store's limiter refuses growth past it. Compilers emit one entry per
/// address-taken function: a few hundred for typical guests, so 100,000
/// (about 1 MiB of host memory) is never in the way of real code while still
/// stopping a guest that grows tables to eat host memory.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Headroom above the counts read from the component, which counts each
/// module once (`footprint.rs`): wasmtime rejects at load a component that
/// needs more than its pool allows, so a miscount is a startup error, but
/// headroom makes it one that never happens for the usual shapes.
const COUNT_HEADROOM: u32 = 2;

impl Shape {
    /// The pool for a component with `footprint` under the operator's `pool`.
    pub fn new(pool: PoolSettings, footprint: &Footprint) -> Shape {
        let initial = usize::try_from(footprint.largest_memory).unwrap_or(usize::MAX);
        let memory_keep_resident = if footprint.largest_memory <= SMALL_MEMORY {
            SMALL_KEEP_RESIDENT
        } else {
            initial.saturating_add(GROWTH_KEPT_RESIDENT)
        }
        .min(pool.max_memory);
        Shape {
            pool_slots: u32::try_from(pool.slots).unwrap_or(u32::MAX),
            max_memory: pool.max_memory,
            core_instances: footprint.core_instances.max(1) * COUNT_HEADROOM,
            memories: footprint.memories.max(1) * COUNT_HEADROOM,
            tables: footprint.tables.max(1) * COUNT_HEADROOM,
            table_elements: MAX_TABLE_ELEMENTS
                .max(usize::try_from(footprint.largest_table).unwrap_or(usize::MAX)),
            memory_keep_resident,
            dirty_pages_only: footprint.largest_memory > SMALL_MEMORY
                && (footprint.largest_memory < INTERPRETER_MEMORY || pool.serving_threads == 1),
        }
    }

    /// The allocation strategy for an engine with this shape. The pool and
    /// the handler's semaphore share the slot count, so a request that got a
    /// permit always finds a slot.
    pub fn strategy(&self) -> InstanceAllocationStrategy {
        let slots = self.pool_slots;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(self.core_instances))
            .max_core_instances_per_component(self.core_instances)
            .total_memories(slots.saturating_mul(self.memories))
            .max_memories_per_component(self.memories)
            .total_tables(slots.saturating_mul(self.tables))
            .max_tables_per_component(self.tables)
            .table_elements(self.table_elements)
            .total_stacks(slots)
            .max_memory_size(self.max_memory)
            .linear_memory_keep_resident(self.memory_keep_resident)
            .table_keep_resident(TABLE_KEEP_RESIDENT)
            .pagemap_scan(if self.dirty_pages_only {
                Enabled::Auto
            } else {
                Enabled::No
            });
        InstanceAllocationStrategy::Pooling(pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: PoolSettings = PoolSettings {
        slots: 128,
        max_memory: 128 << 20,
        serving_threads: 2,
    };

    fn footprint(largest_memory: u64) -> Footprint {
        Footprint {
            core_instances: 7,
            memories: 1,
            tables: 2,
            largest_memory,
            largest_table: 8,
            async_abi: false,
        }
    }

    #[test]
    fn a_small_guest_is_reset_whole() {
        let shape = Shape::new(POOL, &footprint(128 << 10));
        assert_eq!(shape.memory_keep_resident, SMALL_KEEP_RESIDENT);
        assert!(!shape.dirty_pages_only);
    }

    #[test]
    fn a_mid_sized_guest_restores_only_dirty_pages() {
        let shape = Shape::new(POOL, &footprint(1_114_112));
        assert_eq!(shape.memory_keep_resident, 1_114_112 + GROWTH_KEPT_RESIDENT);
        assert!(shape.dirty_pages_only);
    }

    #[test]
    fn an_interpreter_is_copied_back_whole() {
        let shape = Shape::new(POOL, &footprint(9_502_720));
        assert_eq!(shape.memory_keep_resident, 9_502_720 + GROWTH_KEPT_RESIDENT);
        assert!(!shape.dirty_pages_only);
    }

    #[test]
    fn an_interpreter_served_by_one_thread_restores_only_dirty_pages() {
        let pool = PoolSettings {
            serving_threads: 1,
            ..POOL
        };
        assert!(Shape::new(pool, &footprint(9_502_720)).dirty_pages_only);
        assert!(!Shape::new(pool, &footprint(128 << 10)).dirty_pages_only);
    }

    #[test]
    fn never_more_than_max_memory_is_kept() {
        let shape = Shape::new(POOL, &footprint(120 << 20));
        assert_eq!(shape.memory_keep_resident, 128 << 20);
    }
}
