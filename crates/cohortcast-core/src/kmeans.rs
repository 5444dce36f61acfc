//! Cohorts: k-means over the user factors.
//!
//! Seeding is k-means|| by default (Bahmani et al., "Scalable k-means++",
//! VLDB 2012), as Spark seeds: five passes over the rows draw about `2k`
//! candidates each, and greedy k-means++ picks `k` of them, each weighted by
//! the rows nearest to it. Greedy k-means++ itself (Arthur & Vassilvitskii,
//! "k-means++: the advantages of careful seeding", SODA 2007, drawing
//! `2 + ln k` candidates for each new centre and keeping the one that lowers
//! the potential most, as scikit-learn does) is [`KMeansInit::PlusPlus`]; it
//! makes one pass over the rows per centre. Iterations are Lloyd's (1982),
//! accelerated with Yinyang's group bounds (Ding et al., ICML 2015) and
//! Hamerly's half-gap test (SDM 2010), which skip the rows, and the groups
//! of centroids, that cannot hold a nearer centre, and leave the result
//! unchanged. Squared distances are computed as `‖x‖² − 2 x·c + ‖c‖²`. A
//! cluster that empties is moved to the point farthest from its centre.
//! Iteration stops when the squared centre shift falls below `tolerance`
//! times the mean per-feature variance of the data (scikit-learn's rule) or
//! no label changes.
//!
//! ```
//! use cohortcast_core::kmeans::{KMeansParams, Cohorts};
//! let x = vec![0.0, 0.1, 0.2, 10.0, 10.1, 10.2];
//! let c = Cohorts::fit(&x, 1, &KMeansParams { n_clusters: 2, ..KMeansParams::default() }).unwrap();
//! assert_eq!(c.labels()[0], c.labels()[2]);
//! assert_ne!(c.labels()[0], c.labels()[3]);
//! ```

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{check_range, DataError, FitError, ParamError};
use crate::kernels::{Avx512, Isa};
use crate::linalg::{dot, matmul_t, part_rows, Floats, MAX_PARTS};
use crate::rng::Rng;

/// Hyperparameters of k-means; names follow scikit-learn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KMeansParams {
    /// Number of cohorts `k`. Default 100.
    pub n_clusters: usize,
    /// Most Lloyd iterations per run. Default 100.
    pub max_iterations: usize,
    /// Relative tolerance on the centre shift. Default 1e-4.
    pub tolerance: f64,
    /// Independent seedings; the run with the lowest inertia wins. Default 1.
    pub n_init: usize,
    /// Seed of the seeding. Default 42.
    pub seed: u64,
    /// How the first centroids are chosen. Default k-means||.
    #[serde(default = "KMeansInit::before_choice")]
    pub init: KMeansInit,
}

/// How k-means chooses its first centroids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum KMeansInit {
    /// Greedy k-means++ (scikit-learn's): one pass over the rows per centre,
    /// `2 + ln k` candidates each.
    #[serde(rename = "k-means++")]
    PlusPlus,
    /// k-means|| (Spark's): a few passes that each draw about `2k`
    /// candidates, then greedy k-means++ on the candidates weighted by the
    /// rows nearest each.
    #[default]
    #[serde(rename = "k-means||")]
    Parallel,
}

impl KMeansInit {
    /// What parameters saved before the choice existed were fitted with.
    fn before_choice() -> Self {
        KMeansInit::PlusPlus
    }
}

impl Default for KMeansParams {
    fn default() -> Self {
        KMeansParams {
            n_clusters: 100,
            max_iterations: 100,
            tolerance: 1e-4,
            n_init: 1,
            seed: 42,
            init: KMeansInit::default(),
        }
    }
}

impl KMeansParams {
    /// Validates every field.
    pub fn check(&self) -> Result<(), ParamError> {
        check_range("cohorts", self.n_clusters as f64, 1.0, 1e6)?;
        check_range("max-iterations", self.max_iterations as f64, 1.0, 1e6)?;
        check_range("tolerance", self.tolerance, 0.0, 1.0)?;
        check_range("n-init", self.n_init as f64, 1.0, 1000.0)?;
        Ok(())
    }
}

/// A fitted clustering: centroids, one label per row, and diagnostics.
#[derive(Debug, Clone, PartialEq)]
pub struct Cohorts {
    dim: usize,
    centroids: Vec<f32>,
    labels: Vec<u32>,
    /// Sum of squared distances of the rows to their centroid.
    pub inertia: f64,
    /// Lloyd iterations run by the winning seeding.
    pub iterations: usize,
}

const BLOCK: usize = 1024;

impl Cohorts {
    /// Clusters the row-major `rows × dim` matrix `x`.
    pub fn fit(x: &[f32], dim: usize, params: &KMeansParams) -> Result<Self, FitError> {
        params.check()?;
        if dim == 0 || !x.len().is_multiple_of(dim) {
            return Err(DataError::Shape(format!("{} values do not split into rows of {dim}", x.len())).into());
        }
        let n = x.len() / dim;
        if n < params.n_clusters {
            return Err(DataError::Empty(format!(
                "cannot make {} cohorts from {n} users; lower --cohorts",
                params.n_clusters
            ))
            .into());
        }
        if x.par_iter().any(|v| !v.is_finite()) {
            return Err(DataError::Shape("input rows hold NaN or infinite values".into()).into());
        }
        let norms: Vec<f32> = x.par_chunks(dim).map(|r| dot(r, r)).collect();
        let tol = params.tolerance * mean_variance(x, dim);
        let mut best: Option<Cohorts> = None;
        for run in 0..params.n_init {
            let mut rng = Rng::new(params.seed.wrapping_add(run as u64));
            let centroids = match params.init {
                KMeansInit::PlusPlus => seed_plus_plus(x, &norms, dim, params.n_clusters, &mut rng),
                KMeansInit::Parallel => seed_parallel(x, &norms, dim, params.n_clusters, &mut rng),
            };
            let c =
                yinyang(x, &norms, dim, centroids, params.max_iterations, tol, true, full_passes_until(x.len() / dim));
            if best.as_ref().is_none_or(|b| c.inertia < b.inertia) {
                best = Some(c);
            }
        }
        Ok(best.expect("n_init >= 1"))
    }

    /// Lloyd iterations from given starting centroids (row-major `k × dim`),
    /// skipping the seeding: a warm start, and the way to time iterations
    /// alone.
    pub fn fit_from(x: &[f32], dim: usize, centroids: Vec<f32>, params: &KMeansParams) -> Result<Self, FitError> {
        params.check()?;
        if dim == 0 || !x.len().is_multiple_of(dim) || centroids.is_empty() || !centroids.len().is_multiple_of(dim) {
            return Err(DataError::Shape(format!(
                "{} values and {} centroid values do not split into rows of {dim}",
                x.len(),
                centroids.len()
            ))
            .into());
        }
        let norms: Vec<f32> = x.par_chunks(dim).map(|r| dot(r, r)).collect();
        let tol = params.tolerance * mean_variance(x, dim);
        Ok(yinyang(x, &norms, dim, centroids, params.max_iterations, tol, true, full_passes_until(x.len() / dim)))
    }

    /// Rebuilds a clustering from stored centroids (no labels).
    pub fn from_centroids(centroids: Vec<f32>, dim: usize) -> Result<Self, DataError> {
        if dim == 0 || centroids.is_empty() || !centroids.len().is_multiple_of(dim) {
            return Err(DataError::Shape(format!(
                "{} centroid values do not split into rows of {dim}",
                centroids.len()
            )));
        }
        Ok(Cohorts { dim, centroids, labels: Vec::new(), inertia: f64::NAN, iterations: 0 })
    }

    /// Number of clusters.
    pub fn k(&self) -> usize {
        self.centroids.len() / self.dim
    }

    /// Dimension of the rows.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row-major `k × dim` centroids.
    pub fn centroids(&self) -> &[f32] {
        &self.centroids
    }

    /// One centroid.
    pub fn centroid(&self, c: usize) -> &[f32] {
        &self.centroids[c * self.dim..(c + 1) * self.dim]
    }

    /// The cluster of each fitted row.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Rows per cluster.
    pub fn sizes(&self) -> Vec<usize> {
        cohort_sizes(&self.labels, self.k())
    }

    /// The nearest centroid to a new row.
    pub fn predict(&self, row: &[f32]) -> u32 {
        let mut best = (f32::INFINITY, 0u32);
        for c in 0..self.k() {
            let cc = self.centroid(c);
            let d: f32 = row.iter().zip(cc).map(|(a, b)| (a - b) * (a - b)).sum();
            if d < best.0 {
                best = (d, c as u32);
            }
        }
        best.1
    }
}

