//! Small dense linear algebra: Gram matrices through a real GEMM, and the
//! dense Cholesky solve used by the reference ALS solver and the fold-in.

pub(crate) use crate::kernels::par_filled;
pub use crate::kernels::Floats;
#[cfg(test)]
use crate::kernels::{par_fill_with, FILL_PART};

/// `C = A · op(B)` for row-major `A` (`m × k`), with `op(B)` (`k × n`)
/// addressed through the strides `(rsb, csb)`, by matrixmultiply's packed
/// SGEMM kernels.
fn sgemm(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, rsb: usize, csb: usize) -> Vec<f32> {
    assert_eq!(a.len(), m * k);
    assert_eq!(b.len(), k * n);
    let mut c = vec![0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        return c;
    }
    crate::kernels::sgemm(m, k, n, 1.0, a, (k, 1), b, (rsb, csb), 0.0, &mut c, n);
    c
}

/// `C = A · B` for row-major `A` (`m × k`) and `B` (`k × n`).
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    sgemm(a, b, m, k, n, n, 1)
}

/// `C = A · Bᵀ` for row-major `A` (`m × k`) and `B` (`n × k`).
pub fn matmul_t(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    sgemm(a, b, m, k, n, 1, k)
}

/// `C += α · A · B` for row-major `A` (`m × k`), `B` (`k × n`) and `C`
/// (`m × n`), in parallel blocks of rows. Each element's sum runs over `k`
/// in the same order whatever the blocking, so the result repeats bit for
/// bit. The artist half-step uses it for `P · (XᵀX + λI)` over all
/// artists at once, where one dot product per element was 21% of an
/// iteration.
pub fn gemm_acc(alpha: f32, a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    gemm_blocks(alpha, a, b, 1.0, c, m, k, n)
}

/// `C = A · B` into `C`, whatever it held, in the parallel blocks of
/// [`gemm_acc`] (bit-for-bit repeatable likewise).
pub fn gemm_into(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    gemm_blocks(1.0, a, b, 0.0, c, m, k, n)
}

/// `C = α · A · B + β · C` in parallel blocks of rows.
#[allow(clippy::too_many_arguments)]
fn gemm_blocks(alpha: f32, a: &[f32], b: &[f32], beta: f32, c: &mut [f32], m: usize, k: usize, n: usize) {
    use rayon::prelude::*;
    assert_eq!(a.len(), m * k);
    assert_eq!(b.len(), k * n);
    assert_eq!(c.len(), m * n);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    const BLOCK: usize = 512;
    c.par_chunks_mut(BLOCK * n).zip(a.par_chunks(BLOCK * k)).for_each(|(cb, ab)| {
        let rows = cb.len() / n;
        crate::kernels::sgemm(rows, k, n, alpha, ab, (k, 1), b, (n, 1), beta, cb, n);
    });
}

/// Rows per parallel part when `rows` rows are split into at most
/// `max_parts` parts of whole `align`-row blocks. Parts are fixed by the
/// sizes alone, so sums reduced part by part in order are bit-for-bit
/// repeatable whatever the thread scheduling.
pub fn part_rows(rows: usize, max_parts: usize, align: usize) -> usize {
    let per = rows.div_ceil(max_parts.max(1)).max(1);
    per.div_ceil(align) * align
}

/// Parts used by the deterministic parallel reductions.
pub const MAX_PARTS: usize = 64;

/// `v` cut into consecutive places of the given lengths, in order: the
/// disjoint spans that parallel parts fill. Whatever follows the last
/// place is left out.
pub fn split_lengths<T>(mut v: &mut [T], lens: impl IntoIterator<Item = usize>) -> Vec<&mut [T]> {
    let mut places = Vec::new();
    for n in lens {
        let (place, rest) = std::mem::take(&mut v).split_at_mut(n);
        places.push(place);
        v = rest;
    }
    places
}

