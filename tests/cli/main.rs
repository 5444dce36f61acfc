//! End-to-end tests of the `cohortcast` binary on small generated data. One
//! harness: every test runs the real binary in a fresh temporary folder.

mod cluster;
mod reliability;
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
    run_small_with(data, out, &[])
}

/// [`run_small`] with more flags.
fn run_small_with(data: &Path, out: &Path, flags: &[&str]) -> Output {
    let mut args = vec!["run", "--data", s(data), "--out", s(out)];
    args.extend_from_slice(flags);
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
    for p in
        ["expected-ctr", "expected-ctr:taste", "expected-ctr:user", "top-artist", "best-single", "random", "oracle"]
    {
        assert!(table.contains(p), "table lacks {p}:\n{table}");
    }

    // The file contract.
    let users = std::fs::read_to_string(data.join("truth/users.csv")).unwrap().lines().count();
    let cohorts = std::fs::read_to_string(out.join("cohorts.csv")).unwrap();
    assert_eq!(cohorts.lines().next(), Some("user_id,cohort,group"));
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
            let r = row_of[l.split(',').next().unwrap()];
            probs[r * cols..(r + 1) * cols].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64
        })
        .collect();
    let oracle = exp(policy(&sum, "oracle"));
    assert!((mean(&best) - oracle).abs() < 1e-9, "{} vs {oracle}", mean(&best));

    // Release groups: at most --cohorts (20) of at least 20 users, each
    // explained in groups.csv, and worth more clicks than taste cohorts;
    // the per-user best bounds them.
    let groups = std::fs::read_to_string(out.join("groups.csv")).unwrap();
    let mut g = groups.lines();
    assert_eq!(g.next(), Some("group,notification_id,users,predicted_score,taste_cohorts,top_artists"));
    let rows: Vec<Vec<&str>> = g.map(|l| l.split(',').collect()).collect();
    assert!(!rows.is_empty() && rows.len() <= 20, "{groups}");
    let sizes: Vec<usize> = rows.iter().map(|r| r[2].parse().unwrap()).collect();
    assert!(sizes.iter().all(|&n| n >= 20), "{groups}");
    assert_eq!(sizes.iter().sum::<usize>(), modeled);
    assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "largest group first: {groups}");
    assert!(rows.iter().all(|r| !r[4].is_empty() && !r[5].is_empty()), "taste cohorts and artists named: {groups}");
    let per_user = policy(&sum, "expected-ctr:user");
    let taste = policy(&sum, "expected-ctr:taste");
    assert!(exp(ours) > exp(taste), "release {} vs taste {}", exp(ours), exp(taste));
    assert!(exp(per_user) >= exp(ours) - 0.002, "user {} vs release {}", exp(per_user), exp(ours));
    // ctr_by_cohort.csv: the same groups, adding up to the plan's totals.
    let by = std::fs::read_to_string(out.join("ctr_by_cohort.csv")).unwrap();
    let mut b = by.lines();
    assert_eq!(b.next(), Some("cohort,users,notification_id,predicted_score,users_clicked,ctr,expected_ctr"));
    let brows: Vec<Vec<&str>> = b.map(|l| l.split(',').collect()).collect();
    assert_eq!(brows.len(), rows.len());
    let total = |i: usize| brows.iter().map(|r| r[i].parse::<u64>().unwrap()).sum::<u64>();
    assert_eq!((total(1), total(4)), (ours["pushes"].as_u64().unwrap(), ours["clicks"].as_u64().unwrap()));
    for (r, gr) in brows.iter().zip(&rows) {
        assert_eq!((r[0], r[1], r[2]), (gr[0], gr[2], gr[1]));
    }
    // CTR at reach: every plan that pushes everyone has all four points,
    // the reach rounds up, and the oracle's best users are its best.
    let at = std::fs::read_to_string(out.join("ctr_at_reach.csv")).unwrap();
    let rows_of = |name: &str| -> Vec<Vec<String>> {
        at.lines()
            .filter(|l| l.split(',').next() == Some(name))
            .map(|l| l.split(',').map(String::from).collect())
            .collect()
    };
    let ten = modeled.div_ceil(10).to_string();
    for name in ["expected-ctr", "expected-ctr:taste", "expected-ctr:user", "random", "oracle"] {
        let r = rows_of(name);
        assert_eq!(r.len(), 4, "{name}: {at}");
        assert_eq!(r[0][2], ten, "{name}");
    }
    let o = rows_of("oracle");
    let e = |r: &Vec<String>| r[5].parse::<f64>().unwrap();
    assert!(e(&o[0]) > e(&o[1]) && e(&o[1]) > e(&o[2]) && e(&o[2]) > e(&o[3]), "{at}");
    // The top-artist rule at its own reach, below everyone.
    let t = rows_of("top-artist");
    assert_eq!(t.last().unwrap()[2], top["pushes"].to_string());
    let ours_at = rows_of("expected-ctr");
    assert!(e(&ours_at[1]) > e(&ours_at[3]), "the best-scored quarter clicks more: {at}");
    assert!(table.contains("CTR at reach"), "{table}");
}