/// Members per cohort for labels in `0..k`.
pub fn cohort_sizes(labels: &[u32], k: usize) -> Vec<usize> {
    let mut s = vec![0usize; k];
    for &l in labels {
        s[l as usize] += 1;
    }
    s
}

/// Rows scaled to unit length (zero rows stay zero): k-means on them groups
/// by the direction of the taste vector (spherical k-means, Dhillon & Modha
/// 2001), so heavy and light listeners of the same taste share a cohort.
/// The rows start on cache lines ([`Floats`]) for the distance kernels.
pub fn normalize_rows(x: &[f32], dim: usize) -> Floats {
    let mut out = Floats::from_slice(x);
    out.par_chunks_mut(dim).for_each(|r| {
        let n = dot(r, r).sqrt();
        if n > 0.0 {
            r.iter_mut().for_each(|v| *v /= n);
        }
    });
    out
}

fn mean_variance(x: &[f32], dim: usize) -> f64 {
    // Fixed parts summed in order (repeatable), each part in parallel.
    let n = (x.len() / dim) as f64;
    let per = part_rows(x.len() / dim, MAX_PARTS, 256);
    let column_sums = |part: &[f32], f: &dyn Fn(f32, usize) -> f64| -> Vec<f64> {
        let mut s = vec![0f64; dim];
        for r in part.chunks(dim) {
            for (d, v) in r.iter().enumerate() {
                s[d] += f(*v, d);
            }
        }
        s
    };
    let add = |parts: Vec<Vec<f64>>| {
        parts.into_iter().fold(vec![0f64; dim], |mut a, b| {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
            a
        })
    };
    let mean: Vec<f64> = add(x.par_chunks(per * dim).map(|p| column_sums(p, &|v, _| v as f64)).collect())
        .into_iter()
        .map(|s| s / n)
        .collect();
    let var = add(x.par_chunks(per * dim).map(|p| column_sums(p, &|v, d| (v as f64 - mean[d]).powi(2))).collect());
    var.iter().sum::<f64>() / n / dim as f64
}

/// Squared distances of every row to each of `cands` (row-major `c × dim`),
/// as an `n × c` matrix.
fn distances_to(x: &[f32], norms: &[f32], dim: usize, cands: &[f32]) -> Vec<f32> {
    distances_to_with(x, norms, dim, cands, true)
}

fn distances_to_with(x: &[f32], norms: &[f32], dim: usize, cands: &[f32], allow_simd: bool) -> Vec<f32> {
    let c = cands.len() / dim;
    let cn: Vec<f32> = cands.chunks(dim).map(|r| dot(r, r)).collect();
    let mut out = vec![0f32; norms.len() * c];
    #[cfg(target_arch = "x86_64")]
    if let Some(v4) = crate::kernels::Isa::avx512().filter(|_| allow_simd && c <= crate::kernels::nearest::CANDIDATES) {
        use crate::kernels::nearest::{distances16, CANDIDATES};
        // On cache lines, as the panel of `nearest`.
        let mut ct = Floats::zeroed(dim * CANDIDATES);
        let mut cn16 = [0f32; CANDIDATES];
        for (j, row) in cands.chunks(dim).enumerate() {
            for (d, v) in row.iter().enumerate() {
                ct[d * CANDIDATES + j] = *v;
            }
            cn16[j] = cn[j];
        }
        out.par_chunks_mut(BLOCK * c)
            .zip(x.par_chunks(BLOCK * dim))
            .zip(norms.par_chunks(BLOCK))
            .for_each(|((o, xb), nb)| distances16(v4, xb, dim, nb, &ct, &cn16, c, o));
        return out;
    }
    out.par_chunks_mut(BLOCK * c).zip(x.par_chunks(BLOCK * dim)).enumerate().for_each(|(b, (o, xb))| {
        let rows = xb.len() / dim;
        let cross = matmul_t(xb, cands, rows, dim, c);
        for r in 0..rows {
            for j in 0..c {
                o[r * c + j] = (norms[b * BLOCK + r] - 2.0 * cross[r * c + j] + cn[j]).max(0.0);
            }
        }
    });
    let _ = allow_simd;
    out
}

/// Greedy k-means++: each new centre is the best of `2 + ln k` candidates
/// drawn in proportion to the squared distance to the nearest centre so
/// far. Every pass over the rows runs in fixed parts, reduced in order.
fn seed_plus_plus(x: &[f32], norms: &[f32], dim: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    let n = norms.len();
    let trials = 2 + (k as f64).ln().floor() as usize;
    let per = part_rows(n, MAX_PARTS, BLOCK);
    let mut centroids = Vec::with_capacity(k * dim);
    let first = rng.below(n);
    centroids.extend_from_slice(&x[first * dim..(first + 1) * dim]);
    let mut closest = distances_to(x, norms, dim, &centroids);
    while centroids.len() < k * dim {
        let part_sums: Vec<f64> = closest.par_chunks(per).map(|p| p.iter().map(|&d| d as f64).sum()).collect();
        let total: f64 = part_sums.iter().sum();
        let mut cand_idx = Vec::with_capacity(trials);
        for _ in 0..trials {
            cand_idx.push(if total > 0.0 {
                draw_proportional(&closest, &part_sums, per, total, rng)
            } else {
                rng.below(n)
            });
        }
        let cands: Vec<f32> = cand_idx.iter().flat_map(|&i| x[i * dim..(i + 1) * dim].iter().copied()).collect();
        let d = distances_to(x, norms, dim, &cands);
        let t = cand_idx.len();
        let part_pots: Vec<Vec<f64>> = closest
            .par_chunks(per)
            .zip(d.par_chunks(per * t))
            .map(|(cl, dp)| {
                let mut s = vec![0f64; t];
                for (r, &c) in cl.iter().enumerate() {
                    for (j, sj) in s.iter_mut().enumerate() {
                        *sj += c.min(dp[r * t + j]) as f64;
                    }
                }
                s
            })
            .collect();
        let pots: Vec<f64> = (0..t).map(|j| part_pots.iter().map(|p| p[j]).sum()).collect();
        let best = (0..t).min_by(|&a, &b| pots[a].total_cmp(&pots[b])).unwrap();
        closest.par_iter_mut().enumerate().for_each(|(r, c)| *c = c.min(d[r * t + best]));
        let i = cand_idx[best];
        centroids.extend_from_slice(&x[i * dim..(i + 1) * dim]);
    }
    centroids
}

/// Oversampling passes of k-means||.
const PARALLEL_ROUNDS: usize = 5;

/// k-means|| (B. Bahmani, B. Moseley, A. Vattani, R. Kumar, S.
/// Vassilvitskii, "Scalable k-means++", VLDB 2012), as Spark seeds its
/// KMeans: from one row drawn uniformly, each of [`PARALLEL_ROUNDS`] passes
/// keeps every row independently with probability `min(1, ℓ d²/φ)` (`ℓ =
/// 2k`, `d²` its squared distance to the nearest candidate so far, `φ` their
/// sum), so a pass adds about `2k` candidates, measured against the rows in
/// one blocked search. Each candidate is then weighted by the rows nearest
/// to it, and [`seed_weighted`] picks `k` of them. A few passes over the
/// rows replace greedy k-means++'s `k`. Each row's draw comes from its own
/// stream, so the candidates do not depend on the threads. With `k` or
/// fewer candidates (tiny or duplicated data) it falls back to
/// [`seed_plus_plus`].
fn seed_parallel(x: &[f32], norms: &[f32], dim: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    match oversample(x, norms, dim, k, rng) {
        Some((picked, weights)) => {
            let cands: Vec<f32> = picked.iter().flat_map(|&i| x[i * dim..(i + 1) * dim].iter().copied()).collect();
            seed_weighted(&cands, &weights, dim, k, rng)
        }
        None => seed_plus_plus(x, norms, dim, k, rng),
    }
}

