//! End-to-end tests of the `cohortcast` binary on small generated data. One
//! harness: every test runs the real binary in a fresh temporary folder.

mod cluster;
mod s3;
mod serve;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cohortcast(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cohortcast")).args(args).output().expect("the binary runs")
}

fn ok(args: &[&str]) -> Output {
    let out = cohortcast(args);
    assert!(
        out.status.success(),
        "cohortcast {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `cohortcast run` of local data into `out` with the small model.
fn run_small(data: &Path, out: &Path) -> Output {
    let mut args = vec!["run", "--data", s(data), "--out", s(out)];
    args.extend_from_slice(MODEL);
    ok(&args)
}

/// cohorts.csv, pushes.csv, ctr.csv, ctr_by_policy.csv and cohort_hours.csv of two
/// output folders are equal byte for byte.
fn same_outputs(a: &Path, b: &Path, what: &str) {
    for f in ["cohorts.csv", "pushes.csv", "ctr.csv", "ctr_by_policy.csv", "cohort_hours.csv"] {
        assert_eq!(
            std::fs::read_to_string(a.join(f)).unwrap(),
            std::fs::read_to_string(b.join(f)).unwrap(),
            "{f} differs {what}"
        );
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Small generated data with truth: 4000 users, 40 notifications.
fn synth(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    ok(&[
        "synth",
        "--out",
        s(&data),
        "--users",
        "4000",
        "--artists",
        "400",
        "--songs",
        "6000",
        "--notifications",
        "40",
        "--seed",
        "7",
    ]);
    data
}

const MODEL: &[&str] = &["--cohorts", "20", "--factors", "32", "--iterations", "10"];

fn summary(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

fn policy<'a>(sum: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    sum["ctr"].as_array().unwrap().iter().find(|r| r["policy"] == name).unwrap_or_else(|| panic!("no {name} in {sum}"))
}

fn no_temporary_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp-"), "temporary file left: {}", e.path().display());
        if e.path().is_dir() {
            no_temporary_files(&e.path());
        }
    }
}

#[test]
fn run_writes_every_output_and_the_default_policy_beats_the_baselines() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path());
    let out = dir.path().join("out");
    let o = run_small(&data, &out);
    let table = String::from_utf8_lossy(&o.stdout);
    for p in ["expected-ctr", "top-artist", "best-single", "random", "oracle"] {
        assert!(table.contains(p), "table lacks {p}:\n{table}");
    }

    // The file contract.
    let users = std::fs::read_to_string(data.join("truth/users.csv")).unwrap().lines().count();
    let cohorts = std::fs::read_to_string(out.join("cohorts.csv")).unwrap();
    assert_eq!(cohorts.lines().next(), Some("user_id,cohort"));
    let sum = summary(&out);
    let modeled = sum["users"].as_u64().unwrap() as usize;
    assert!(modeled + 5 >= users && modeled <= users, "{modeled} of {users} users modeled");
    assert_eq!(cohorts.lines().count(), modeled + 1);
    let pushes = std::fs::read_to_string(out.join("pushes.csv")).unwrap();
    assert_eq!(pushes.lines().next(), Some("notification_id,user_id"));
    assert_eq!(pushes.lines().count(), modeled + 1, "every user pushed exactly once");
    let mut listed = 0;
    for e in std::fs::read_dir(out.join("notifications")).unwrap() {
        listed += std::fs::read_to_string(e.unwrap().path()).unwrap().lines().count();
    }
    assert_eq!(listed, modeled, "per-notification lists hold every push");
    let ctr = std::fs::read_to_string(out.join("ctr.csv")).unwrap();
    assert_eq!(ctr.lines().next(), Some("notification_id,cohorts,users_pushed,users_clicked,ctr"));
    for f in [
        "params.json",
        "users.csv",
        "artists.csv",
        "user_factors.npy",
        "artist_factors.npy",
        "centroids.npy",
        "cohorts.npy",
    ] {
        assert!(out.join("model").join(f).exists(), "model/{f} missing");
    }
    no_temporary_files(&out);

    // Ingest counted the generator's malformed lines, by reason.
    let synth_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("truth/synth.json")).unwrap()).unwrap();
    let rejected = &sum["inputs"]["inputs"]["clickstream"]["rejected"];
    for (code, n) in synth_json["stats"]["malformed"].as_object().unwrap() {
        assert_eq!(rejected[code], *n, "{code}");
    }
    assert_eq!(sum["inputs"]["plays"], synth_json["stats"]["plays"]);
    assert_eq!(sum["inputs"]["plays_unknown_song"], synth_json["stats"]["unknown_song_plays"]);

    // CTR: the default policy against every baseline, on the same click log.
    let ours = policy(&sum, "expected-ctr");
    let ctr_of = |p: &serde_json::Value| p["overall_ctr"].as_f64().unwrap();
    let clicks_of = |p: &serde_json::Value| p["clicks"].as_u64().unwrap();
    assert!(ctr_of(ours) > 2.0 * ctr_of(policy(&sum, "random")), "{sum}");
    assert!(ctr_of(ours) > 1.3 * ctr_of(policy(&sum, "best-single")), "{sum}");
    let top = policy(&sum, "top-artist");
    assert!(top["users_not_pushed"].as_u64().unwrap() > 0);
    // The top-artist rule only pushes cohorts whose top artist has a
    // notification; over all users the default policy earns more clicks,
    // and on the very users the rule pushed it is at least as good.
    assert!(clicks_of(ours) as f64 > 1.15 * clicks_of(top) as f64, "{sum}");
    let matched = policy(&sum, "expected-ctr@top-artist-users");
    assert_eq!(matched["pushes"], top["pushes"]);
    let exp = |p: &serde_json::Value| p["expected_ctr"].as_f64().unwrap();
    assert!(exp(matched) >= exp(top) - 0.005, "matched {} vs top-artist {}", exp(matched), exp(top));
    // And it gets a real share of the per-user oracle.
    assert!(exp(ours) > 0.5 * exp(policy(&sum, "oracle")), "{sum}");

    // The expected CTRs, recomputed here from the truth's own files: the
    // mean true click probability over pushes.csv, and over each modeled
    // user's most likely notification for the oracle.
    let (probs, cols) = npy_f32(&data.join("truth/click_probability.npy"));
    let lines = |f: &str| std::fs::read_to_string(data.join("truth").join(f)).unwrap();
    let (tusers, tnotes) = (lines("users.csv"), lines("notifications.csv"));
    let row_of: HashMap<&str, usize> = tusers.lines().enumerate().map(|(i, u)| (u, i)).collect();
    let col_of: HashMap<&str, usize> = tnotes.lines().enumerate().map(|(i, n)| (n, i)).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let pushed: Vec<f64> = pushes
        .lines()
        .skip(1)
        .map(|l| {
            let (n, u) = l.split_once(',').unwrap();
            probs[row_of[u] * cols + col_of[n]] as f64
        })
        .collect();
    assert!((mean(&pushed) - exp(ours)).abs() < 1e-9, "{} vs {}", mean(&pushed), exp(ours));
    let best: Vec<f64> = cohorts
        .lines()
        .skip(1)
        .map(|l| {
            let r = row_of[l.split_once(',').unwrap().0];
            probs[r * cols..(r + 1) * cols].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64
        })
        .collect();
    let oracle = exp(policy(&sum, "oracle"));
    assert!((mean(&best) - oracle).abs() < 1e-9, "{} vs {oracle}", mean(&best));
}

