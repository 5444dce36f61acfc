//! Implicit-feedback matrix factorisation by alternating least squares.
//!
//! The model is Hu, Koren & Volinsky, "Collaborative Filtering for Implicit
//! Feedback Datasets" (ICDM 2008): find user factors `x_u` and artist factors
//! `y_i` minimising
//!
//! ```text
//!   Σ_{u,i} c_ui (p_ui − x_uᵀ y_i)² + λ (Σ_u ‖x_u‖² + Σ_i ‖y_i‖²)
//! ```
//!
//! over *all* cells, where `p_ui = 1` if the user played the artist and
//! `c_ui` is the confidence from [`crate::confidence`]. Fixing one side makes
//! the other a ridge regression per row; for user `u` it is
//!
//! ```text
//!   (YᵀY + Yᵀ(C_u − I)Y + λI) x_u = Yᵀ C_u p_u
//! ```
//!
//! where `YᵀY` is shared by all users and the correction only touches the
//! artists the user played (the paper's speed-up).
//!
//! Two solvers are offered:
//! * [`Solver::ConjugateGradient`] (default): a few conjugate-gradient steps
//!   per row, warm-started from the previous iterate, never forming the
//!   `f × f` system (Takács, Pilászy & Tikk, "Applications of the conjugate
//!   gradient method for implicit feedback collaborative filtering", RecSys
//!   2011; the scheme of the `implicit` library's `least_squares_cg`). Cost
//!   per row `O(f² + n_u f)` a step.
//! * [`Solver::Cholesky`]: forms and factorises each row's system exactly in
//!   f64, `O(n_u f² + f³)` a row. Slow and obviously correct: the reference
//!   the fast solver is tested against.
//!
//! With conjugate gradient the artist half-step runs for all artists in
//! lock step, as passes over the *user* rows that scatter each user's
//! products into the artists' accumulators (`half_step_scatter`): the same
//! CG steps, but the large user matrix is read in order instead of one
//! scattered row per nonzero. docs/design.md gives the figures.
//!
//! On the AVX-512 kernel the user half-step works in the eigenbasis of
//! `YᵀY` (`rotate_to_eigenbasis`): `YᵀY = QΛQᵀ` by Jacobi rotations, `Y`
//! and each user's row turned by the orthogonal `Q`, so that the shared
//! product `(YᵀY + λI) p` of every CG step is `f` multiplications instead
//! of an `f × f` product. Predictions, the loss and the CG steps are those
//! of the original basis; the factors come out in the last basis used
//! (factors of a factorisation are only ever defined up to such a turn).
//!
//! ```
//! use cohortcast_core::als::{AlsParams, AlsModel};
//! use cohortcast_core::sparse::Csr;
//! let plays = Csr::from_triplets(3, 3, &[(0, 0, 5.0), (0, 1, 2.0), (1, 0, 3.0), (1, 1, 1.0), (2, 2, 7.0)]).unwrap();
//! let model = AlsModel::fit(&plays, &AlsParams { factors: 2, iterations: 10, ..AlsParams::default() }).unwrap();
//! assert!(model.score(1, 1) > model.score(1, 2));
//! ```

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::confidence::{confidence, Weighting};
use crate::error::{check_range, DataError, FitError, ParamError};
use crate::linalg::{axpy, cholesky_solve, dot, gemm_acc, gram, split_lengths, Floats};
use crate::rng::Rng;
use crate::sparse::Csr;

/// How each row's least-squares system is solved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Solver {
    /// Conjugate gradient, `cg_steps` steps a row, warm-started (default).
    #[default]
    ConjugateGradient,
    /// Exact dense Cholesky solve in f64 (reference; slow).
    Cholesky,
}

/// Hyperparameters of implicit ALS. Names follow `implicit` and the CLI flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlsParams {
    /// Latent factors per user and artist. Default 64.
    pub factors: usize,
    /// Full ALS iterations (users then artists). Default 10, Spark
    /// MLlib's default (`implicit`'s is 15): on the demo's data over 18
    /// seeds and on the 500 000-user benchmark set, 15 iterations lowered
    /// the loss by 0.8% but did not raise the targeting's share of the
    /// oracle, and cost half as much ALS again (the history of BENCHMARKS.md).
    pub iterations: usize,
    /// L2 penalty `λ` on every factor vector. Default 5.0 (the confidence
    /// sums it competes with are large: see the history of BENCHMARKS.md for the sweep).
    pub regularization: f32,
    /// Confidence scale `alpha` in `c = 1 + alpha * w(plays)`. Default 10.0.
    pub alpha: f32,
    /// How plays become confidence. Default [`Weighting::Log`].
    pub weighting: Weighting,
    /// Row solver. Default conjugate gradient.
    pub solver: Solver,
    /// Conjugate-gradient steps per row and half-iteration. Default 3.
    pub cg_steps: usize,
    /// Seed of the factor initialisation. Default 42.
    pub seed: u64,
}

impl Default for AlsParams {
    fn default() -> Self {
        AlsParams {
            factors: 64,
            iterations: 10,
            regularization: 5.0,
            alpha: 10.0,
            weighting: Weighting::Log,
            solver: Solver::ConjugateGradient,
            cg_steps: 3,
            seed: 42,
        }
    }
}

impl AlsParams {
    /// Validates every field; called by [`AlsModel::fit`] before any work.
    pub fn check(&self) -> Result<(), ParamError> {
        check_range("factors", self.factors as f64, 1.0, 1024.0)?;
        check_range("iterations", self.iterations as f64, 1.0, 1000.0)?;
        check_range("regularization", self.regularization as f64, 1e-9, 1e6)?;
        check_range("alpha", self.alpha as f64, 0.0, 1e6)?;
        check_range("cg-steps", self.cg_steps as f64, 1.0, 1024.0)?;
        Ok(())
    }
}

/// A fitted implicit-ALS model: row-major user and artist factor matrices.
#[derive(Debug, Clone, PartialEq)]
pub struct AlsModel {
    /// The parameters it was fitted with.
    pub params: AlsParams,
    users: usize,
    items: usize,
    /// Cache-line aligned, as trained: a model fitted at a factor count
    /// that needs no padding keeps the rows it solved rather than a copy
    /// (128 MB of fresh memory for the medium set's users).
    user_factors: Floats,
    item_factors: Floats,
    /// Training loss (see [`loss`]) after each iteration, or only after the
    /// last when fitted without per-iteration tracking.
    pub loss_history: Vec<f64>,
}

impl AlsModel {
    /// Fits the model to a user × artist matrix of play counts, recording
    /// the loss after every iteration.
    pub fn fit(plays: &Csr, params: &AlsParams) -> Result<Self, FitError> {
        Self::fit_with_progress(plays, params, true, |_| {})
    }

    /// As [`AlsModel::fit`], calling `progress(iteration)` (1-based) after
    /// each iteration. With `loss_every_iteration` false the loss (about a
    /// tenth of an iteration's work) is computed once, at the end.
    pub fn fit_with_progress(
        plays: &Csr,
        params: &AlsParams,
        loss_every_iteration: bool,
        progress: impl FnMut(usize),
    ) -> Result<Self, FitError> {
        Self::fit_padded(plays, params, loss_every_iteration, true, progress)
    }