/// k-means||'s passes: the rows drawn as candidates, in the order drawn,
/// and the number of rows nearest to each (`None` with `k` or fewer).
fn oversample(x: &[f32], norms: &[f32], dim: usize, k: usize, rng: &mut Rng) -> Option<(Vec<usize>, Vec<f64>)> {
    let n = norms.len();
    let ell = 2.0 * k as f64;
    let per = part_rows(n, MAX_PARTS, BLOCK);
    let first = rng.below(n);
    let mut picked = vec![first];
    let mut closest = distances_to(x, norms, dim, &x[first * dim..(first + 1) * dim]);
    let mut owner = vec![0u32; n];
    for _ in 0..PARALLEL_ROUNDS {
        let parts: Vec<f64> = closest.par_chunks(per).map(|p| p.iter().map(|&d| d as f64).sum()).collect();
        let total: f64 = parts.iter().sum();
        let stream = rng.next_u64();
        if total <= 0.0 {
            break;
        }
        let new: Vec<usize> = (0..n)
            .into_par_iter()
            .filter(|&i| closest[i] > 0.0 && Rng::stream(stream, i as u64).f64() * total < ell * closest[i] as f64)
            .collect();
        if new.is_empty() {
            continue;
        }
        let base = picked.len() as u32;
        let cands: Vec<f32> = new.iter().flat_map(|&i| x[i * dim..(i + 1) * dim].iter().copied()).collect();
        let cn: Vec<f32> = new.iter().map(|&i| norms[i]).collect();
        let nearest = Nearest::new(&cands, &cn, dim, true);
        closest
            .par_chunks_mut(BLOCK)
            .zip(owner.par_chunks_mut(BLOCK))
            .zip(x.par_chunks(BLOCK * dim).zip(norms.par_chunks(BLOCK)))
            .for_each(|((cl, ow), (xb, nb))| {
                let mut near = vec![(0f32, 0u32); cl.len()];
                nearest.block(xb, &mut near);
                for (r, &(d, j)) in near.iter().enumerate() {
                    let d = (d + nb[r]).max(0.0);
                    if d < cl[r] {
                        cl[r] = d;
                        ow[r] = base + j;
                    }
                }
            });
        picked.extend(new);
    }
    if picked.len() <= k {
        return None;
    }
    let mut weights = vec![0f64; picked.len()];
    for &o in &owner {
        weights[o as usize] += 1.0;
    }
    Some((picked, weights))
}

/// Greedy k-means++ on weighted rows (few: k-means||'s candidates), then
/// weighted Lloyd iterations on them until no row moves (at most 30, as
/// Spark's local k-means): `k` centres that stand for the weighted rows.
/// Rows of weight 0 are never drawn.
fn seed_weighted(c: &[f32], w: &[f64], dim: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    let m = w.len();
    let norms: Vec<f32> = c.chunks(dim).map(|r| dot(r, r)).collect();
    let trials = 2 + (k as f64).ln().floor() as usize;
    let draw = |p: &[f64], rng: &mut Rng| -> usize {
        let total: f64 = p.iter().sum();
        let target = rng.f64() * total;
        let mut acc = 0.0;
        for (i, &v) in p.iter().enumerate() {
            acc += v;
            if acc > target {
                return i;
            }
        }
        p.iter().rposition(|&v| v > 0.0).unwrap_or(0)
    };
    let first = draw(w, rng);
    let mut centres: Vec<f32> = c[first * dim..(first + 1) * dim].to_vec();
    let mut closest = distances_to(c, &norms, dim, &centres);
    while centres.len() < k * dim {
        let pot: Vec<f64> = closest.iter().zip(w).map(|(&d, &wi)| d as f64 * wi).collect();
        // Every weighted row already sits on a centre: any other row will do.
        let pot = if pot.iter().sum::<f64>() > 0.0 { pot } else { w.iter().map(|&wi| wi.min(1.0)).collect() };
        let cand: Vec<usize> = (0..trials).map(|_| draw(&pot, rng)).collect();
        let rows: Vec<f32> = cand.iter().flat_map(|&i| c[i * dim..(i + 1) * dim].iter().copied()).collect();
        let d = distances_to(c, &norms, dim, &rows);
        let t = cand.len();
        let cost = |j: usize| -> f64 { (0..m).map(|r| closest[r].min(d[r * t + j]) as f64 * w[r]).sum() };
        let costs: Vec<f64> = (0..t).map(cost).collect();
        let best = (0..t).min_by(|&a, &b| costs[a].total_cmp(&costs[b])).unwrap();
        for (r, cl) in closest.iter_mut().enumerate() {
            *cl = cl.min(d[r * t + best]);
        }
        centres.extend_from_slice(&rows[best * dim..(best + 1) * dim]);
    }
    let mut labels = vec![u32::MAX; m];
    let mut near = vec![(0f32, 0u32); m];
    for _ in 0..30 {
        let cn: Vec<f32> = centres.chunks(dim).map(|r| dot(r, r)).collect();
        let nearest = Nearest::new(&centres, &cn, dim, true);
        near.par_chunks_mut(BLOCK).zip(c.par_chunks(BLOCK * dim)).for_each(|(o, xb)| nearest.block(xb, o));
        let mut moved = false;
        for (l, &(_, j)) in labels.iter_mut().zip(&near) {
            moved |= *l != j;
            *l = j;
        }
        if !moved {
            break;
        }
        let mut sums = vec![0f64; k * dim];
        let mut mass = vec![0f64; k];
        for (r, &j) in labels.iter().enumerate() {
            let j = j as usize;
            mass[j] += w[r];
            for (s, &v) in sums[j * dim..(j + 1) * dim].iter_mut().zip(&c[r * dim..(r + 1) * dim]) {
                *s += w[r] * v as f64;
            }
        }
        // A centre that holds no weight stays where it is.
        for j in (0..k).filter(|&j| mass[j] > 0.0) {
            for (o, &s) in centres[j * dim..(j + 1) * dim].iter_mut().zip(&sums[j * dim..(j + 1) * dim]) {
                *o = (s / mass[j]) as f32;
            }
        }
    }
    centres
}

/// A row drawn with probability `w_i / total`; `part_sums` are the sums of
/// `w` over consecutive parts of `per` rows (`total` is their sum), so only
/// one part is scanned.
fn draw_proportional(w: &[f32], part_sums: &[f64], per: usize, total: f64, rng: &mut Rng) -> usize {
    let target = rng.f64() * total;
    let mut acc = 0f64;
    for (p, &s) in part_sums.iter().enumerate() {
        if acc + s > target {
            for (i, &v) in w[p * per..(p * per + per).min(w.len())].iter().enumerate() {
                acc += v as f64;
                if acc > target {
                    return p * per + i;
                }
            }
            break;
        }
        acc += s;
    }
    w.iter().rposition(|&v| v > 0.0).unwrap_or(0)
}

#[cfg(test)]
struct Pass {
    sums: Vec<f64>,
    counts: Vec<usize>,
    inertia: f64,
    changed: usize,
}

/// How the assignment finds each row's nearest centroid.
enum Nearest<'a> {
    /// A block's cross products by SGEMM, then a scan per row.
    Portable { centroids: &'a [f32], norms: &'a [f32], dim: usize },
    /// The AVX-512 micro-kernel ([`crate::kernels::nearest`]).
    #[cfg(target_arch = "x86_64")]
    Avx512(crate::kernels::nearest::Panel),
}

impl<'a> Nearest<'a> {
    fn new(centroids: &'a [f32], norms: &'a [f32], dim: usize, allow_simd: bool) -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(v4) = crate::kernels::Isa::avx512().filter(|_| allow_simd) {
            return Nearest::Avx512(crate::kernels::nearest::Panel::new(v4, centroids, norms, dim));
        }
        let _ = allow_simd;
        Nearest::Portable { centroids, norms, dim }
    }

    /// `(‖c‖² − 2 x·c, c)` of the nearest centroid `c` of each row of `xb`;
    /// ties go to the lowest index.
    fn block(&self, xb: &[f32], out: &mut [(f32, u32)]) {
        match self {
            Nearest::Portable { centroids, norms, dim } => {
                let (rows, k) = (xb.len() / dim, norms.len());
                let cross = matmul_t(xb, centroids, rows, *dim, k);
                for (o, row) in out.iter_mut().zip(cross.chunks(k)) {
                    let mut best = (f32::INFINITY, 0u32);
                    for (j, (&cr, &n)) in row.iter().zip(norms.iter()).enumerate() {
                        let d = n - 2.0 * cr;
                        if d < best.0 {
                            best = (d, j as u32);
                        }
                    }
                    *o = best;
                }
            }
            #[cfg(target_arch = "x86_64")]
            Nearest::Avx512(panel) => crate::kernels::nearest::nearest(xb, panel, out),
        }
    }
}

