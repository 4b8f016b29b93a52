//! The plugin's heap on wasm: small blocks in size classes with a free list each.
//!
//! A projection allocates a dozen small blocks per event (the event's strings, its row values,
//! the state value it encodes) and frees them before the next batch. wasi-libc's allocator
//! (dlmalloc) spends a few hundred instructions on each allocation and free, splitting and
//! coalescing; here a block of up to [`LARGEST`] bytes comes off its class's free list, or from
//! the chunk being carved, in a few instructions, and goes back on the list when freed. Larger
//! or more aligned blocks go to the system allocator.
//!
//! Freed blocks stay in their class: memory a plugin once used for many blocks of one size is
//! not given back for another size. Each class holds at most what the plugin had live of it at
//! once, and the host's memory cap bounds the whole.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// Size classes: 8, 16, 32 … 2048 bytes.
const CLASSES: usize = 9;
/// Blocks are aligned to this, and a request for more goes to the system allocator.
const ALIGN: usize = 8;
/// The largest block kept in a class.
const LARGEST: usize = ALIGN << (CLASSES - 1);
/// Blocks are carved from chunks of this size, taken from the system allocator.
const CHUNK: usize = 64 * 1024;

/// The allocator. Not `Sync` except on single-threaded wasm, where it is the global allocator.
pub(crate) struct SizeClasses(UnsafeCell<Heap>);

struct Heap {
    /// Each class's free blocks, a list threaded through their first word.
    free: [*mut u8; CLASSES],
    /// The part of the current chunk not carved yet.
    next: *mut u8,
    end: *mut u8,
}

// SAFETY: on wasm without the atomics feature there is one thread, so no two calls overlap.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
unsafe impl Sync for SizeClasses {}

impl SizeClasses {
    pub(crate) const fn new() -> Self {
        SizeClasses(UnsafeCell::new(Heap {
            free: [ptr::null_mut(); CLASSES],
            next: ptr::null_mut(),
            end: ptr::null_mut(),
        }))
    }
}

/// The class of a block of this layout, or `None` for the system allocator.
fn class(layout: Layout) -> Option<usize> {
    if layout.size() > LARGEST || layout.align() > ALIGN {
        return None;
    }
    let size = layout.size().max(ALIGN);
    // ceil(log2(size)) - log2(ALIGN)
    Some((usize::BITS - (size - 1).leading_zeros()) as usize - ALIGN.trailing_zeros() as usize)
}

// SAFETY: every block handed out is `ALIGN`-aligned, at least as large as asked, and owned by
// nobody else until it is freed: it comes either off its class's free list (where only freed
// blocks of that class go) or from the unused end of a chunk, which then moves past it.
unsafe impl GlobalAlloc for SizeClasses {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class(layout) else {
            // SAFETY: the caller's layout, passed on.
            return unsafe { System.alloc(layout) };
        };
        // SAFETY: no other reference to the heap is live (one thread; no call re-enters).
        let heap = unsafe { &mut *self.0.get() };
        let head = heap.free[class];
        if !head.is_null() {
            // SAFETY: a free block holds the next free block's address in its first word.
            heap.free[class] = unsafe { head.cast::<*mut u8>().read() };
            return head;
        }
        let size = ALIGN << class;
        if (heap.end as usize) - (heap.next as usize) < size {
            // SAFETY: CHUNK is non-zero and ALIGN a power of two.
            let chunk = unsafe { System.alloc(Layout::from_size_align_unchecked(CHUNK, ALIGN)) };
            if chunk.is_null() {
                return chunk;
            }
            heap.next = chunk;
            // SAFETY: one past the end of the chunk just allocated.
            heap.end = unsafe { chunk.add(CHUNK) };
        }
        let block = heap.next;
        // SAFETY: `size` bytes are left in the chunk (checked above).
        heap.next = unsafe { block.add(size) };
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class(layout) else {
            // SAFETY: a block of this layout came from the system allocator.
            return unsafe { System.dealloc(block, layout) };
        };
        // SAFETY: as in `alloc`.
        let heap = unsafe { &mut *self.0.get() };
        // SAFETY: the block is at least 8 bytes and aligned to 8: room for the link.
        unsafe { block.cast::<*mut u8>().write(heap.free[class]) };
        heap.free[class] = block;
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded up to the alignment, fits an isize.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class(layout), class(new_layout)) {
            (Some(old), Some(new)) if old == new => block,
            // SAFETY: both layouts belong to the system allocator, which made the block.
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            _ => {
                // SAFETY: a fresh block for the new layout; the old one is copied, then freed.
                unsafe {
                    let moved = self.alloc(new_layout);
                    if !moved.is_null() {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                    moved
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_fall_in_the_smallest_class_that_holds_them() {
        let of = |size, align| class(Layout::from_size_align(size, align).expect("layout"));
        assert_eq!([1, 8, 9, 16, 17, 2047, 2048].map(|size| of(size, 1)), [0, 0, 1, 1, 2, 8, 8].map(Some));
        assert_eq!(of(2049, 8), None, "too large");
        assert_eq!(of(64, 16), None, "too aligned");
    }

    /// Blocks of every class and the system's, freed and reused in a scrambled order, grown and
    /// shrunk: each keeps its own contents, so no two live blocks ever overlap.
    #[test]
    fn live_blocks_never_overlap_and_keep_their_contents() {
        let heap = SizeClasses::new();
        let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
        let mut seed = 0x2545_f491_u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let check = |(block, layout, fill): &(*mut u8, Layout, u8)| {
            // SAFETY: a live block of `layout.size()` bytes, filled with `fill`.
            let bytes = unsafe { std::slice::from_raw_parts(*block, layout.size()) };
            assert!(bytes.iter().all(|b| b == fill), "a block of {} bytes was overwritten", layout.size());
        };
        for step in 0..20_000u32 {
            let roll = next();
            if live.len() > 200 || (roll % 3 == 0 && !live.is_empty()) {
                let (block, layout, fill) = live.swap_remove(next() as usize % live.len());
                check(&(block, layout, fill));
                if roll % 2 == 0 {
                    // SAFETY: a live block of `layout`, freed once.
                    unsafe { heap.dealloc(block, layout) };
                    continue;
                }
                let new_size = 1 + next() as usize % 3000;
                // SAFETY: a live block of `layout`; the old pointer is not used again.
                let moved = unsafe { heap.realloc(block, layout, new_size) };
                let new_layout = Layout::from_size_align(new_size, layout.align()).expect("layout");
                let kept = Layout::from_size_align(layout.size().min(new_size), 1).expect("layout");
                check(&(moved, kept, fill));
                // SAFETY: a live block of `new_size` bytes.
                unsafe { ptr::write_bytes(moved, fill, new_size) };
                live.push((moved, new_layout, fill));
                continue;
            }
            let layout =
                Layout::from_size_align(1 + next() as usize % 3000, [1, 8, 16][next() as usize % 3]).expect("layout");
            // SAFETY: a non-zero size.
            let block = unsafe { heap.alloc(layout) };
            assert!(!block.is_null());
            assert_eq!(block as usize % layout.align(), 0, "aligned");
            let fill = step as u8;
            // SAFETY: a new block of `layout.size()` bytes.
            unsafe { ptr::write_bytes(block, fill, layout.size()) };
            live.push((block, layout, fill));
        }
        live.iter().for_each(check);
        for (block, layout, _) in live {
            // SAFETY: each live block freed once.
            unsafe { heap.dealloc(block, layout) };
        }
    }
}