    /// As [`AlsModel::fit_with_progress`]. With `pad`, a factor count the
    /// register-blocked kernels have no instance for trains as the next
    /// multiple of 16 ([`padded_factors`]), the extra coordinates held at
    /// zero, and the model keeps the first `factors` of each row.
    fn fit_padded(
        plays: &Csr,
        params: &AlsParams,
        loss_every_iteration: bool,
        pad: bool,
        mut progress: impl FnMut(usize),
    ) -> Result<Self, FitError> {
        params.check()?;
        if plays.rows() == 0 || plays.cols() == 0 || plays.nnz() == 0 {
            return Err(DataError::Empty("no plays to learn from: the play matrix is empty".into()).into());
        }
        if plays.values().iter().any(|&v| v < 0.0) {
            return Err(DataError::Shape("play counts must not be negative".into()).into());
        }
        let f = params.factors;
        let fp = if pad && params.solver == Solver::ConjugateGradient { padded_factors(f) } else { f };
        let work = AlsParams { factors: fp, ..params.clone() };
        let cu = confidence(plays, params.weighting, params.alpha);
        // The artist side by scatter passes over the user rows when the
        // artists' accumulators stay small; else by rows of the transpose.
        let scatter = scatter_fits(plays.cols(), fp) && params.solver == Solver::ConjugateGradient;
        let artists = if scatter {
            ArtistSide::Blocks(UserBlocks::new(&cu, scatter_block(fp)))
        } else {
            ArtistSide::Rows(cu.transpose())
        };
        // The users' rows start at zero: the first half-step solves them
        // from the artists', so their start is only conjugate gradient's
        // first guess, and zeros cost nothing to draw (the seeded normals
        // took 0.35 s for the medium set's 500 000 users).
        let mut x = Floats::zeroed(plays.rows() * fp);
        let mut y = init_factors_padded(plays.cols(), f, fp, params.seed, 1);
        let mut loss_history = Vec::with_capacity(params.iterations);
        let rotate = rotates(&work);
        // Buffers every iteration reuses (see `ScatterWork`).
        let mut turned = if rotate { Floats::zeroed(y.len()) } else { Floats::zeroed(0) };
        let mut scatter_work = match &artists {
            ArtistSide::Blocks(ub) => Some(ScatterWork::new(ub, fp)),
            ArtistSide::Rows(_) => None,
        };
        for it in 1..=params.iterations {
            // Each user's row is checked as it is solved, while in cache.
            let finite = if rotate {
                let eigen = rotate_to_eigenbasis(&mut y, &mut turned, fp);
                half_step(&mut x, &y, &cu, &work, Some(&eigen))
            } else {
                half_step(&mut x, &y, &cu, &work, None)
            };
            if !finite {
                return Err(FitError::NonFinite { side: "user", iteration: it });
            }
            match &artists {
                ArtistSide::Rows(ci) => {
                    half_step(&mut y, &x, ci, &work, None);
                }
                ArtistSide::Blocks(ub) => {
                    let buffers = scatter_work.as_mut().expect("made with the blocks");
                    half_step_scatter(&mut y, &x, ub, &work, buffers);
                }
            }
            ensure_finite(&y, "artist", it)?;
            if loss_every_iteration || it == params.iterations {
                loss_history.push(loss(&x, &y, &cu, fp, params.regularization));
            }
            progress(it);
        }
        Ok(AlsModel {
            params: params.clone(),
            users: plays.rows(),
            items: plays.cols(),
            user_factors: restride(x, fp, f),
            item_factors: restride(y, fp, f),
            loss_history,
        })
    }

    /// Rebuilds a model from stored factor matrices (row-major).
    pub fn from_factors(params: AlsParams, user_factors: Vec<f32>, item_factors: Vec<f32>) -> Result<Self, DataError> {
        let f = params.factors;
        if f == 0 || !user_factors.len().is_multiple_of(f) || !item_factors.len().is_multiple_of(f) {
            return Err(DataError::Shape(format!(
                "factor matrices of {} and {} values do not split into rows of {f}",
                user_factors.len(),
                item_factors.len()
            )));
        }
        if user_factors.iter().chain(&item_factors).any(|v| !v.is_finite()) {
            return Err(DataError::Shape("stored factors hold NaN or infinite values".into()));
        }
        Ok(AlsModel {
            users: user_factors.len() / f,
            items: item_factors.len() / f,
            params,
            user_factors: Floats::from_slice(&user_factors),
            item_factors: Floats::from_slice(&item_factors),
            loss_history: Vec::new(),
        })
    }

    /// Number of latent factors.
    pub fn factors(&self) -> usize {
        self.params.factors
    }

    /// Number of users (rows of the user factors).
    pub fn users(&self) -> usize {
        self.users
    }

    /// Number of artists (rows of the artist factors).
    pub fn items(&self) -> usize {
        self.items
    }

    /// All user factors, row-major `users × factors`.
    pub fn user_factors(&self) -> &[f32] {
        &self.user_factors
    }

    /// All artist factors, row-major `artists × factors`.
    pub fn item_factors(&self) -> &[f32] {
        &self.item_factors
    }

    /// One user's factor vector.
    pub fn user(&self, u: usize) -> &[f32] {
        let f = self.factors();
        &self.user_factors[u * f..(u + 1) * f]
    }

    /// One artist's factor vector.
    pub fn item(&self, i: usize) -> &[f32] {
        let f = self.factors();
        &self.item_factors[i * f..(i + 1) * f]
    }

    /// Predicted preference `x_uᵀ y_i` (near 1: likes, near 0: indifferent).
    pub fn score(&self, u: usize, i: usize) -> f32 {
        dot(self.user(u), self.item(i))
    }

    /// The `n` best artists for user `u`, best first, skipping those in
    /// `exclude` (for example the artists the user already played).
    pub fn recommend(&self, u: usize, n: usize, exclude: &[u32]) -> Vec<(u32, f32)> {
        let mut scored: Vec<(u32, f32)> =
            (0..self.items as u32).filter(|i| !exclude.contains(i)).map(|i| (i, self.score(u, i as usize))).collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(n);
        scored
    }

    /// Factors for a user not in the training set (or with new plays), from
    /// the fixed artist factors: one exact least-squares solve, the ALS
    /// "fold-in". `plays` lists `(artist index, play count)`.
    pub fn fold_in(&self, plays: &[(u32, f32)]) -> Result<Vec<f32>, DataError> {
        self.fold_in_with(&self.item_gram(), plays)
    }

    /// `YᵀY` of the artist factors (`f × f`), which every fold-in needs:
    /// a caller folding in many users computes it once.
    pub fn item_gram(&self) -> Vec<f32> {
        gram(&self.item_factors, self.items, self.factors())
    }

    /// [`AlsModel::fold_in`] with `YᵀY` given ([`AlsModel::item_gram`]).
    pub fn fold_in_with(&self, yty: &[f32], plays: &[(u32, f32)]) -> Result<Vec<f32>, DataError> {
        let f = self.factors();
        let mut triplets = Vec::with_capacity(plays.len());
        for &(i, r) in plays {
            triplets.push((0u32, i, r));
        }
        let row = Csr::from_triplets(1, self.items, &triplets)?;
        let c = confidence(&row, self.params.weighting, self.params.alpha);
        let (idx, val) = c.row(0);
        Ok(solve_row_cholesky(yty, &self.item_factors, idx, val, f, self.params.regularization))
    }
}

/// The factor count training runs at for `f` requested: the next multiple
/// of 16 when `CgKernel::best` has a register-blocked kernel for that
/// and none for `f`, else `f`. A row solve with the padding
/// coordinates at zero keeps them at zero (their rows and columns of
/// `YᵀY + λI` are `λ` on the diagonal and zero elsewhere, so the residual
/// and every direction are zero there) and leaves the other coordinates'
/// arithmetic as it was: the same model, on kernels 2–3× faster than the
/// generic loops at 10 factors.
pub fn padded_factors(f: usize) -> usize {
    let up = f.next_multiple_of(16);
    if !CgKernel::best(f).register_blocked() && CgKernel::best(up).register_blocked() {
        up
    } else {
        f
    }
}

/// Rows of `from` floats copied into rows of `to` floats, cut or padded
/// with zeros; `v` itself when the widths agree.
fn restride(v: Floats, from: usize, to: usize) -> Floats {
    if from == to {
        return v;
    }
    let mut out = Floats::zeroed(v.len() / from * to);
    out.par_chunks_mut(to).zip(v.par_chunks(from)).for_each(|(o, r)| {
        let n = from.min(to);
        o[..n].copy_from_slice(&r[..n]);
    });
    out
}

#[cfg(test)]
fn init_factors(rows: usize, f: usize, seed: u64, side: u64) -> Vec<f32> {
    init_factors_padded(rows, f, f, seed, side).to_vec()
}

