//! Compressed sparse row matrices of play counts and confidences.

use std::sync::Arc;

use crate::error::DataError;

/// Each row's start (and the end), and the `(col, value)` cells in row order.
type Spread = (Vec<usize>, Vec<(u32, f32)>);

/// Most parts of the cells [`spread`] counts and places in parallel.
const SPREAD_PARTS: usize = 8;

/// Cells of a matrix to build, handed out in parts that are read in
/// parallel: [`Csr::from_cells`] reads every part twice (once to count each
/// row's cells, once to place them), so a source held in some other form
/// (a hash table of counts, say) needs no list of triplets written first.
pub trait Cells: Sync {
    /// Calls `each(row, col, value)` for every cell of part `part` of
    /// `parts`. Parts `0..parts` together hand out every cell once, and a
    /// part hands out the same cells in the same order each time (a part
    /// that hands out other cells the second time is a bug, and the build
    /// panics rather than write outside the part's places).
    fn part(&self, part: usize, parts: usize, each: impl FnMut(u32, u32, f32));
}

impl<C: Cells + ?Sized> Cells for &C {
    fn part(&self, part: usize, parts: usize, each: impl FnMut(u32, u32, f32)) {
        (**self).part(part, parts, each)
    }
}

impl Cells for Vec<(u32, u32, f32)> {
    fn part(&self, part: usize, parts: usize, each: impl FnMut(u32, u32, f32)) {
        self[..].part(part, parts, each)
    }
}

/// `(row, col, value)` triplets, cut into parts in order.
impl Cells for [(u32, u32, f32)] {
    fn part(&self, part: usize, parts: usize, mut each: impl FnMut(u32, u32, f32)) {
        let per = self.len().div_ceil(parts).max(1);
        for &(r, c, v) in self.chunks(per).nth(part).unwrap_or(&[]) {
            each(r, c, v);
        }
    }
}

/// Checks the cells and spreads them into rows (a counting sort). Each part
/// of the cells counts its rows, then places its cells after those of the
/// parts before it, in parallel, so each row keeps its cells in their
/// order, as one thread would.
fn spread(rows: usize, cols: usize, cells: &impl Cells) -> Result<Spread, DataError> {
    use rayon::prelude::*;
    let parts = rayon::current_num_threads().clamp(1, SPREAD_PARTS);
    let counted: Vec<Result<Vec<usize>, DataError>> = (0..parts)
        .into_par_iter()
        .map(|part| {
            let mut n = vec![0usize; rows];
            let mut bad = None;
            cells.part(part, parts, |r, c, v| {
                if bad.is_none() {
                    if r as usize >= rows || c as usize >= cols {
                        bad = Some(DataError::OutOfBounds { row: r as usize, col: c as usize, rows, cols });
                    } else if !v.is_finite() {
                        bad = Some(DataError::NonFinite { row: r as usize, col: c as usize });
                    } else {
                        n[r as usize] += 1;
                    }
                }
            });
            bad.map_or(Ok(n), Err)
        })
        .collect();
    // The first bad cell in order is the one reported.
    let mut next: Vec<Vec<usize>> = counted.into_iter().collect::<Result<_, _>>()?;
    // Counts become each part's first position in each row, and the end
    // of its places there.
    let mut ends = vec![vec![0usize; rows]; parts];
    let mut bounds = vec![0usize; rows + 1];
    let mut at = 0;
    for r in 0..rows {
        bounds[r] = at;
        for (part, end) in next.iter_mut().zip(ends.iter_mut()) {
            let n = part[r];
            part[r] = at;
            at += n;
            end[r] = at;
        }
    }
    bounds[rows] = at;
    let mut placed = vec![(0u32, 0f32); at];
    let mut writers = crate::kernels::Places::split(&mut placed, next, ends);
    writers.par_iter_mut().enumerate().for_each(|(part, out)| {
        cells.part(part, parts, |r, c, v| {
            // Part k owns, in row r, the places from its start up to its
            // start plus its count there.
            assert!(
                (c as usize) < cols && v.is_finite() && out.put(r as usize, (c, v)),
                "part {part} of the cells handed out other cells than when they were counted (row {r})"
            );
        });
    });
    drop(writers);
    Ok((bounds, placed))
}