/// A 2-D little-endian `<f4` `.npy`, read here without the crate's reader:
/// the values and the number of columns.
fn npy_f32(path: &Path) -> (Vec<f32>, usize) {
    let b = std::fs::read(path).unwrap();
    let header_len = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + header_len]).unwrap();
    assert!(header.contains("'<f4'"), "{header}");
    let shape = &header[header.find("'shape': (").unwrap() + 10..];
    let cols: usize = shape[..shape.find(')').unwrap()].split(',').nth(1).unwrap().trim().parse().unwrap();
    let values = b[10 + header_len..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    (values, cols)
}

#[test]
fn stages_on_their_own_and_a_spilling_ingest_reproduce_the_whole_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path());
    let (whole, staged) = (dir.path().join("whole"), dir.path().join("staged"));
    run_small(&data, &whole);
    // With 2 MiB the play counts must spill to disk and be summed back:
    // the outputs must not change (1 MiB is too little for DataFusion to
    // number the artists). The pool leaves room for one partition of its
    // minimum share, whatever the machine's cores.
    ok(&["ingest", "--data", s(&data), "--out", s(&staged), "--ingest-memory-mb", "2", "--ingest-partitions", "8"]);
    let mut args = vec!["train", "--out", s(&staged)];
    args.extend_from_slice(MODEL);
    ok(&args);
    ok(&["target", "--out", s(&staged)]);
    ok(&["evaluate", "--out", s(&staged), "--truth", s(&data.join("truth"))]);
    same_outputs(&whole, &staged, "between `run` and the stages");
    let (a, b) = (summary(&whole), summary(&staged));
    assert_eq!(a["ctr"][0], b["ctr"][0]);
    let (ea, eb) = (&a["inputs"]["engine"], &b["inputs"]["engine"]);
    assert_eq!(ea["spill_files"], 0, "the default pool holds the small data in memory: {ea}");
    assert!(eb["spill_files"].as_u64().unwrap() > 0 && eb["spilled_bytes"].as_u64().unwrap() > 0, "{eb}");
    assert_eq!(eb["partitions"], 1, "2 MiB is room for one partition: {eb}");
    // Too little memory for any step is a clear error, not a crash.
    let out =
        cohortcast(&["ingest", "--data", s(&data), "--out", s(&dir.path().join("tiny")), "--ingest-memory-mb", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("raise --ingest-memory-mb"));
}

