//! The large blocks' mappings and the spare extents kept beside them:
//! [`Pool`] does the system calls, [`super::spares`] the bookkeeping.

use std::cell::UnsafeCell;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

use super::map;
use super::spares::{Cuts, Extent, Spares};

/// Unmaps an extent that no block covers any more.
fn unmap(e: Extent) {
    // SAFETY: the extent is a whole range of our mappings that nothing
    // points into (the pool hands out each extent once).
    unsafe { libc::munmap(e.start as *mut libc::c_void, e.len) };
}

/// Moves the pages of the `len` bytes at `from` to `to` (whose pages they
/// replace), leaving `from` unmapped; false when the kernel refuses (the
/// range spans mappings it did not merge), which changes nothing.
///
/// # Safety
/// Both ranges are `len` bytes of our mappings, apart, and nothing else
/// uses either until the call returns.
unsafe fn move_pages(from: *mut u8, len: usize, to: *mut u8) -> bool {
    // SAFETY: the caller's promises.
    let moved = unsafe {
        libc::mremap(
            from as *mut libc::c_void,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            to as *mut libc::c_void,
        )
    };
    moved != libc::MAP_FAILED
}

/// The large blocks' mappings with the spare extents kept beside them
/// (see the module docs and [`super::spares`]). The lock is a spin lock (an
/// allocator cannot wait on anything that allocates) held for the
/// bookkeeping only, never across a system call.
pub(super) struct Pool {
    busy: AtomicBool,
    spares: UnsafeCell<Spares>,
}

// SAFETY: `spares` is only reached under `busy`.
unsafe impl Sync for Pool {}

/// The pool of the installed allocator.
pub(super) static POOL: Pool = Pool::new();

/// Where a growing block's pages end up.
enum Growth {
    /// Into the spare extents right after it.
    InPlace,
    /// Moved into a spare extent at this address.
    Into(usize),
    /// Moved into a fresh mapping.
    Fresh,
}

