//! Research harness: taste cohorts for releases nobody has seen yet. On a
//! `demo` output folder, builds cohorts without looking at the batch (from
//! the factors, or from predicted affinity to the most played artists) and
//! measures the taste policy's expected CTR against the per-user oracle.
//! Then the hold-out protocol: the even-numbered notifications are the
//! past, the odd ones the batch; cohorts may use the past (predicted
//! affinity to it) but never the batch, which alone is pushed and scored.
//! Also: factors moved toward the artists each user already plays.
//! `cargo run --release --example taste -- OUT_DIR [M ...]`

use std::collections::HashMap;
use std::path::Path;

use cohortcast_core::kmeans::{normalize_rows, Cohorts, KMeansParams};
use cohortcast_core::scores::Scorer;
use cohortcast_core::targeting::{expected_ctr_plan, Notification, TargetingParams};
use cohortcast_data::files::{read_lines, read_npy_f32};
use cohortcast_data::stages::{load_ingested, load_model};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = Path::new(&args[1]);
    let ing = load_ingested(&out.join("ingest")).unwrap();
    let model = load_model(&out.join("model")).unwrap();
    let notes: Vec<Notification> = ing
        .notifications
        .iter()
        .map(|n| Notification {
            id: n.id.clone(),
            artists: n.artists.iter().filter_map(|a| model.artists.binary_search(a).ok().map(|i| i as u32)).collect(),
        })
        .collect();
    let tdir = out.join("data/truth");
    let (probs, _, cols) = read_npy_f32(&tdir.join("click_probability.npy")).unwrap();
    let tusers = read_lines(&tdir.join("users.csv"), None).unwrap();
    let tnotes = read_lines(&tdir.join("notifications.csv"), None).unwrap();
    let urow: HashMap<&str, usize> = tusers.iter().enumerate().map(|(i, u)| (u.as_str(), i)).collect();
    let nn = notes.len();
    let users = model.users.len();
    let ncol: Vec<usize> = notes.iter().map(|n| tnotes.iter().position(|t| *t == n.id).unwrap()).collect();
    let truth = |u: usize, n: usize| probs[urow[model.users[u].as_str()] * cols + ncol[n]] as f64;
    let oracle: f64 = (0..users).map(|u| (0..nn).map(|n| truth(u, n)).fold(0.0, f64::max)).sum::<f64>() / users as f64;
    let tp = TargetingParams::default();
    let k = model.cohorts.k();
    let eval = |labels: &[u32], name: &str| {
        let plan = expected_ctr_plan(&model.als, &ing.plays, labels, k, &notes, &tp);
        let e: f64 = (0..users).map(|u| truth(u, plan.user_push[u].unwrap() as usize)).sum::<f64>() / users as f64;
        println!("{name:<40} {:.1}% of oracle", 100.0 * e / oracle);
    };
    eval(&model.labels, "k-means on unit factors (today)");
    // Artists by plays.
    let mut plays = vec![0f64; model.artists.len()];
    for u in 0..ing.plays.rows() {
        let (idx, val) = ing.plays.row(u);
        for (&a, &v) in idx.iter().zip(val) {
            plays[a as usize] += v as f64;
        }
    }
    let mut order: Vec<usize> = (0..plays.len()).collect();
    order.sort_by(|&a, &b| plays[b].total_cmp(&plays[a]));
    // Hold-out: cohorts from the past notifications, pushed the batch.
    let past: Vec<Notification> = notes.iter().step_by(2).cloned().collect();
    let batch: Vec<usize> = (1..nn).step_by(2).collect();
    let batch_notes: Vec<Notification> = batch.iter().map(|&n| notes[n].clone()).collect();
    let held_oracle: f64 =
        (0..users).map(|u| batch.iter().map(|&n| truth(u, n)).fold(0.0, f64::max)).sum::<f64>() / users as f64;
    let held = |labels: &[u32], name: &str| {
        let plan = expected_ctr_plan(&model.als, &ing.plays, labels, k, &batch_notes, &tp);
        let e: f64 =
            (0..users).map(|u| truth(u, batch[plan.user_push[u].unwrap() as usize])).sum::<f64>() / users as f64;
        println!("hold-out: {name:<40} {:.1}% of the batch's oracle", 100.0 * e / held_oracle);
    };
    held(&model.labels, "k-means on unit factors (today)");
    let raw = Cohorts::fit(
        model.als.user_factors(),
        model.als.factors(),
        &KMeansParams { n_clusters: k, ..KMeansParams::default() },
    )
    .unwrap();
    held(raw.labels(), "k-means on raw factors");
    // Factors moved toward the artists each user already plays, so that the
    // cohorts see both terms of the score.
    let f = model.als.factors();
    for beta in [0.5f32, 1.0, 2.0, 4.0] {
        let mut z = model.als.user_factors().to_vec();
        for u in 0..users {
            let (idx, val) = ing.plays.row(u);
            let total: f32 = val.iter().sum();
            let zu = &mut z[u * f..(u + 1) * f];
            for (&a, &v) in idx.iter().zip(val) {
                let y = model.als.item(a as usize);
                let n2: f32 = y.iter().map(|t| t * t).sum::<f32>().max(1e-6);
                let w = beta * v / total.max(1e-6) / n2;
                zu.iter_mut().zip(y).for_each(|(p, q)| *p += w * q);
            }
        }
        let z = normalize_rows(&z, f).to_vec();
        let c = Cohorts::fit(&z, f, &KMeansParams { n_clusters: k, ..KMeansParams::default() }).unwrap();
        eval(c.labels(), &format!("unit factors + history, beta {beta}"));
        held(c.labels(), &format!("unit factors + history, beta {beta}"));
    }
    for hw in [0.0f32, 1.0, 4.0] {
        let sc = Scorer::new(&model.als, &ing.plays, &past, &TargetingParams { history_weight: hw });
        let z: Vec<f32> = sc.visit(Vec::new, |v: &mut Vec<f32>, _, s| v.extend_from_slice(s)).concat();
        for unit in [false, true] {
            let d = past.len();
            let x: Vec<f32> = if unit { normalize_rows(&z, d).to_vec() } else { z.clone() };
            let c = Cohorts::fit(&x, d, &KMeansParams { n_clusters: k, ..KMeansParams::default() }).unwrap();
            held(c.labels(), &format!("affinity to the past, hw {hw}, unit {unit}"));
        }
    }
    for m in args[2..].iter().map(|s| s.parse::<usize>().unwrap()) {
        let arts: Vec<Notification> =
            order[..m].iter().map(|&a| Notification { id: String::new(), artists: vec![a as u32] }).collect();
        for hw in [0.0f32, 4.0] {
            let sc = Scorer::new(&model.als, &ing.plays, &arts, &TargetingParams { history_weight: hw });
            let z: Vec<f32> = sc.visit(Vec::new, |v: &mut Vec<f32>, _, s| v.extend_from_slice(s)).concat();
            for unit in [false, true] {
                let x: Vec<f32> = if unit { normalize_rows(&z, m).to_vec() } else { z.clone() };
                let c = Cohorts::fit(&x, m, &KMeansParams { n_clusters: k, ..KMeansParams::default() }).unwrap();
                eval(c.labels(), &format!("affinity to top {m}, hw {hw}, unit {unit}"));
            }
        }
    }
}