/// The starting factors: small seeded normals, `f` a row, in rows of
/// `fp ≥ f` floats (the rest zero) on cache lines.
fn init_factors_padded(rows: usize, f: usize, fp: usize, seed: u64, side: u64) -> Floats {
    let mut v = Floats::zeroed(rows * fp);
    v.par_chunks_mut(fp).enumerate().for_each(|(r, row)| {
        let mut rng = Rng::stream(seed.wrapping_add(side << 40), r as u64);
        for pair in row[..f].chunks_mut(2) {
            let (a, b) = rng.normal_pair();
            pair[0] = (a * 0.01) as f32;
            if let Some(v) = pair.get_mut(1) {
                *v = (b * 0.01) as f32;
            }
        }
    });
    v
}

fn ensure_finite(v: &[f32], side: &'static str, iteration: usize) -> Result<(), FitError> {
    if v.par_iter().any(|x| !x.is_finite()) {
        Err(FitError::NonFinite { side, iteration })
    } else {
        Ok(())
    }
}

/// Solves every row of `x` given fixed `y` and row confidences `c`. With
/// `eigen` (from [`rotate_to_eigenbasis`]), `y` is in the eigenbasis of
/// `YᵀY` and the rows of `x` are turned to it as they are solved. Returns
/// whether every solved value is finite.
fn half_step(x: &mut [f32], y: &[f32], c: &Csr, params: &AlsParams, eigen: Option<&[f32]>) -> bool {
    let f = params.factors;
    let reg = params.regularization;
    let (mut yty, diag) = match eigen {
        Some(e) => (e.to_vec(), true),
        None => (gram(y, c.cols(), f), false),
    };
    for d in 0..f {
        yty[if diag { d } else { d * f + d }] += reg;
    }
    let kernel = CgKernel::best(f);
    match params.solver {
        Solver::ConjugateGradient => {
            // The address of `x`, to prefetch the row two users on.
            let (base, rows) = (x.as_ptr() as usize, c.rows());
            x.par_chunks_mut(f)
                .enumerate()
                .map_init(
                    || vec![0f32; 3 * f],
                    |scratch, (u, xu)| {
                        if u + 2 < rows {
                            crate::simd::prefetch_floats((base as *const f32).wrapping_add((u + 2) * f), f);
                        }
                        let (idx, val) = c.row(u);
                        solve_row_cg(&yty, y, idx, val, f, params.cg_steps, xu, scratch, kernel, diag);
                        xu.iter().all(|v| v.is_finite())
                    },
                )
                .reduce(|| true, |a, b| a && b)
        }
        Solver::Cholesky => {
            assert!(!diag, "the exact solver takes YᵀY whole");
            // yty already holds λI; the reference solve adds it itself.
            for d in 0..f {
                yty[d * f + d] -= reg;
            }
            x.par_chunks_mut(f)
                .enumerate()
                .map(|(u, xu)| {
                    let (idx, val) = c.row(u);
                    xu.copy_from_slice(&solve_row_cholesky(&yty, y, idx, val, f, reg));
                    xu.iter().all(|v| v.is_finite())
                })
                .reduce(|| true, |a, b| a && b)
        }
    }
}

/// Whether the user half-step runs in the eigenbasis of `YᵀY`: with
/// conjugate gradient on the AVX-512 kernel, where `(YᵀY + λI) p` (a
/// `f × f` product, 39% of that kernel's samples on the medium benchmark
/// set, run four times a user) becomes `f` products.
fn rotates(work: &AlsParams) -> bool {
    work.solver == Solver::ConjugateGradient && CgKernel::best(work.factors) == CgKernel::Avx512Rows
}

/// Turns the artist factors (`f` columns) to the eigenbasis of `YᵀY`, so
/// that the user half-step's shared term is diagonal, and returns the
/// eigenvalues followed by the eigenvectors `Q` (`f × f`, row-major):
/// `YᵀY = QΛQᵀ` ([`crate::linalg::sym_eigen`], in f64) and `Y ← YQ`. The
/// user half-step turns each user's row likewise as it loads it
/// (`x ← xQ`, one `f × f` product in place of three of the four its solve
/// took), so both sides end in the new basis. `Q` is orthogonal: every
/// prediction `x_uᵀ y_i`, every norm in the penalty, and so the loss, are
/// unchanged, and conjugate gradient, which commutes with an orthogonal
/// change of basis, takes the same steps in the new coordinates. `spare`
/// is a buffer of `y`'s size that the product is written to; it is swapped
/// with `y`, so the next call reuses the old rows' memory.
fn rotate_to_eigenbasis(y: &mut Floats, spare: &mut Floats, f: usize) -> Vec<f32> {
    let g: Vec<f64> = gram(y, y.len() / f, f).iter().map(|&v| v as f64).collect();
    let (w, q) = crate::linalg::sym_eigen(&g, f);
    let q: Vec<f32> = q.iter().map(|&v| v as f32).collect();
    assert_eq!(spare.len(), y.len(), "the spare holds the turned rows");
    crate::linalg::gemm_into(y, &q, spare, y.len() / f, f, f);
    std::mem::swap(y, spare);
    w.iter().map(|&v| v as f32).chain(q).collect()
}

/// Fixed parts of the user blocks in a scatter pass, each with its own
/// artist accumulators, summed in order: the result repeats bit for bit
/// whatever the thread count.
const SCATTER_PARTS: usize = 8;

/// Whether the artist half-step runs as scatter passes: while one part's
/// accumulators (`items × f` floats) fit in 32 MiB.
fn scatter_fits(items: usize, f: usize) -> bool {
    items.saturating_mul(f).saturating_mul(4) <= 32 << 20
}

/// The artist half-step with the same conjugate-gradient steps as
/// [`half_step`], run for all artists in lock step, so that each pass
/// visits the nonzeros block of users by block of users (`ub`) instead of
/// artist by artist.
///
/// Each artist's CG needs `Σ_u (c_ui − 1) x_u x_uᵀ p_i` per step. By
/// artist rows that is a visit to a scattered 256-byte user row per
/// nonzero, out of a user matrix far larger than the caches (83% of an
/// iteration on 500 k users × 4 000 artists). By blocks of users, the
/// block's rows of `X` are read in order into the cache, and within the
/// block the nonzeros are visited artist by artist: `p_i` and the run's
/// sum stay in registers and the artist's accumulator is touched once a
/// block. (Visiting each user's nonzeros in turn instead read and wrote a
/// 256-byte accumulator row per nonzero, out of 1 MiB of accumulators and
/// 1 MiB of `p`, more than a core's L2.) Same arithmetic, summed in
/// another order.
fn half_step_scatter(y: &mut [f32], x: &[f32], ub: &UserBlocks, params: &AlsParams, work: &mut ScatterWork) {
    let f = params.factors;
    let mut xtx = gram(x, ub.users, f);
    for d in 0..f {
        xtx[d * f + d] += params.regularization;
    }
    let kernel = CgKernel::best(f);
    // r = b − A y: the pass gives Σ_u (c − (c − 1) x_uᵀ y_i) x_u.
    // (XᵀX + λI is symmetric, so the rows' products are one GEMM.)
    let items = ub.items;
    let ScatterWork { parts, r, p, ap } = work;
    scatter_pass::<true>(x, ub, y, f, kernel, parts, r);
    gemm_acc(-1.0, y, &xtx, r, items, f, f);
    p.copy_from_slice(r);
    let mut rsold: Vec<f32> = r.par_chunks(f).map(|ri| dot(ri, ri)).collect();
    let mut active: Vec<bool> = rsold.iter().map(|&v| v >= 1e-20).collect();
    for _ in 0..params.cg_steps {
        if !active.contains(&true) {
            break;
        }
        scatter_pass::<false>(x, ub, p, f, kernel, parts, ap);
        gemm_acc(1.0, p, &xtx, ap, items, f, f);
        y.par_chunks_mut(f)
            .zip(r.par_chunks_mut(f))
            .zip(p.par_chunks_mut(f))
            .zip(ap.par_chunks_mut(f))
            .zip(rsold.par_iter_mut())
            .zip(active.par_iter_mut())
            .for_each(|(((((yi, ri), pi), api), rs), on)| {
                if !*on {
                    return;
                }
                let pap = dot(pi, api);
                if pap <= 0.0 {
                    *on = false;
                    return;
                }
                let a = *rs / pap;
                axpy(a, pi, yi);
                axpy(-a, api, ri);
                let rsnew = dot(ri, ri);
                if rsnew < 1e-20 {
                    *on = false;
                    return;
                }
                let beta = rsnew / *rs;
                for d in 0..f {
                    pi[d] = ri[d] + beta * pi[d];
                }
                *rs = rsnew;
            });
    }
}

