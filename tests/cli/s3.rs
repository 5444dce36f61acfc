//! The whole job from and to a real S3-compatible server (moto, started
//! here on a free loopback port with IAM checks on), and its faults: a
//! missing bucket or key, wrong credentials, transient errors that the
//! retries absorb, and the server going away in the middle of a read.
//!
//! moto_server is found through `COHORTCAST_MOTO_SERVER` or `PATH`, with
//! boto3 in the same Python (`.ci/run` installs both). Without it these
//! tests say so and pass, unless `COHORTCAST_REQUIRE_S3=1` (set by CI).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{s, synth, MODEL};

/// A moto server of this test alone, with a key of full rights.
pub(crate) struct Moto {
    child: Child,
    pub(crate) endpoint: String,
    python: PathBuf,
    pub(crate) key: String,
    pub(crate) secret: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_listening(addr: SocketAddr, child: &mut Child) {
    let start = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "moto_server exited at start");
        assert!(start.elapsed() < Duration::from_secs(60), "moto_server did not listen within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// moto's version, from the Python beside its server script.
fn moto_version(server: &Path) -> Option<(u32, u32, u32)> {
    let out = Command::new(server.with_file_name("python3"))
        .args(["-c", "import moto, boto3; print(moto.__version__)"])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let mut parts = text.trim().split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0)))
}

/// The oldest moto seen to work: 5.2.1 rejects object_store's signed
/// list requests (SignatureDoesNotMatch); 5.2.5 accepts them.
const MOTO_AT_LEAST: (u32, u32, u32) = (5, 2, 5);

fn find_moto() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("COHORTCAST_MOTO_SERVER") {
        return Some(PathBuf::from(p));
    }
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("moto_server")).find(|p| p.is_file()))?;
    match moto_version(&found) {
        Some(v) if v >= MOTO_AT_LEAST => Some(found),
        v => {
            eprintln!("{} is moto {v:?} (or lacks boto3); these tests need moto >= 5.2.5", found.display());
            None
        }
    }
}

/// Starts moto with buckets, or `None` (the test is skipped) where it is
/// not installed and CI does not require it.
pub(crate) fn moto(buckets: &[&str]) -> Option<Moto> {
    let Some(server) = find_moto() else {
        assert!(
            std::env::var("COHORTCAST_REQUIRE_S3").is_err(),
            "COHORTCAST_REQUIRE_S3 is set but no moto_server was found"
        );
        eprintln!("skipped: no moto_server (set COHORTCAST_MOTO_SERVER or PATH; .ci/run installs it)");
        return None;
    };
    let python = server.with_file_name("python3");
    let port = free_port();
    let mut child = Command::new(&server)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server starts");
    wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), &mut child);
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut m = Moto { child, endpoint, python, key: String::new(), secret: String::new() };
    let mut args = vec!["setup", m.endpoint.as_str()];
    args.extend_from_slice(buckets);
    let out = m.helper(&args);
    let text = String::from_utf8(out.stdout).unwrap();
    let (key, secret) = text.trim().split_once(' ').expect("setup prints a key");
    (m.key, m.secret) = (key.into(), secret.into());
    Some(m)
}

/// A moto server with `buckets` (the first is `cc-data`), and the small
/// generated data in a temporary folder, uploaded to `s3://cc-data/saavn`.
pub(crate) fn moto_with_data(buckets: &[&str]) -> Option<(Moto, tempfile::TempDir, PathBuf)> {
    let m = moto(buckets)?;
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path());
    m.upload(&data, "s3://cc-data/saavn");
    Some((m, dir, data))
}

