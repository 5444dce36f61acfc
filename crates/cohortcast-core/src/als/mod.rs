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
//! On the register-held kernels (AVX2 or AVX-512, `cg`) the user half-step works in the eigenbasis of
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
use crate::linalg::{dot, gram, Floats};
use crate::rng::Rng;
use crate::sparse::Csr;

mod cg;
mod exact;
mod scatter;

use cg::{solve_row_cg, CgKernel};
pub use exact::loss;
use exact::solve_row_cholesky;
#[cfg(test)]
use scatter::scatter_pass;
use scatter::{half_step_scatter, scatter_block, scatter_fits, ArtistSide, ScatterWork, UserBlocks};

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
                            crate::kernels::prefetch_floats((base as *const f32).wrapping_add((u + 2) * f), f);
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
/// conjugate gradient on a register-held kernel, where `(YᵀY + λI) p` (a
/// `f × f` product, 39% of that kernel's samples on the medium benchmark
/// set, run four times a user) becomes `f` products.
fn rotates(work: &AlsParams) -> bool {
    work.solver == Solver::ConjugateGradient && CgKernel::best(work.factors).register_blocked()
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
        for kernel in [CgKernel::PLAIN, CgKernel::best(f)] {
            let mut x = vec![0f32; f];
            solve_row_cg(&ytyr, &y, &idx, &conf, f, 2 * f, &mut x, &mut scratch, kernel, false);
            for d in 0..f {
                assert!((x[d] - exact[d]).abs() < 1e-3 * exact[d].abs().max(1.0), "{kernel:?}: {x:?} vs {exact:?}");
            }
        }
    }

    #[test]
    fn register_blocked_kernels_match_the_portable_solver() {
        // Each instruction set this CPU runs gets its register-held body.
        let mut isas = Vec::new();
        if crate::kernels::kernels_run("avx2") {
            isas.extend(crate::kernels::Isa::avx2());
        }
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::kernels_run("avx512") {
            isas.extend(crate::kernels::Isa::avx512().map(crate::kernels::Isa::Avx512));
        }
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
            solve_row_cg(&ytyr, &y, &idx, &conf, f, 3, &mut portable, &mut scratch, CgKernel::PLAIN, false);
            assert_ne!(portable, x0, "the solve moved x");
            for kernel in isas.iter().map(|&isa| CgKernel::on(isa, f)) {
                assert!(kernel.register_blocked());
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
            // In the eigenbasis of YᵀY (the register-held bodies' diagonal
            // form), the same steps give the portable solution turned by Q.
            for kernel in isas.iter().map(|&isa| CgKernel::on(isa, f)) {
                let mut yq = Floats::from_slice(&y);
                let mut spare = Floats::zeroed(yq.len());
                let mut eigen = rotate_to_eigenbasis(&mut yq, &mut spare, f);
                for w in &mut eigen[..f] {
                    *w += 0.5;
                }
                let mut turned = x0.clone();
                solve_row_cg(&eigen, &yq, &idx, &conf, f, 3, &mut turned, &mut scratch, kernel, true);
                let want = crate::linalg::matmul(&portable, &eigen[f..], 1, f, f);
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                for d in 0..f {
                    assert!(
                        (want[d] - turned[d]).abs() < 1e-4 * scale,
                        "f {f} {kernel:?} eigenbasis {d}: {} vs {}",
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
            let portable = pass(false, CgKernel::PLAIN);
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
        if crate::kernels::Isa::avx2().is_some() {
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