#[cfg(test)]
fn assign(x: &[f32], norms: &[f32], dim: usize, centroids: &[f32], labels: &mut [u32], dists: &mut [f32]) -> Pass {
    assign_with(x, norms, dim, centroids, labels, dists, true)
}

#[cfg(test)]
fn assign_with(
    x: &[f32],
    norms: &[f32],
    dim: usize,
    centroids: &[f32],
    labels: &mut [u32],
    dists: &mut [f32],
    allow_simd: bool,
) -> Pass {
    let k = centroids.len() / dim;
    let cn: Vec<f32> = centroids.chunks(dim).map(|r| dot(r, r)).collect();
    let nearest = Nearest::new(centroids, &cn, dim, allow_simd);
    let per = part_rows(norms.len(), MAX_PARTS, BLOCK);
    // Fixed parts, reduced in order: the centroids repeat bit for bit.
    let parts: Vec<Pass> = labels
        .par_chunks_mut(per)
        .zip(dists.par_chunks_mut(per))
        .zip(x.par_chunks(per * dim))
        .enumerate()
        .map(|(p, ((lab, dis), xp))| {
            let mut acc = Pass { sums: vec![0f64; k * dim], counts: vec![0; k], inertia: 0.0, changed: 0 };
            // Sums of a block in f32 (at most BLOCK rows), folded into f64.
            let mut bsums = vec![0f32; k * dim];
            let mut near = vec![(0f32, 0u32); BLOCK];
            for (b, xb) in xp.chunks(BLOCK * dim).enumerate() {
                let rows = xb.len() / dim;
                nearest.block(xb, &mut near[..rows]);
                for (r, &(bd, bj)) in near[..rows].iter().enumerate() {
                    let (i, j) = (b * BLOCK + r, bj as usize);
                    let d = (bd + norms[p * per + i]).max(0.0);
                    if lab[i] != bj {
                        acc.changed += 1;
                        lab[i] = bj;
                    }
                    dis[i] = d;
                    acc.inertia += d as f64;
                    acc.counts[j] += 1;
                    let s = &mut bsums[j * dim..(j + 1) * dim];
                    for (a, v) in s.iter_mut().zip(&xb[r * dim..(r + 1) * dim]) {
                        *a += *v;
                    }
                }
                for (a, v) in acc.sums.iter_mut().zip(bsums.iter_mut()) {
                    *a += *v as f64;
                    *v = 0.0;
                }
            }
            acc
        })
        .collect();
    let mut total = Pass { sums: vec![0f64; k * dim], counts: vec![0; k], inertia: 0.0, changed: 0 };
    for b in parts {
        total.sums.iter_mut().zip(b.sums).for_each(|(x, y)| *x += y);
        total.counts.iter_mut().zip(b.counts).for_each(|(x, y)| *x += y);
        total.inertia += b.inertia;
        total.changed += b.changed;
    }
    total
}

/// Plain Lloyd iterations: every row against every centroid each time. The
/// reference [`yinyang`] is tested against.
#[cfg(test)]
fn lloyd(x: &[f32], norms: &[f32], dim: usize, mut centroids: Vec<f32>, max_iter: usize, tol: f64) -> Cohorts {
    let n = norms.len();
    let mut labels = vec![u32::MAX; n];
    let mut dists = vec![0f32; n];
    let mut iterations = 0;
    let mut pass = assign(x, norms, dim, &centroids, &mut labels, &mut dists);
    for _ in 0..max_iter {
        iterations += 1;
        let new = update_centroids(x, dim, &pass.sums, &pass.counts, &dists);
        let shift: f64 = new.iter().zip(&centroids).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        centroids = new;
        pass = assign(x, norms, dim, &centroids, &mut labels, &mut dists);
        if pass.changed == 0 || shift <= tol {
            break;
        }
    }
    Cohorts { dim, centroids, labels, inertia: pass.inertia, iterations }
}

/// New centroids from the sums and counts; an empty cluster moves to the
/// farthest row not yet taken (`dists`: each row's squared distance to its
/// centroid, read only when a cluster is empty).
fn update_centroids(x: &[f32], dim: usize, sums: &[f64], counts: &[usize], dists: &[f32]) -> Vec<f32> {
    let k = counts.len();
    let n = dists.len();
    let mut new = vec![0f32; k * dim];
    let mut taken: Vec<usize> = Vec::new();
    for c in 0..k {
        if counts[c] > 0 {
            for d in 0..dim {
                new[c * dim + d] = (sums[c * dim + d] / counts[c] as f64) as f32;
            }
        } else {
            let far = (0..n)
                .filter(|i| !taken.contains(i))
                .max_by(|&a, &b| dists[a].total_cmp(&dists[b]).then(b.cmp(&a)))
                .unwrap_or(0);
            taken.push(far);
            new[c * dim..(c + 1) * dim].copy_from_slice(&x[far * dim..(far + 1) * dim]);
        }
    }
    new
}

/// One part's share of an iteration: the changes to the sums and counts
/// from its rows that changed cluster (empty when none did).
struct Part {
    sums: Vec<f64>,
    counts: Vec<i64>,
    changed: usize,
}

impl Part {
    /// Moves row `xr` from cluster `from` (none when `u32::MAX`) to `to`.
    fn move_row(&mut self, xr: &[f32], from: u32, to: u32, k: usize) {
        let dim = xr.len();
        if self.sums.is_empty() {
            self.sums = vec![0f64; k * dim];
            self.counts = vec![0i64; k];
        }
        if from != u32::MAX {
            let from = from as usize;
            self.counts[from] -= 1;
            for (s, v) in self.sums[from * dim..(from + 1) * dim].iter_mut().zip(xr) {
                *s -= *v as f64;
            }
        }
        let to = to as usize;
        self.counts[to] += 1;
        for (s, v) in self.sums[to * dim..(to + 1) * dim].iter_mut().zip(xr) {
            *s += *v as f64;
        }
        self.changed += 1;
    }
}

/// Rows tested for their bounds before the ones that fail are looked at,
/// so that their factor rows can be fetched meanwhile.
const STRETCH: usize = 64;

/// Centroids in one panel of a group search: one 16-lane register.
const PANEL: usize = 16;

/// At most this many groups, so that the lower bounds (one float per row
/// and group) stay within twice the size of the rows at 16 factors; more
/// centroids make larger groups, of several panels.
const MAX_GROUPS: usize = 32;

/// The centroids in groups for Yinyang's bounds, each group's centroids
/// held transposed in panels of [`PANEL`] for [`Groups::search`].
struct Groups {
    dim: usize,
    /// The group of each centroid.
    of: Vec<u32>,
    /// Members of each group, ascending; a group's panels take them in turn.
    members: Vec<Vec<u32>>,
    /// Per group and panel: `dim × 16` transposed centroids, zeros past the
    /// members, then 16 squared norms, +∞ past the members.
    panels: Vec<Vec<Floats>>,
    /// The AVX-512 panel kernel's token, when it runs.
    simd: Option<Avx512>,
}

impl Groups {
    /// Groups of nearby centroids, fixed for the whole run as in Yinyang
    /// k-means: the lowest-numbered centroid not yet grouped, with its
    /// nearest ungrouped others (a deterministic stand-in for the paper's
    /// k-means over the centroids, with groups of equal size).
    fn new(centroids: &[f32], dim: usize, simd: Option<Avx512>) -> Groups {
        let k = centroids.len() / dim;
        let size = k.div_ceil(MAX_GROUPS).div_ceil(PANEL).max(1) * PANEL;
        let row = |j: usize| &centroids[j * dim..(j + 1) * dim];
        let d2 = |a: usize, b: usize| -> f32 { row(a).iter().zip(row(b)).map(|(p, q)| (p - q) * (p - q)).sum() };
        let mut of = vec![u32::MAX; k];
        let mut members: Vec<Vec<u32>> = Vec::new();
        for c in 0..k {
            if of[c] != u32::MAX {
                continue;
            }
            let mut rest: Vec<(f32, usize)> =
                (c + 1..k).filter(|&o| of[o] == u32::MAX).map(|o| (d2(c, o), o)).collect();
            rest.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let mut m: Vec<u32> =
                std::iter::once(c).chain(rest.iter().take(size - 1).map(|r| r.1)).map(|o| o as u32).collect();
            m.sort_unstable();
            for &o in &m {
                of[o as usize] = members.len() as u32;
            }
            members.push(m);
        }
        Groups { dim, of, members, panels: Vec::new(), simd }
    }