#[test]
fn the_wrong_file_is_refused_before_any_output() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path());
    let out = dir.path().join("out");
    // The metadata passed as the clickstream.
    let o = cohortcast(&[
        "run",
        "--clickstream",
        s(&data.join("metadata")),
        "--metadata",
        s(&data.join("metadata")),
        "--notification-actor",
        s(&data.join("notification_actor")),
        "--out",
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("clickstream") && err.contains("part-00000.csv") && err.contains("does not look like"),
        "{err}"
    );
    assert!(err.contains("line 1"), "{err}");
    assert!(!out.exists(), "no output on a refused input");

    let o = cohortcast(&["run", "--data", s(&dir.path().join("nope")), "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not a folder"));

    let o = cohortcast(&["run", "--data", s(&data), "--out", s(&out), "--factors", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("factors must be at least 1"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A time zone by name is not an offset; the error says what to give.
    for (bad, says) in [("IST", "is not of the form +HH:MM"), ("+15:00", "out of range")] {
        let o = cohortcast(&["ingest", "--data", s(&data), "--out", s(&out), "--utc-offset", bad]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("--utc-offset") && err.contains(&format!("`{bad}`")) && err.contains(says), "{err}");
    }
    assert!(!out.exists(), "no output on refused arguments");
}

#[test]
fn synth_is_repeatable_and_seed_dependent() {
    let dir = tempfile::tempdir().unwrap();
    let gen = |name: &str, seed: &str| {
        let d = dir.path().join(name);
        ok(&[
            "synth",
            "--out",
            s(&d),
            "--users",
            "300",
            "--artists",
            "60",
            "--songs",
            "500",
            "--notifications",
            "10",
            "--seed",
            seed,
        ]);
        std::fs::read(d.join("clickstream/part-00000.csv")).unwrap()
    };
    let (a, b, c) = (gen("a", "1"), gen("b", "1"), gen("c", "2"));
    assert_eq!(a, b);
    assert_ne!(a, c);
}
