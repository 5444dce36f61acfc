//! Buffers the kernels read fast: [`Floats`] on cache lines, and big
//! vectors filled in parallel parts without being zeroed first.

use std::mem::MaybeUninit;

/// A float vector that starts on a 64-byte cache line, so that a factor
/// row of a multiple of 16 floats fills whole lines and its vector loads
/// never straddle two. (A large `Vec<f32>` starts 16 bytes past a page:
/// every 64-float row then spans five lines, and every AVX-512 load of it
/// is a split load.) Derefs to `[f32]`.
#[derive(Clone, Debug, Default)]
pub struct Floats {
    lines: Vec<Line>,
    len: usize,
}

/// One cache line of floats, the unit [`Floats`] is allocated in.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Line([f32; 16]);

impl Floats {
    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        Floats { lines: par_filled(len.div_ceil(16), Line([0.0; 16])), len }
    }

    /// A copy of `v`.
    pub fn from_slice(v: &[f32]) -> Self {
        let lines = par_vec(v.len().div_ceil(16), |at, out| {
            for (i, line) in out.iter_mut().enumerate() {
                let from = ((at + i) * 16).min(v.len());
                let src = &v[from..(from + 16).min(v.len())];
                let mut l = Line([0.0; 16]);
                l.0[..src.len()].copy_from_slice(src);
                line.write(l);
            }
        });
        Floats { lines, len: v.len() }
    }
}

/// Elements a part of [`par_fill_with`] writes: 1 MiB of floats.
pub(crate) const FILL_PART: usize = 1 << 18;

/// Calls `write(start, part)` on parts of `out` in parallel when it is
/// large, in one call otherwise; `start` is the part's first index.
///
/// Why in parallel: a large buffer is fresh memory, and its first write
/// is a page fault that the kernel answers by zeroing the page. On the
/// 2-core benchmark VM that zeroing was the slowest part of filling a
/// buffer, and done on one thread it left the other core idle (0.3 s
/// copying the medium set's 128 MB of user factors, 1 s growing its pair
/// table); split over the threads, each faults in its own part.
pub fn par_fill_with<T: Send>(out: &mut [T], write: impl Fn(usize, &mut [T]) + Sync) {
    use rayon::prelude::*;
    let per = (FILL_PART * 4 / std::mem::size_of::<T>().max(1)).max(1);
    if out.len() <= per {
        return write(0, out);
    }
    out.par_chunks_mut(per).enumerate().for_each(|(c, part)| write(c * per, part));
}

/// A vector of `n` elements, each written once by `write(start, part)`
/// through [`par_fill_with`] (so in parallel parts when `n` is large);
/// `write` must initialise every element of each part it is given.
fn par_vec<T: Send>(n: usize, write: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    par_fill_with(&mut v.spare_capacity_mut()[..n], write);
    // SAFETY: the parts cover the first `n` elements, and `write` set each.
    unsafe { v.set_len(n) };
    v
}

/// `n` copies of `value`, written in parallel parts when `n` is large
/// (see [`par_fill_with`]).
pub fn par_filled<T: Copy + Send + Sync>(n: usize, value: T) -> Vec<T> {
    par_vec(n, |_, part| {
        for x in part {
            x.write(value);
        }
    })
}

impl PartialEq for Floats {
    fn eq(&self, other: &Floats) -> bool {
        self[..] == other[..]
    }
}

impl std::ops::Deref for Floats {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: `lines` holds at least `len` initialised floats, laid out
        // contiguously (`Line` is `repr(C)` of `[f32; 16]` with no padding).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const f32, self.len) }
    }
}

impl std::ops::DerefMut for Floats {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as for `deref`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut f32, self.len) }
    }
}

/// One buffer filled by several threads at once, each through its own
/// [`PlaceWriter`] that writes only its own places: for each row, part
/// `p`'s places are `next[p][row]..ends[p][row]`. The counting sort of
/// the sparse matrix build places each part's cells this way.
pub struct Places;

impl Places {
    /// One writer a part over `buf`. `next[p]` and `ends[p]` give part
    /// `p`'s places in each row; read row by row and, within a row, part
    /// by part, they must come in order without overlap and end inside
    /// `buf` (checked here, once: `O(rows × parts)`).
    pub fn split<T: Send>(buf: &mut [T], next: Vec<Vec<usize>>, ends: Vec<Vec<usize>>) -> Vec<PlaceWriter<'_, T>> {
        assert_eq!(next.len(), ends.len(), "a start and an end list a part");
        let rows = next.first().map_or(0, Vec::len);
        assert!(next.iter().chain(&ends).all(|v| v.len() == rows), "every part lists every row");
        let mut at = 0;
        for r in 0..rows {
            for (n, e) in next.iter().zip(&ends) {
                assert!(at <= n[r] && n[r] <= e[r], "the places overlap or run backwards at row {r}");
                at = e[r];
            }
        }
        assert!(at <= buf.len(), "the places reach past the buffer's {} cells", buf.len());
        let ptr = buf.as_mut_ptr();
        next.into_iter()
            .zip(ends)
            .map(|(next, ends)| PlaceWriter { ptr, next, ends, _buf: std::marker::PhantomData })
            .collect()
    }
}

/// One part's writer from [`Places::split`].
pub struct PlaceWriter<'a, T> {
    ptr: *mut T,
    next: Vec<usize>,
    ends: Vec<usize>,
    _buf: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: a writer only writes its own places (see `put`), which no other
// writer has, and holds the buffer's unique borrow for `'a`, so moving it
// to another thread shares nothing.
unsafe impl<T: Send> Send for PlaceWriter<'_, T> {}

impl<T> PlaceWriter<'_, T> {
    /// Writes `value` at this part's next place in `row`; false (and
    /// nothing written) when the part's places in that row are full.
    #[inline]
    pub fn put(&mut self, row: usize, value: T) -> bool {
        let (i, end) = (&mut self.next[row], self.ends[row]);
        if *i >= end {
            return false;
        }
        // SAFETY: `split` checked that this part's places in `row` lie
        // inside the buffer and overlap no other part's, and `i` stays
        // below their end; the buffer is borrowed for as long as the
        // writer lives. `write` drops nothing, which is right for the
        // cells' plain values (and merely leaks otherwise).
        unsafe { self.ptr.add(*i).write(value) };
        *i += 1;
        true
    }
}