/// How the artist half-step reads the confidences: by artist rows (the
/// transpose) or by the scatter passes' blocks of users.
enum ArtistSide {
    Rows(Csr),
    Blocks(UserBlocks),
}

/// Users per block of a scatter pass at `f` factors: as many as have
/// 1 MiB of rows (4 096 at 64 factors), at least 1 024 and at most the
/// 65 536 a 16-bit index numbers. The block's rows stay in the core's
/// 2 MiB L2 while each artist's run of nonzeros in the block is summed
/// in registers, and the larger the block, the longer the runs: every run
/// also reads the artist's `p_i` and adds to its accumulator, which with
/// many artists come from beyond the L2. On the kernel benchmark (100 000
/// users × 20 000 artists, 3.8 M nonzeros, runs of about two nonzeros in
/// blocks of 1 024) blocks of 4 096 took an iteration from 0.25–0.28 s to
/// 0.18–0.22 s; 8 192 gave 0.19–0.21 s and 16 384 0.22–0.24 s. On the
/// medium shape (500 000 × 4 000) the block size moved nothing beyond the
/// noise (0.74–0.76 s).
fn scatter_block(f: usize) -> usize {
    ((1 << 20) / (4 * f.max(1))).clamp(1024, 1 << 16)
}

/// The nonzeros of the users × artists matrix in fixed blocks of users,
/// artist-major within each block: for each block, one run of
/// (user in the block, confidence) per artist it played, users in order.
/// Built once per fit; the scatter passes read it instead of the rows.
#[derive(Debug, Clone)]
struct UserBlocks {
    users: usize,
    items: usize,
    block: usize,
    /// Runs of block `b`: `block_runs[b]..block_runs[b + 1]`.
    block_runs: Vec<usize>,
    run_artist: Vec<u32>,
    /// Run `r` is `run_bounds[r]..run_bounds[r + 1]` of `user` and `conf`.
    run_bounds: Vec<usize>,
    user: Vec<u16>,
    conf: Vec<f32>,
}

impl UserBlocks {
    fn new(cu: &Csr, block: usize) -> Self {
        assert!((1..=1 << 16).contains(&block), "a block's users are numbered in 16 bits");
        let (users, items) = (cu.rows(), cu.cols());
        // Each block's nonzeros go to their place in `user` and `conf` (the
        // block's span of the CSR), in parallel, by a counting sort on the
        // artist: users stay in order within each run.
        let nb = users.div_ceil(block);
        let indptr: Vec<usize> = (0..=nb).map(|b| cu.row_start((b * block).min(users))).collect();
        let mut user = vec![0u16; cu.nnz()];
        let mut conf = vec![0f32; cu.nnz()];
        let lens = || indptr.windows(2).map(|w| w[1] - w[0]);
        let spans: Vec<(&mut [u16], &mut [f32])> =
            split_lengths(&mut user, lens()).into_iter().zip(split_lengths(&mut conf, lens())).collect();
        // Per block: the artists it played, in order, and where each run ends
        // within the block.
        let runs: Vec<(Vec<u32>, Vec<u32>)> = spans
            .into_par_iter()
            .enumerate()
            .map_init(
                || vec![0u32; items + 1],
                |at, (b, (us, cs))| {
                    let (lo, hi) = (b * block, ((b + 1) * block).min(users));
                    at.fill(0);
                    for u in lo..hi {
                        for &i in cu.row(u).0 {
                            at[i as usize + 1] += 1;
                        }
                    }
                    let mut artists = Vec::new();
                    let mut ends = Vec::new();
                    for i in 0..items {
                        if at[i + 1] > 0 {
                            artists.push(i as u32);
                            ends.push(at[i] + at[i + 1]);
                        }
                        at[i + 1] += at[i];
                    }
                    for u in lo..hi {
                        let (idx, vals) = cu.row(u);
                        for (&i, &c) in idx.iter().zip(vals) {
                            let k = at[i as usize] as usize;
                            us[k] = (u - lo) as u16;
                            cs[k] = c;
                            at[i as usize] += 1;
                        }
                    }
                    (artists, ends)
                },
            )
            .collect();
        let (mut block_runs, mut run_artist, mut run_bounds) = (vec![0], Vec::new(), vec![0]);
        for (b, (artists, ends)) in runs.into_iter().enumerate() {
            run_artist.extend_from_slice(&artists);
            run_bounds.extend(ends.iter().map(|&e| indptr[b] + e as usize));
            block_runs.push(run_artist.len());
        }
        UserBlocks { users, items, block, block_runs, run_artist, run_bounds, user, conf }
    }

    fn blocks(&self) -> usize {
        self.block_runs.len() - 1
    }
}

/// The artist half-step's buffers, made once per fit and reused by every
/// iteration: the scatter passes' part accumulators, which each pass's sum
/// leaves zeroed for the next, and the CG vectors `r`, `p` and `Ap`
/// (`items × f` each). Made fresh for each pass instead, they were 160 MiB
/// of new pages an iteration on the kernel benchmark's 20 000 artists
/// (eight parts of 5 MiB, four passes), all zeroed by page faults: system
/// time was a sixth to a quarter of a fit's CPU time there.
struct ScatterWork {
    parts: Vec<Floats>,
    r: Floats,
    p: Floats,
    ap: Floats,
}

impl ScatterWork {
    fn new(ub: &UserBlocks, f: usize) -> Self {
        let n = ub.items * f;
        ScatterWork {
            parts: (0..scatter_parts(ub.blocks()).1.len()).map(|_| Floats::zeroed(n)).collect(),
            r: Floats::zeroed(n),
            p: Floats::zeroed(n),
            ap: Floats::zeroed(n),
        }
    }
}

/// The blocks a part of a scatter pass over `blocks` blocks takes, and the
/// first block of each part.
fn scatter_parts(blocks: usize) -> (usize, Vec<usize>) {
    let per = crate::linalg::part_rows(blocks, SCATTER_PARTS, 1);
    (per, (0..blocks).step_by(per.max(1)).collect())
}

/// Floats a task of a scatter pass's sum adds up.
const SUM_CHUNK: usize = 4096;

