//! The k-means assignment with AVX-512: each row's nearest centroid by
//! `‖c‖² − 2 x·c` (the row's own norm is the same for every centroid).
//!
//! A register-blocked micro-kernel in the manner of BLIS (Van Zee & van de
//! Geijn 2015): [`Panel`] holds the centroids transposed, 32 to a block, so
//! a tile of `MR` rows × 32 centroids accumulates in `2·MR` registers with
//! one broadcast of `x[r][d]` and two centroid loads per `d`, and the
//! distances never leave the registers: each block's are compared
//! lane-wise with the best so far, and one reduction per row ends the
//! search. Ties go to the lowest centroid index, as in the portable path.
//!
//! The kernels are `unsafe fn`s compiled for AVX-512F; the functions
//! other modules call are safe: they take pulp's [`V4`] token, which
//! exists only on a CPU with AVX-512, and check the lengths the kernels
//! index by.

use std::arch::x86_64::*;

use pulp::x86::V4;

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
    /// Proof that this CPU runs AVX-512.
    simd: V4,
    dim: usize,
    kp: usize,
    ct: super::Floats,
    cn: super::Floats,
}

impl Panel {
    /// From row-major `k × dim` centroids and their squared norms.
    pub fn new(simd: V4, centroids: &[f32], norms: &[f32], dim: usize) -> Panel {
        assert!(dim > 0 && centroids.len() == norms.len() * dim, "a panel needs k × dim centroids and k norms");
        let k = norms.len();
        let kp = k.div_ceil(NB) * NB;
        // On cache lines, so that each centroid load below is one
        // line, not a split load across two.
        let mut ct = super::Floats::zeroed(dim * kp);
        for (j, c) in centroids.chunks(dim).enumerate() {
            for (d, v) in c.iter().enumerate() {
                ct[d * kp + j] = *v;
            }
        }
        let mut cn = super::Floats::zeroed(kp);
        cn.fill(f32::INFINITY);
        cn[..k].copy_from_slice(norms);
        Panel { simd, dim, kp, ct, cn }
    }
}

/// For each row of `x` (row-major, `panel`'s dim), the least
/// `‖c‖² − 2 x·c` over the centroids and the centroid's index.
pub fn nearest(x: &[f32], panel: &Panel, out: &mut [(f32, u32)]) {
    assert!(out.len() >= x.len() / panel.dim, "one output a row");
    // The panel's token is the proof that the CPU runs AVX-512F.
    let _proof: V4 = panel.simd;
    // SAFETY: the panel holds a `V4` token, made only on a CPU with
    // AVX-512F; `out` has a place for every row (checked above) and the
    // tiles index `x` by whole rows of the panel's dim.
    unsafe { nearest_avx512(x, panel, out) }
}

/// [`nearest`]'s kernel.
///
/// # Safety
/// The CPU must support AVX-512F; `out` holds one entry per row of `x`.
#[target_feature(enable = "avx512f")]
unsafe fn nearest_avx512(x: &[f32], panel: &Panel, out: &mut [(f32, u32)]) {
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
pub fn panel_min2(_simd: V4, x: &[f32], ct: &[f32], cn: &[f32; 16]) -> (f32, usize, f32) {
    assert!(ct.len() >= x.len() * 16, "the panel holds dim × 16 floats");
    // SAFETY: a `V4` token is made only on a CPU with AVX-512F, and `ct`'s
    // length was checked above.
    unsafe { panel_min2_avx512(x, ct, cn) }
}

/// [`panel_min2`]'s kernel.
///
/// # Safety
/// The CPU must support AVX-512F; `ct` holds `x.len() × 16` floats.
#[target_feature(enable = "avx512f")]
unsafe fn panel_min2_avx512(x: &[f32], ct: &[f32], cn: &[f32; 16]) -> (f32, usize, f32) {
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
#[allow(clippy::too_many_arguments)]
pub fn distances16(
    _simd: V4,
    x: &[f32],
    dim: usize,
    xn: &[f32],
    ct: &[f32],
    cn: &[f32; 16],
    t: usize,
    out: &mut [f32],
) {
    let rows = x.len() / dim;
    assert!(
        t <= CANDIDATES && ct.len() >= dim * 16 && xn.len() >= rows && out.len() >= rows * t,
        "distances16 needs at most 16 centres, a dim × 16 panel, a norm and t places a row"
    );
    // SAFETY: a `V4` token is made only on a CPU with AVX-512F, and the
    // lengths the kernel indexes by were checked above.
    unsafe { distances16_avx512(x, dim, xn, ct, cn, t, out) }
}

/// [`distances16`]'s kernel.
///
/// # Safety
/// The CPU must support AVX-512F; `ct` holds `dim × 16` floats, `xn` one
/// norm and `out` `t` places per row of `x`.
#[target_feature(enable = "avx512f")]
unsafe fn distances16_avx512(x: &[f32], dim: usize, xn: &[f32], ct: &[f32], cn: &[f32; 16], t: usize, out: &mut [f32]) {
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
