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

/// For tests: whether the kernels named `name` (`avx2` or `avx512`) can
/// run here. A test that cannot run them says so on stderr; where
/// `COHORTCAST_REQUIRE_SIMD` names them (`avx2,avx512`), a machine
/// without them fails instead, so a machine that has them cannot skip
/// them by mistake.
#[cfg(test)]
pub(crate) fn kernels_run(name: &str) -> bool {
    let available = match name {
        "avx2" => has_avx2_fma(),
        "avx512" => has_avx512(),
        other => panic!("no kernels named {other}"),
    };
    let required = std::env::var("COHORTCAST_REQUIRE_SIMD").unwrap_or_default();
    if !available {
        assert!(
            !required.split(',').any(|r| r.trim() == name),
            "COHORTCAST_REQUIRE_SIMD names {name}, but this CPU cannot run those kernels"
        );
        eprintln!("skipped: this CPU cannot run the {name} kernels, so only the portable path was tested");
    }
    available
}

/// A dot product over two equal-length slices.
pub type DotFn = fn(&[f32], &[f32]) -> f32;
/// `y += a · x` over two equal-length slices.
pub type AxpyFn = fn(f32, &[f32], &mut [f32]);

/// The dot and axpy this CPU runs fastest: the AVX2 + FMA kernels when it
/// has them, else the portable loops. For loops that call them on many
/// short rows, chosen once outside the loop.
pub fn fast_kernels() -> (DotFn, AxpyFn) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked above); the kernels
        // need `b` (and `x`) at least as long as the other slice, which
        // equal lengths give.
        return (|a, b| unsafe { avx2::dot(a, b) }, |a, x, y| unsafe { avx2::axpy(a, x, y) });
    }
    (crate::linalg::dot, crate::linalg::axpy)
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

/// Rows ahead to prefetch in the CG passes: the item (or user) rows a pass
/// visits are scattered, so the loads of the next few are started while
/// this one is used. On the 100k × 20k benchmark (median of 3 interleaved
/// runs, s an iteration): no prefetch 0.383, 6 rows ahead 0.290; 3, 6, 12
/// and 20 rows ahead in later rounds ranked 12 first by about 10%.
#[cfg(target_arch = "x86_64")]
pub(crate) const AHEAD: usize = 12;

/// Prefetches the cache lines of `f`-float row `idx[j]` of `y`, if `j` is
/// in range (one line more than `f / 16` when the row does not start on a
/// line). A hint only: no memory is read.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn prefetch_row(y: &[f32], idx: &[u32], j: usize, f: usize) {
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
pub(crate) fn prefetch_floats(p: *const f32, len: usize) {
    let mut off = 0;
    while off < len {
        prefetch(p.wrapping_add(off));
        off += 16;
    }
    if len > 0 {
        prefetch(p.wrapping_add(len - 1));
    }
}

/// Register-blocked conjugate-gradient row solves with AVX2 + FMA for
/// `f = 8·M` factors: a factor row is `M` 8-lane vectors, and `p`, `Ap`,
/// `r` and `x` stay in registers (or close by, past 16 of them) across a
/// whole pass over the row's nonzeros.
#[cfg(target_arch = "x86_64")]
pub mod avx2_rows {
    use super::{prefetch_row, AHEAD};
    use std::arch::x86_64::*;

