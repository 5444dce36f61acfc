//! Research harness: compares model and cohort variants on a `demo` output
//! folder by expected CTR against the generator's truth.
//! `cargo run --release --example explore -- OUT_DIR`

use std::collections::HashMap;
use std::path::Path;

use cohortcast_core::als::{AlsModel, AlsParams};
use cohortcast_core::confidence::Weighting;
use cohortcast_core::kmeans::{normalize_rows, Cohorts, KMeansParams};
use cohortcast_core::linalg::matmul_t;
use cohortcast_data::files::{read_lines, read_npy_f32};
use cohortcast_data::stages::load_ingested;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = Path::new(&args[1]);
    let ing = load_ingested(&out.join("ingest")).unwrap();
    let notes: Vec<Vec<u32>> = ing
        .notifications
        .iter()
        .map(|n| n.artists.iter().filter_map(|a| ing.artists.binary_search(a).ok().map(|i| i as u32)).collect())
        .collect();
    let tdir = out.join("data/truth");
    let (probs, _, cols) = read_npy_f32(&tdir.join("click_probability.npy")).unwrap();
    let tusers = read_lines(&tdir.join("users.csv"), None).unwrap();
    let tnotes = read_lines(&tdir.join("notifications.csv"), None).unwrap();
    let urow: HashMap<&str, usize> = tusers.iter().enumerate().map(|(i, u)| (u.as_str(), i)).collect();
    let nn = notes.len();
    let users = ing.users.len();
    let mut truth = vec![0f32; users * nn];
    for (u, id) in ing.users.iter().enumerate() {
        let r = urow[id.as_str()];
        for (n, note) in ing.notifications.iter().enumerate() {
            let c = tnotes.iter().position(|t| *t == note.id).unwrap();
            truth[u * nn + n] = probs[r * cols + c];
        }
    }
    let oracle: f64 =
        truth.chunks(nn).map(|r| r.iter().cloned().fold(0f32, f32::max) as f64).sum::<f64>() / users as f64;
    println!("oracle {oracle:.4}");
    {
        let k = 100;
        let c = Cohorts::fit(&truth, nn, &KMeansParams { n_clusters: k, ..KMeansParams::default() }).unwrap();
        let mut st = vec![0f64; k * nn];
        for u in 0..users {
            let l = c.labels()[u] as usize;
            for n in 0..nn {
                st[l * nn + n] += truth[u * nn + n] as f64;
            }
        }
        let co: f64 = (0..k).map(|l| (0..nn).map(|n| st[l * nn + n]).fold(0.0, f64::max)).sum::<f64>() / users as f64;
        println!("k-means on the truth rows, best per cohort: {:.1}% of oracle", 100.0 * co / oracle);
    }
    let mut arts: Vec<u32> = notes.iter().flatten().copied().collect();
    arts.sort();
    arts.dedup();
    let configs: Vec<(usize, f32, f32, Weighting)> = args[2..]
        .iter()
        .map(|s| {
            let p: Vec<&str> = s.split(':').collect();
            (p[0].parse().unwrap(), p[1].parse().unwrap(), p[2].parse().unwrap(), Weighting::parse(p[3]).unwrap())
        })
        .collect();
    for (f, reg, alpha, w) in configs {
        let t = std::time::Instant::now();
        let params = AlsParams { factors: f, regularization: reg, alpha, weighting: w, ..AlsParams::default() };
        let m = AlsModel::fit(&ing.plays, &params).unwrap();
        let ya: Vec<f32> = arts.iter().flat_map(|&a| m.item(a as usize).to_vec()).collect();
        let pref = matmul_t(m.user_factors(), &ya, users, f, arts.len());
        for (tname, gamma) in [("g1", 1.0f32)] {
            let mut z = vec![0f32; users * nn];
            for u in 0..users {
                for (n, note) in notes.iter().enumerate() {
                    z[u * nn + n] = note
                        .iter()
                        .map(|a| pref[u * arts.len() + arts.binary_search(a).unwrap()].clamp(0.0, 1.0).powf(gamma))
                        .fold(0.0, f32::max);
                }
            }
            let per_user: f64 = (0..users)
                .map(|u| {
                    let b = (0..nn).max_by(|&a, &b| z[u * nn + a].total_cmp(&z[u * nn + b])).unwrap();
                    truth[u * nn + b] as f64
                })
                .sum::<f64>()
                / users as f64;
            let mut line = format!(
                "f={f} reg={reg} alpha={alpha} {} {tname}: per-user {:.1}%",
                w.name(),
                100.0 * per_user / oracle
            );
            let k = 100;
            let variants: Vec<(&str, Vec<f32>, usize)> =
                vec![("unit-factors", normalize_rows(m.user_factors(), f).to_vec(), f)];
            for (vname, x, d) in variants {
                let c = Cohorts::fit(&x, d, &KMeansParams { n_clusters: k, ..KMeansParams::default() }).unwrap();
                let mut s = vec![0f64; k * nn];
                let mut st = vec![0f64; k * nn];
                for u in 0..users {
                    let l = c.labels()[u] as usize;
                    for n in 0..nn {
                        s[l * nn + n] += z[u * nn + n] as f64;
                        st[l * nn + n] += truth[u * nn + n] as f64;
                    }
                }
                let best: Vec<usize> =
                    (0..k).map(|l| (0..nn).max_by(|&a, &b| s[l * nn + a].total_cmp(&s[l * nn + b])).unwrap()).collect();
                let e: f64 =
                    (0..users).map(|u| truth[u * nn + best[c.labels()[u] as usize]] as f64).sum::<f64>() / users as f64;
                // Raw (unclamped) mean prediction, and observed-share mix.
                for (cname, mix) in [("raw", 0.0f32), ("clamp+3share", 3.0), ("clamp+1share", 1.0)] {
                    let mut s2 = vec![0f64; k * nn];
                    for u in 0..users {
                        let l = c.labels()[u] as usize;
                        let (idx, val) = ing.plays.row(u);
                        let tot: f32 = val.iter().sum();
                        for n in 0..nn {
                            let v = notes[n]
                                .iter()
                                .map(|&a| {
                                    let p = pref[u * arts.len() + arts.binary_search(&a).unwrap()];
                                    if mix == 0.0 {
                                        p
                                    } else {
                                        p.clamp(0.0, 1.0)
                                            + mix * idx.binary_search(&a).map(|q| val[q] / tot).unwrap_or(0.0)
                                    }
                                })
                                .fold(f32::MIN, f32::max);
                            s2[l * nn + n] += v as f64;
                        }
                    }
                    let b2: Vec<usize> = (0..k)
                        .map(|l| (0..nn).max_by(|&a, &b| s2[l * nn + a].total_cmp(&s2[l * nn + b])).unwrap())
                        .collect();
                    let e2: f64 = (0..users).map(|u| truth[u * nn + b2[c.labels()[u] as usize]] as f64).sum::<f64>()
                        / users as f64;
                    line += &format!(" [{cname} {:.1}%]", 100.0 * e2 / oracle);
                }
                let co: f64 =
                    (0..k).map(|l| (0..nn).map(|n| st[l * nn + n]).fold(0.0, f64::max)).sum::<f64>() / users as f64;
                let mut sizes = c.sizes();
                sizes.sort();
                line += &format!(
                    "\n   {vname}: {:.1}% (cohort-oracle {:.1}%) sizes min {} max {}",
                    100.0 * e / oracle,
                    100.0 * co / oracle,
                    sizes[0],
                    sizes[k - 1]
                );
            }
            println!("{line} ({:.1?})", t.elapsed());
        }
    }
}
