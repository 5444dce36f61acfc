//! Explicit AVX2 + FMA kernels for the ALS inner loops (dot products and
//! `y += a·x` on factor rows), chosen at run time when the CPU has them;
//! [`crate::linalg::dot`] and [`crate::linalg::axpy`] are the portable
//! fallbacks.

/// Whether the AVX-512F kernels can run on this CPU.
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX2 + FMA kernels can run on this CPU.
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The AVX2 + FMA kernels. Callers must check [`has_avx2_fma`] first.
#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use std::arch::x86_64::*;

    /// `Σ a_i b_i` with four independent 8-lane FMA chains.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `b` must be at least as long as `a`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        debug_assert!(b.len() >= n);
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (mut s0, mut s1, mut s2, mut s3) =
            (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 32 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), _mm256_loadu_ps(pb.add(i + 8)), s1);
            s2 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 16)), _mm256_loadu_ps(pb.add(i + 16)), s2);
            s3 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 24)), _mm256_loadu_ps(pb.add(i + 24)), s3);
            i += 32;
        }
        while i + 8 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
        let q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let q = _mm_hadd_ps(q, q);
        let q = _mm_hadd_ps(q, q);
        let mut r = _mm_cvtss_f32(q);
        while i < n {
            r += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        r
    }

    /// `y += a · x`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `x` must be at least as long as `y`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        let n = y.len();
        debug_assert!(x.len() >= n);
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let va = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(py.add(i), _mm256_fmadd_ps(va, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i))));
            i += 8;
        }
        while i < n {
            *py.add(i) += a * *px.add(i);
            i += 1;
        }
    }
}

/// Register-blocked kernels for `f = 64` (eight 8-lane vectors): the CG
/// vectors stay in registers across a whole pass over the user's items.
#[cfg(target_arch = "x86_64")]
pub mod avx2_f64 {
    use std::arch::x86_64::*;

    /// Eight 8-lane vectors: one 64-float factor row.
    pub type Row = [__m256; 8];

    /// Loads a row.
    ///
    /// # Safety
    /// AVX2 + FMA; `a` holds at least 64 floats.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn load(a: &[f32]) -> Row {
        let p = a.as_ptr();
        [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
            _mm256_loadu_ps(p.add(32)),
            _mm256_loadu_ps(p.add(40)),
            _mm256_loadu_ps(p.add(48)),
            _mm256_loadu_ps(p.add(56)),
        ]
    }

    /// Stores a row.
    ///
    /// # Safety
    /// AVX2 + FMA; `a` holds at least 64 floats.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn store(r: &Row, a: &mut [f32]) {
        let p = a.as_mut_ptr();
        for (k, v) in r.iter().enumerate() {
            _mm256_storeu_ps(p.add(8 * k), *v);
        }
    }

    /// `Σ a_i b_i` of a row in memory and a row in registers.
    ///
    /// # Safety
    /// AVX2 + FMA; `a` holds at least 64 floats.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_mem(a: &[f32], b: &Row) -> f32 {
        let p = a.as_ptr();
        let s0 = _mm256_fmadd_ps(_mm256_loadu_ps(p), b[0], _mm256_mul_ps(_mm256_loadu_ps(p.add(8)), b[1]));
        let s1 = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(16)), b[2], _mm256_mul_ps(_mm256_loadu_ps(p.add(24)), b[3]));
        let s2 = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(32)), b[4], _mm256_mul_ps(_mm256_loadu_ps(p.add(40)), b[5]));
        let s3 = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(48)), b[6], _mm256_mul_ps(_mm256_loadu_ps(p.add(56)), b[7]));
        hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)))
    }

    /// `Σ a_i b_i` of two rows in registers.
    ///
    /// # Safety
    /// AVX2 + FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_reg(a: &Row, b: &Row) -> f32 {
        let s0 = _mm256_fmadd_ps(a[0], b[0], _mm256_mul_ps(a[1], b[1]));
        let s1 = _mm256_fmadd_ps(a[2], b[2], _mm256_mul_ps(a[3], b[3]));
        let s2 = _mm256_fmadd_ps(a[4], b[4], _mm256_mul_ps(a[5], b[5]));
        let s3 = _mm256_fmadd_ps(a[6], b[6], _mm256_mul_ps(a[7], b[7]));
        hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(s: __m256) -> f32 {
        let q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        let q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
        _mm_cvtss_f32(q)
    }

    /// `acc += a · row_in_memory`.
    ///
    /// # Safety
    /// AVX2 + FMA; `x` holds at least 64 floats.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy_mem(a: f32, x: &[f32], acc: &mut Row) {
        let va = _mm256_set1_ps(a);
        let p = x.as_ptr();
        for (k, v) in acc.iter_mut().enumerate() {
            *v = _mm256_fmadd_ps(va, _mm256_loadu_ps(p.add(8 * k)), *v);
        }
    }

    /// `acc += a · row`.
    ///
    /// # Safety
    /// AVX2 + FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy_reg(a: f32, x: &Row, acc: &mut Row) {
        let va = _mm256_set1_ps(a);
        for (v, xv) in acc.iter_mut().zip(x) {
            *v = _mm256_fmadd_ps(va, *xv, *v);
        }
    }

    /// `M · v` for a symmetric 64 × 64 row-major `m`, as `Σ_d v_d · m_d`
    /// (no horizontal sums).
    ///
    /// # Safety
    /// AVX2 + FMA; `m` holds at least 64 × 64 floats.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn symv(m: &[f32], v: &[f32]) -> Row {
        let mut acc = [_mm256_setzero_ps(); 8];
        for d in 0..64 {
            axpy_mem(*v.get_unchecked(d), &m[d * 64..d * 64 + 64], &mut acc);
        }
        acc
    }

    /// The zero row.
    ///
    /// # Safety
    /// AVX2 + FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn zero() -> Row {
        [_mm256_setzero_ps(); 8]
    }
}

