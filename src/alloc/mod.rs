//! The process's allocator: the system's for every block under 4 MiB;
//! larger blocks are mapped on their own, on 2 MiB boundaries, and marked
//! for transparent huge pages (`madvise(MADV_HUGEPAGE)`), so that they are
//! faulted in 2 MiB at a time instead of 4 KiB.
//!
//! Why: every large buffer of a run (the pair tables, the factor matrices,
//! the k-means rows and bounds) is fresh memory, and each first touch of a
//! 4 KiB page is a page fault. `cohortcast run` on the medium benchmark set
//! took about 570 000 of them, and in profiles of this 2-core VM their
//! kernel time (`clear_page_erms`, the fault path) was 4–5% of all samples,
//! with stretches where one core did nothing else. The system's own
//! huge-page switch for `malloc` (glibc's `glibc.malloc.hugetlb=1` tunable)
//! took effect on only some runs (see BENCHMARKS.md); mapping the blocks
//! here makes it the same on every run.
//!
//! A freed large block is not unmapped but kept as a spare extent, its
//! pages still in memory, and the next large blocks are cut from the
//! spares first (the smallest spare that holds one; a block that grows
//! takes the spare right after it, or moves its pages into one). Why: on
//! this VM the first touch of a page the process has not had, or has not
//! had for a few seconds, is slow: a fresh 1 GiB is faulted in at
//! 0.4–0.8 GB/s, against 8 GB/s for pages unmapped a moment before
//! (BENCHMARKS.md, session 19; the host takes back guest memory that stays
//! free). A medium run maps about 2.9 GB of large blocks over its life,
//! three times its peak, so most of it can be pages already faulted in.
//! Spare bytes are bounded (see [`spares`]): live and spare bytes together
//! never exceed the most ever live at once, so the allocator maps no more
//! than one that unmaps every block as it is freed.
//!
//! The kernel decides: where transparent huge pages are off
//! (`/sys/kernel/mm/transparent_hugepage/enabled` is `never`) the advice is
//! refused and the blocks are ordinary pages. A block's mapping is its
//! size rounded up to 2 MiB, so a block of 4 MiB + 1 byte holds 6 MiB of
//! address space; the pages it never touches cost nothing unless a huge
//! page covers them.

mod spares;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

use spares::{Cuts, Extent, Spares};

/// The allocator `main` installs (see the module docs).
pub struct HugePages;

/// Blocks from this size up are mapped on their own.
const LARGE: usize = 4 << 20;

/// The size and alignment of a transparent huge page on x86-64.
const HUGE_PAGE: usize = 2 << 20;

/// Whether the block of this layout is one of ours: large enough, and
/// aligned to no more than a huge page (a stricter alignment, which nothing
/// here asks for, stays with the system's allocator).
fn is_large(size: usize, align: usize) -> bool {
    size >= LARGE && align <= HUGE_PAGE
}

/// The length of the mapping that holds a large block of `size` bytes.
fn mapped_len(size: usize) -> Option<usize> {
    size.checked_next_multiple_of(HUGE_PAGE)
}