impl Moto {
    fn helper(&self, args: &[&str]) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli/s3_helper.py");
        let out = Command::new(&self.python)
            .arg(script)
            .args(args)
            .env("AWS_ACCESS_KEY_ID", &self.key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .output()
            .expect("python runs");
        assert!(out.status.success(), "s3_helper {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    pub(crate) fn upload(&self, dir: &Path, url: &str) {
        self.helper(&["upload", &self.endpoint, s(dir), url]);
    }

    pub(crate) fn download(&self, url: &str, dir: &Path) {
        self.helper(&["download", &self.endpoint, url, s(dir)]);
    }

    fn keys(&self, url: &str) -> Vec<String> {
        let out = self.helper(&["list", &self.endpoint, url]);
        String::from_utf8(out.stdout).unwrap().lines().map(String::from).collect()
    }

    /// cohortcast with this server's credentials (and no others from the
    /// environment); the endpoint goes in by flag or by AWS_ENDPOINT_URL.
    pub(crate) fn command(&self, args: &[&str], secret: Option<&str>, endpoint: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cohortcast"));
        c.args(args)
            .env_remove("AWS_PROFILE")
            .env("AWS_ACCESS_KEY_ID", &self.key)
            .env("AWS_SECRET_ACCESS_KEY", secret.unwrap_or(&self.secret))
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("HOME", "/nonexistent");
        c
    }

    fn cohortcast(&self, args: &[&str], secret: Option<&str>, endpoint: &str) -> Output {
        self.command(args, secret, endpoint).output().expect("the binary runs")
    }

    pub(crate) fn ok(&self, args: &[&str]) -> Output {
        let out = self.cohortcast(args, None, &self.endpoint);
        assert!(out.status.success(), "cohortcast {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        out
    }
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_whole_job_from_s3_to_s3_equals_the_local_run() {
    let Some((m, dir, data)) = moto_with_data(&["cc-data", "cc-out"]) else { return };
    let local = dir.path().join("local");
    super::run_small(&data, &local);

    // The whole job, endpoint by flag (AWS_ENDPOINT_URL points nowhere).
    let mut args =
        vec!["run", "--data", "s3://cc-data/saavn", "--out", "s3://cc-out/run", "--s3-endpoint", &m.endpoint];
    args.extend_from_slice(MODEL);
    let out = m.cohortcast(&args, None, "http://127.0.0.1:9");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The stages one by one, each reading what the last left in S3.
    m.ok(&["ingest", "--data", "s3://cc-data/saavn", "--out", "s3://cc-out/staged"]);
    let mut args = vec!["train", "--out", "s3://cc-out/staged"];
    args.extend_from_slice(MODEL);
    m.ok(&args);
    m.ok(&["target", "--out", "s3://cc-out/staged"]);
    m.ok(&["evaluate", "--out", "s3://cc-out/staged", "--truth", "s3://cc-data/saavn/truth"]);

    for prefix in ["run", "staged"] {
        let got = dir.path().join(prefix);
        m.download(&format!("s3://cc-out/{prefix}"), &got);
        super::same_outputs(&local, &got, &format!("in {prefix} from the local run"));
        let (a, b) = (super::summary(&local), super::summary(&got));
        assert_eq!(a["ctr"], b["ctr"], "{prefix}: CTR differs");
        assert!(got.join("model").is_dir() && got.join("notifications").is_dir(), "{prefix}: model and lists");
    }
    assert!(m.keys("s3://cc-out/run/").iter().any(|k| k == "run/summary.json"));
}

#[test]
fn a_missing_bucket_or_key_and_wrong_credentials_are_clear_errors_with_no_output() {
    let Some((m, _dir, _data)) = moto_with_data(&["cc-data", "cc-out"]) else { return };
    let cases: [(&str, Option<&str>, &[&str]); 3] = [
        ("s3://no-such-bucket/saavn", None, &["s3://no-such-bucket", "the bucket does not exist"]),
        (
            "s3://cc-data/nothing-here",
            None,
            &["clickstream", "s3://cc-data/nothing-here/clickstream", "does not exist"],
        ),
        ("s3://cc-data/saavn", Some("wrong-secret"), &["s3://cc-data/saavn", "access denied", "AWS_SECRET_ACCESS_KEY"]),
    ];
    for (i, (url, secret, needles)) in cases.iter().enumerate() {
        let out = format!("s3://cc-out/fault{i}");
        let err =
            failed(&m.cohortcast(&["run", "--data", url, "--out", &out, "--s3-retries", "1"], *secret, &m.endpoint));
        for n in *needles {
            assert!(err.contains(n), "case {i}: `{n}` not in:\n{err}");
        }
        assert!(m.keys(&format!("{out}/")).is_empty(), "case {i}: output left behind");
    }
}

/// A TCP proxy in front of the server: answers the first `fail_first`
/// connections `503 Slow Down`, and once `cut_after` bytes have come back
/// from the server, closes every connection and stops listening, as a
/// server that went away.
struct Proxy {
    addr: SocketAddr,
    refused: Arc<AtomicUsize>,
    cut: Arc<AtomicBool>,
}

fn proxy(upstream: &str, fail_first: usize, cut_after: Option<u64>) -> Proxy {
    let upstream: SocketAddr = upstream.trim_start_matches("http://").parse().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (refused, cut) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let returned = Arc::new(AtomicU64::new(0));
    let (r, c) = (refused.clone(), cut.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if c.load(Ordering::SeqCst) {
                break; // the listener drops: connections are refused from now on
            }
            let Ok(mut client) = conn else { continue };
            if r.load(Ordering::SeqCst) < fail_first {
                r.fetch_add(1, Ordering::SeqCst);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && client.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let body = "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>slow down</Message></Error>";
                let _ = write!(
                    client,
                    "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = client.shutdown(Shutdown::Both);
                continue;
            }
            let Ok(server) = TcpStream::connect(upstream) else { continue };
            streams.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
            let pump = |mut from: TcpStream, mut to: TcpStream, count: bool| {
                let (returned, cut, streams) = (returned.clone(), c.clone(), streams.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        if count {
                            let total = returned.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                            if cut_after.is_some_and(|limit| total > limit) && !cut.swap(true, Ordering::SeqCst) {
                                for s in streams.lock().unwrap().iter() {
                                    let _ = s.shutdown(Shutdown::Both);
                                }
                                let _ = TcpStream::connect(addr); // wakes the accept loop to stop
                                break;
                            }
                        }
                    }
                    let _ = to.shutdown(Shutdown::Write);
                });
            };
            pump(client.try_clone().unwrap(), server.try_clone().unwrap(), false);
            pump(server, client, true);
        }
    });
    Proxy { addr, refused, cut }
}