    /// `M` 8-lane vectors: one factor row of `8·M` floats.
    pub type Row<const M: usize> = [__m256; M];

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load<const M: usize>(a: &[f32]) -> Row<M> {
        let p = a.as_ptr();
        let mut r = [_mm256_setzero_ps(); M];
        for (k, v) in r.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(p.add(8 * k));
        }
        r
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store<const M: usize>(r: &Row<M>, a: &mut [f32]) {
        let p = a.as_mut_ptr();
        for (k, v) in r.iter().enumerate() {
            _mm256_storeu_ps(p.add(8 * k), *v);
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(s: __m256) -> f32 {
        let q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        let q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
        _mm_cvtss_f32(q)
    }

    /// `Σ a_i b_i` of a row in memory and a row in registers, in two chains.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_mem<const M: usize>(a: &[f32], b: &Row<M>) -> f32 {
        let p = a.as_ptr();
        let (mut s0, mut s1) = (_mm256_mul_ps(_mm256_loadu_ps(p), b[0]), _mm256_setzero_ps());
        for (k, bk) in b.iter().enumerate().skip(1) {
            if k % 2 == 1 {
                s1 = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(8 * k)), *bk, s1);
            } else {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(8 * k)), *bk, s0);
            }
        }
        hsum(_mm256_add_ps(s0, s1))
    }

    /// `Σ a_i b_i` of two rows in registers, in two chains.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_reg<const M: usize>(a: &Row<M>, b: &Row<M>) -> f32 {
        let (mut s0, mut s1) = (_mm256_mul_ps(a[0], b[0]), _mm256_setzero_ps());
        for k in 1..M {
            if k % 2 == 1 {
                s1 = _mm256_fmadd_ps(a[k], b[k], s1);
            } else {
                s0 = _mm256_fmadd_ps(a[k], b[k], s0);
            }
        }
        hsum(_mm256_add_ps(s0, s1))
    }

    /// `acc += a · row_in_memory`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn axpy_mem<const M: usize>(a: f32, x: &[f32], acc: &mut Row<M>) {
        let va = _mm256_set1_ps(a);
        let p = x.as_ptr();
        for (k, v) in acc.iter_mut().enumerate() {
            *v = _mm256_fmadd_ps(va, _mm256_loadu_ps(p.add(8 * k)), *v);
        }
    }

    /// `acc += a · row`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn axpy_reg<const M: usize>(a: f32, x: &Row<M>, acc: &mut Row<M>) {
        let va = _mm256_set1_ps(a);
        for (v, xv) in acc.iter_mut().zip(x) {
            *v = _mm256_fmadd_ps(va, *xv, *v);
        }
    }

    /// `M · v` for a symmetric `f × f` row-major `m`, as `Σ_d v_d · m_d`
    /// (no horizontal sums).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn symv<const M: usize>(m: &[f32], v: &[f32]) -> Row<M> {
        let f = 8 * M;
        let mut acc = [_mm256_setzero_ps(); M];
        for d in 0..f {
            axpy_mem(*v.get_unchecked(d), &m[d * f..d * f + f], &mut acc);
        }
        acc
    }

    /// `steps` conjugate-gradient steps on
    /// `(YᵀY + λI + Σ_i (c_i − 1) y_i y_iᵀ) x = Σ_i c_i y_i` for `f = 8·M`,
    /// from the current `x`; `ytyr` is `YᵀY + λI`, `scratch` at least `f`
    /// floats.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `x` and the rows of `y` are `8·M`
    /// floats and every index in `idx` is a row of `y`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn cg<const M: usize>(
        ytyr: &[f32],
        y: &[f32],
        idx: &[u32],
        conf: &[f32],
        steps: usize,
        x: &mut [f32],
        scratch: &mut [f32],
    ) {
        let f = 8 * M;
        let pmem = &mut scratch[..f];
        // r = b − A x
        let mut xr = load::<M>(x);
        let mut r = symv::<M>(ytyr, x);
        for v in r.iter_mut() {
            *v = _mm256_sub_ps(_mm256_setzero_ps(), *v);
        }
        for (j, (&i, &c)) in idx.iter().zip(conf).enumerate() {
            prefetch_row(y, idx, j + AHEAD, f);
            let yi = &y[i as usize * f..(i as usize + 1) * f];
            let t = c - (c - 1.0) * dot_mem(yi, &xr);
            axpy_mem(t, yi, &mut r);
        }
        let mut p = r;
        let mut rsold = dot_reg(&r, &r);
        if rsold < 1e-20 {
            return;
        }
        for _ in 0..steps {
            store(&p, pmem);
            let mut ap = symv::<M>(ytyr, pmem);
            for (j, (&i, &c)) in idx.iter().zip(conf).enumerate() {
                prefetch_row(y, idx, j + AHEAD, f);
                let yi = &y[i as usize * f..(i as usize + 1) * f];
                axpy_mem((c - 1.0) * dot_mem(yi, &p), yi, &mut ap);
            }
            let pap = dot_reg(&p, &ap);
            if pap <= 0.0 {
                break;
            }
            let a = rsold / pap;
            axpy_reg(a, &p, &mut xr);
            axpy_reg(-a, &ap, &mut r);
            let rsnew = dot_reg(&r, &r);
            if rsnew < 1e-20 {
                break;
            }
            let mut np = r;
            axpy_reg(rsnew / rsold, &p, &mut np);
            p = np;
            rsold = rsnew;
        }
        store(&xr, x);
    }
}

