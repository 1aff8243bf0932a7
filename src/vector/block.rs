//! Memory for a frozen copy's vectors: cache-line aligned, and, for a
//! block of 2 MiB or more, 2 MiB aligned with its whole 2 MiB pages
//! offered to the kernel for transparent huge pages
//! (`madvise(MADV_HUGEPAGE)`; the tail past the last whole one keeps small
//! pages, so no memory is added).
//!
//! A search reads a few hundred vectors scattered over the whole copy
//! (188 MB for Fashion-MNIST's 60,000 × 784). With 4 KiB pages nearly
//! each of them also misses the TLB, and a page walk costs more still in a
//! virtual machine; with 2 MiB pages the walks mostly go (measured
//! in-process: about 15 % more queries per second on Fashion-MNIST,
//! bench/RESULTS.md). Vectors start on
//! a cache line when `4 · dimension` is a multiple of 64 (an `Arc<[f32]>`
//! put them 16 bytes past one, one more line per vector).
//!
//! Invariant: a `Block` owns `len` initialised `f32`s at `ptr`, allocated
//! with `layout`, and never changes them (it is shared between copies).

use std::alloc::Layout;
use std::ptr::NonNull;

/// Huge page size (x86-64, and the usual one elsewhere).
const HUGE: usize = 2 << 20;
const LINE: usize = 64;

pub struct Block {
    ptr: NonNull<f32>,
    len: usize,
    layout: Layout,
}

// SAFETY: a Block is an owned, immutable array of f32 (like a Box<[f32]>).
unsafe impl Send for Block {}
// SAFETY: as above; it is never written after `copy_of`.
unsafe impl Sync for Block {}

impl Block {
    /// A block holding a copy of `data`.
    pub fn copy_of(data: &[f32]) -> Block {
        let bytes = std::mem::size_of_val(data);
        let align = if bytes >= HUGE { HUGE } else { LINE };
        let size = bytes.max(1);
        let Ok(layout) = Layout::from_size_align(size, align) else {
            std::alloc::handle_alloc_error(Layout::new::<f32>());
        };
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { std::alloc::alloc(layout) }.cast::<f32>();
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout);
        };
        if align == HUGE {
            // SAFETY: the range (the whole huge pages at the start) is in
            // this allocation; the advice only tells the kernel how to back
            // it (an error changes nothing).
            unsafe {
                libc::madvise(raw.cast(), size / HUGE * HUGE, libc::MADV_HUGEPAGE);
            }
        }
        // SAFETY: the allocation holds at least `data.len()` f32s, aligned,
        // and does not overlap `data`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), raw, data.len()) };
        Block {
            ptr,
            len: data.len(),
            layout,
        }
    }
}

impl std::ops::Deref for Block {
    type Target = [f32];
    #[inline]
    fn deref(&self) -> &[f32] {
        // SAFETY: `len` initialised f32s at `ptr` (the invariant).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: allocated in `copy_of` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_hold_their_copy_aligned() {
        for n in [0usize, 1, 17, 1 << 19, (1 << 19) + 3] {
            let data: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let b = Block::copy_of(&data);
            assert_eq!(&b[..], &data[..]);
            let align = if n * 4 >= HUGE { HUGE } else { LINE };
            assert_eq!(b.as_ptr() as usize % align, 0, "{n}");
        }
    }
}