/// The Gram matrix `Yᵀ Y` (`f × f`) of a row-major `rows × f` matrix, summed
/// over fixed parts in parallel, then in order (repeatable).
pub fn gram(y: &[f32], rows: usize, f: usize) -> Vec<f32> {
    use rayon::prelude::*;
    if rows == 0 || f == 0 {
        return vec![0f32; f * f];
    }
    let per = part_rows(rows, MAX_PARTS, 256);
    let parts: Vec<Vec<f32>> = y
        .par_chunks(per * f)
        .map(|part| {
            let r = part.len() / f;
            let mut c = vec![0f32; f * f];
            // Aᵀ of a row-major r × f block: row stride 1, column stride f.
            crate::kernels::sgemm(f, r, f, 1.0, part, (1, f), part, (f, 1), 0.0, &mut c, f);
            c
        })
        .collect();
    let mut out = vec![0f32; f * f];
    for p in parts {
        out.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    out
}

/// Dot product, written so the compiler vectorises it.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// `y += a * x`.
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// Solves `A x = b` in place (`b` becomes `x`) for a symmetric positive
/// definite `n × n` row-major `A`, by Cholesky factorisation in f64. Returns
/// false when `A` is not positive definite.
pub fn cholesky_solve(a: &mut [f64], b: &mut [f64], n: usize) -> bool {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if d <= 0.0 || !d.is_finite() {
            return false;
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= a[i * n + k] * b[k];
        }
        b[i] = s / a[i * n + i];
    }
    for i in (0..n).rev() {
        let mut s = b[i];
        for k in i + 1..n {
            s -= a[k * n + i] * b[k];
        }
        b[i] = s / a[i * n + i];
    }
    true
}

