//! Times k-means alone on a trained model's user factors, as `run` fits it
//! (unit rows, the default parameters unless given).
//!
//! `cargo run --release --example kmfit -- OUT/model/user_factors.npy [k] [repeats] [parallel|plus-plus]`

use std::path::Path;
use std::time::Instant;

use cohortcast_core::kmeans::{normalize_rows, Cohorts, KMeansInit, KMeansParams};
use cohortcast_data::files::read_npy_f32;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (x, _, dim) = read_npy_f32(Path::new(&args[1])).unwrap();
    let k = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(100);
    let repeats = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(1);
    let init = match args.get(4).map(String::as_str) {
        None | Some("parallel") => KMeansInit::Parallel,
        Some("plus-plus") => KMeansInit::PlusPlus,
        Some(other) => panic!("seeding `{other}`: use parallel or plus-plus"),
    };
    let unit = normalize_rows(&x, dim);
    for _ in 0..repeats {
        let t = Instant::now();
        let c = Cohorts::fit(&unit, dim, &KMeansParams { n_clusters: k, init, ..KMeansParams::default() }).unwrap();
        println!(
            "{{\"k\": {k}, \"init\": \"{init:?}\", \"seconds\": {:.3}, \"iterations\": {}, \"inertia\": {:.4}}}",
            t.elapsed().as_secs_f64(),
            c.iterations,
            c.inertia
        );
    }
}