/// A sparse matrix in compressed sparse row form, with `f32` values.
///
/// Rows are users and columns artists for the play matrix; [`Csr::transpose`]
/// gives the artist-by-user view that the item half-step of ALS walks.
/// Within a row, column indices are sorted and unique.
#[derive(Debug, Clone, PartialEq)]
pub struct Csr {
    rows: usize,
    cols: usize,
    /// The pattern (row starts and column indices) is shared by the
    /// matrices [`Csr::map_values`] and [`Csr::with_values`] make from it:
    /// ALS's confidences reuse the plays' 70 MB of indices on the medium
    /// set rather than copy them.
    indptr: Arc<Vec<usize>>,
    indices: Arc<Vec<u32>>,
    data: Vec<f32>,
}

impl Csr {
    /// Builds a matrix from `(row, col, value)` triplets. Duplicate cells are
    /// summed; explicit zeros are kept out.
    pub fn from_triplets(rows: usize, cols: usize, triplets: &[(u32, u32, f32)]) -> Result<Self, DataError> {
        Self::from_cells(rows, cols, triplets)
    }

    /// Builds a matrix from cells handed out in parts (see [`Cells`]), as
    /// [`Csr::from_triplets`] does from a list: duplicate cells summed,
    /// zeros kept out. The cells are read twice, then dropped before the
    /// rows are compacted, so an owned source (a `Vec` of triplets, a
    /// table) is never held beside the result; pass a reference to keep it.
    pub fn from_cells(rows: usize, cols: usize, cells: impl Cells) -> Result<Self, DataError> {
        let (bounds, placed) = spread(rows, cols, &cells)?;
        drop(cells);
        Ok(Self::from_spread(rows, cols, &bounds, placed))
    }

    /// [`Csr::from_triplets`] for large inputs: the triplets are freed as
    /// soon as they are spread into rows, so the peak is the triplets plus
    /// an 8-byte copy of each, where `from_triplets` (borrowing them) also
    /// holds the result beside both: 8 bytes a cell less (1.9 GB at 234 M
    /// cells). An in-place counting sort that needed no copy at all was
    /// tried and dropped: its random swaps took 6× as long.
    pub fn from_triplets_owned(rows: usize, cols: usize, t: Vec<(u32, u32, f32)>) -> Result<Self, DataError> {
        Self::from_cells(rows, cols, t)
    }

