//! Kernel timings for BENCHMARKS.md: one ALS iteration and one k-means
//! iteration, on a generated matrix written to `.npy` so that
//! `bench/kernels.py` times `implicit` and scikit-learn on the very same
//! data. Run through `bench/kernels.sh`.
//!
//! `cargo run --release --example kernels -- OUT_DIR [users items nnz factors]`

use std::path::Path;
use std::time::Instant;

use cohortcast_core::als::{AlsModel, AlsParams};
use cohortcast_core::confidence::{confidence, Weighting};
use cohortcast_core::kmeans::{Cohorts, KMeansParams};
use cohortcast_core::sparse::benchmark_plays;
use cohortcast_data::files::{write_npy_f32, write_npy_u32};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = Path::new(&args[1]);
    let arg = |i: usize, d: usize| args.get(i).map(|s| s.parse().unwrap()).unwrap_or(d);
    let (users, items, nnz, f) = (arg(2, 100_000), arg(3, 20_000), arg(4, 5_000_000), arg(5, 64));
    // Heavy-tailed user activity, Zipf item popularity, repeat counts.
    let plays = benchmark_plays(users, items, nnz, 1);
    let params = AlsParams { factors: f, iterations: 6, ..AlsParams::default() };
    let conf = confidence(&plays, Weighting::Log, params.alpha);
    std::fs::create_dir_all(out).unwrap();
    let (mut r, mut c) = (Vec::new(), Vec::new());
    for u in 0..users {
        for &i in conf.row(u).0 {
            r.push(u as u32);
            c.push(i);
        }
    }
    write_npy_u32(&out.join("rows.npy"), &r).unwrap();
    write_npy_u32(&out.join("cols.npy"), &c).unwrap();
    write_npy_f32(&out.join("conf.npy"), conf.values(), conf.nnz(), 1).unwrap();

    // ALS: per-iteration wall time (the first iteration also pays for the
    // confidence, transpose and init, so it is left out of the median).
    let mut stamps = vec![Instant::now()];
    let model = AlsModel::fit_with_progress(&plays, &params, false, |_| stamps.push(Instant::now())).unwrap();
    let per_iter: Vec<f64> = stamps.windows(2).skip(1).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
    let als_s = median(per_iter.clone());
    let flops = 2.0 * (f * f) as f64 * (users + items) as f64 * (params.cg_steps + 2) as f64
        + 8.0 * f as f64 * plays.nnz() as f64 * (params.cg_steps + 1) as f64;
    println!(
        "{{\"kernel\": \"als\", \"impl\": \"cohortcast\", \"users\": {users}, \"items\": {items}, \"nnz\": {}, \"factors\": {f}, \"cg_steps\": {}, \"seconds_per_iteration\": {als_s:.4}, \"all\": {per_iter:?}, \"gflop_per_iteration\": {:.2}}}",
        plays.nnz(),
        params.cg_steps,
        flops / 1e9
    );

    // k-means on the fitted user factors, from the first k rows as centres.
    let x = model.user_factors();
    write_npy_f32(&out.join("factors.npy"), x, users, f).unwrap();
    for k in [20, 100, 300] {
        let mut times = Vec::new();
        for _ in 0..3 {
            let p = KMeansParams { n_clusters: k, max_iterations: 20, tolerance: 0.0, ..KMeansParams::default() };
            let t = Instant::now();
            let c = Cohorts::fit_from(x, f, x[..k * f].to_vec(), &p).unwrap();
            times.push(t.elapsed().as_secs_f64() / c.iterations.max(1) as f64);
        }
        println!(
            "{{\"kernel\": \"kmeans\", \"impl\": \"cohortcast\", \"rows\": {users}, \"dim\": {f}, \"k\": {k}, \"seconds_per_iteration\": {:.5}}}",
            median(times)
        );
    }
}