/// Eigendecomposition of a symmetric `n × n` matrix (row-major) by cyclic
/// Jacobi rotations (Golub & Van Loan, *Matrix Computations*, 4th ed.,
/// §8.5.2–8.5.3, with Rutishauser's choice of the smaller rotation angle).
/// Returns `(w, v)` with `A = V diag(w) Vᵀ`: `v` row-major, its column `j`
/// the unit eigenvector of `w[j]`, and the eigenvalues in no particular
/// order.
///
/// An element of `A` that is exactly zero with every other row is never
/// rotated, so a coordinate that `A` keeps apart (as the ALS padding
/// coordinates are) stays a unit vector of `V`. Sweeps stop when the
/// off-diagonal mass is below `1e-24` of the whole (quadratic convergence
/// makes that a handful of sweeps), or after 60.
pub fn sym_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), n * n);
    let mut a = a.to_vec();
    let mut v = vec![0f64; n * n];
    for d in 0..n {
        v[d * n + d] = 1.0;
    }
    let total: f64 = a.iter().map(|x| x * x).sum();
    for _ in 0..60 {
        let off: f64 = (0..n)
            .flat_map(|p| (0..n).filter(move |&q| q != p).map(move |q| (p, q)))
            .map(|(p, q)| a[p * n + q].powi(2))
            .sum();
        if off <= 1e-24 * total {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                // tan of the angle that zeroes a_pq, the smaller root.
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|d| a[d * n + d]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_fills_and_copies_write_every_element_once() {
        // Lengths around a part's size and the 16-float line, so that the
        // one-call path, the parallel path and a short last part all run.
        let per_f32 = FILL_PART;
        for n in [0, 1, 15, 16, 17, per_f32 - 1, per_f32, per_f32 + 1, 3 * per_f32 + 17] {
            let v: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let f = Floats::from_slice(&v);
            assert_eq!(&f[..], &v[..], "Floats::from_slice of {n}");
            assert_eq!(f.as_ptr() as usize % 64, 0, "rows start on a cache line");
            let z = Floats::zeroed(n);
            assert!(z.len() == n && z.iter().all(|&x| x == 0.0), "Floats::zeroed({n})");
            let filled = par_filled(n, (7u16, 9u8));
            assert!(filled.len() == n && filled.iter().all(|&x| x == (7, 9)), "par_filled({n})");
        }
        // Each part is told its first index.
        let mut seen = vec![usize::MAX; 2 * FILL_PART + 5];
        par_fill_with(&mut seen, |at, part| {
            for (i, x) in part.iter_mut().enumerate() {
                *x = at + i;
            }
        });
        assert!(seen.iter().enumerate().all(|(i, &x)| x == i));
    }

    #[test]
    fn matmul_variants_agree_with_naive() {
        let (m, k, n) = (3, 4, 2);
        let a: Vec<f32> = (0..m * k).map(|v| v as f32 * 0.5 - 2.0).collect();
        let b: Vec<f32> = (0..k * n).map(|v| (v as f32).sin()).collect();
        let c = matmul(&a, &b, m, k, n);
        let bt: Vec<f32> = (0..n * k).map(|idx| b[(idx % k) * n + idx / k]).collect();
        let c2 = matmul_t(&a, &bt, m, k, n);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
                assert!((c[i * n + j] - want).abs() < 1e-5);
                assert!((c2[i * n + j] - want).abs() < 1e-5);
            }
        }
        let mut acc: Vec<f32> = (0..m * n).map(|v| v as f32).collect();
        gemm_acc(-2.0, &a, &b, &mut acc, m, k, n);
        for (idx, v) in acc.iter().enumerate() {
            assert!((v - (idx as f32 - 2.0 * c[idx])).abs() < 1e-4, "C += αAB at {idx}");
        }
        // Past one 512-row block: the blocks' seams and the short last one.
        let (m2, k2, n2) = (1100, 7, 5);
        let a2: Vec<f32> = (0..m2 * k2).map(|v| ((v * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let b2: Vec<f32> = (0..k2 * n2).map(|v| (v as f32 * 0.3).cos()).collect();
        let mut acc2 = vec![1f32; m2 * n2];
        gemm_acc(0.5, &a2, &b2, &mut acc2, m2, k2, n2);
        for i in 0..m2 {
            for j in 0..n2 {
                let want = 1.0 + 0.5 * (0..k2).map(|l| a2[i * k2 + l] * b2[l * n2 + j]).sum::<f32>();
                assert!((acc2[i * n2 + j] - want).abs() < 1e-4, "row {i} col {j}");
            }
        }
        let g = gram(&a, m, k);
        let want: f32 = (0..m).map(|r| a[r * k + 1] * a[r * k + 3]).sum();
        assert!((g[k + 3] - want).abs() < 1e-5);
    }

    #[test]
    fn jacobi_eigenvectors_diagonalise_and_keep_apart_coordinates() {
        let mut rng = crate::rng::Rng::new(3);
        for n in [1, 2, 5, 16, 64] {
            // A Gram matrix (as ALS has) plus one coordinate kept apart.
            let rows = 3 * n;
            let y: Vec<f32> = (0..rows * n).map(|_| rng.normal() as f32).collect();
            let g = gram(&y, rows, n);
            let m = n + 1;
            let mut a = vec![0f64; m * m];
            for r in 0..n {
                for c in 0..n {
                    a[r * m + c] = g[r * n + c] as f64;
                }
            }
            a[n * m + n] = 0.25;
            let (w, v) = sym_eigen(&a, m);
            let scale = w.iter().fold(0f64, |s, x| s.max(x.abs()));
            for i in 0..m {
                for j in 0..m {
                    // Vᵀ V = I and Vᵀ A V = diag(w).
                    let vv: f64 = (0..m).map(|k| v[k * m + i] * v[k * m + j]).sum();
                    let vav: f64 =
                        (0..m).map(|k| v[k * m + i] * (0..m).map(|l| a[k * m + l] * v[l * m + j]).sum::<f64>()).sum();
                    let (want_vv, want_vav) = if i == j { (1.0, w[i]) } else { (0.0, 0.0) };
                    assert!((vv - want_vv).abs() < 1e-12, "n {n}: (VᵀV)[{i}][{j}] = {vv}");
                    assert!((vav - want_vav).abs() < 1e-10 * scale, "n {n}: (VᵀAV)[{i}][{j}] = {vav}");
                }
            }
            // The kept-apart coordinate is an eigenvector as it stood.
            assert_eq!(w[n], 0.25);
            assert!((0..m).all(|k| v[k * m + n] == if k == n { 1.0 } else { 0.0 }));
            assert!((0..n).all(|k| v[n * m + k] == 0.0));
        }
    }

    #[test]
    fn floats_start_on_a_cache_line() {
        for len in [0, 1, 15, 16, 17, 64 * 4000, 64 * 70_000] {
            let v: Vec<f32> = (0..len).map(|i| i as f32).collect();
            let mut a = Floats::from_slice(&v);
            assert_eq!(&a[..], &v[..]);
            assert_eq!(a.as_ptr() as usize % 64, 0, "len {len}");
            let b = a.clone();
            assert_eq!(b.as_ptr() as usize % 64, 0);
            a.iter_mut().for_each(|x| *x += 1.0);
            assert!(a.iter().zip(b.iter()).all(|(x, y)| *x == *y + 1.0));
        }
    }

    #[test]
    fn cholesky_solves_and_rejects_indefinite() {
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        let mut b = vec![2.0, 1.0];
        assert!(cholesky_solve(&mut a, &mut b, 2));
        assert!((4.0 * b[0] + 2.0 * b[1] - 2.0).abs() < 1e-12);
        assert!((2.0 * b[0] + 3.0 * b[1] - 1.0).abs() < 1e-12);
        let mut bad = vec![1.0, 2.0, 2.0, 1.0];
        assert!(!cholesky_solve(&mut bad, &mut [1.0, 1.0], 2));
    }
}