/// Register-blocked conjugate-gradient row solves with AVX-512 for
/// `f = 16·N` factors: a factor row is `N` 16-lane registers, so at
/// `f ≤ 64` `p`, `Ap`, `r`, `x` and the item row all fit in the 32
/// registers with no spills.
#[cfg(target_arch = "x86_64")]
pub mod avx512_rows {
    use super::{prefetch_floats, prefetch_row, AHEAD};
    use std::arch::x86_64::*;

    type Row<const N: usize> = [__m512; N];

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load<const N: usize>(a: &[f32]) -> Row<N> {
        let p = a.as_ptr();
        let mut r = [_mm512_setzero_ps(); N];
        for (k, v) in r.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(p.add(16 * k));
        }
        r
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store<const N: usize>(r: &Row<N>, a: &mut [f32]) {
        let p = a.as_mut_ptr();
        for (k, v) in r.iter().enumerate() {
            _mm512_storeu_ps(p.add(16 * k), *v);
        }
    }

    /// `Σ a_i b_i` in two chains.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn dot<const N: usize>(a: &Row<N>, b: &Row<N>) -> f32 {
        let (mut s0, mut s1) = (_mm512_mul_ps(a[0], b[0]), _mm512_setzero_ps());
        for k in 1..N {
            if k % 2 == 1 {
                s1 = _mm512_fmadd_ps(a[k], b[k], s1);
            } else {
                s0 = _mm512_fmadd_ps(a[k], b[k], s0);
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn axpy<const N: usize>(a: f32, x: &Row<N>, acc: &mut Row<N>) {
        let va = _mm512_set1_ps(a);
        for (v, xv) in acc.iter_mut().zip(x) {
            *v = _mm512_fmadd_ps(va, *xv, *v);
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn symv<const N: usize>(m: &[f32], v: &[f32]) -> Row<N> {
        let f = 16 * N;
        let mut acc = [_mm512_setzero_ps(); N];
        for d in 0..f {
            let row = load::<N>(&m[d * f..d * f + f]);
            axpy(*v.get_unchecked(d), &row, &mut acc);
        }
        acc
    }

    /// `G v` for the shared part `G = YᵀY + λI` of a row's system, `v`
    /// in memory (`vm`) and in registers (`vr`): `G` held whole (`f × f`)
    /// or, when `DIAG`, as its diagonal (the first `f` floats of `g`: the
    /// factors are in the eigenbasis of `YᵀY`, see `als`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn gram_times<const N: usize, const DIAG: bool>(g: &[f32], vm: &[f32], vr: &Row<N>) -> Row<N> {
        if DIAG {
            let mut out = load::<N>(g);
            for (o, vk) in out.iter_mut().zip(vr) {
                *o = _mm512_mul_ps(*o, *vk);
            }
            out
        } else {
            symv::<N>(g, vm)
        }
    }

    /// `steps` conjugate-gradient steps on
    /// `(YᵀY + λI + Σ_i (c_i − 1) y_i y_iᵀ) x = Σ_i c_i y_i` for `f = 16·N`,
    /// from the current `x`; `scratch` at least `f` floats. `ytyr` is
    /// `YᵀY + λI` (`f × f`), or when `DIAG` its eigenvalues plus `λ` (`f`)
    /// followed by the eigenvectors `Q` (`f × f`, row-major, `YᵀY = QΛQᵀ`)
    /// with `y` already turned to that basis: `x` is turned to it as it is
    /// loaded (`xᵀ ← xᵀQ`) and stored there.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `x` and the rows of `y` are `16·N`
    /// floats, `ytyr` is `16·N + (16·N)²` floats when `DIAG` and `(16·N)²`
    /// otherwise, and every index in `idx` is a row of `y`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn cg<const N: usize, const DIAG: bool>(
        ytyr: &[f32],
        y: &[f32],
        idx: &[u32],
        conf: &[f32],
        steps: usize,
        x: &mut [f32],
        scratch: &mut [f32],
    ) {
        let f = 16 * N;
        let pmem = &mut scratch[..f];
        let mut xr = if DIAG { symv::<N>(&ytyr[f..f + f * f], x) } else { load::<N>(x) };
        let mut r = gram_times::<N, DIAG>(ytyr, x, &xr);
        for v in r.iter_mut() {
            *v = _mm512_sub_ps(_mm512_setzero_ps(), *v);
        }
        for (j, (&i, &c)) in idx.iter().zip(conf).enumerate() {
            prefetch_row(y, idx, j + AHEAD, f);
            let yi = load::<N>(&y[i as usize * f..(i as usize + 1) * f]);
            axpy(c - (c - 1.0) * dot(&yi, &xr), &yi, &mut r);
        }
        let mut p = r;
        let mut rsold = dot(&r, &r);
        if rsold < 1e-20 {
            store(&xr, x);
            return;
        }
        for _ in 0..steps {
            if !DIAG {
                // The dense product reads `p` back one float at a time.
                store(&p, pmem);
            }
            let mut ap = gram_times::<N, DIAG>(ytyr, pmem, &p);
            for (j, (&i, &c)) in idx.iter().zip(conf).enumerate() {
                prefetch_row(y, idx, j + AHEAD, f);
                let yi = load::<N>(&y[i as usize * f..(i as usize + 1) * f]);
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

    /// One artist's run of nonzeros in a block of users, in a scatter pass
    /// of the artist half-step (see `als`): for each `(u, c)`, with
    /// `d = x_uᵀ v`, it adds `t · x_u` to a sum held in registers, where
    /// `t = c − (c − 1) d` when `RESIDUAL`, else `t = (c − 1) d`; then
    /// `acc += sum`. `v` stays in registers and the block's rows `xb` in
    /// cache, so `acc` is read and written once a run, not once a nonzero.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `v` and `acc` are `16·N` floats,
    /// every `u` in `users` is a `16·N`-float row of `xb`, and the run is
    /// as long as `conf`: `users` may go on (with the block's next runs,
    /// whose rows are fetched ahead).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn scatter_run<const N: usize, const RESIDUAL: bool>(
        xb: &[f32],
        users: &[u16],
        conf: &[f32],
        v: &[f32],
        acc: &mut [f32],
    ) {
        let f = 16 * N;
        let vr = load::<N>(v);
        let mut sum = [_mm512_setzero_ps(); N];
        for (j, (&u, &c)) in users.iter().zip(conf).enumerate() {
            // `users` runs on past this run to the block's end.
            if let Some(&a) = users.get(j + AHEAD) {
                prefetch_floats(xb.as_ptr().add(a as usize * f), f);
            }
            let at = u as usize * f;
            let xu = load::<N>(&xb[at..at + f]);
            let d = dot(&xu, &vr);
            let t = if RESIDUAL { c - (c - 1.0) * d } else { (c - 1.0) * d };
            axpy(t, &xu, &mut sum);
        }
        let mut a = load::<N>(acc);
        for (a, s) in a.iter_mut().zip(&sum) {
            *a = _mm512_add_ps(*a, *s);
        }
        store(&a, acc);
    }
}

/// The k-means assignment with AVX-512: each row's nearest centroid by
/// `‖c‖² − 2 x·c` (the row's own norm is the same for every centroid).
///
/// A register-blocked micro-kernel in the manner of BLIS (Van Zee & van de
/// Geijn 2015): [`Panel`](avx512_nearest::Panel) holds the centroids transposed, 32 to a block, so
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
        ct: crate::linalg::Floats,
        cn: crate::linalg::Floats,
    }

    impl Panel {
        /// From row-major `k × dim` centroids and their squared norms.
        pub fn new(centroids: &[f32], norms: &[f32], dim: usize) -> Panel {
            let k = norms.len();
            let kp = k.div_ceil(NB) * NB;
            // On cache lines, so that each centroid load below is one
            // line, not a split load across two.
            let mut ct = crate::linalg::Floats::zeroed(dim * kp);
            for (j, c) in centroids.chunks(dim).enumerate() {
                for (d, v) in c.iter().enumerate() {
                    ct[d * kp + j] = *v;
                }
            }
            let mut cn = crate::linalg::Floats::zeroed(kp);
            cn.fill(f32::INFINITY);
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
        let inf = _mm512_set1_ps(f32::INFINITY);
        let mut best = [[inf; 2]; R];
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
            for r in 0..R {
                for h in 0..2 {
                    let dist = _mm512_fmadd_ps(minus2, acc[r][h], n[h]);
                    let lt = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(dist, best[r][h]);
                    best[r][h] = _mm512_mask_blend_ps(lt, best[r][h], dist);
                    besti[r][h] = _mm512_mask_blend_epi32(lt, besti[r][h], idx[h]);
                }
            }
        }
        for r in 0..R {
            let (bv, bi) = (&best[r], &besti[r]);
            let m = _mm512_reduce_min_ps(_mm512_min_ps(bv[0], bv[1]));
            let mv = _mm512_set1_ps(m);
            let i0 = _mm512_mask_reduce_min_epu32(_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(bv[0], mv), bi[0]);
            let i1 = _mm512_mask_reduce_min_epu32(_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(bv[1], mv), bi[1]);
            // No lane compares equal only when every distance is NaN.
            let i = i0.min(i1);
            out[r] = (m, if i == u32::MAX { 0 } else { i });
        }
    }

    /// Candidate centres at most in [`distances16`].
    pub const CANDIDATES: usize = 16;

    /// For one row `x` (`dim` floats) and one panel of up to 16 centroids
    /// held transposed (`ct`: `dim × 16`, zeros past the centroids; `cn`
    /// their squared norms, +∞ past them): the least `‖c‖² − 2 x·c`, its
    /// lane, and the second least (+∞ with one centroid). The group search
    /// of Yinyang k-means (see `kmeans`): one row against one group.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `ct` holds `x.len() × 16` floats.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn panel_min2(x: &[f32], ct: &[f32], cn: &[f32; 16]) -> (f32, usize, f32) {
        let dim = x.len();
        debug_assert!(ct.len() >= dim * 16);
        let (xp, cp) = (x.as_ptr(), ct.as_ptr());
        // Four chains over the coordinates, so the adds overlap.
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut d = 0;
        while d + 4 <= dim {
            for (k, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_set1_ps(*xp.add(d + k)), _mm512_loadu_ps(cp.add((d + k) * 16)), *a);
            }
            d += 4;
        }
        while d < dim {
            acc[0] = _mm512_fmadd_ps(_mm512_set1_ps(*xp.add(d)), _mm512_loadu_ps(cp.add(d * 16)), acc[0]);
            d += 1;
        }
        let cross = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        let v = _mm512_fmadd_ps(_mm512_set1_ps(-2.0), cross, _mm512_loadu_ps(cn.as_ptr()));
        let v1 = _mm512_reduce_min_ps(v);
        // The first lane holding the least (the lowest centroid on a tie).
        let at = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(v, _mm512_set1_ps(v1));
        let lane = (at.trailing_zeros() as usize).min(15);
        let rest = _mm512_mask_mov_ps(v, 1 << lane, _mm512_set1_ps(f32::INFINITY));
        (v1, lane, _mm512_reduce_min_ps(rest))
    }

