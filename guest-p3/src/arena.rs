//! The allocator: a bump arena in the guest's static data, which a fresh
//! instance per request gets whole and zeroed, so nothing is ever freed into
//! it. Rust's default wasm allocator takes new memory with `memory.grow` for
//! its first allocation, whatever room the initial memory has, and a grown
//! memory costs the host two `mprotect` calls per instance (one to grow it,
//! one to shrink the slot back for the next). This hello allocates a few
//! KiB per request (the async runtime's task, the header list, the body);
//! should a request need more than the arena, the default allocator serves
//! the rest.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;

/// Bytes of the arena: what a request takes (measured: under 4 KiB) many
/// times over, while the stack, data and arena still fit the one 64 KiB page
/// of initial memory.
const ARENA_BYTES: usize = 32 << 10;

/// The arena and how much of it is taken.
pub struct Arena {
    bytes: UnsafeCell<[u8; ARENA_BYTES]>,
    taken: UnsafeCell<usize>,
}

// SAFETY: a wasm32 guest without threads has one thread: nothing is shared.
unsafe impl Sync for Arena {}

impl Arena {
    pub const fn new() -> Self {
        Self {
            bytes: UnsafeCell::new([0; ARENA_BYTES]),
            taken: UnsafeCell::new(0),
        }
    }

    fn contains(&self, ptr: *mut u8) -> bool {
        let start = self.bytes.get() as usize;
        (start..start + ARENA_BYTES).contains(&(ptr as usize))
    }
}

// SAFETY: each block handed out is aligned as asked, within the arena, and
// never handed out twice; blocks not from the arena go back to `System`.
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: one thread (see `Sync`), and no reference to `taken` is
        // held across calls.
        let taken = unsafe { &mut *self.taken.get() };
        let start = self.bytes.get() as usize;
        let aligned = (start + *taken).next_multiple_of(layout.align());
        match aligned.checked_add(layout.size()) {
            Some(end) if end <= start + ARENA_BYTES => {
                *taken = end - start;
                aligned as *mut u8
            }
            // SAFETY: the caller's layout, passed on.
            _ => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // The arena's blocks go with the instance.
        if !self.contains(ptr) {
            // SAFETY: not in the arena, so `System` allocated it.
            unsafe { System.dealloc(ptr, layout) }
        }
    }
}