    /// Sorts each row's cells (`cells[bounds[r]..bounds[r + 1]]`) by column,
    /// sums duplicates and drops zeros. Parts of the rows run in parallel,
    /// each compacting its rows within its own cells; the parts are then
    /// copied out in order. Each row's cells are summed in the same order
    /// as one thread would, so the matrix does not depend on the threads.
    fn from_spread(rows: usize, cols: usize, bounds: &[usize], mut cells: Vec<(u32, f32)>) -> Csr {
        use rayon::prelude::*;
        let per = crate::linalg::part_rows(rows, crate::linalg::MAX_PARTS, 1);
        // Each part's cells, split off in order.
        let starts: Vec<usize> = (0..rows).step_by(per).collect();
        let lens = starts.iter().map(|&start| bounds[(start + per).min(rows)] - bounds[start]);
        let mut parts: Vec<(usize, &mut [(u32, f32)])> =
            starts.iter().copied().zip(crate::linalg::split_lengths(&mut cells, lens)).collect();
        // Per part: the compacted length of each of its rows.
        let lens: Vec<Vec<usize>> = parts
            .par_iter_mut()
            .map(|(start, part)| {
                let (start, base) = (*start, bounds[*start]);
                let end = (start + per).min(rows);
                let mut w = 0;
                let mut lens = Vec::with_capacity(end - start);
                for r in start..end {
                    let (s, e) = (bounds[r] - base, bounds[r + 1] - base);
                    part[s..e].sort_unstable_by_key(|x| x.0);
                    let before = w;
                    let mut i = s;
                    while i < e {
                        let (c, mut v) = part[i];
                        i += 1;
                        while i < e && part[i].0 == c {
                            v += part[i].1;
                            i += 1;
                        }
                        // `w <= s <= i`: the write never overtakes the read.
                        if v != 0.0 {
                            part[w] = (c, v);
                            w += 1;
                        }
                    }
                    lens.push(w - before);
                }
                lens
            })
            .collect();
        let mut indptr = Vec::with_capacity(rows + 1);
        indptr.push(0);
        for &n in lens.iter().flatten() {
            indptr.push(indptr[indptr.len() - 1] + n);
        }
        let nnz = indptr[rows];
        let mut indices = vec![0u32; nnz];
        let mut data = vec![0f32; nnz];
        // Disjoint output ranges, one a part, filled in parallel.
        let part_lens = || lens.iter().map(|l| l.iter().sum::<usize>());
        let outs: Vec<(&mut [u32], &mut [f32])> = crate::linalg::split_lengths(&mut indices, part_lens())
            .into_iter()
            .zip(crate::linalg::split_lengths(&mut data, part_lens()))
            .collect();
        outs.into_par_iter().zip(parts.par_iter()).for_each(|((oi, od), (_, part))| {
            for (k, &(c, v)) in part[..oi.len()].iter().enumerate() {
                oi[k] = c;
                od[k] = v;
            }
        });
        Csr { rows, cols, indptr: Arc::new(indptr), indices: Arc::new(indices), data }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Number of stored (non-zero) cells.
    pub fn nnz(&self) -> usize {
        self.data.len()
    }

    /// Where row `r` starts among the stored values (`nnz()` for `r = rows()`).
    pub fn row_start(&self, r: usize) -> usize {
        self.indptr[r]
    }

    /// The column indices and values of one row.
    pub fn row(&self, r: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.indptr[r], self.indptr[r + 1]);
        (&self.indices[a..b], &self.data[a..b])
    }

    /// The value at `(r, c)`, zero when not stored.
    pub fn get(&self, r: usize, c: u32) -> f32 {
        let (idx, val) = self.row(r);
        idx.binary_search(&c).map(|k| val[k]).unwrap_or(0.0)
    }

    /// The same shape and pattern with every value mapped through `f`.
    pub fn map_values(&self, f: impl Fn(f32) -> f32 + Sync) -> Csr {
        use rayon::prelude::*;
        let data = self.data.par_iter().map(|&v| f(v)).collect();
        Csr {
            rows: self.rows,
            cols: self.cols,
            indptr: Arc::clone(&self.indptr),
            indices: Arc::clone(&self.indices),
            data,
        }
    }

    /// Values of the matrix, row by row.
    pub fn values(&self) -> &[f32] {
        &self.data
    }

    /// Replaces the values (same pattern); `values.len()` must equal `nnz()`.
    pub fn with_values(&self, values: Vec<f32>) -> Csr {
        assert_eq!(values.len(), self.nnz());
        Csr {
            rows: self.rows,
            cols: self.cols,
            indptr: Arc::clone(&self.indptr),
            indices: Arc::clone(&self.indices),
            data: values,
        }
    }

    /// Sum of each row.
    pub fn row_sums(&self) -> Vec<f32> {
        (0..self.rows).map(|r| self.row(r).1.iter().sum()).collect()
    }

    /// Number of non-zeros in each column.
    pub fn col_counts(&self) -> Vec<usize> {
        let mut n = vec![0usize; self.cols];
        for &c in self.indices.iter() {
            n[c as usize] += 1;
        }
        n
    }