#[test]
fn transient_errors_are_retried_and_a_server_gone_mid_read_fails_cleanly() {
    let Some((m, dir, _data)) = moto_with_data(&["cc-data"]) else { return };
    let run = |endpoint: &str, retries: &str, out: &Path| {
        m.cohortcast(
            &["ingest", "--data", "s3://cc-data/saavn", "--out", s(out), "--s3-retries", retries],
            None,
            endpoint,
        )
    };
    // Three 503s: three retries absorb them, two do not.
    let p = proxy(&m.endpoint, 3, None);
    let out = run(&format!("http://{}", p.addr), "3", &dir.path().join("retried"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(p.refused.load(Ordering::SeqCst), 3);
    assert!(dir.path().join("retried/ingest").is_dir());
    let p = proxy(&m.endpoint, 3, None);
    let err = failed(&run(&format!("http://{}", p.addr), "2", &dir.path().join("not-retried")));
    assert!(err.contains("s3://cc-data/saavn"), "{err}");
    assert!(!dir.path().join("not-retried").exists(), "no output after a failure");

    // The server goes away 1 MiB into the reads (inside the clickstream): a clear error naming the
    // input, and no output.
    let p = proxy(&m.endpoint, 0, Some(1 << 20));
    let err = failed(&run(&format!("http://{}", p.addr), "2", &dir.path().join("cut")));
    eprintln!("{err}");
    assert!(p.cut.load(Ordering::SeqCst), "the proxy cut the connection");
    assert!(err.contains("s3://cc-data/saavn"), "{err}");
    assert!(err.contains("did not answer or broke off"), "{err}");
    assert!(!dir.path().join("cut").exists(), "no output after a failure");
}