    /// Squared distances `max(0, ‖x‖² − 2 x·c + ‖c‖²)` of each row of `x`
    /// to each of `t ≤ 16` centres, written row by row to `out` (`rows × t`).
    /// `ct` holds the centres transposed, `dim × 16` (padding lanes zero),
    /// `cn` their squared norms; `xn` the rows' squared norms. The k-means++
    /// seeding's candidate pass: one register per row holds the distances to
    /// every candidate, eight rows at a time.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `ct` holds `dim × 16` floats, `xn` one
    /// norm and `out` `t` places per row of `x`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn distances16(
        x: &[f32],
        dim: usize,
        xn: &[f32],
        ct: &[f32],
        cn: &[f32; 16],
        t: usize,
        out: &mut [f32],
    ) {
        const R: usize = 8;
        let rows = x.len() / dim;
        debug_assert!(t <= CANDIDATES && ct.len() >= dim * 16 && xn.len() >= rows && out.len() >= rows * t);
        let (xp, cp, op) = (x.as_ptr(), ct.as_ptr(), out.as_mut_ptr());
        let cnv = _mm512_loadu_ps(cn.as_ptr());
        let keep: __mmask16 = ((1u32 << t) - 1) as __mmask16;
        let mut r0 = 0;
        while r0 < rows {
            let n = (rows - r0).min(R);
            let mut acc = [_mm512_setzero_ps(); R];
            for d in 0..dim {
                let c = _mm512_loadu_ps(cp.add(d * 16));
                for (r, a) in acc.iter_mut().enumerate().take(n) {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(*xp.add((r0 + r) * dim + d)), c, *a);
                }
            }
            for (r, a) in acc.iter().enumerate().take(n) {
                let base = _mm512_add_ps(cnv, _mm512_set1_ps(*xn.get_unchecked(r0 + r)));
                let dist = _mm512_max_ps(_mm512_fmadd_ps(_mm512_set1_ps(-2.0), *a, base), _mm512_setzero_ps());
                _mm512_mask_storeu_ps(op.add((r0 + r) * t), keep, dist);
            }
            r0 += n;
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn avx2_kernels_match_the_portable_ones() {
        if !kernels_run("avx2") {
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