impl Pool {
    const fn new() -> Self {
        Pool { busy: AtomicBool::new(false), spares: UnsafeCell::new(Spares::new()) }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Spares) -> R) -> R {
        while self.busy.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            std::hint::spin_loop();
        }
        // SAFETY: the lock is held, so this is the only reference.
        let out = f(unsafe { &mut *self.spares.get() });
        self.busy.store(false, Ordering::Release);
        out
    }

    /// A block of `len` mapped bytes (a multiple of [`super::HUGE_PAGE`]) whose
    /// first `size` bytes read as zeros if `zeroed`; null when the kernel
    /// refuses the mapping. Spare pages are used first: the smallest spare
    /// extent that holds the block, or else the largest one moved to the
    /// head of a fresh mapping.
    pub(super) fn alloc(&self, len: usize, size: usize, zeroed: bool) -> *mut u8 {
        let mut cuts = Cuts::new();
        let (reused, spare) = self.with(|s| match s.reuse(len) {
            Some(p) => (Some(p), None),
            None => {
                let spare = s.largest();
                s.mapped(len, 0, &mut cuts);
                (None, spare)
            }
        });
        cuts.pieces().iter().for_each(|&e| unmap(e));
        if let Some(p) = reused {
            let p = p as *mut u8;
            if zeroed {
                // SAFETY: the block holds at least `size` bytes.
                unsafe { ptr::write_bytes(p, 0, size) };
            }
            return p;
        }
        // SAFETY: `len` is a multiple of a huge page.
        let target = unsafe { map(len) };
        if target.is_null() {
            if let Some(e) = self.with(|s| {
                s.retire(len);
                spare.and_then(|e| s.keep(e))
            }) {
                unmap(e);
            }
            return target;
        }
        if let Some(e) = spare {
            // SAFETY: the spare extent is ours alone now, shorter than the
            // fresh mapping, and apart from it.
            if unsafe { move_pages(e.start as *mut u8, e.len, target) } {
                if zeroed {
                    // SAFETY: inside the block.
                    unsafe { ptr::write_bytes(target, 0, size.min(e.len)) };
                }
            } else {
                unmap(e);
            }
        }
        target
    }

    /// Frees a block of `len` mapped bytes: it becomes spare, or is
    /// unmapped when no slot is left.
    pub(super) fn free(&self, block: *mut u8, len: usize) {
        if let Some(e) = self.with(|s| s.free(Extent { start: block as usize, len })) {
            unmap(e);
        }
    }

    /// The block of `old_len` mapped bytes at `block`, resized to
    /// `new_len`, its first `keep` bytes kept; null (the block untouched)
    /// when the kernel refuses a mapping. Shrinking keeps the start and
    /// makes the tail spare; growing takes the spare extent right after the
    /// block, else moves the block's pages (the page tables move; nothing
    /// is copied or faulted in again) into a spare extent that holds it,
    /// else into a fresh mapping.
    ///
    /// # Safety
    /// `block` is a live block of this pool, `old_len` bytes mapped, and
    /// `keep` is at most both sizes.
    pub(super) unsafe fn resize(&self, block: *mut u8, old_len: usize, new_len: usize, keep: usize) -> *mut u8 {
        if new_len <= old_len {
            if new_len < old_len {
                // SAFETY: inside the block.
                self.free(unsafe { block.add(new_len) }, old_len - new_len);
            }
            return block;
        }
        let mut cuts = Cuts::new();
        let growth = self.with(|s| {
            if s.extend(block as usize + old_len, new_len - old_len) {
                Growth::InPlace
            } else if let Some(to) = s.reuse(new_len) {
                s.retire(old_len);
                Growth::Into(to)
            } else {
                s.mapped(new_len, old_len, &mut cuts);
                Growth::Fresh
            }
        });
        cuts.pieces().iter().for_each(|&e| unmap(e));
        let target = match growth {
            Growth::InPlace => return block,
            Growth::Into(to) => to as *mut u8,
            Growth::Fresh => {
                // SAFETY: `new_len` is a multiple of a huge page.
                let target = unsafe { map(new_len) };
                if target.is_null() {
                    self.with(|s| s.retire(new_len - old_len));
                    return target;
                }
                target
            }
        };
        // SAFETY: the block is ours and the target, taken from the spares
        // or freshly mapped, is apart from it and longer.
        if !unsafe { move_pages(block, old_len, target) } {
            // SAFETY: both hold at least `keep` bytes, and are apart.
            unsafe { ptr::copy_nonoverlapping(block, target, keep) };
            unmap(Extent { start: block as usize, len: old_len });
        }
        target
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::{fill, holds_pattern, reads_zeros, HUGE_PAGE};

    const MIB: usize = 1 << 20;

    #[test]
    fn a_freed_block_comes_back_for_the_next_one_zeroed_when_asked() {
        // A pool of its own, so that no other test's blocks take its spares.
        let pool = Pool::new();
        let p = pool.alloc(8 * MIB, 8 * MIB, false);
        fill(p, 8 * MIB);
        pool.free(p, 8 * MIB);
        let q = pool.alloc(4 * MIB, 4 * MIB - 3, true);
        assert_eq!(q, p, "the spare pages serve the next block");
        assert!(reads_zeros(q, 4 * MIB - 3, 1), "reused pages are zeroed when asked");
        // The rest of the spare is the next 4 MiB, as it was left.
        let r = pool.alloc(4 * MIB, 4 * MIB, false);
        // SAFETY: `r` is the second half of the first block.
        assert_eq!(r, unsafe { p.add(4 * MIB) });
        // SAFETY: inside the block.
        assert!((0..4 * MIB).all(|i| unsafe { *r.add(i) } == ((i + 4 * MIB) % 251) as u8));
        pool.free(q, 4 * MIB);
        pool.free(r, 4 * MIB);
        pool.with(|s| assert_eq!((s.live(), s.spare()), (0, 8 * MIB)));
    }

    #[test]
    fn a_block_grows_in_place_into_a_spare_or_moves_keeping_its_contents() {
        let pool = Pool::new();
        let a = pool.alloc(8 * MIB, 8 * MIB, false);
        pool.free(a, 8 * MIB);
        // Half of the spare serves `b`, which then grows into the other half
        // where it lies.
        let b = pool.alloc(4 * MIB, 4 * MIB, false);
        fill(b, 4 * MIB);
        // SAFETY: a live block of the pool; 4 MiB kept.
        let b2 = unsafe { pool.resize(b, 4 * MIB, 8 * MIB, 4 * MIB) };
        assert_eq!(b2, b, "grown in place");
        assert!(holds_pattern(b2, 4 * MIB));
        // A 16 MiB spare elsewhere: growing past the 8 MiB moves the block's
        // pages into it.
        let c = pool.alloc(16 * MIB, 16 * MIB, false);
        pool.free(c, 16 * MIB);
        fill(b2, 8 * MIB);
        // SAFETY: as above.
        let b3 = unsafe { pool.resize(b2, 8 * MIB, 12 * MIB, 8 * MIB) };
        assert_eq!(b3, c, "moved into the spare that holds it");
        assert!(holds_pattern(b3, 8 * MIB));
        // No spare holds 32 MiB: a fresh mapping takes the pages.
        fill(b3, 12 * MIB);
        // SAFETY: as above.
        let b4 = unsafe { pool.resize(b3, 12 * MIB, 32 * MIB, 12 * MIB) };
        assert_eq!(b4 as usize % HUGE_PAGE, 0);
        assert!(holds_pattern(b4, 12 * MIB));
        // Shrinking keeps the start and makes the tail spare.
        // SAFETY: as above.
        assert_eq!(unsafe { pool.resize(b4, 32 * MIB, 6 * MIB, 6 * MIB) }, b4);
        assert!(holds_pattern(b4, 6 * MIB));
        pool.with(|s| {
            assert_eq!(s.live(), 6 * MIB);
            assert!(s.live() + s.spare() <= s.high());
        });
        pool.free(b4, 6 * MIB);
    }

    #[test]
    fn a_fresh_block_takes_the_largest_spare_pages_and_reads_as_zeros() {
        let pool = Pool::new();
        let a = pool.alloc(4 * MIB, 4 * MIB, false);
        fill(a, 4 * MIB);
        pool.free(a, 4 * MIB);
        let b = pool.alloc(16 * MIB, 16 * MIB, true);
        assert!(reads_zeros(b, 16 * MIB, 997));
        pool.with(|s| assert_eq!((s.live(), s.spare(), s.high()), (16 * MIB, 0, 16 * MIB)));
        pool.free(b, 16 * MIB);
    }
}