/// One pass over every nonzero, block by block of users, into `out`
/// (`items × f`): for artist `i`, `Σ_u t_ui x_u` with
/// `t = c − (c − 1) x_uᵀ v_i` when `RESIDUAL`, else `t = (c − 1) x_uᵀ v_i`.
/// Fixed parts of the blocks in parallel, each into its own accumulators
/// in `parts` (zeros on entry, at least one per part), summed in order;
/// the sum leaves them zeroed again.
fn scatter_pass<const RESIDUAL: bool>(
    x: &[f32],
    ub: &UserBlocks,
    v: &[f32],
    f: usize,
    kernel: CgKernel,
    parts: &mut [Floats],
    out: &mut [f32],
) {
    let (nb, items, bs) = (ub.blocks(), ub.items, ub.block);
    let (per, starts) = scatter_parts(nb);
    assert!(parts.len() >= starts.len(), "one accumulator per part");
    assert_eq!(out.len(), items * f, "the pass writes items × f floats");
    let parts = &mut parts[..starts.len()];
    parts.par_iter_mut().zip(&starts).for_each(|(acc, &start)| {
        debug_assert_eq!(acc.len(), items * f);
        let mut sum = vec![0f32; f];
        for b in start..(start + per).min(nb) {
            let xb = &x[b * bs * f..((b + 1) * bs).min(ub.users) * f];
            // Fetch the next block's rows while this one is summed.
            if b + 1 < nb {
                let next = &x[(b + 1) * bs * f..((b + 2) * bs).min(ub.users) * f];
                for row in next.chunks(f) {
                    crate::simd::prefetch_floats(row.as_ptr(), row.len());
                }
            }
            let (first, last) = (ub.block_runs[b], ub.block_runs[b + 1]);
            let block_end = ub.run_bounds[last];
            for r in first..last {
                if r + 2 < last {
                    let next = ub.run_artist[r + 2] as usize * f;
                    crate::simd::prefetch_floats(v[next..].as_ptr(), f);
                    crate::simd::prefetch_floats(acc[next..].as_ptr(), f);
                }
                let (i, from, to) = (ub.run_artist[r] as usize * f, ub.run_bounds[r], ub.run_bounds[r + 1]);
                // The kernel reads `to − from` users and fetches ahead
                // into the block's next runs.
                let (users, conf) = (&ub.user[from..block_end], &ub.conf[from..to]);
                scatter_run::<RESIDUAL>(xb, users, conf, &v[i..i + f], &mut acc[i..i + f], &mut sum, kernel);
            }
        }
    });
    // Chunk `c` of every part, in part order, for the chunk's task.
    let mut chunks: Vec<Vec<&mut [f32]>> = (0..out.len().div_ceil(SUM_CHUNK)).map(|_| Vec::new()).collect();
    for part in parts.iter_mut() {
        for (c, chunk) in part.chunks_mut(SUM_CHUNK).enumerate() {
            chunks[c].push(chunk);
        }
    }
    out.par_chunks_mut(SUM_CHUNK).zip(chunks.par_iter_mut()).for_each(|(o, from)| {
        let (first, rest) = from.split_first_mut().expect("a pass has a part");
        o.copy_from_slice(first);
        first.fill(0.0);
        for part in rest {
            for (o, a) in o.iter_mut().zip(part.iter_mut()) {
                *o += *a;
                *a = 0.0;
            }
        }
    });
}

/// One artist's run in a block of a scatter pass, on the kernel
/// `CgKernel::best` chose; `sum` is `f` floats of scratch.
#[allow(clippy::too_many_arguments)]
fn scatter_run<const RESIDUAL: bool>(
    xb: &[f32],
    users: &[u16],
    conf: &[f32],
    v: &[f32],
    acc: &mut [f32],
    sum: &mut [f32],
    kernel: CgKernel,
) {
    let f = v.len();
    #[cfg(target_arch = "x86_64")]
    {
        use crate::simd::avx512_rows::scatter_run as s5;
        // SAFETY: `CgKernel::best` chose the AVX-512 kernel only on a CPU
        // with AVX-512F and for these factor counts; every user is a row
        // of the block `xb`, and `v`, `acc` and `sum` are `f` floats.
        unsafe {
            match (kernel, f) {
                (CgKernel::Avx512Rows, 16) => return s5::<1, RESIDUAL>(xb, users, conf, v, acc),
                (CgKernel::Avx512Rows, 32) => return s5::<2, RESIDUAL>(xb, users, conf, v, acc),
                (CgKernel::Avx512Rows, 48) => return s5::<3, RESIDUAL>(xb, users, conf, v, acc),
                (CgKernel::Avx512Rows, 64) => return s5::<4, RESIDUAL>(xb, users, conf, v, acc),
                (CgKernel::Avx512Rows, 80) => return s5::<5, RESIDUAL>(xb, users, conf, v, acc),
                (CgKernel::Avx512Rows, 96) => return s5::<6, RESIDUAL>(xb, users, conf, v, acc),
                (CgKernel::Avx512Rows, 112) => return s5::<7, RESIDUAL>(xb, users, conf, v, acc),
                (CgKernel::Avx512Rows, 128) => return s5::<8, RESIDUAL>(xb, users, conf, v, acc),
                (CgKernel::Avx2Rows | CgKernel::Avx2, _) => {
                    return scatter_run_avx2::<RESIDUAL>(xb, users, conf, v, acc, sum);
                }
                _ => {}
            }
        }
    }
    let _ = kernel;
    // SAFETY: the portable body calls only safe functions.
    unsafe { scatter_run_portable::<RESIDUAL>(xb, users, conf, v, acc, sum) }
}

/// Defines one [`scatter_run`] body over the given `dot` and `axpy`
/// kernels (the body is shared; the kernels and target features differ).
macro_rules! define_scatter {
    ($(#[$attr:meta])* $name:ident, $dot:path, $axpy:path) => {
        $(#[$attr])*
        #[allow(unused_unsafe)]
        unsafe fn $name<const RESIDUAL: bool>(
            xb: &[f32],
            users: &[u16],
            conf: &[f32],
            v: &[f32],
            acc: &mut [f32],
            sum: &mut [f32],
        ) {
            let f = v.len();
            sum.fill(0.0);
            for (&u, &c) in users.iter().zip(conf) {
                let xu = &xb[u as usize * f..(u as usize + 1) * f];
                let d = unsafe { $dot(xu, v) };
                let t = if RESIDUAL { c - (c - 1.0) * d } else { (c - 1.0) * d };
                unsafe { $axpy(t, xu, sum) };
            }
            unsafe { $axpy(1.0, sum, acc) };
        }
    };
}

define_scatter!(scatter_run_portable, crate::linalg::dot, crate::linalg::axpy);
#[cfg(target_arch = "x86_64")]
define_scatter!(
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    scatter_run_avx2,
    crate::simd::avx2::dot,
    crate::simd::avx2::axpy
);

/// Which conjugate-gradient row kernel runs, chosen once per half-step
/// from the CPU's features and the factor count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CgKernel {
    /// Portable loops.
    Portable,
    /// AVX2 + FMA dot/axpy, any factor count.
    Avx2,
    /// AVX2 + FMA, CG vectors in registers: 16, 32, 48 or 64 factors.
    Avx2Rows,
    /// AVX-512, CG vectors in registers: a multiple of 16 up to 128 factors.
    Avx512Rows,
}

impl CgKernel {
    /// Whether it holds the CG vectors in registers (a kernel instantiated
    /// for the factor count).
    fn register_blocked(self) -> bool {
        matches!(self, CgKernel::Avx2Rows | CgKernel::Avx512Rows)
    }

    /// The fastest kernel this CPU can run for `f` factors.
    fn best(f: usize) -> Self {
        let avx2 = crate::simd::has_avx2_fma();
        if f.is_multiple_of(16) && (16..=128).contains(&f) && crate::simd::has_avx512() {
            CgKernel::Avx512Rows
        } else if avx2 && matches!(f, 16 | 32 | 48 | 64) {
            CgKernel::Avx2Rows
        } else if avx2 {
            CgKernel::Avx2
        } else {
            CgKernel::Portable
        }
    }
}

/// `cg_steps` conjugate-gradient steps on
/// `(YᵀY + λI + Σ_i (c_i − 1) y_i y_iᵀ) x = Σ_i c_i y_i`, from the current `x`.
/// `ytyr` is `YᵀY + λI`, or when `diag` its eigenvalues plus `λ` and its
/// eigenvectors, with `y` in that basis and `x` turned to it (the AVX-512
/// kernel only: see [`rotates`] and `simd::avx512_rows::cg`); `kernel`
/// must come from [`CgKernel::best`] (or be `Portable`).
#[allow(clippy::too_many_arguments)]
fn solve_row_cg(
    ytyr: &[f32],
    y: &[f32],
    idx: &[u32],
    conf: &[f32],
    f: usize,
    steps: usize,
    x: &mut [f32],
    scratch: &mut [f32],
    kernel: CgKernel,
    diag: bool,
) {
    assert!(!diag || kernel == CgKernel::Avx512Rows, "a diagonal YᵀY needs the AVX-512 kernel");
    // SAFETY: every SIMD kernel is only chosen by `CgKernel::best`, which
    // checked the CPU features and that `f` is one the register-blocked
    // kernels are instantiated for; the portable body calls only safe
    // functions.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::simd::{avx2_rows as a2, avx512_rows as a5};
            // The AVX-512 kernel for 16·N factors, with YᵀY whole or diagonal.
            macro_rules! avx512 {
                ($n:literal) => {
                    return if diag {
                        a5::cg::<$n, true>(ytyr, y, idx, conf, steps, x, scratch)
                    } else {
                        a5::cg::<$n, false>(ytyr, y, idx, conf, steps, x, scratch)
                    }
                };
            }
            match (kernel, f) {
                (CgKernel::Avx512Rows, 16) => avx512!(1),
                (CgKernel::Avx512Rows, 32) => avx512!(2),
                (CgKernel::Avx512Rows, 48) => avx512!(3),
                (CgKernel::Avx512Rows, 64) => avx512!(4),
                (CgKernel::Avx512Rows, 80) => avx512!(5),
                (CgKernel::Avx512Rows, 96) => avx512!(6),
                (CgKernel::Avx512Rows, 112) => avx512!(7),
                (CgKernel::Avx512Rows, 128) => avx512!(8),
                (CgKernel::Avx2Rows, 16) => return a2::cg::<2>(ytyr, y, idx, conf, steps, x, scratch),
                (CgKernel::Avx2Rows, 32) => return a2::cg::<4>(ytyr, y, idx, conf, steps, x, scratch),
                (CgKernel::Avx2Rows, 48) => return a2::cg::<6>(ytyr, y, idx, conf, steps, x, scratch),
                (CgKernel::Avx2Rows, 64) => return a2::cg::<8>(ytyr, y, idx, conf, steps, x, scratch),
                (CgKernel::Avx2Rows | CgKernel::Avx512Rows, _) => unreachable!("no {kernel:?} kernel for {f} factors"),
                (CgKernel::Avx2, _) => return cg_avx2(ytyr, y, idx, conf, f, steps, x, scratch),
                (CgKernel::Portable, _) => {}
            }
        }
        cg_portable(ytyr, y, idx, conf, f, steps, x, scratch)
    }
}