    /// Fills the panels from the centroids and their squared norms `cn`
    /// (the groups stay as made).
    fn load(&mut self, centroids: &[f32], cn: &[f32]) {
        let dim = self.dim;
        self.panels = self
            .members
            .iter()
            .map(|m| {
                m.chunks(PANEL)
                    .map(|part| {
                        let mut p = Floats::zeroed(dim * PANEL + PANEL);
                        p[dim * PANEL..].fill(f32::INFINITY);
                        for (lane, &j) in part.iter().enumerate() {
                            let c = &centroids[j as usize * dim..(j as usize + 1) * dim];
                            for (d, v) in c.iter().enumerate() {
                                p[d * PANEL + lane] = *v;
                            }
                            p[dim * PANEL + lane] = cn[j as usize];
                        }
                        p
                    })
                    .collect()
            })
            .collect();
    }

    fn count(&self) -> usize {
        self.members.len()
    }

    /// Row `x` against group `g`: the least `‖c‖² − 2 x·c` over its
    /// members, that member, and the second least (+∞ with one member).
    fn search(&self, g: usize, x: &[f32]) -> (f32, u32, f32) {
        let dim = self.dim;
        let (mut v1, mut j1, mut v2) = (f32::INFINITY, u32::MAX, f32::INFINITY);
        for (p, part) in self.panels[g].iter().zip(self.members[g].chunks(PANEL)) {
            let (ct, cn) = p.split_at(dim * PANEL);
            let cn: &[f32; PANEL] = cn.try_into().expect("a panel ends with 16 norms");
            let (a, lane, b) = self.panel(x, ct, cn, part.len());
            let j = part[lane];
            // Panels in ascending member order: an equal value keeps the lower.
            if a < v1 {
                v2 = v1.min(b);
                (v1, j1) = (a, j);
            } else {
                v2 = v2.min(a);
            }
        }
        (v1, j1, v2)
    }

    /// One panel of [`Groups::search`]: the least value, its lane, the second.
    fn panel(&self, x: &[f32], ct: &[f32], cn: &[f32; PANEL], used: usize) -> (f32, usize, f32) {
        #[cfg(target_arch = "x86_64")]
        if let Some(v4) = self.simd {
            return crate::kernels::nearest::panel_min2(v4, x, ct, cn);
        }
        let (mut v1, mut lane, mut v2) = (f32::INFINITY, 0, f32::INFINITY);
        for l in 0..used {
            let cross: f32 = x.iter().enumerate().map(|(d, v)| v * ct[d * PANEL + l]).sum();
            let v = cn[l] - 2.0 * cross;
            if v < v1 {
                v2 = v1;
                (v1, lane) = (v, l);
            } else if v < v2 {
                v2 = v;
            }
        }
        (v1, lane, v2)
    }
}

/// Lloyd's iterations with Yinyang's bounds (Y. Ding, Y. Zhao, X. Shen, M.
/// Musuvathi, T. Mytkowicz, "Yinyang K-Means: A Drop-In Replacement of the
/// Classic K-Means with Consistent Speedup", ICML 2015): the same
/// assignments and centroids, with most distances never computed.
///
/// The centroids are split once into groups of nearby ones ([`Groups`]).
/// Each row keeps an upper bound `u` on the distance to its centroid and,
/// per group, a lower bound on the distance to every other centroid of the
/// group. After the centroids move, `u` grows by its centroid's drift and
/// each group's bound shrinks by the largest drift in that group (not in
/// all centroids, as with Hamerly's single bound, SDM 2010: in the later
/// iterations a few centroids still move while most have settled). A row
/// is skipped while `u` is at most the least group bound (or `s`, half the
/// gap from its centroid to the nearest other, Hamerly's test); otherwise
/// `u` is tightened with one distance, and if the test still fails, only
/// the groups whose bound is below the best distance so far are searched,
/// each in one pass of 16-lane panels that also gives the group's new
/// bound. Sums move with the rows that change cluster. The first passes,
/// while more than `full_until` rows change cluster in a pass, go over
/// every row on the tiled kernel instead ([`full_passes_until`]), and the
/// pass after them searches every group of every row to set the bounds.
/// Distances in f32 round, so a row at a near tie may go either way, as
/// between Lloyd's two kernels.
#[allow(clippy::too_many_arguments)]
fn yinyang(
    x: &[f32],
    norms: &[f32],
    dim: usize,
    mut centroids: Vec<f32>,
    max_iter: usize,
    tol: f64,
    allow_simd: bool,
    full_until: usize,
) -> Cohorts {
    let n = norms.len();
    let k = centroids.len() / dim;
    let per = part_rows(n, MAX_PARTS, BLOCK);
    let avx512 = Isa::avx512().filter(|_| allow_simd);
    let simd = avx512.is_some();
    let mut groups = Groups::new(&centroids, dim, avx512);
    let gn = groups.count();
    let mut labels = vec![u32::MAX; n];
    let mut upper = vec![0f32; n];
    let mut lower = vec![0f32; n * gn];
    let mut sums = vec![0f64; k * dim];
    let mut counts = vec![0usize; k];
    let mut iterations = 0;
    let mut first = true;
    let isa = Isa::best();
    let mut moves = Moves::none(k, gn);
    // Full passes while many rows move; then bounds, set by one pass that
    // searches every group of every row.
    let (mut full, mut search_all) = (true, true);
    loop {
        let cn: Vec<f32> = centroids.chunks(dim).map(|r| dot(r, r)).collect();
        groups.load(&centroids, &cn);
        let parts: Vec<Part> = if full {
            full_pass(x, dim, &centroids, &cn, &mut labels, per, simd)
        } else {
            labels
                .par_chunks_mut(per)
                .zip(upper.par_chunks_mut(per))
                .zip(lower.par_chunks_mut(per * gn))
                .enumerate()
                .map(|(p, ((lab, up), low))| {
                    let base = p * per;
                    let mut part = Part { sums: Vec::new(), counts: Vec::new(), changed: 0 };
                    // The groups searched for the current row: (group, least
                    // distance, its centroid, second least).
                    let mut searched: Vec<(usize, f32, u32, f32)> = Vec::with_capacity(gn);
                    // Rows of a stretch that fail the bound test, with their
                    // loosened upper bound and threshold: their factor rows are
                    // fetched while the rest of the stretch is tested.
                    let mut pending: Vec<(usize, f32, f32)> = Vec::with_capacity(STRETCH);
                    for start in (0..lab.len()).step_by(STRETCH) {
                        pending.clear();
                        for i in start..(start + STRETCH).min(lab.len()) {
                            if search_all {
                                pending.push((i, f32::INFINITY, f32::INFINITY));
                                continue;
                            }
                            let a = lab[i] as usize;
                            let u = up[i] + moves.drift[a];
                            let mut least = f32::INFINITY;
                            for (l, gd) in low[i * gn..(i + 1) * gn].iter_mut().zip(&moves.group_drift) {
                                *l -= gd;
                                least = least.min(*l);
                            }
                            // Bounds are loosened by SLACK first, so that f32
                            // rounding cannot keep a row from a nearer centroid.
                            let skip = least.max(moves.half_gap[a]) / SLACK;
                            up[i] = u;
                            if u > skip {
                                crate::kernels::prefetch_floats(x[(base + i) * dim..].as_ptr(), dim);
                                pending.push((i, u, skip));
                            }
                        }
                        for &(i, u, skip) in &pending {
                            let r = base + i;
                            let xr = &x[r * dim..(r + 1) * dim];
                            let lo = &mut low[i * gn..(i + 1) * gn];
                            let dist = |v: f32| (v + norms[r]).max(0.0).sqrt();
                            let a = lab[i];
                            // The best centroid so far and its distance.
                            let (mut bj, mut bd) = (a, u);
                            if !search_all {
                                let ai = a as usize;
                                bd = dist(cn[ai] - 2.0 * isa.dot(xr, &centroids[ai * dim..(ai + 1) * dim]));
                                up[i] = bd;
                                if bd <= skip {
                                    continue;
                                }
                            }
                            searched.clear();
                            for (g, &l) in lo.iter().enumerate() {
                                if bd <= l / SLACK {
                                    continue;
                                }
                                let (v1, j1, v2) = groups.search(g, xr);
                                let (d1, d2) = (dist(v1), dist(v2));
                                searched.push((g, d1, j1, d2));
                                if d1 < bd || (d1 == bd && j1 < bj) {
                                    (bd, bj) = (d1, j1);
                                }
                            }
                            // A searched group's new bound leaves out the row's
                            // new centroid; the old centroid joins its group's
                            // bound.
                            for &(g, d1, j1, d2) in &searched {
                                lo[g] = if j1 == bj { d2 } else { d1 };
                            }
                            if bj != a {
                                if a != u32::MAX {
                                    let ga = groups.of[a as usize] as usize;
                                    if !searched.iter().any(|s| s.0 == ga) {
                                        lo[ga] = lo[ga].min(up[i]);
                                    }
                                }
                                part.move_row(xr, a, bj, k);
                                lab[i] = bj;
                            }
                            up[i] = bd;
                        }
                    }
                    part
                })
                .collect()
        };
        let mut changed = 0;
        for part in parts {
            changed += part.changed;
            if !part.sums.is_empty() {
                sums.iter_mut().zip(&part.sums).for_each(|(a, b)| *a += b);
                counts.iter_mut().zip(&part.counts).for_each(|(a, b)| *a = (*a as i64 + b) as usize);
            }
        }
        if !first && (changed == 0 || moves.shift() <= tol) {
            break;
        }
        if iterations == max_iter {
            break;
        }
        first = false;
        search_all = false;
        if full && changed <= full_until {
            (full, search_all) = (false, true);
        }
        iterations += 1;
        // Lloyd's update (an empty cluster moves to the farthest row, by
        // exact distances), and how far each centroid moved.
        let dists: Vec<f32> =
            if counts.contains(&0) { exact_dists(x, norms, dim, &centroids, &labels) } else { Vec::new() };
        let new = update_centroids(x, dim, &sums, &counts, &dists);
        moves = Moves::between(&centroids, &new, dim, &groups.of, gn);
        centroids = new;
    }
    let dists = exact_dists(x, norms, dim, &centroids, &labels);
    let inertia = dists.iter().map(|&d| d as f64).sum();
    Cohorts { dim, centroids, labels, inertia, iterations }
}

