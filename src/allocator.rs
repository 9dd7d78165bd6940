//! The global allocator: mimalloc, asked for a plain block whenever the layout allows it.
//!
//! `mimalloc::MiMalloc` asks for every block with `mi_malloc_aligned`. mimalloc's aligned entry
//! has a fast path only for blocks up to 1 KiB; a larger block with an ordinary alignment takes
//! its over-allocating path (`mi_theap_malloc_zero_aligned_at_overalloc`, about 175
//! instructions a call, 27 calls per proxied GET). `mi_malloc` returns blocks aligned to 16
//! bytes, so a layout whose alignment is at most 16 and at most its size (the rule the standard
//! library's own allocator uses) gets a plain `mi_malloc` block; any other goes to `MiMalloc`.
//! Every block is freed by `mi_free`, whichever way it came (README "Where the time goes").

use std::alloc::{GlobalAlloc, Layout};

/// mimalloc's guaranteed alignment of every block (`MI_MAX_ALIGN_SIZE` on 64-bit targets).
const PLAIN_ALIGN: usize = 16;

/// Whether a block of `size` bytes aligned to `align` can be a plain `mi_malloc` block.
#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

/// mimalloc, through its plain entry points where the layout allows.
pub struct Mimalloc;

// SAFETY: every method hands the layout's size (and alignment, when it is not plain) to
// mimalloc, whose blocks satisfy it, and frees with mimalloc's `mi_free`, which takes blocks
// from either entry point.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            // SAFETY: a plain block of at least `size` bytes, aligned to 16.
            unsafe { libmimalloc_sys::mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: the caller's layout, as `GlobalAlloc::alloc` receives it.
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            // SAFETY: as `alloc`, zeroed.
            unsafe { libmimalloc_sys::mi_zalloc(layout.size()).cast() }
        } else {
            // SAFETY: the caller's layout.
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from mimalloc (either entry point).
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            // SAFETY: `ptr` came from mimalloc; the new block is plain, aligned to 16, which
            // satisfies the layout's alignment.
            unsafe { libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast() }
        } else {
            // SAFETY: the caller's pointer and layout.
            unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_their_alignment_and_survive_growth() {
        let a = Mimalloc;
        for (size, align) in [
            (1, 1),
            (8, 8),
            (24, 8),
            (4096, 8),
            (100_000, 16),
            (64, 64),
            (8, 16),
        ] {
            let layout = Layout::from_size_align(size, align).unwrap();
            unsafe {
                let p = a.alloc(layout);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "{size}/{align}");
                p.write_bytes(0xab, size);
                let q = a.realloc(p, layout, size * 3);
                assert_eq!(q as usize % align, 0, "{size}/{align} grown");
                assert_eq!(*q.add(size - 1), 0xab);
                a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                let z = a.alloc_zeroed(layout);
                assert!(std::slice::from_raw_parts(z, size).iter().all(|b| *b == 0));
                a.dealloc(z, layout);
            }
        }
    }
}