/// Rows ahead to prefetch in the CG passes: the item (or user) rows a pass
/// visits are scattered, so the loads of the next few are started while
/// this one is used. On the 100k × 20k benchmark (median of 3 interleaved
/// runs, s an iteration): no prefetch 0.383, 6 rows ahead 0.290; 3, 6, 12
/// and 20 rows ahead in later rounds ranked 12 first by about 10%.
#[cfg(target_arch = "x86_64")]
pub(crate) const AHEAD: usize = 12;

/// Prefetches the four cache lines of 64-float row `idx[j]` of `y`, if `j`
/// is in range. A hint only: no memory is read.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn prefetch_row64(y: &[f32], idx: &[u32], j: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    if let Some(&i) = idx.get(j) {
        let at = i as usize * 64;
        if at + 64 <= y.len() {
            // SAFETY: the four addresses are inside `y`; a prefetch never faults.
            unsafe {
                let p = y.as_ptr().add(at);
                for line in 0..4 {
                    _mm_prefetch::<_MM_HINT_T0>(p.add(16 * line) as *const i8);
                }
            }
        }
    }
}

/// The `f = 64` CG row solve with AVX-512: a factor row is four 16-lane
/// registers, so `p`, `Ap`, `r`, `x` and the item row all fit in the 32
/// registers with no spills.
#[cfg(target_arch = "x86_64")]
pub mod avx512_f64 {
    use super::{prefetch_row64 as prefetch_row, AHEAD};
    use std::arch::x86_64::*;

