//! All-or-nothing outputs: runs killed at any moment, a second writer, stale
//! outputs, an `--out` that cannot be a folder.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{cohortcast, ok, run_small, run_small_with, s, synth, MODEL};

/// Every file below `dir` (relative path → bytes).
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Whether `now` is exactly the new run's outputs (`new`, timings aside)
/// plus the user's `extra` files.
fn is_new(now: &BTreeMap<String, Vec<u8>>, new: &BTreeMap<String, Vec<u8>>, extra: &[&str]) -> bool {
    let timed = |k: &str| k == "summary.json" || k == "report.html";
    let keys: Vec<&String> = now.keys().filter(|k| !extra.contains(&k.as_str())).collect();
    keys == new.keys().collect::<Vec<_>>() && new.iter().all(|(k, v)| timed(k) || now.get(k) == Some(v))
}

fn spawn_run(data: &Path, out: &Path, seed: &str) -> std::process::Child {
    let mut args = vec!["run", "--data", s(data), "--out", s(out), "--seed", seed];
    args.extend_from_slice(MODEL);
    Command::new(env!("CARGO_BIN_EXE_cohortcast"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_run_killed_at_any_moment_leaves_the_previous_outputs_intact() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path());
    let out = dir.path().join("out");
    run_small(&data, &out);
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let reference = dir.path().join("reference");
    let start = Instant::now();
    run_small_with(&data, &reference, &["--seed", "5"]);
    let full = start.elapsed();
    let new = tree(&reference);
    let mut before = tree(&out);
    let (mut kept, mut swapped) = (0, 0);
    for i in 0..20u32 {
        let mut child = spawn_run(&data, &out, "5");
        std::thread::sleep(full * i / 16);
        let _ = child.kill();
        child.wait().unwrap();
        let now = tree(&out);
        if now == before {
            kept += 1;
        } else {
            assert!(is_new(&now, &new, &["notes.txt"]), "killed at {i}/16 of a run: a mix of old and new outputs");
            assert_eq!(now.get("notes.txt").map(Vec::as_slice), Some(&b"mine"[..]));
            swapped += 1;
            before = now;
        }
    }
    assert!(kept > 0, "no run was killed before its end: {kept} kept, {swapped} swapped");
    // The next run clears whatever the killed ones left beside the folder.
    run_small_with(&data, &out, &["--seed", "5"]);
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("cohortcast-new"))
        .collect();
    assert!(left.is_empty(), "left beside the outputs: {left:?}");
    assert!(is_new(&tree(&out), &new, &["notes.txt"]));
}

#[test]
fn a_second_run_into_the_same_folder_is_refused_while_the_first_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path());
    let out = dir.path().join("out");
    let mut first = spawn_run(&data, &out, "5");
    // Wait until the first run has taken the lock and started staging.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_dir(dir.path())
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().starts_with(".out.cohortcast-new-"))
    {
        assert!(Instant::now() < deadline, "the first run never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let second = cohortcast(&["run", "--data", s(&data), "--out", s(&out)]);
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(err.contains("another cohortcast command") && err.contains(&first.id().to_string()), "{err}");
    assert!(first.wait().unwrap().success());
    assert!(out.join("summary.json").exists());
}

#[test]
fn a_rerun_drops_outputs_it_no_longer_makes_and_a_failed_one_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path());
    let out = dir.path().join("out");
    run_small(&data, &out);
    assert!(out.join("ctr.csv").exists());
    // Without clicks there is no CTR: the earlier model's must not stay.
    let (plays, meta, actor) = (data.join("clickstream"), data.join("metadata"), data.join("notification_actor"));
    let mut args = vec![
        "run",
        "--clickstream",
        s(&plays),
        "--metadata",
        s(&meta),
        "--notification-actor",
        s(&actor),
        "--out",
        s(&out),
    ];
    args.extend_from_slice(MODEL);
    ok(&args);
    for f in ["ctr.csv", "ctr_by_policy.csv", "ctr_at_reach.csv", "ctr_by_cohort.csv"] {
        assert!(!out.join(f).exists(), "{f} of the earlier run kept");
    }
    assert!(out.join("pushes.csv").exists());
    // A run that fails after the ingest leaves no folder behind.
    let fresh = dir.path().join("fresh");
    let o = cohortcast(&["run", "--data", s(&data), "--out", s(&fresh), "--cohorts", "100000"]);
    assert!(!o.status.success());
    assert!(!fresh.exists(), "a failed run left {}", fresh.display());
    let siblings = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(siblings, 4, "data, out and their locks only");
}