/// Maps `len` bytes (a multiple of [`HUGE_PAGE`]) of zeroed memory that
/// start on a huge-page boundary, with the huge-page advice; null when the
/// kernel refuses the mapping.
unsafe fn map(len: usize) -> *mut u8 {
    let Some(span) = len.checked_add(HUGE_PAGE) else { return ptr::null_mut() };
    // SAFETY: an anonymous private mapping at an address the kernel picks.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return ptr::null_mut();
    }
    // One huge page more than needed, then the ends cut off so that what
    // stays starts on a boundary (mmap only promises 4 KiB).
    let start = p as usize;
    let aligned = start.next_multiple_of(HUGE_PAGE);
    let (head, tail) = (aligned - start, span - (aligned - start) - len);
    // SAFETY: both pieces lie inside the mapping just made and are page
    // multiples (the start and both lengths are).
    unsafe {
        if head > 0 {
            libc::munmap(p, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
        // Advice only: where huge pages are off the kernel says EINVAL and
        // the mapping keeps 4 KiB pages.
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    aligned as *mut u8
}

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
/// (see the module docs and [`spares`]). The lock is a spin lock (an
/// allocator cannot wait on anything that allocates) held for the
/// bookkeeping only, never across a system call.
struct Pool {
    busy: AtomicBool,
    spares: UnsafeCell<Spares>,
}

// SAFETY: `spares` is only reached under `busy`.
unsafe impl Sync for Pool {}

/// The pool of the installed allocator.
static POOL: Pool = Pool::new();

/// How a block grows when no spare follows it.
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

    /// A block of `len` mapped bytes (a multiple of [`HUGE_PAGE`]) whose
    /// first `size` bytes read as zeros if `zeroed`; null when the kernel
    /// refuses the mapping. Spare pages are used first: the smallest spare
    /// extent that holds the block, or else the largest one moved to the
    /// head of a fresh mapping.
    fn alloc(&self, len: usize, size: usize, zeroed: bool) -> *mut u8 {
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
    fn free(&self, block: *mut u8, len: usize) {
        if let Some(e) = self.with(|s| {
            s.retire(len);
            s.keep(Extent { start: block as usize, len })
        }) {
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
    unsafe fn resize(&self, block: *mut u8, old_len: usize, new_len: usize, keep: usize) -> *mut u8 {
        if new_len <= old_len {
            if new_len < old_len {
                let tail = Extent { start: block as usize + new_len, len: old_len - new_len };
                if let Some(e) = self.with(|s| {
                    s.retire(tail.len);
                    s.keep(tail)
                }) {
                    unmap(e);
                }
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

// SAFETY: large blocks are whole extents of private mappings, at least as
// aligned as their layouts ask (2 MiB ≥ any alignment `is_large` accepts),
// handed out by the pool to one block at a time; everything else is the
// system allocator's. A block is ours exactly when `is_large` holds for
// its current layout, which every method keeps true when it moves a block
// across the line.
unsafe impl GlobalAlloc for HugePages {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !is_large(layout.size(), layout.align()) {
            // SAFETY: the caller's promises about `layout` pass through.
            return unsafe { System.alloc(layout) };
        }
        match mapped_len(layout.size()) {
            Some(len) => POOL.alloc(len, layout.size(), false),
            None => ptr::null_mut(),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !is_large(layout.size(), layout.align()) {
            // SAFETY: as for `alloc`.
            return unsafe { System.alloc_zeroed(layout) };
        }
        match mapped_len(layout.size()) {
            Some(len) => POOL.alloc(len, layout.size(), true),
            None => ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if !is_large(layout.size(), layout.align()) {
            // SAFETY: a block under the line came from the system allocator.
            return unsafe { System.dealloc(block, layout) };
        }
        let len = mapped_len(layout.size()).expect("a large block's mapping length fitted when it was made");
        POOL.free(block, len);
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        let (was, will) = (is_large(layout.size(), align), is_large(new_size, align));
        if !was && !will {
            // SAFETY: as for `dealloc`, and the caller's promises about
            // `new_size` pass through.
            return unsafe { System.realloc(block, layout, new_size) };
        }
        if was && will {
            let (Some(old_len), Some(new_len)) = (mapped_len(layout.size()), mapped_len(new_size)) else {
                return ptr::null_mut();
            };
            // SAFETY: a live large block of `old_len` mapped bytes; the
            // bytes kept fit both sizes.
            return unsafe { POOL.resize(block, old_len, new_len, layout.size().min(new_size)) };
        }
        // Across the line: a new block on the other side, then a copy.
        // SAFETY: `new_size` is a valid size for this alignment (the
        // caller's promise), and both blocks hold at least the bytes copied.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, align);
            let fresh = self.alloc(new_layout);
            if !fresh.is_null() {
                ptr::copy_nonoverlapping(block, fresh, layout.size().min(new_size));
                self.dealloc(block, layout);
            }
            fresh
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the kernel would give huge pages to an advised mapping.
    fn huge_pages_on() -> bool {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|s| s.contains("[always]") || s.contains("[madvise]"))
    }

    /// The `THPeligible` line of the mapping that holds `addr`, from
    /// `/proc/self/smaps`.
    fn thp_eligible(addr: usize) -> Option<bool> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((lo, hi)) = range.split_once('-') {
                    if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) {
                        inside = (lo..hi).contains(&addr);
                        continue;
                    }
                }
            }
            if inside {
                if let Some(v) = line.strip_prefix("THPeligible:") {
                    return Some(v.trim() == "1");
                }
            }
        }
        None
    }

    fn filled(a: &HugePages, size: usize, align: usize) -> (*mut u8, Layout) {
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: a non-zero size.
        let p = unsafe { a.alloc(layout) };
        assert!(!p.is_null());
        for i in 0..size {
            // SAFETY: inside the block.
            unsafe { *p.add(i) = (i % 251) as u8 };
        }
        (p, layout)
    }

    fn holds_pattern(p: *const u8, len: usize) -> bool {
        // SAFETY: the caller passes a live block of at least `len` bytes.
        (0..len).all(|i| unsafe { *p.add(i) } == (i % 251) as u8)
    }

    #[test]
    fn large_blocks_are_zeroed_aligned_and_advised_for_huge_pages() {
        let a = HugePages;
        let layout = Layout::from_size_align(LARGE + 12_345, 64).unwrap();
        // SAFETY: a non-zero size; freed with the same layout.
        unsafe {
            let p = a.alloc_zeroed(layout);
            assert!(!p.is_null());
            assert_eq!(p as usize % HUGE_PAGE, 0, "a large block starts on a huge page");
            assert!((0..layout.size()).step_by(4093).all(|i| *p.add(i) == 0));
            *p.add(layout.size() - 1) = 7;
            // (Kernels before 5.0 do not say; then only the rest is checked.)
            if let (true, Some(eligible)) = (huge_pages_on(), thp_eligible(p as usize)) {
                assert!(eligible, "the mapping is advised for huge pages");
            }
            a.dealloc(p, layout);
        }
    }

    #[test]
    fn realloc_keeps_the_contents_across_every_kind_of_move() {
        let a = HugePages;
        // Small to large, large to larger, larger to large (shrink in place),
        // and back under the line.
        let (mut p, mut layout) = filled(&a, 1 << 20, 64);
        for new_size in [LARGE + 3, 3 * LARGE + 5, LARGE + 9, 1 << 19] {
            let keep = layout.size().min(new_size);
            // SAFETY: a live block and its layout; a valid new size.
            p = unsafe { a.realloc(p, layout, new_size) };
            assert!(!p.is_null());
            assert!(holds_pattern(p, keep), "contents kept growing or shrinking to {new_size}");
            if is_large(new_size, 64) {
                assert_eq!(p as usize % HUGE_PAGE, 0, "a moved large block starts on a huge page");
            }
            layout = Layout::from_size_align(new_size, 64).unwrap();
            // Refill so the next step checks every byte it keeps.
            for i in 0..new_size {
                // SAFETY: inside the block.
                unsafe { *p.add(i) = (i % 251) as u8 };
            }
        }
        // SAFETY: the last layout is the block's.
        unsafe { a.dealloc(p, layout) };
    }

    #[test]
    fn alignment_beyond_a_huge_page_is_left_to_the_system() {
        let a = HugePages;
        let (p, layout) = filled(&a, LARGE, 4 * HUGE_PAGE);
        assert_eq!(p as usize % (4 * HUGE_PAGE), 0);
        assert!(holds_pattern(p, layout.size()));
        // SAFETY: allocated with this layout.
        unsafe { a.dealloc(p, layout) };
    }

    /// Fills `len` bytes at `p` with the pattern [`holds_pattern`] checks.
    fn fill(p: *mut u8, len: usize) {
        for i in 0..len {
            // SAFETY: the caller passes a live block of at least `len` bytes.
            unsafe { *p.add(i) = (i % 251) as u8 };
        }
    }

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
        // SAFETY: inside the block.
        assert!((0..4 * MIB - 3).all(|i| unsafe { *q.add(i) } == 0), "reused pages are zeroed when asked");
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
        // SAFETY: inside the block.
        assert!((0..16 * MIB).step_by(997).all(|i| unsafe { *b.add(i) } == 0));
        pool.with(|s| assert_eq!((s.live(), s.spare(), s.high()), (16 * MIB, 0, 16 * MIB)));
        pool.free(b, 16 * MIB);
    }

    #[test]
    fn vectors_through_the_installed_allocator_grow_and_keep_their_values() {
        // The binary's tests run under `main`'s allocator too: a vector
        // pushed past the line grows by `realloc`, from the system's
        // blocks into mapped ones and through mapped moves.
        let mut v = Vec::new();
        for i in 0..2_000_000u64 {
            v.push(i);
        }
        assert_eq!(v.iter().sum::<u64>(), 1_999_999 * 2_000_000 / 2);
        assert_eq!(v.as_ptr() as usize % HUGE_PAGE, 0, "the installed allocator mapped the vector");
    }
}