/// At how many rows changing cluster in a pass [`yinyang`] stops running
/// full passes and starts keeping bounds: a thirty-second of the rows.
///
/// While many rows move, the bounds fail for most of them: on the kernel
/// benchmark (100 000 rows, 64 factors, 20 iterations from the first `k`
/// rows as centres), Yinyang searched 50–99% of the rows in every
/// iteration at k = 20, one row at a time, where a full pass on the
/// tiled kernel ([`crate::kernels::nearest::nearest`], four rows
/// against each loaded centroid) visits them all for less. Late in a fit,
/// when few rows move, the bounds skip most of them. Milliseconds an
/// iteration at k = 20 / 100 / 300 on that benchmark, and seconds for the
/// medium set's fit (500 000 rows, k = 100, k-means|| start, 100
/// iterations), switching at a fraction of the rows:
///
/// | switch at | benchmark | medium |
/// |---|---|---|
/// | never (full passes only) | 2.7 / 7.4 / 19 | 3.8–4.2 |
/// | 1/100 | 2.5 / 7.4–7.9 / 20.8 | 1.87–1.97 |
/// | **1/30** (measured; the default is 1/32) | 3.2 / 8.1 / 20.7 | 1.80–1.88 |
/// | 1/10 | 3.7 / 8.4 / 22.8 | 1.84–1.93 |
/// | after the first pass | 4.1 / 9.6 / 26.8 | 1.80 |
fn full_passes_until(rows: usize) -> usize {
    rows / 32
}

/// One full assignment pass: every row of `x` against every centroid on
/// the tiled kernel ([`Nearest`]), in the same fixed parts as the bounded
/// passes, moving the rows that change cluster.
fn full_pass(
    x: &[f32],
    dim: usize,
    centroids: &[f32],
    cn: &[f32],
    labels: &mut [u32],
    per: usize,
    simd: bool,
) -> Vec<Part> {
    let k = cn.len();
    let nearest = Nearest::new(centroids, cn, dim, simd);
    labels
        .par_chunks_mut(per)
        .enumerate()
        .map(|(p, lab)| {
            let mut part = Part { sums: Vec::new(), counts: Vec::new(), changed: 0 };
            let mut near = vec![(0f32, 0u32); BLOCK.min(lab.len())];
            for start in (0..lab.len()).step_by(BLOCK) {
                let rows = (lab.len() - start).min(BLOCK);
                let from = p * per + start;
                nearest.block(&x[from * dim..(from + rows) * dim], &mut near[..rows]);
                for (r, &(_, j)) in near[..rows].iter().enumerate() {
                    if lab[start + r] != j {
                        part.move_row(&x[(from + r) * dim..(from + r + 1) * dim], lab[start + r], j, k);
                        lab[start + r] = j;
                    }
                }
            }
            part
        })
        .collect()
}

/// Bounds are loosened by this factor before a row is skipped, so f32
/// rounding in the distances cannot keep a row from a nearer centroid.
const SLACK: f32 = 1.0 + 1e-5;

/// How far each centroid moved in the last update, and what that does to
/// the rows' bounds.
struct Moves {
    /// Distance each centroid moved.
    drift: Vec<f32>,
    /// The largest drift in each group.
    group_drift: Vec<f32>,
    /// Half the distance from each centroid to its nearest other centroid.
    half_gap: Vec<f32>,
}

impl Moves {
    /// No move yet (before the first update).
    fn none(k: usize, groups: usize) -> Self {
        Moves { drift: vec![0.0; k], group_drift: vec![0.0; groups], half_gap: vec![0.0; k] }
    }

    /// The moves from `old` to `new` centroids (row-major `k × dim`), the
    /// centroids in the groups `of`.
    fn between(old: &[f32], new: &[f32], dim: usize, of: &[u32], groups: usize) -> Self {
        let k = new.len() / dim;
        let drift: Vec<f32> = (0..k)
            .map(|j| {
                let (a, b) = (&new[j * dim..(j + 1) * dim], &old[j * dim..(j + 1) * dim]);
                a.iter().zip(b).map(|(p, q)| ((p - q) as f64).powi(2)).sum::<f64>().sqrt() as f32
            })
            .collect();
        let mut group_drift = vec![0f32; groups];
        for (j, &d) in drift.iter().enumerate() {
            let g = of[j] as usize;
            group_drift[g] = group_drift[g].max(d);
        }
        let half_gap: Vec<f32> = (0..k)
            .into_par_iter()
            .map(|j| {
                let cj = &new[j * dim..(j + 1) * dim];
                (0..k)
                    .filter(|&o| o != j)
                    .map(|o| cj.iter().zip(&new[o * dim..(o + 1) * dim]).map(|(p, q)| (p - q) * (p - q)).sum::<f32>())
                    .fold(f32::INFINITY, f32::min)
                    .sqrt()
                    / 2.0
            })
            .collect();
        Moves { drift, group_drift, half_gap }
    }

    /// Sum of the squared drifts: Lloyd's centre shift.
    fn shift(&self) -> f64 {
        self.drift.iter().map(|&d| (d as f64).powi(2)).sum()
    }
}

