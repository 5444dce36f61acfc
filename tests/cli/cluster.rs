//! The ingest on a real Ballista cluster: a scheduler and an executor, each
//! its own `cohortcast cluster` process on loopback, reading the inputs from
//! the S3 server; the cohorts, pushes and CTR must equal the embedded run's.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::s3::{free_port, moto_with_data, Moto};
use super::{s, synth, MODEL};

/// Child processes killed when the test ends, however it ends.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `GET path` on 127.0.0.1:port, the body (empty when nothing answers).
fn http_get(port: u16, path: &str) -> String {
    let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = write!(c, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = c.read_to_string(&mut text);
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// Starts a scheduler and one executor with the server's credentials;
/// returns them and the scheduler's port once the executor has registered.
fn cluster(m: &Moto, work: &std::path::Path) -> (Processes, u16) {
    let (sp, fp, gp) = (free_port(), free_port(), free_port());
    let spawn = |args: &[&str]| {
        m.command(args, None, &m.endpoint).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("starts")
    };
    let mut procs = Processes(vec![spawn(&["cluster", "scheduler", "--bind", &format!("127.0.0.1:{sp}")])]);
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", sp)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(60), "the scheduler did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    procs.0.push(spawn(&[
        "cluster",
        "executor",
        "--scheduler",
        &format!("127.0.0.1:{sp}"),
        "--port",
        &fp.to_string(),
        "--grpc-port",
        &gp.to_string(),
        "--concurrent-tasks",
        "2",
        "--work-dir",
        s(work),
    ]));
    while !http_get(sp, "/api/executors").contains(&format!("\"port\":{fp}")) {
        assert!(start.elapsed() < Duration::from_secs(60), "the executor did not register");
        std::thread::sleep(Duration::from_millis(100));
    }
    (procs, sp)
}

#[test]
fn the_ingest_on_a_ballista_cluster_gives_the_embedded_runs_cohorts_and_pushes() {
    let Some((m, dir, data)) = moto_with_data(&["cc-data", "cc-out"]) else { return };
    let work = dir.path().join("executor");
    std::fs::create_dir(&work).unwrap();
    let (_procs, port) = cluster(&m, &work);

    let embedded = dir.path().join("embedded");
    super::run_small(&data, &embedded);
    let engine = format!("ballista://127.0.0.1:{port}");
    let mut args = vec!["run", "--data", "s3://cc-data/saavn", "--out", "s3://cc-out/cluster", "--engine", &engine];
    args.extend_from_slice(MODEL);
    m.ok(&args);

    let got = dir.path().join("cluster");
    m.download("s3://cc-out/cluster", &got);
    super::same_outputs(&embedded, &got, "between the cluster and the embedded run");
    let (a, b) = (super::summary(&embedded), super::summary(&got));
    assert_eq!(a["ctr"], b["ctr"]);
    assert_eq!(a["inputs"]["clickstream"]["rejected"], b["inputs"]["clickstream"]["rejected"]);
    assert_eq!(b["inputs"]["engine"]["cluster"], engine.as_str(), "the cluster ran it");
    assert!(a["inputs"]["engine"]["cluster"].is_null());
    // The scheduler saw the jobs.
    assert!(http_get(port, "/api/jobs").contains("Completed") || http_get(port, "/api/jobs").contains("completed"));
}

#[test]
fn a_cluster_nobody_runs_is_a_clear_error_before_any_output() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path());
    let out = dir.path().join("out");
    let engine = format!("ballista://127.0.0.1:{}", free_port());
    let o = super::cohortcast(&["ingest", "--data", s(&data), "--out", s(&out), "--engine", &engine]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&engine) && err.contains("does not answer") && err.contains("cohortcast cluster scheduler"),
        "{err}"
    );
    assert!(!out.exists(), "no output");
    let o = super::cohortcast(&["ingest", "--data", s(&data), "--out", s(&out), "--engine", "spark://host:7077"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("give `embedded` or `ballista://HOST:PORT`"));
}