    /// The transposed matrix (columns become rows), rows sorted.
    pub fn transpose(&self) -> Csr {
        let mut counts = vec![0usize; self.cols + 1];
        for &c in self.indices.iter() {
            counts[c as usize + 1] += 1;
        }
        for i in 0..self.cols {
            counts[i + 1] += counts[i];
        }
        let mut next = counts.clone();
        let mut indices = vec![0u32; self.nnz()];
        let mut data = vec![0f32; self.nnz()];
        for r in 0..self.rows {
            let (idx, val) = self.row(r);
            for (&c, &v) in idx.iter().zip(val) {
                let k = next[c as usize];
                indices[k] = r as u32;
                data[k] = v;
                next[c as usize] += 1;
            }
        }
        Csr { rows: self.cols, cols: self.rows, indptr: Arc::new(counts), indices: Arc::new(indices), data }
    }
}

/// A generated `users × items` play matrix for benchmarks: `samples` plays
/// drawn with log-normal user activity and Zipf item popularity, repeat
/// counts geometric (duplicates summed, so `nnz() < samples`).
pub fn benchmark_plays(users: usize, items: usize, samples: usize, seed: u64) -> Csr {
    use crate::rng::{Rng, WeightedIndex};
    let mut rng = Rng::new(seed);
    let uw: Vec<f64> = (0..users).map(|_| (rng.normal() * 1.1).exp()).collect();
    let iw: Vec<f64> = (0..items).map(|i| 1.0 / (i as f64 + 1.0)).collect();
    let (ut, it) = (WeightedIndex::new(&uw).expect("positive"), WeightedIndex::new(&iw).expect("positive"));
    let t: Vec<(u32, u32, f32)> = (0..samples)
        .map(|_| (ut.sample(&mut rng) as u32, it.sample(&mut rng) as u32, 1.0 + rng.geometric(0.3) as f32))
        .collect();
    Csr::from_triplets(users, items, &t).expect("indices in range")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triplets_sum_duplicates_sort_and_transpose() {
        let m =
            Csr::from_triplets(3, 4, &[(0, 3, 1.0), (0, 1, 2.0), (2, 0, 5.0), (0, 3, 4.0), (1, 2, 1.0), (1, 2, -1.0)])
                .unwrap();
        assert_eq!(m.row(0), (&[1u32, 3][..], &[2.0f32, 5.0][..]));
        assert_eq!(m.row(1).0.len(), 0, "cells summing to zero are dropped");
        assert_eq!(m.nnz(), 3);
        let t = m.transpose();
        assert_eq!((t.rows(), t.cols()), (4, 3));
        assert_eq!(t.get(3, 0), 5.0);
        assert_eq!(t.get(0, 2), 5.0);
        assert_eq!(t.transpose(), m);
    }

    #[test]
    fn out_of_bounds_is_an_error() {
        assert!(Csr::from_triplets(2, 2, &[(2, 0, 1.0)]).is_err());
        assert!(Csr::from_triplets(2, 2, &[(0, 0, f32::NAN)]).is_err());
        assert!(Csr::from_triplets_owned(2, 2, vec![(0, 2, 1.0)]).is_err());
        assert!(Csr::from_triplets_owned(2, 2, vec![(0, 0, f32::INFINITY)]).is_err());
    }

    #[test]
    fn the_parallel_spread_keeps_each_rows_triplets_in_order() {
        let mut rng = crate::rng::Rng::new(8);
        let (rows, cols) = (37, 11);
        let t: Vec<(u32, u32, f32)> =
            (0..10_007).map(|i| (rng.below(rows) as u32, rng.below(cols) as u32, i as f32 * 0.25)).collect();
        // One thread's counting sort.
        let mut want: Vec<Vec<(u32, f32)>> = vec![Vec::new(); rows];
        for &(r, c, v) in &t {
            want[r as usize].push((c, v));
        }
        for threads in [1, 3, 8] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let (bounds, cells) = pool.install(|| spread(rows, cols, &t)).unwrap();
            for (r, w) in want.iter().enumerate() {
                assert_eq!(&cells[bounds[r]..bounds[r + 1]], &w[..], "{threads} threads, row {r}");
            }
        }
        // The first bad triplet in order is the one reported.
        let mut bad = t.clone();
        bad[9_000].0 = rows as u32;
        bad[2].2 = f32::NAN;
        let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
        assert!(matches!(pool.install(|| spread(rows, cols, &bad)), Err(DataError::NonFinite { .. })));
    }

    #[test]
    fn owned_triplets_build_the_same_matrix() {
        let mut rng = crate::rng::Rng::new(5);
        for (rows, cols, n) in [(1, 1, 0), (1, 3, 7), (50, 20, 2_000), (300, 7, 5_000), (40, 500, 100)] {
            // Integer values with many duplicates, some cancelling to zero,
            // and empty rows.
            let t: Vec<(u32, u32, f32)> = (0..n)
                .map(|_| {
                    let v = rng.below(7) as f32 - 2.0;
                    (rng.below(rows) as u32 / 2 * 2, rng.below(cols) as u32, v)
                })
                .collect();
            let want = Csr::from_triplets(rows, cols, &t).unwrap();
            // Both against cell sums taken one by one (the rows are built
            // in parts in parallel).
            let mut sums = std::collections::BTreeMap::new();
            for &(r, c, v) in &t {
                *sums.entry((r, c)).or_insert(0f32) += v;
            }
            let cells: Vec<(u32, u32, f32)> =
                sums.into_iter().filter(|e| e.1 != 0.0).map(|((r, c), v)| (r, c, v)).collect();
            assert_eq!(want.nnz(), cells.len(), "{rows}x{cols}, {n} triplets");
            for (r, c, v) in cells {
                assert_eq!(want.get(r as usize, c), v, "{rows}x{cols} cell ({r}, {c})");
            }
            let got = Csr::from_triplets_owned(rows, cols, t).unwrap();
            assert_eq!(got, want, "{rows}x{cols}, {n} triplets");
        }
    }

    /// Cells kept per row (as a table keyed by row might hold them), cut
    /// into parts by row, not by position in any list.
    struct ByRow(Vec<Vec<(u32, f32)>>);

    impl Cells for ByRow {
        fn part(&self, part: usize, parts: usize, mut each: impl FnMut(u32, u32, f32)) {
            for r in (part..self.0.len()).step_by(parts) {
                for &(c, v) in &self.0[r] {
                    each(r as u32, c, v);
                }
            }
        }
    }

    #[test]
    fn cells_from_another_source_build_the_matrix_their_triplets_build() {
        let mut rng = crate::rng::Rng::new(11);
        let (rows, cols) = (203, 17);
        let mut by_row = vec![Vec::new(); rows];
        let mut t = Vec::new();
        for _ in 0..6_000 {
            let (r, c, v) = (rng.below(rows) as u32, rng.below(cols) as u32, rng.below(5) as f32 - 1.0);
            by_row[r as usize].push((c, v));
            t.push((r, c, v));
        }
        let want = Csr::from_triplets(rows, cols, &t).unwrap();
        let cells = ByRow(by_row);
        for threads in [1, 3, 8] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            assert_eq!(pool.install(|| Csr::from_cells(rows, cols, &cells)).unwrap(), want, "{threads} threads");
        }
        // A bad cell anywhere is an error, whichever part holds it.
        for (r, bad) in [(0, (cols as u32, 1.0)), (202, (3, f32::NAN)), (101, (0, f32::INFINITY))] {
            let mut cells = ByRow(cells.0.clone());
            cells.0[r].push(bad);
            assert!(Csr::from_cells(rows, cols, &cells).is_err(), "row {r}: {bad:?}");
        }
    }

    /// A source whose second reading hands out one more cell than its
    /// first.
    struct Growing(std::sync::atomic::AtomicUsize);

    impl Cells for Growing {
        fn part(&self, part: usize, _parts: usize, mut each: impl FnMut(u32, u32, f32)) {
            let reads = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if part == 0 {
                each(0, 0, 1.0);
                if reads > 0 {
                    each(0, 1, 1.0);
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "other cells than when they were counted")]
    fn a_source_that_changes_between_its_readings_panics_rather_than_write_out_of_place() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let _ = pool.install(|| Csr::from_cells(2, 2, Growing(Default::default())));
    }
}