/// Each row's squared distance to its centroid, as the assignment computes
/// it (`‖x‖² − 2 x·c + ‖c‖²`, at least 0).
fn exact_dists(x: &[f32], norms: &[f32], dim: usize, centroids: &[f32], labels: &[u32]) -> Vec<f32> {
    let cn: Vec<f32> = centroids.chunks(dim).map(|r| dot(r, r)).collect();
    labels
        .par_iter()
        .enumerate()
        .map(|(r, &a)| {
            let a = a as usize;
            (norms[r] - 2.0 * dot(&x[r * dim..(r + 1) * dim], &centroids[a * dim..(a + 1) * dim]) + cn[a]).max(0.0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(k: usize, per: usize, dim: usize, spread: f64, seed: u64) -> (Vec<f32>, Vec<usize>) {
        let mut rng = Rng::new(seed);
        let centres: Vec<f64> = (0..k * dim).map(|_| rng.normal() * 10.0).collect();
        let mut x = Vec::new();
        let mut truth = Vec::new();
        for i in 0..k * per {
            let c = i % k;
            for d in 0..dim {
                x.push((centres[c * dim + d] + rng.normal() * spread) as f32);
            }
            truth.push(c);
        }
        (x, truth)
    }

    #[test]
    fn the_simd_assignment_agrees_with_the_portable_one() {
        if !crate::kernels::kernels_run("avx512") {
            return; // Nothing to compare on this CPU: only the portable path runs.
        }
        let mut rng = Rng::new(11);
        for (n, dim, k) in [(1, 3, 1), (7, 16, 5), (1027, 64, 20), (2051, 64, 33), (999, 65, 100), (3001, 32, 300)] {
            let x: Vec<f32> = (0..n * dim).map(|_| rng.normal() as f32).collect();
            let mut c: Vec<f32> = x[..k.min(n) * dim].to_vec();
            c.extend((0..(k - k.min(n)) * dim).map(|_| rng.normal() as f32));
            // A duplicated centroid: the lower index must win the tie.
            if k > 2 {
                let (a, b) = c.split_at_mut(dim);
                b[dim..2 * dim].copy_from_slice(a);
            }
            let norms: Vec<f32> = x.chunks(dim).map(|r| dot(r, r)).collect();
            let run = |simd: bool| {
                let (mut lab, mut dis) = (vec![u32::MAX; n], vec![0f32; n]);
                let pass = assign_with(&x, &norms, dim, &c, &mut lab, &mut dis, simd);
                (lab, dis, pass)
            };
            let ((la, da, pa), (lb, db, pb)) = (run(false), run(true));
            for i in 0..n {
                if la[i] != lb[i] {
                    // Only a near tie may go either way under another summation order.
                    let (ja, jb) = (la[i] as usize, lb[i] as usize);
                    let d = |j: usize| -> f64 {
                        x[i * dim..(i + 1) * dim]
                            .iter()
                            .zip(&c[j * dim..(j + 1) * dim])
                            .map(|(a, b)| ((a - b) as f64).powi(2))
                            .sum()
                    };
                    assert!((d(ja) - d(jb)).abs() < 1e-4 * (1.0 + d(ja)), "n {n} k {k} row {i}: {ja} vs {jb}");
                }
                assert!((da[i] - db[i]).abs() <= 1e-4 * (1.0 + da[i]), "n {n} k {k} row {i}: {} vs {}", da[i], db[i]);
                if k > 2 {
                    assert_ne!(lb[i], 2, "the duplicate of centroid 0 is never chosen");
                }
            }
            assert!((pa.inertia - pb.inertia).abs() <= 1e-4 * (1.0 + pa.inertia));
            assert_eq!(pb.counts.iter().sum::<usize>(), n);
        }
    }

    #[test]
    fn candidate_distances_and_draws_agree_with_plain_loops() {
        let mut rng = Rng::new(12);
        for (n, dim, t) in [(1, 3, 1), (9, 16, 6), (2053, 64, 7), (1500, 33, 16), (700, 8, 17)] {
            let x: Vec<f32> = (0..n * dim).map(|_| rng.normal() as f32).collect();
            let norms: Vec<f32> = x.chunks(dim).map(|r| dot(r, r)).collect();
            let cands: Vec<f32> = (0..t * dim).map(|_| rng.normal() as f32).collect();
            for simd in [false, true] {
                let d = distances_to_with(&x, &norms, dim, &cands, simd);
                assert_eq!(d.len(), n * t);
                for r in 0..n {
                    for j in 0..t {
                        let want: f32 = x[r * dim..(r + 1) * dim]
                            .iter()
                            .zip(&cands[j * dim..(j + 1) * dim])
                            .map(|(a, b)| (a - b) * (a - b))
                            .sum();
                        let got = d[r * t + j];
                        assert!(
                            (want - got).abs() < 1e-3 * (1.0 + want),
                            "n {n} t {t} simd {simd} {r},{j}: {want} vs {got}"
                        );
                    }
                }
            }
        }
        // Draws by part sums land where a scan of the whole vector would.
        let w: Vec<f32> = (0..10_000).map(|i| if i % 7 == 0 { 0.0 } else { rng.f64() as f32 }).collect();
        let per = 1024;
        let parts: Vec<f64> = w.chunks(per).map(|p| p.iter().map(|&v| v as f64).sum()).collect();
        let total: f64 = parts.iter().sum();
        let (mut a, mut b) = (Rng::new(3), Rng::new(3));
        for _ in 0..500 {
            let got = draw_proportional(&w, &parts, per, total, &mut a);
            let target = b.f64() * total;
            let mut acc = 0f64;
            let want = w.iter().position(|&v| {
                acc += v as f64;
                acc > target
            });
            // Sums in another order may differ in the last bits at a boundary.
            let want = want.unwrap_or(w.len() - 1);
            assert!(got == want || (got as i64 - want as i64).abs() <= 1, "{got} vs {want}");
            assert!(w[got] > 0.0, "a zero-weight row was drawn");
        }
    }

    #[test]
    fn yinyang_iterates_like_lloyd() {
        // Same start, same tolerance: the same iterations, labels and
        // centroids as plain Lloyd, with both kernels; rows at a near tie
        // may go either way, so a handful may differ on random data.
        let mut rng = Rng::new(21);
        let (bx, _) = blobs(10, 300, 16, 3.0, 8);
        let rx: Vec<f32> = (0..4000 * 64).map(|_| rng.normal() as f32).collect();
        let ux = normalize_rows(&rx, 64);
        let ox: Vec<f32> = (0..3000 * 7).map(|_| rng.normal() as f32).collect();
        // k = 600 makes groups of two panels; 7 columns leave a remainder
        // after the kernel's four chains.
        for (x, dim, k, max_iter) in [
            (&bx[..], 16, 10, 100),
            (&rx[..], 64, 50, 30),
            (&ux[..], 64, 100, 100),
            (&bx[..], 16, 1, 5),
            (&rx[..], 64, 600, 8),
            (&ox[..], 7, 40, 50),
        ] {
            let n = x.len() / dim;
            let norms: Vec<f32> = x.chunks(dim).map(|r| dot(r, r)).collect();
            let start: Vec<f32> = x[..k * dim].to_vec();
            let tol = 1e-4 * mean_variance(x, dim);
            let want = lloyd(x, &norms, dim, start.clone(), max_iter, tol);
            // Bounds from the second pass on (usize::MAX), full passes
            // until a thirty-second of the rows move (the default), and full
            // passes throughout (0: none ever moves fewer than no rows).
            for (simd, until) in [(false, usize::MAX), (true, usize::MAX), (true, full_passes_until(n)), (true, 0)] {
                let got = yinyang(x, &norms, dim, start.clone(), max_iter, tol, simd, until);
                let case = format!("k {k} simd {simd} full passes until {until}");
                let differ = want.labels.iter().zip(&got.labels).filter(|(a, b)| a != b).count();
                assert!(differ <= n / 500, "{case}: {differ} of {n} labels differ");
                if differ == 0 {
                    assert_eq!(got.iterations, want.iterations, "{case}");
                    for (a, b) in want.centroids.iter().zip(&got.centroids) {
                        assert!((a - b).abs() < 1e-4 * (1.0 + a.abs()), "{case}: {a} vs {b}");
                    }
                }
                assert!((got.inertia - want.inertia).abs() <= 1e-3 * want.inertia.max(1e-9), "{case}");
                assert_eq!(got.sizes().iter().sum::<usize>(), n);
            }
        }
    }

    #[test]
    fn group_search_finds_the_two_least_of_each_group() {
        let mut rng = Rng::new(31);
        for (dim, k) in [(7, 5), (16, 16), (64, 100), (65, 600), (3, 1)] {
            let c: Vec<f32> = (0..k * dim).map(|_| rng.normal() as f32).collect();
            let x: Vec<f32> = (0..dim).map(|_| rng.normal() as f32).collect();
            let value = |j: usize| -> f64 {
                let cj = &c[j * dim..(j + 1) * dim];
                cj.iter().map(|&v| (v as f64).powi(2)).sum::<f64>()
                    - 2.0 * cj.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>()
            };
            for simd in [false, true] {
                let mut groups = Groups::new(&c, dim, Isa::avx512().filter(|_| simd));
                let cn: Vec<f32> = c.chunks(dim).map(|r| dot(r, r)).collect();
                groups.load(&c, &cn);
                // Every centroid in exactly one group, no group too large.
                let mut all: Vec<u32> = groups.members.iter().flatten().copied().collect();
                all.sort_unstable();
                assert_eq!(all, (0..k as u32).collect::<Vec<_>>(), "dim {dim} k {k}");
                assert!(groups.count() <= MAX_GROUPS);
                for (g, m) in groups.members.iter().enumerate() {
                    let mut want: Vec<(f64, u32)> = m.iter().map(|&j| (value(j as usize), j)).collect();
                    want.sort_by(|a, b| a.0.total_cmp(&b.0));
                    let (v1, j1, v2) = groups.search(g, &x);
                    let tol = 1e-4 * (1.0 + want[0].0.abs());
                    assert!((v1 as f64 - want[0].0).abs() < tol, "dim {dim} k {k} group {g}: {v1} vs {want:?}");
                    assert!(j1 == want[0].1 || (value(j1 as usize) - want[0].0).abs() < tol, "dim {dim} k {k}");
                    let second = want.get(1).map_or(f64::INFINITY, |w| w.0);
                    assert!(v2 as f64 == second || (v2 as f64 - second).abs() < 1e-4 * (1.0 + second.abs()));
                }
            }
        }
    }

    #[test]
    fn parallel_seeding_puts_one_centre_in_each_blob_on_any_threads() {
        let (k, dim, per) = (20, 8, 100);
        for seed in [1, 2, 3] {
            let (x, truth) = blobs(k, per, dim, 0.3, seed);
            let norms: Vec<f32> = x.chunks(dim).map(|r| dot(r, r)).collect();
            let seeds: Vec<Vec<f32>> = [1, 3]
                .iter()
                .map(|&t| {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
                    pool.install(|| seed_parallel(&x, &norms, dim, k, &mut Rng::new(seed)))
                })
                .collect();
            assert_eq!(seeds[0], seeds[1], "seed {seed}: the threads changed the centres");
            // The blob of each centre: that of its nearest row. Each blob
            // gets exactly one centre, before any Lloyd iteration.
            let mut hit = vec![0; k];
            for c in seeds[0].chunks(dim) {
                let nearest = (0..k * per)
                    .min_by(|&a, &b| {
                        let d = |i: usize| {
                            x[i * dim..(i + 1) * dim].iter().zip(c).map(|(p, q)| (p - q) * (p - q)).sum::<f32>()
                        };
                        d(a).total_cmp(&d(b))
                    })
                    .unwrap();
                hit[truth[nearest]] += 1;
            }
            assert_eq!(hit, vec![1; k], "seed {seed}");
        }
    }

    #[test]
    fn oversampling_draws_about_2k_a_pass_and_weighs_each_by_its_nearest_rows() {
        let (k, dim) = (20, 8);
        let (x, _) = blobs(k, 100, dim, 2.0, 4);
        let n = x.len() / dim;
        let norms: Vec<f32> = x.chunks(dim).map(|r| dot(r, r)).collect();
        let (picked, weights) = oversample(&x, &norms, dim, k, &mut Rng::new(9)).unwrap();
        // Each pass draws 2k rows in expectation (fewer once the drawn ones
        // sit at distance 0).
        let want = (PARALLEL_ROUNDS * 2 * k) as f64;
        assert!((picked.len() as f64) > 0.6 * want && (picked.len() as f64) < 1.3 * want + 1.0, "{}", picked.len());
        let mut unique = picked.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), picked.len(), "a row drawn twice");
        // Weights: how many rows are nearest each candidate (by plain
        // loops in f64; rows at a near tie may go either way).
        let mut count = vec![0f64; picked.len()];
        for r in 0..n {
            let d = |c: usize| -> f64 {
                let (a, b) = (&x[r * dim..(r + 1) * dim], &x[picked[c] * dim..(picked[c] + 1) * dim]);
                a.iter().zip(b).map(|(p, q)| ((p - q) as f64).powi(2)).sum()
            };
            count[(0..picked.len()).min_by(|&a, &b| d(a).total_cmp(&d(b))).unwrap()] += 1.0;
        }
        assert_eq!(weights.iter().sum::<f64>(), n as f64);
        let off: f64 = weights.iter().zip(&count).map(|(a, b)| (a - b).abs()).sum();
        assert!(off <= 2.0 * (n / 500) as f64, "{off} rows weighed on the wrong candidate");
    }

    #[test]
    fn weighted_seeding_follows_the_weights() {
        // Two tight pairs of rows with weight, and two far rows of weight 0:
        // the centres are the pairs' weighted means, never the far rows.
        let c = [0.0f32, 0.0, 1.0, 0.0, 100.0, 100.0, 101.0, 100.0, -500.0, 0.0, 0.0, 500.0];
        let w = [3.0, 1.0, 1.0, 1.0, 0.0, 0.0];
        for seed in 0..20 {
            let mut got: Vec<[f32; 2]> =
                seed_weighted(&c, &w, 2, 2, &mut Rng::new(seed)).chunks(2).map(|r| [r[0], r[1]]).collect();
            got.sort_by(|a, b| a[0].total_cmp(&b[0]));
            assert_eq!(got, vec![[0.25, 0.0], [100.5, 100.0]], "seed {seed}");
        }
    }

    #[test]
    fn parameters_saved_before_the_choice_read_as_plus_plus() {
        let old = r#"{"n_clusters":5,"max_iterations":10,"tolerance":0.0001,"n_init":1,"seed":3}"#;
        assert_eq!(serde_json::from_str::<KMeansParams>(old).unwrap().init, KMeansInit::PlusPlus);
        let now = serde_json::to_string(&KMeansParams::default()).unwrap();
        assert!(now.contains(r#""init":"k-means||""#), "{now}");
        assert_eq!(serde_json::from_str::<KMeansParams>(&now).unwrap(), KMeansParams::default());
    }

    #[test]
    fn recovers_planted_blobs_exactly() {
        let (k, dim) = (12, 16);
        let (x, truth) = blobs(k, 200, dim, 0.5, 3);
        for init in [KMeansInit::Parallel, KMeansInit::PlusPlus] {
            let c = Cohorts::fit(&x, dim, &KMeansParams { n_clusters: k, n_init: 3, init, ..KMeansParams::default() })
                .unwrap();
            // Same partition up to relabelling: each true blob maps to one label and back.
            let mut map = vec![None; k];
            for (i, &t) in truth.iter().enumerate() {
                let l = c.labels()[i];
                assert_eq!(*map[t].get_or_insert(l), l, "blob {t} split");
            }
            let mut seen: Vec<u32> = map.iter().map(|m| m.unwrap()).collect();
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), k, "two blobs merged");
            assert_eq!(c.sizes(), vec![200; k]);
            assert_eq!(c.predict(&x[..dim]), c.labels()[0]);
        }
    }

    #[test]
    fn more_inits_never_worse_and_seed_repeats() {
        let (x, _) = blobs(8, 50, 4, 4.0, 9);
        let p1 = KMeansParams { n_clusters: 8, n_init: 1, seed: 5, ..KMeansParams::default() };
        let a = Cohorts::fit(&x, 4, &p1).unwrap();
        let b = Cohorts::fit(&x, 4, &p1).unwrap();
        assert_eq!(a, b);
        let p5 = KMeansParams { n_init: 5, ..p1 };
        assert!(Cohorts::fit(&x, 4, &p5).unwrap().inertia <= a.inertia + 1e-6);
    }

    #[test]
    fn mean_variance_is_the_per_feature_variance() {
        // Columns: [1, 3] (var 1) and [0, 0] (var 0): mean over features 0.5.
        assert!((mean_variance(&[1.0, 0.0, 3.0, 0.0], 2) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn normalized_rows_have_unit_length() {
        let x = normalize_rows(&[3.0, 4.0, 0.0, 0.0], 2);
        assert_eq!(x[..], [0.6, 0.8, 0.0, 0.0]);
    }

    #[test]
    fn duplicate_points_do_not_leave_empty_clusters_and_bad_input_fails() {
        // Three distinct rows, each seven times: k-means|| finds no more
        // than three candidates and falls back to k-means++.
        let x: Vec<f32> = (0..21).flat_map(|i| [(i % 3) as f32, 0.0]).collect();
        for init in [KMeansInit::Parallel, KMeansInit::PlusPlus] {
            let c = Cohorts::fit(&x, 2, &KMeansParams { n_clusters: 3, init, ..KMeansParams::default() }).unwrap();
            assert_eq!((c.inertia, c.sizes()), (0.0, vec![7, 7, 7]), "{init:?}");
        }
        let x = vec![1.0f32; 40];
        let c = Cohorts::fit(&x, 2, &KMeansParams { n_clusters: 3, ..KMeansParams::default() }).unwrap();
        assert_eq!(c.labels().len(), 20);
        assert!(Cohorts::fit(&x, 2, &KMeansParams { n_clusters: 21, ..KMeansParams::default() }).is_err());
        assert!(Cohorts::fit(&[1.0, f32::NAN], 1, &KMeansParams { n_clusters: 1, ..KMeansParams::default() }).is_err());
        assert!(Cohorts::fit(&x, 3, &KMeansParams::default()).is_err());
    }
}