/// Defines one conjugate-gradient row solver over the given `dot` and
/// `axpy` kernels (the body is shared; the kernels and target features
/// differ).
macro_rules! define_cg {
    ($(#[$attr:meta])* $name:ident, $dot:path, $axpy:path) => {
        $(#[$attr])*
        #[allow(clippy::too_many_arguments, unused_unsafe)]
        unsafe fn $name(
            ytyr: &[f32],
            y: &[f32],
            idx: &[u32],
            conf: &[f32],
            f: usize,
            steps: usize,
            x: &mut [f32],
            scratch: &mut [f32],
        ) {
            let (r, rest) = scratch.split_at_mut(f);
            let (p, ap) = rest.split_at_mut(f);
            // r = b − A x
            for d in 0..f {
                r[d] = -unsafe { $dot(&ytyr[d * f..(d + 1) * f], x) };
            }
            for (&i, &c) in idx.iter().zip(conf) {
                let yi = &y[i as usize * f..(i as usize + 1) * f];
                let t = c - (c - 1.0) * unsafe { $dot(yi, x) };
                unsafe { $axpy(t, yi, r) };
            }
            p.copy_from_slice(r);
            let mut rsold = unsafe { $dot(r, r) };
            if rsold < 1e-20 {
                return;
            }
            for _ in 0..steps {
                for d in 0..f {
                    ap[d] = unsafe { $dot(&ytyr[d * f..(d + 1) * f], p) };
                }
                for (&i, &c) in idx.iter().zip(conf) {
                    let yi = &y[i as usize * f..(i as usize + 1) * f];
                    unsafe { $axpy((c - 1.0) * $dot(yi, p), yi, ap) };
                }
                let pap = unsafe { $dot(p, ap) };
                if pap <= 0.0 {
                    break;
                }
                let a = rsold / pap;
                unsafe { $axpy(a, p, x) };
                unsafe { $axpy(-a, ap, r) };
                let rsnew = unsafe { $dot(r, r) };
                if rsnew < 1e-20 {
                    break;
                }
                let beta = rsnew / rsold;
                for d in 0..f {
                    p[d] = r[d] + beta * p[d];
                }
                rsold = rsnew;
            }
        }
    };
}

define_cg!(cg_portable, crate::linalg::dot, crate::linalg::axpy);

#[cfg(target_arch = "x86_64")]
define_cg!(
    #[target_feature(enable = "avx2,fma")]
    cg_avx2,
    crate::simd::avx2::dot,
    crate::simd::avx2::axpy
);

/// Exact solve of one row's system in f64. `yty` is `YᵀY` without `λ`.
fn solve_row_cholesky(yty: &[f32], y: &[f32], idx: &[u32], conf: &[f32], f: usize, reg: f32) -> Vec<f32> {
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
    let (fdot, faxpy) = crate::simd::fast_kernels();
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
                    faxpy(xu[d], &yty[d * f..(d + 1) * f], gx);
                }
                let mut s = fdot(xu, gx) as f64;
                let (idx, val) = c.row(u);
                for (&i, &cv) in idx.iter().zip(val) {
                    let pred = fdot(xu, &y[i as usize * f..(i as usize + 1) * f]) as f64;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Users in `groups` blocks; each block plays its own set of artists.
    fn planted(groups: usize, users_per: usize, items_per: usize, seed: u64) -> Vec<(u32, u32, f32)> {
        let mut rng = Rng::new(seed);
        let mut t = Vec::new();
        for g in 0..groups {
            for k in 0..users_per {
                let u = (g * users_per + k) as u32;
                for j in 0..items_per {
                    if rng.chance(0.8) {
                        t.push((u, (g * items_per + j) as u32, 1.0 + rng.below(20) as f32));
                    }
                }
                // a little noise outside the block
                t.push((u, rng.below(groups * items_per) as u32, 1.0));
            }
        }
        t
    }

    #[test]
    fn cg_row_solve_agrees_with_the_exact_solver() {
        // One row's system with a fixed Y: f CG steps from zero solve it
        // exactly in exact arithmetic; in f32 they agree to rounding.
        let (items, f) = (50, 8);
        let mut rng = Rng::new(2);
        let y: Vec<f32> = (0..items * f).map(|_| rng.normal() as f32 * 0.5).collect();
        let idx: Vec<u32> = vec![1, 4, 9, 20, 33, 47];
        let conf: Vec<f32> = vec![2.0, 9.0, 1.5, 30.0, 4.0, 12.0];
        let reg = 0.3;
        let yty = gram(&y, items, f);
        let exact = solve_row_cholesky(&yty, &y, &idx, &conf, f, reg);
        let mut ytyr = yty.clone();
        for d in 0..f {
            ytyr[d * f + d] += reg;
        }
        let mut scratch = vec![0f32; 3 * f];
        for kernel in [CgKernel::Portable, CgKernel::best(f)] {
            let mut x = vec![0f32; f];
            solve_row_cg(&ytyr, &y, &idx, &conf, f, 2 * f, &mut x, &mut scratch, kernel, false);
            for d in 0..f {
                assert!((x[d] - exact[d]).abs() < 1e-3 * exact[d].abs().max(1.0), "{kernel:?}: {x:?} vs {exact:?}");
            }
        }
    }

    #[test]
    fn register_blocked_kernels_match_the_portable_solver() {
        // `CgKernel::best` is the AVX-512 kernel where it runs.
        crate::simd::kernels_run("avx512");
        // Multiples of 16 factors take a register-blocked path (AVX-512 or
        // AVX2); each must do the same arithmetic as the portable one, step
        // for step, up to summation order.
        for f in [16, 32, 48, 64, 80, 128] {
            let items = 300;
            let mut rng = Rng::new(4 + f as u64);
            let y: Vec<f32> = (0..items * f).map(|_| rng.normal() as f32 * 0.2).collect();
            let idx: Vec<u32> = (0..40).map(|k| k * 7).collect();
            let conf: Vec<f32> = (0..40).map(|k| 1.0 + k as f32 * 0.5).collect();
            let mut ytyr = gram(&y, items, f);
            for d in 0..f {
                ytyr[d * f + d] += 0.5;
            }
            let x0: Vec<f32> = (0..f).map(|_| rng.normal() as f32 * 0.01).collect();
            let mut scratch = vec![0f32; 3 * f];
            let mut portable = x0.clone();
            solve_row_cg(&ytyr, &y, &idx, &conf, f, 3, &mut portable, &mut scratch, CgKernel::Portable, false);
            assert_ne!(portable, x0, "the solve moved x");
            let mut kernels = vec![CgKernel::best(f)];
            if matches!(f, 16 | 32 | 48 | 64) && crate::simd::kernels_run("avx2") {
                kernels.push(CgKernel::Avx2Rows); // whichever path the CPU picks
            }
            for kernel in kernels {
                let mut fast = x0.clone();
                solve_row_cg(&ytyr, &y, &idx, &conf, f, 3, &mut fast, &mut scratch, kernel, false);
                for d in 0..f {
                    assert!(
                        (portable[d] - fast[d]).abs() < 1e-4 * portable[d].abs().max(1.0),
                        "f {f} {kernel:?} {d}: {} vs {}",
                        portable[d],
                        fast[d]
                    );
                }
            }
            // In the eigenbasis of YᵀY (the AVX-512 kernel's diagonal form),
            // the same steps give the portable solution turned by Q.
            if CgKernel::best(f) == CgKernel::Avx512Rows {
                let mut yq = Floats::from_slice(&y);
                let mut spare = Floats::zeroed(yq.len());
                let mut eigen = rotate_to_eigenbasis(&mut yq, &mut spare, f);
                for w in &mut eigen[..f] {
                    *w += 0.5;
                }
                let mut turned = x0.clone();
                solve_row_cg(&eigen, &yq, &idx, &conf, f, 3, &mut turned, &mut scratch, CgKernel::Avx512Rows, true);
                let want = crate::linalg::matmul(&portable, &eigen[f..], 1, f, f);
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                for d in 0..f {
                    assert!(
                        (want[d] - turned[d]).abs() < 1e-4 * scale,
                        "f {f} eigenbasis {d}: {} vs {}",
                        want[d],
                        turned[d]
                    );
                }
            }
        }
    }

    #[test]
    fn scatter_half_step_equals_the_row_half_step() {
        // The artist half-step by user-major scatter passes runs the same CG
        // steps as the one by artist rows; only the summation order differs.
        // 41 artists, the last never played (its system has no data term).
        let m = crate::sparse::benchmark_plays(500, 40, 6000, 3);
        let t: Vec<(u32, u32, f32)> = (0..m.rows())
            .flat_map(|u| {
                let (idx, val) = m.row(u);
                idx.iter().zip(val).map(move |(&i, &v)| (u as u32, i, v)).collect::<Vec<_>>()
            })
            .collect();
        let m = Csr::from_triplets(500, 41, &t).unwrap();
        for (f, block) in [(8, 1024), (16, 37), (32, 500), (64, 64), (72, 1), (128, 211)] {
            let params = AlsParams { factors: f, regularization: 0.5, ..AlsParams::default() };
            let cu = confidence(&m, params.weighting, params.alpha);
            let ub = UserBlocks::new(&cu, block);
            assert_eq!(ub.blocks(), 500usize.div_ceil(block));
            assert_eq!(ub.user.len(), cu.nnz());
            // The layout: per block, one run per artist played there, in
            // artist order, each run's users in order with their confidence.
            for b in 0..ub.blocks() {
                let (lo, hi) = (b * block, ((b + 1) * block).min(500));
                let mut want: Vec<(u32, u16, f32)> = (lo..hi)
                    .flat_map(|u| {
                        let (idx, conf) = cu.row(u);
                        idx.iter().zip(conf).map(move |(&i, &c)| (i, (u - lo) as u16, c)).collect::<Vec<_>>()
                    })
                    .collect();
                want.sort_by_key(|t| (t.0, t.1));
                let mut got = Vec::new();
                for r in ub.block_runs[b]..ub.block_runs[b + 1] {
                    assert!(r == ub.block_runs[b] || ub.run_artist[r - 1] < ub.run_artist[r], "runs in artist order");
                    assert!(ub.run_bounds[r] < ub.run_bounds[r + 1], "no empty run");
                    for k in ub.run_bounds[r]..ub.run_bounds[r + 1] {
                        got.push((ub.run_artist[r], ub.user[k], ub.conf[k]));
                    }
                }
                assert_eq!(got, want, "f {f} block size {block}: block {b}");
            }
            let ci = cu.transpose();
            let x: Vec<f32> = init_factors(m.rows(), f, 9, 0).iter().map(|v| v * 40.0).collect();
            let y0 = init_factors(m.cols(), f, 9, 1);
            let (mut rows, mut scattered) = (y0.clone(), y0.clone());
            half_step(&mut rows, &x, &ci, &params, None);
            // One set of buffers for the half-step and every pass below: each
            // pass must leave its accumulators zeroed for the next.
            let mut work = ScatterWork::new(&ub, f);
            half_step_scatter(&mut scattered, &x, &ub, &params, &mut work);
            assert_ne!(rows, y0, "f {f}: the half-step moved the factors");
            for (k, (a, b)) in rows.iter().zip(&scattered).enumerate() {
                assert!((a - b).abs() < 1e-3 * a.abs().max(0.1), "f {f} value {k}: {a} vs {b}");
            }
            // The pass itself on the portable loops and on the chosen kernel,
            // against the sums written out nonzero by nonzero.
            let v: Vec<f32> = init_factors(m.cols(), f, 5, 2);
            let mut pass = |residual: bool, kernel: CgKernel| {
                let mut out = vec![f32::NAN; m.cols() * f];
                if residual {
                    scatter_pass::<true>(&x, &ub, &v, f, kernel, &mut work.parts, &mut out);
                } else {
                    scatter_pass::<false>(&x, &ub, &v, f, kernel, &mut work.parts, &mut out);
                }
                out
            };
            let portable = pass(false, CgKernel::Portable);
            let fast = pass(false, CgKernel::best(f));
            let res = pass(true, CgKernel::best(f));
            let (mut want, mut want_res) = (vec![0f64; m.cols() * f], vec![0f64; m.cols() * f]);
            for u in 0..cu.rows() {
                let (idx, conf) = cu.row(u);
                let xu = &x[u * f..(u + 1) * f];
                for (&i, &c) in idx.iter().zip(conf) {
                    let vi = &v[i as usize * f..(i as usize + 1) * f];
                    let d: f64 = xu.iter().zip(vi).map(|(a, b)| *a as f64 * *b as f64).sum();
                    let (c, i) = (c as f64, i as usize);
                    for (k, &xk) in xu.iter().enumerate() {
                        want[i * f + k] += (c - 1.0) * d * xk as f64;
                        want_res[i * f + k] += (c - (c - 1.0) * d) * xk as f64;
                    }
                }
            }
            // Sums of terms of either sign: the error is relative to their size.
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            let scale_res = want_res.iter().fold(0f64, |m, v| m.max(v.abs()));
            for k in 0..want.len() {
                for got in [portable[k], fast[k]] {
                    assert!((want[k] - got as f64).abs() < 1e-4 * scale, "f {f} {k}: {} vs {got}", want[k]);
                }
                let got = res[k] as f64;
                assert!((want_res[k] - got).abs() < 1e-4 * scale_res, "f {f} {k}: {} vs {got}", want_res[k]);
            }
            // Artist 40 was never played: nothing is added to it.
            assert!(fast[40 * f..].iter().chain(&res[40 * f..]).all(|&v| v == 0.0));
        }
    }

    #[test]
    fn cg_fit_agrees_with_the_exact_fit() {
        let t = planted(4, 30, 10, 1);
        let plays = Csr::from_triplets(120, 40, &t).unwrap();
        let base = AlsParams { factors: 8, iterations: 20, regularization: 0.5, alpha: 2.0, ..AlsParams::default() };
        let exact = AlsModel::fit(&plays, &AlsParams { solver: Solver::Cholesky, ..base.clone() }).unwrap();
        // The loss falls monotonically under exact solves.
        for w in exact.loss_history.windows(2) {
            assert!(w[1] <= w[0] * (1.0 + 1e-6), "{:?}", exact.loss_history);
        }
        // The default 3-step, warm-started CG reaches the same optimum.
        let cg = AlsModel::fit(&plays, &base).unwrap();
        let (lc, le) = (*cg.loss_history.last().unwrap(), *exact.loss_history.last().unwrap());
        assert!((lc - le).abs() / le < 0.01, "cg {lc} exact {le}");
        let mut diff = 0f32;
        for u in 0..120 {
            for i in 0..40 {
                diff += (exact.score(u, i) - cg.score(u, i)).abs();
            }
        }
        let mean = diff / 4800.0;
        assert!(mean < 0.05, "CG and Cholesky predictions differ by {mean} on average");
    }

    #[test]
    fn odd_factor_counts_train_padded_to_the_same_model() {
        let m = crate::sparse::benchmark_plays(300, 50, 4000, 4);
        for f in [3, 10, 24, 40] {
            let params = AlsParams { factors: f, iterations: 4, regularization: 0.5, ..AlsParams::default() };
            let padded = AlsModel::fit_padded(&m, &params, true, true, |_| {}).unwrap();
            let plain = AlsModel::fit_padded(&m, &params, true, false, |_| {}).unwrap();
            assert_eq!(padded.factors(), f);
            assert_eq!(padded.user_factors().len(), 300 * f);
            assert_eq!(padded.item_factors().len(), 50 * f);
            let (lp, lq) = (*padded.loss_history.last().unwrap(), *plain.loss_history.last().unwrap());
            assert!((lp - lq).abs() < 1e-4 * lq.abs(), "f {f}: loss {lp} padded, {lq} not");
            // The padded fit may turn its factors to another basis (see
            // `rotates`); the model is its predictions.
            let scores = |m: &AlsModel| -> Vec<f32> {
                (0..300).flat_map(|u| (0..50).map(move |i| (u, i))).map(|(u, i)| m.score(u, i)).collect()
            };
            let scale = scores(&plain).iter().fold(0f32, |a, v| a.max(v.abs()));
            for (k, (a, b)) in scores(&padded).iter().zip(scores(&plain)).enumerate() {
                assert!((a - b).abs() < 1e-3 * scale, "f {f} score {k}: {a} padded, {b} not");
            }
        }
        // Where a kernel exists for the count, or none for any, nothing is padded.
        assert_eq!(padded_factors(64), 64);
        if crate::simd::has_avx2_fma() {
            assert_eq!(padded_factors(10), 16);
        }
    }

    #[test]
    fn withheld_artist_of_similar_users_ranks_first() {
        let groups = 5;
        let (users_per, items_per) = (40, 8);
        let mut t = Vec::new();
        let mut rng = Rng::new(11);
        for g in 0..groups {
            for k in 0..users_per {
                let u = (g * users_per + k) as u32;
                for j in 0..items_per {
                    // Every user of the group plays every artist of the group,
                    // except that user 0 never played artist 0.
                    if u == 0 && j == 0 {
                        continue;
                    }
                    t.push((u, (g * items_per + j) as u32, 1.0 + rng.below(10) as f32));
                }
            }
        }
        let plays = Csr::from_triplets(groups * users_per, groups * items_per, &t).unwrap();
        let model = AlsModel::fit(&plays, &AlsParams { factors: 16, ..AlsParams::default() }).unwrap();
        let seen: Vec<u32> = plays.row(0).0.to_vec();
        let recs = model.recommend(0, 3, &seen);
        assert_eq!(recs[0].0, 0, "withheld artist should rank first, got {recs:?}");
    }

    #[test]
    fn fold_in_matches_the_trained_row_and_same_seed_repeats() {
        let t = planted(3, 20, 6, 5);
        let plays = Csr::from_triplets(60, 18, &t).unwrap();
        let params = AlsParams { factors: 6, iterations: 40, solver: Solver::Cholesky, ..AlsParams::default() };
        let m = AlsModel::fit(&plays, &params).unwrap();
        let again = AlsModel::fit(&plays, &params).unwrap();
        assert_eq!(m, again, "same seed, same model");
        // Near convergence, folding in user 7's plays against the final
        // artist factors reproduces the user's trained predictions.
        let (idx, val) = plays.row(7);
        let row: Vec<(u32, f32)> = idx.iter().copied().zip(val.iter().copied()).collect();
        let x = m.fold_in(&row).unwrap();
        for i in 0..18 {
            let a = dot(&x, m.item(i));
            assert!((a - m.score(7, i)).abs() < 0.03, "artist {i}: {a} vs {}", m.score(7, i));
        }
    }

    #[test]
    fn fold_in_solves_the_normal_equations() {
        // (YᵀC_uY + λI) x = YᵀC_u p_u, checked directly in f64.
        let f = 4;
        let mut rng = Rng::new(8);
        let y: Vec<f32> = (0..10 * f).map(|_| rng.normal() as f32).collect();
        let params = AlsParams { factors: f, regularization: 0.7, alpha: 2.0, ..AlsParams::default() };
        let m = AlsModel::from_factors(params.clone(), vec![0.0; f], y.clone()).unwrap();
        let plays = [(2u32, 5.0f32), (7, 1.0)];
        let x = m.fold_in(&plays).unwrap();
        for r in 0..f {
            let mut lhs = params.regularization as f64 * x[r] as f64;
            let mut rhs = 0f64;
            for i in 0..10 {
                let yi = &y[i * f..(i + 1) * f];
                let c = plays.iter().find(|p| p.0 == i as u32).map(|p| 1.0 + 2.0 * (p.1 as f64).ln_1p()).unwrap_or(1.0);
                let pred: f64 = (0..f).map(|d| yi[d] as f64 * x[d] as f64).sum();
                lhs += c * pred * yi[r] as f64;
                if c > 1.0 {
                    rhs += c * yi[r] as f64;
                }
            }
            assert!((lhs - rhs).abs() < 1e-3 * rhs.abs().max(1.0), "row {r}: {lhs} vs {rhs}");
        }
    }

    #[test]
    fn bad_params_and_divergence_are_errors() {
        let plays = Csr::from_triplets(2, 2, &[(0, 0, 1.0), (1, 1, 2.0)]).unwrap();
        let bad = AlsParams { factors: 0, ..AlsParams::default() };
        assert!(matches!(AlsModel::fit(&plays, &bad), Err(FitError::Params(_))));
        let bad = AlsParams { regularization: f32::NAN, ..AlsParams::default() };
        assert!(matches!(AlsModel::fit(&plays, &bad), Err(FitError::Params(_))));
        let empty = Csr::from_triplets(2, 2, &[]).unwrap();
        assert!(matches!(AlsModel::fit(&empty, &AlsParams::default()), Err(FitError::Data(_))));
        // A confidence so large that f32 overflows must be reported, not returned.
        let huge = Csr::from_triplets(2, 2, &[(0, 0, 3e38), (1, 1, 3e38)]).unwrap();
        for solver in [Solver::ConjugateGradient, Solver::Cholesky] {
            let p = AlsParams { weighting: Weighting::Linear, alpha: 1e6, factors: 2, solver, ..AlsParams::default() };
            let got = AlsModel::fit(&huge, &p);
            assert!(matches!(got, Err(FitError::NonFinite { side: "user", iteration: 1 })), "{solver:?}: {got:?}");
        }
    }
}
