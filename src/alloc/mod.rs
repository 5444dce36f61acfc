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

mod pool;
mod spares;

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;

use pool::POOL;

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

/// Fills `len` bytes at `p` with the pattern [`holds_pattern`] checks.
#[cfg(test)]
fn fill(p: *mut u8, len: usize) {
    for i in 0..len {
        // SAFETY: the caller passes a live block of at least `len` bytes.
        unsafe { *p.add(i) = (i % 251) as u8 };
    }
}

/// Whether the `len` bytes at `p` hold [`fill`]'s pattern.
#[cfg(test)]
fn holds_pattern(p: *const u8, len: usize) -> bool {
    // SAFETY: the caller passes a live block of at least `len` bytes.
    (0..len).all(|i| unsafe { *p.add(i) } == (i % 251) as u8)
}

/// Whether every `step`-th of the `len` bytes at `p` is zero.
#[cfg(test)]
fn reads_zeros(p: *const u8, len: usize, step: usize) -> bool {
    // SAFETY: the caller passes a live block of at least `len` bytes.
    (0..len).step_by(step).all(|i| unsafe { *p.add(i) } == 0)
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
        fill(p, size);
        (p, layout)
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
            assert!(reads_zeros(p, layout.size(), 4093));
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
            fill(p, new_size);
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
