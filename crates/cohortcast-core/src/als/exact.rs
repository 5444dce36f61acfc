//! The exact row solve (the reference the conjugate-gradient steps are
//! tested against) and the full objective.

use rayon::prelude::*;

use crate::kernels::Isa;
use crate::linalg::{cholesky_solve, dot, gram};
use crate::sparse::Csr;

/// Exact solve of one row's system in f64. `yty` is `YᵀY` without `λ`.
pub(super) fn solve_row_cholesky(yty: &[f32], y: &[f32], idx: &[u32], conf: &[f32], f: usize, reg: f32) -> Vec<f32> {
    let mut a: Vec<f64> = yty.iter().map(|&v| v as f64).collect();
    let mut b = vec![0f64; f];
    for d in 0..f {
        a[d * f + d] += reg as f64;
    }
    for (&i, &c) in idx.iter().zip(conf) {
        let yi = &y[i as usize * f..(i as usize + 1) * f];
        let (c, w) = (c as f64, c as f64 - 1.0);
        for r in 0..f {
            b[r] += c * yi[r] as f64;
            let wr = w * yi[r] as f64;
            for s in 0..f {
                a[r * f + s] += wr * yi[s] as f64;
            }
        }
    }
    // λ > 0 makes A positive definite; a failure here means NaN crept in,
    // which the caller's finiteness check reports.
    if !cholesky_solve(&mut a, &mut b, f) {
        return vec![f32::NAN; f];
    }
    b.into_iter().map(|v| v as f32).collect()
}

/// The full objective `Σ c (p − xᵀy)² + λ(‖X‖² + ‖Y‖²)` over all cells,
/// computed in `O(nnz f + (U + I) f²)` by splitting off the unobserved cells:
/// `Σ_all (xᵀy)² = Σ_u x_uᵀ (YᵀY) x_u`.
pub fn loss(x: &[f32], y: &[f32], c: &Csr, f: usize, reg: f32) -> f64 {
    let yty = gram(y, c.cols(), f);
    let isa = Isa::best();
    let per_user: Vec<f64> = x
        .par_chunks(f)
        .enumerate()
        .map_init(
            || vec![0f32; f],
            |gx, (u, xu)| {
                // x_uᵀ (YᵀY) x_u as Σ_d x_ud · row_d, then one dot: no
                // horizontal sum per row of YᵀY.
                gx.iter_mut().for_each(|v| *v = 0.0);
                for d in 0..f {
                    isa.axpy(xu[d], &yty[d * f..(d + 1) * f], gx);
                }
                let mut s = isa.dot(xu, gx) as f64;
                let (idx, val) = c.row(u);
                for (&i, &cv) in idx.iter().zip(val) {
                    let pred = isa.dot(xu, &y[i as usize * f..(i as usize + 1) * f]) as f64;
                    s += cv as f64 * (1.0 - pred).powi(2) - pred * pred;
                }
                s + reg as f64 * dot(xu, xu) as f64
            },
        )
        .collect();
    // Summed in order, so the figure repeats exactly.
    let item_reg: f64 = y.chunks(f).map(|yi| dot(yi, yi) as f64).sum();
    per_user.iter().sum::<f64>() + reg as f64 * item_reg
}