#[test]
fn an_out_that_is_a_file_is_refused_before_the_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path());
    let file = dir.path().join("file");
    std::fs::write(&file, "keep me").unwrap();
    let o = cohortcast(&["run", "--data", s(&data), "--out", s(&file)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("is an existing file"), "{err}");
    assert!(!err.contains("ingest"), "refused only after the ingest: {err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    // The current folder cannot be swapped from under the shell.
    let o = Command::new(env!("CARGO_BIN_EXE_cohortcast"))
        .args(["run", "--data", s(&data), "--out", "."])
        .current_dir(&data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("is the current folder"), "{err}");
    assert!(data.join("clickstream").is_dir());
}

/// Copies a folder of plain files.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            copy_dir(&p, &to.join(p.file_name().unwrap()));
        } else {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

fn prepend(file: &Path, head: &[u8]) {
    let mut bytes = head.to_vec();
    bytes.extend(std::fs::read(file).unwrap());
    std::fs::write(file, bytes).unwrap();
}

#[cfg(unix)]
#[test]
fn hostile_inputs_give_the_clean_inputs_result_and_name_what_was_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path());
    let clean = dir.path().join("clean");
    run_small(&data, &clean);
    let hostile = dir.path().join("hostile");
    copy_dir(&data, &hostile);
    let plays = hostile.join("clickstream/part-00000.csv");
    let user = "0123456789abcdef0123456789abcdef";
    let mut head = b"\xEF\xBB\xBFuser_id,timestamp,song_id,date\n".to_vec();
    head.extend_from_slice(format!("{user},1483232144,S").as_bytes());
    head.extend_from_slice(b"\xff1,20170101\n");
    head.extend_from_slice(format!("{user},1483232144,S1,20171301\n{user},1483232144,S1,20170230\n").as_bytes());
    head.extend_from_slice(format!("{user},1483232144,\x1b[31mS1,00000000\n").as_bytes());
    prepend(&plays, &head);
    // A notification's first line behind a byte-order mark, a header.
    prepend(&hostile.join("notification_actor/part-00000.csv"), b"\xEF\xBB\xBFnotification_id,artist_id\n");
    let actor = std::fs::read(hostile.join("notification_actor/part-00000.csv")).unwrap();
    let mut with_bom = b"\xEF\xBB\xBF".to_vec();
    with_bom.extend(actor.iter().skip(3));
    std::fs::write(hostile.join("notification_actor/part-00000.csv"), &with_bom).unwrap();
    // Metadata with a header and quoted fields.
    let meta = hostile.join("metadata/part-00000.csv");
    let text = std::fs::read_to_string(&meta).unwrap();
    let quoted: String = text
        .lines()
        .enumerate()
        .map(|(i, l)| if i % 2 == 0 { format!("\"{}\"\n", l.replace(',', "\",\"")) } else { format!("{l}\n") })
        .collect();
    std::fs::write(&meta, format!("song_id,artist_id\n{quoted}\"S9,x\",A1\n")).unwrap();
    // Links that loop back to the folder.
    std::os::unix::fs::symlink(".", hostile.join("clickstream/loop")).unwrap();
    std::os::unix::fs::symlink("../clickstream", hostile.join("clickstream/part-loop")).unwrap();

    let out = dir.path().join("out");
    let o = run_small(&hostile, &out);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(!stderr.contains('\x1b') && !stdout.contains('\x1b'), "an escape sequence reached the terminal");
    super::same_outputs(&clean, &out, "between the clean and the hostile inputs");
    let (a, b) = (super::summary(&clean), super::summary(&out));
    assert_eq!(a["notifications"], b["notifications"]);
    let files = &b["inputs"]["inputs"]["clickstream"]["files"];
    assert!(files.is_u64() && *files == a["inputs"]["inputs"]["clickstream"]["files"], "a loop read twice: {files}");
    let rejected = &b["inputs"]["inputs"]["clickstream"]["rejected"];
    let was = &a["inputs"]["inputs"]["clickstream"]["rejected"];
    assert_eq!(rejected["not_utf8"], 1, "{rejected}");
    assert_eq!(rejected["bad_date"].as_u64().unwrap(), was["bad_date"].as_u64().unwrap() + 3, "{rejected}");
    assert_eq!(b["inputs"]["inputs"]["metadata"]["rejected"]["bad_quoting"], 1);
    assert!(b["inputs"]["inputs"]["notification_actor"]["rejected"].as_object().unwrap().values().all(|n| n == 0));

    // Gzip files are read, several members in a row as one text.
    let gz = dir.path().join("gz");
    copy_dir(&data, &gz);
    let part = gz.join("clickstream/part-00000.csv");
    let text = std::fs::read(&part).unwrap();
    let cut = text.len() / 2 + text[text.len() / 2..].iter().position(|&b| b == b'\n').unwrap() + 1;
    let mut packed = Vec::new();
    for half in [&text[..cut], &text[cut..]] {
        let mut child = Command::new("gzip").arg("-c").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(half).unwrap();
        packed.extend(child.wait_with_output().unwrap().stdout);
    }
    std::fs::remove_file(&part).unwrap();
    std::fs::write(gz.join("clickstream/part-00000.csv.gz"), &packed).unwrap();
    let gz_out = dir.path().join("gz-out");
    run_small(&gz, &gz_out);
    super::same_outputs(&clean, &gz_out, "between plain and gzip inputs");
    // The rejected rows' examples are found inside the compressed file.
    let examples = |out: &Path| -> Vec<(u64, String)> {
        let sum = super::summary(out);
        let list = sum["inputs"]["inputs"]["clickstream"]["examples"].as_array().unwrap().clone();
        list.iter().map(|e| (e["line"].as_u64().unwrap(), e["text"].as_str().unwrap().to_string())).collect()
    };
    assert!(!examples(&clean).is_empty());
    assert_eq!(examples(&clean), examples(&gz_out));
    // A gzip file not named so is refused, saying what to do.
    std::fs::rename(gz.join("clickstream/part-00000.csv.gz"), gz.join("clickstream/part-00000.csv")).unwrap();
    let o = cohortcast(&["run", "--data", s(&gz), "--out", s(&dir.path().join("gz-out2"))]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("gzip") && err.contains("part-00000.csv"), "{err}");
    assert!(err.contains("name it *.gz"), "{err}");
}