    type Row = [__m512; 4];

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(a: &[f32]) -> Row {
        let p = a.as_ptr();
        [_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)), _mm512_loadu_ps(p.add(32)), _mm512_loadu_ps(p.add(48))]
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(r: &Row, a: &mut [f32]) {
        let p = a.as_mut_ptr();
        for (k, v) in r.iter().enumerate() {
            _mm512_storeu_ps(p.add(16 * k), *v);
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn dot(a: &Row, b: &Row) -> f32 {
        let s = _mm512_add_ps(
            _mm512_fmadd_ps(a[0], b[0], _mm512_mul_ps(a[1], b[1])),
            _mm512_fmadd_ps(a[2], b[2], _mm512_mul_ps(a[3], b[3])),
        );
        _mm512_reduce_add_ps(s)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn axpy(a: f32, x: &Row, acc: &mut Row) {
        let va = _mm512_set1_ps(a);
        for (v, xv) in acc.iter_mut().zip(x) {
            *v = _mm512_fmadd_ps(va, *xv, *v);
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn symv(m: &[f32], v: &[f32]) -> Row {
        let mut acc = [_mm512_setzero_ps(); 4];
        for d in 0..64 {
            let row = load(&m[d * 64..d * 64 + 64]);
            axpy(*v.get_unchecked(d), &row, &mut acc);
        }
        acc
    }

    /// `steps` conjugate-gradient steps on
    /// `(YᵀY + λI + Σ_i (c_i − 1) y_i y_iᵀ) x = Σ_i c_i y_i` for `f = 64`,
    /// from the current `x`; `ytyr` is `YᵀY + λI`, `scratch` at least 64 floats.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `y` rows are 64 floats and every index
    /// in `idx` is a row of `y`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn cg(
        ytyr: &[f32],
        y: &[f32],
        idx: &[u32],
        conf: &[f32],
        steps: usize,
        x: &mut [f32],
        scratch: &mut [f32],
    ) {
        const F: usize = 64;
        let pmem = &mut scratch[..F];
        let mut xr = load(x);
        let ax = symv(ytyr, x);
        let zero = _mm512_setzero_ps();
        let mut r = [
            _mm512_sub_ps(zero, ax[0]),
            _mm512_sub_ps(zero, ax[1]),
            _mm512_sub_ps(zero, ax[2]),
            _mm512_sub_ps(zero, ax[3]),
        ];
        for (j, (&i, &c)) in idx.iter().zip(conf).enumerate() {
            prefetch_row(y, idx, j + AHEAD);
            let yi = load(&y[i as usize * F..(i as usize + 1) * F]);
            axpy(c - (c - 1.0) * dot(&yi, &xr), &yi, &mut r);
        }
        let mut p = r;
        let mut rsold = dot(&r, &r);
        if rsold < 1e-20 {
            return;
        }
        for _ in 0..steps {
            store(&p, pmem);
            let mut ap = symv(ytyr, pmem);
            for (j, (&i, &c)) in idx.iter().zip(conf).enumerate() {
                prefetch_row(y, idx, j + AHEAD);
                let yi = load(&y[i as usize * F..(i as usize + 1) * F]);
                axpy((c - 1.0) * dot(&yi, &p), &yi, &mut ap);
            }
            let pap = dot(&p, &ap);
            if pap <= 0.0 {
                break;
            }
            let a = rsold / pap;
            axpy(a, &p, &mut xr);
            axpy(-a, &ap, &mut r);
            let rsnew = dot(&r, &r);
            if rsnew < 1e-20 {
                break;
            }
            let mut np = r;
            axpy(rsnew / rsold, &p, &mut np);
            p = np;
            rsold = rsnew;
        }
        store(&xr, x);
    }
}

/// The k-means assignment with AVX-512: each row's nearest centroid by
/// `‖c‖² − 2 x·c` (the row's own norm is the same for every centroid).
///
/// A register-blocked micro-kernel in the manner of BLIS (Van Zee & van de
/// Geijn 2015): [`Panel`] holds the centroids transposed, 32 to a block, so
/// a tile of `MR` rows × 32 centroids accumulates in `2·MR` registers with
/// one broadcast of `x[r][d]` and two centroid loads per `d`, and the
/// distances never leave the registers: each block's are compared
/// lane-wise with the best so far, and one reduction per row ends the
/// search. Ties go to the lowest centroid index, as in the portable path.
#[cfg(target_arch = "x86_64")]
pub mod avx512_nearest {
    use std::arch::x86_64::*;

    /// Centroids per block (two 16-lane registers).
    const NB: usize = 32;
    /// Rows per tile: `2·MR` accumulators, `2·MR` best values and indices
    /// and two centroid registers stay within the 32 registers.
    const MR: usize = 4;

    /// The centroids transposed (`dim × kp`, `kp` a multiple of 32) with
    /// their squared norms; padding columns are zero with norm +∞, so they
    /// are never nearest.
    #[derive(Debug, Clone)]
    pub struct Panel {
        dim: usize,
        kp: usize,
        ct: Vec<f32>,
        cn: Vec<f32>,
    }

    impl Panel {
        /// From row-major `k × dim` centroids and their squared norms.
        pub fn new(centroids: &[f32], norms: &[f32], dim: usize) -> Panel {
            let k = norms.len();
            let kp = k.div_ceil(NB) * NB;
            let mut ct = vec![0f32; dim * kp];
            for (j, c) in centroids.chunks(dim).enumerate() {
                for (d, v) in c.iter().enumerate() {
                    ct[d * kp + j] = *v;
                }
            }
            let mut cn = vec![f32::INFINITY; kp];
            cn[..k].copy_from_slice(norms);
            Panel { dim, kp, ct, cn }
        }
    }

    /// For each row of `x` (row-major, `panel`'s dim), the least
    /// `‖c‖² − 2 x·c` over the centroids and the centroid's index.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `out` holds one entry per row of `x`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn nearest(x: &[f32], panel: &Panel, out: &mut [(f32, u32)]) {
        let dim = panel.dim;
        let rows = x.len() / dim;
        debug_assert!(out.len() >= rows);
        let full = rows / MR * MR;
        for t in (0..full).step_by(MR) {
            tile::<MR>(&x[t * dim..(t + MR) * dim], panel, &mut out[t..t + MR]);
        }
        for t in full..rows {
            tile::<1>(&x[t * dim..(t + 1) * dim], panel, &mut out[t..t + 1]);
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const R: usize>(x: &[f32], panel: &Panel, out: &mut [(f32, u32)]) {
        let (dim, kp) = (panel.dim, panel.kp);
        let (xp, ct, cn) = (x.as_ptr(), panel.ct.as_ptr(), panel.cn.as_ptr());
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let minus2 = _mm512_set1_ps(-2.0);
        let mut best = [[_mm512_set1_ps(f32::INFINITY); 2]; R];
        let mut besti = [[_mm512_setzero_si512(); 2]; R];
        for b in (0..kp).step_by(NB) {
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            for d in 0..dim {
                let c0 = _mm512_loadu_ps(ct.add(d * kp + b));
                let c1 = _mm512_loadu_ps(ct.add(d * kp + b + 16));
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_ps(*xp.add(r * dim + d));
                    a[0] = _mm512_fmadd_ps(xv, c0, a[0]);
                    a[1] = _mm512_fmadd_ps(xv, c1, a[1]);
                }
            }
            let n = [_mm512_loadu_ps(cn.add(b)), _mm512_loadu_ps(cn.add(b + 16))];
            let idx = [
                _mm512_add_epi32(lanes, _mm512_set1_epi32(b as i32)),
                _mm512_add_epi32(lanes, _mm512_set1_epi32(b as i32 + 16)),
            ];
            for ((a, bv), bi) in acc.iter().zip(best.iter_mut()).zip(besti.iter_mut()) {
                for h in 0..2 {
                    let dist = _mm512_fmadd_ps(minus2, a[h], n[h]);
                    let lt = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(dist, bv[h]);
                    bv[h] = _mm512_mask_blend_ps(lt, bv[h], dist);
                    bi[h] = _mm512_mask_blend_epi32(lt, bi[h], idx[h]);
                }
            }
        }
        for ((bv, bi), o) in best.iter().zip(&besti).zip(out.iter_mut()) {
            let m = _mm512_reduce_min_ps(_mm512_min_ps(bv[0], bv[1]));
            let mv = _mm512_set1_ps(m);
            let i0 = _mm512_mask_reduce_min_epu32(_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(bv[0], mv), bi[0]);
            let i1 = _mm512_mask_reduce_min_epu32(_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(bv[1], mv), bi[1]);
            // No lane compares equal only when every distance is NaN.
            let i = i0.min(i1);
            *o = (m, if i == u32::MAX { 0 } else { i });
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn avx2_kernels_match_the_portable_ones() {
        if !has_avx2_fma() {
            return;
        }
        for n in [0, 1, 7, 8, 31, 32, 33, 64, 100] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want = crate::linalg::dot(&a, &b);
            let got = unsafe { avx2::dot(&a, &b) };
            assert!((want - got).abs() < 1e-4, "n={n}: {want} vs {got}");
            let mut y1 = b.clone();
            let mut y2 = b.clone();
            crate::linalg::axpy(0.5, &a, &mut y1);
            unsafe { avx2::axpy(0.5, &a, &mut y2) };
            for (p, q) in y1.iter().zip(&y2) {
                assert!((p - q).abs() < 1e-6);
            }
        }
    }
}
