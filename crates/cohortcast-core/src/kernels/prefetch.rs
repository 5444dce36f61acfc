//! Prefetch hints: loads of memory the code is about to read, started
//! early. Hints only: nothing is read and no address faults.

/// Rows ahead to prefetch in the CG passes: the item (or user) rows a pass
/// visits are scattered, so the loads of the next few are started while
/// this one is used. On the 100k × 20k benchmark (median of 3 interleaved
/// runs, s an iteration): no prefetch 0.383, 6 rows ahead 0.290; 3, 6, 12
/// and 20 rows ahead in later rounds ranked 12 first by about 10%.
pub const AHEAD: usize = 12;

/// Prefetches the cache lines of `f`-float row `idx[j]` of `y`, if `j` is
/// in range (one line more than `f / 16` when the row does not start on a
/// line). A hint only: no memory is read.
#[inline]
pub fn prefetch_row(y: &[f32], idx: &[u32], j: usize, f: usize) {
    if let Some(&i) = idx.get(j) {
        let at = i as usize * f;
        if at + f <= y.len() {
            prefetch_floats(y[at..].as_ptr(), f);
        }
    }
}

/// Starts loading the cache line holding `p` into L1. A hint: nothing is
/// read and no address faults, so any `p` will do (a no-op off x86-64).
/// The ingest uses it for its song table's slots.
#[inline]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing and never faults.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Prefetches the cache lines of the `len` floats at `p` (one line more
/// than `len / 16` when `p` is not line-aligned); any `p` will do, as for
/// [`prefetch`]. The row loops use it for the next user's factor row,
/// which the hardware prefetcher left to stall the first load of each row
/// (18% of a scatter pass on 500 k users).
#[inline]
pub fn prefetch_floats(p: *const f32, len: usize) {
    let mut off = 0;
    while off < len {
        prefetch(p.wrapping_add(off));
        off += 16;
    }
    if len > 0 {
        prefetch(p.wrapping_add(len - 1));
    }
}
