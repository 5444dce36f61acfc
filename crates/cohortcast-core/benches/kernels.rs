//! `cargo bench -p cohortcast-core`: one ALS iteration and one k-means
//! iteration over a few sizes and factor counts, and the two k-means
//! seedings. The side-by-side figures
//! against implicit and scikit-learn come from `bench/kernels.sh`.

use cohortcast_core::als::{AlsModel, AlsParams};
use cohortcast_core::kmeans::{normalize_rows, Cohorts, KMeansInit, KMeansParams};
use cohortcast_core::rng::Rng;
use cohortcast_core::sparse::benchmark_plays;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn als(c: &mut Criterion) {
    let mut g = c.benchmark_group("als_iteration");
    g.sample_size(10);
    for (users, items, nnz) in [(20_000, 5_000, 500_000), (100_000, 20_000, 5_000_000)] {
        let m = benchmark_plays(users, items, nnz, 1);
        for factors in [32, 64, 128] {
            let p = AlsParams { factors, iterations: 1, ..AlsParams::default() };
            g.bench_with_input(BenchmarkId::new(format!("{users}x{items}"), factors), &p, |b, p| {
                b.iter(|| AlsModel::fit_with_progress(&m, p, false, |_| {}).unwrap())
            });
        }
    }
    g.finish();
}

fn kmeans(c: &mut Criterion) {
    let mut g = c.benchmark_group("kmeans_iteration");
    g.sample_size(10);
    let mut rng = Rng::new(2);
    for (rows, dim) in [(100_000, 32), (100_000, 64)] {
        let x: Vec<f32> = (0..rows * dim).map(|_| rng.normal() as f32).collect();
        for k in [20, 100, 300] {
            let p = KMeansParams { n_clusters: k, max_iterations: 1, tolerance: 0.0, ..KMeansParams::default() };
            g.bench_with_input(BenchmarkId::new(format!("{rows}x{dim}"), k), &p, |b, p| {
                b.iter(|| Cohorts::fit_from(&x, dim, x[..k * dim].to_vec(), p).unwrap())
            });
        }
    }
    g.finish();
}

/// Each sample: a seeding, then one Lloyd iteration (and the row norms and
/// the data variance), on unit rows as `run` clusters them.
fn kmeans_seeding(c: &mut Criterion) {
    let mut g = c.benchmark_group("kmeans_seeding");
    g.sample_size(10);
    let mut rng = Rng::new(3);
    let (rows, dim) = (100_000, 64);
    let x: Vec<f32> = (0..rows * dim).map(|_| rng.normal() as f32).collect();
    let unit = normalize_rows(&x, dim);
    for k in [100, 300] {
        for (name, init) in [("k-means||", KMeansInit::Parallel), ("k-means++", KMeansInit::PlusPlus)] {
            let p = KMeansParams { n_clusters: k, max_iterations: 1, init, ..KMeansParams::default() };
            g.bench_with_input(BenchmarkId::new(format!("{rows}x{dim} {name}"), k), &p, |b, p| {
                b.iter(|| Cohorts::fit(&unit, dim, p).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, als, kmeans, kmeans_seeding);
criterion_main!(benches);