#[test]
fn groupings_and_reach_are_chosen_by_flags_and_read_back_by_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path());
    let out = dir.path().join("out");
    run_small_with(&data, &out, &["--grouping", "taste"]);
    let sum = summary(&out);
    assert_eq!(sum["ctr"][0]["policy"], "expected-ctr:taste");
    assert_eq!(sum["targeting"]["grouping"], "taste");
    // Taste grouping pushes per cohort: a user's group is their cohort.
    let cohorts = std::fs::read_to_string(out.join("cohorts.csv")).unwrap();
    assert!(cohorts.lines().skip(1).all(|l| {
        let f: Vec<&str> = l.split(',').collect();
        f[1] == f[2]
    }));
    let release_exp = policy(&sum, "expected-ctr")["expected_ctr"].as_f64().unwrap();

    // A quarter of the users, by the default grouping, from the stages.
    ok(&["target", "--out", s(&out), "--reach", "0.25"]);
    let users = cohorts.lines().count() - 1;
    let pushes = std::fs::read_to_string(out.join("pushes.csv")).unwrap();
    assert_eq!(pushes.lines().count() - 1, users.div_ceil(4));
    let cohorts = std::fs::read_to_string(out.join("cohorts.csv")).unwrap();
    assert_eq!(cohorts.lines().filter(|l| l.ends_with(',')).count(), users - users.div_ceil(4));
    ok(&["evaluate", "--out", s(&out), "--truth", s(&data.join("truth"))]);
    let sum = summary(&out);
    let chosen = &sum["ctr"][0];
    assert_eq!(chosen["policy"], "expected-ctr");
    assert_eq!(chosen["users_not_pushed"].as_u64().unwrap() as usize, users - users.div_ceil(4));
    assert!(chosen["expected_ctr"].as_f64().unwrap() > release_exp, "the best quarter clicks more: {sum}");
    let by = std::fs::read_to_string(out.join("ctr_by_cohort.csv")).unwrap();
    let pushed: usize = by.lines().skip(1).map(|l| l.split(',').nth(1).unwrap().parse::<usize>().unwrap()).sum();
    assert_eq!(pushed, users.div_ceil(4));
    // A floor on the score leaves out exactly the users under it.
    ok(&["target", "--out", s(&out), "--min-expected-ctr", "1.2"]);
    let groups = std::fs::read_to_string(out.join("groups.csv")).unwrap();
    let pushed = std::fs::read_to_string(out.join("pushes.csv")).unwrap().lines().count() - 1;
    assert!(pushed > 0 && pushed < users, "{pushed} of {users}");
    assert!(groups.lines().skip(1).all(|l| l.split(',').nth(3).unwrap().parse::<f64>().unwrap() >= 1.2), "{groups}");
    // Per user: no groups file limit, every user their own best.
    ok(&["target", "--out", s(&out), "--grouping", "user"]);
    assert_eq!(std::fs::read_to_string(out.join("target.txt")).unwrap().trim(), "expected-ctr:user");
    // Bad values are refused before any work.
    for (flag, v, says) in [
        ("--reach", "0", "--reach"),
        ("--grouping", "cohort", "cohort"),
        ("--min-cohort-size", "0", "min-cohort-size"),
        ("--min-expected-ctr", "nan", "min-expected-ctr"),
    ] {
        let o = cohortcast(&["target", "--out", s(&out), flag, v]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(says), "{err}");
    }
    // An unknown policy in target.txt is an error, not a silent default.
    std::fs::write(out.join("target.txt"), "nearest-star\n").unwrap();
    let o = cohortcast(&["evaluate", "--out", s(&out)]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown policy `nearest-star`"));
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

#[test]
fn demo_reports_its_generated_inputs_where_they_end_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let o = ok(&["demo", "--out", out.to_str().unwrap(), "--users", "3000", "--cohorts", "8", "--seed", "5"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("outputs in"));
    let printed = String::from_utf8_lossy(&o.stderr);
    // The printed reject examples name the files where they end up too.
    assert!(printed.contains(&format!("  {}/clickstream/", out.join("data").display())), "{printed}");
    assert!(!printed.contains(".cohortcast-new-"), "{printed}");
    let report = std::fs::read_to_string(out.join("ingest/report.json")).unwrap();
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
    assert!(!report.contains(".cohortcast-new-") && !summary.contains(".cohortcast-new-"), "{summary}");
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    let files: Vec<&str> = v["inputs"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|i| i["examples"].as_array().unwrap())
        .map(|e| e["file"].as_str().unwrap())
        .collect();
    // The generator writes some bad rows, so there are examples to name.
    assert!(!files.is_empty(), "{report}");
    for f in files {
        assert!(Path::new(f).starts_with(out.join("data")) && Path::new(f).exists(), "{f}");
    }
}
