//! `cohortcast serve` over a real socket, on the model a `run` wrote.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use std::collections::HashMap;

use super::{run_small_with, s, synth};

/// One HTTP/1.1 request; the status and the body.
fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

/// A `cohortcast serve` process on a free port, killed when dropped.
struct Server {
    child: std::process::Child,
    port: u16,
}

impl Server {
    /// Serves `model` with `token` (or none) and more flags; returns once
    /// the bound address is announced on stderr (the model is loaded).
    fn start(model: &std::path::Path, token: Option<&str>, flags: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cohortcast"));
        cmd.args(["serve", "--model", s(model), "--addr", "127.0.0.1:0"]).args(flags).stderr(Stdio::piped());
        if let Some(t) = token {
            cmd.env("COHORTCAST_TOKEN", t);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut server = Server { child, port: 0 };
        let line = BufReader::new(stderr)
            .lines()
            .map(|l| l.unwrap())
            .find(|l| l.starts_with("serving on http://"))
            .expect("the server announces its address");
        server.port = line.rsplit(':').next().unwrap().parse().unwrap();
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serve_answers_from_the_model_a_run_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path());
    let out = dir.path().join("out");
    run_small_with(&data, &out, &["--utc-offset", "+05:30"]);
    let token = "a-token-of-at-least-16-chars";
    let server = Server::start(&out.join("model"), Some(token), &[]);
    let port = server.port;

    // Every user's cohort is the one cohorts.csv says.
    let cohorts = std::fs::read_to_string(out.join("cohorts.csv")).unwrap();
    for row in cohorts.lines().skip(1).step_by(997) {
        let mut f = row.split(',');
        let (user, cohort) = (f.next().unwrap(), f.next().unwrap());
        let (status, v) = http(port, "GET", &format!("/v1/users/{user}"), None, "");
        assert_eq!(status, 200);
        assert_eq!(v["cohort"].as_u64().unwrap().to_string(), cohort, "{user}");
    }
    // Hours of the day, against the clickstream itself: every user's hours
    // (of plays of known songs, at +05:30) and every cohort's count of
    // members active at each hour.
    let known: std::collections::HashSet<String> = std::fs::read_to_string(data.join("metadata/part-00000.csv"))
        .unwrap()
        .lines()
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    let mut masks: HashMap<String, u32> = HashMap::new();
    for entry in std::fs::read_dir(data.join("clickstream")).unwrap() {
        for line in std::fs::read_to_string(entry.unwrap().path()).unwrap().lines() {
            let f: Vec<&str> = line.split(',').collect();
            let Ok(ts) = f.get(1).map_or(Err(()), |t| t.parse::<i64>().map_err(|_| ())) else { continue };
            if f.len() == 4 && !f[0].is_empty() && f[3].len() == 8 && known.contains(f[2]) {
                *masks.entry(f[0].to_string()).or_default() |= 1 << ((ts + 330 * 60).rem_euclid(86_400) / 3_600);
            }
        }
    }
    let label: HashMap<&str, usize> = cohorts
        .lines()
        .skip(1)
        .map(|r| r.split(',').collect::<Vec<_>>())
        .map(|f| (f[0], f[1].parse().unwrap()))
        .collect();
    assert_eq!(label.len(), masks.len(), "every user with a known play is in a cohort");
    let hours_csv = std::fs::read_to_string(out.join("cohort_hours.csv")).unwrap();
    let mut peaks = Vec::new();
    for row in hours_csv.lines().skip(1) {
        let f: Vec<&str> = row.split(',').collect();
        let c: usize = f[0].parse().unwrap();
        assert_eq!(f[2], "+05:30");
        let want: Vec<u64> = (0..24)
            .map(|h| masks.iter().filter(|(u, m)| label[u.as_str()] == c && *m & (1 << h) != 0).count() as u64)
            .collect();
        let got: Vec<u64> = f[4..].iter().map(|x| x.parse().unwrap()).collect();
        assert_eq!(got, want, "cohort {c}");
        let (status, v) = http(port, "GET", &format!("/v1/cohorts/{c}"), None, "");
        assert_eq!(status, 200);
        assert_eq!(v["active_hours"]["active_members"], serde_json::json!(want));
        peaks.push(v["active_hours"]["peak_hours"][0].as_u64().unwrap());
    }
    // Listening time follows taste in the generated data, so cohorts of
    // taste peak at different hours.
    peaks.sort_unstable();
    assert!(peaks.last().unwrap() - peaks[0] >= 3, "peaks {peaks:?}");
    for (user, m) in masks.iter().step_by(401) {
        let (_, v) = http(port, "GET", &format!("/v1/users/{user}"), None, "");
        let want: Vec<u32> = (0..24).filter(|h| m & (1 << h) != 0).collect();
        assert_eq!(v["active_hours"], serde_json::json!(want), "{user}");
    }

    // A release for a notification of the data: the pushed users are those
    // of the pushed cohorts, and the token is needed.
    let notes = std::fs::read_to_string(data.join("notification_actor/part-00000.csv")).unwrap();
    let (note, artist) = notes.lines().next().unwrap().split_once(',').unwrap();
    let body = format!(r#"{{"notification_id": "{note}", "artist_ids": ["{artist}"], "max_users": 1500}}"#);
    assert_eq!(http(port, "POST", "/v1/releases", None, &body).0, 401);
    let (status, v) = http(port, "POST", "/v1/releases", Some(token), &body);
    assert_eq!(status, 200, "{v}");
    let pushed = v["pushed_users"].as_u64().unwrap();
    assert!(pushed > 0 && pushed <= 1500, "{v}");
    let sizes: u64 = v["cohorts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["pushed"] == true)
        .map(|c| c["size"].as_u64().unwrap())
        .sum();
    assert_eq!(sizes, pushed);
    assert_eq!(v["users"].as_array().unwrap().len() as u64, pushed);

    // The dashboard, in a real browser: the charts and the run's numbers
    // are on the page as the browser built it.
    let Some(browser) = chromium() else { return };
    let url = format!("http://127.0.0.1:{port}/");
    let dom = Command::new(&browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", &url])
        .output()
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&dom.stdout);
    for id in ["cohort-sizes", "user-map", "top-artists", "cohort-hours", "ctr-by-policy", "ctr-by-notification"] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "the page lacks {id}");
    }
    let k = hours_csv.lines().count() - 1;
    assert_eq!(dom.matches("class=\"hour\"").count(), 24 * k.min(24), "a cell per hour and cohort drawn");
    assert!(dom.contains("UTC+05:30"));
    // The per-notification chart sets the baselines beside the chosen policy.
    for policy in ["random", "top-artist"] {
        assert!(dom.contains(&format!(">{policy}</text>")), "legend {policy}");
    }
    let users = cohorts.lines().count() - 1;
    assert!(dom.contains(&format!("<b id=\"users\">{users}</b>")), "user count");
    assert_eq!(dom.matches("class=\"user\"").count(), users.min(4000), "one point a user drawn");
    assert!(dom.matches("class=\"bar\"").count() >= 20, "a bar per cohort at least");
    let summary = super::summary(&out);
    let ctr = format!("{:.2}%", 100.0 * summary["ctr"][0]["overall_ctr"].as_f64().unwrap());
    assert!(dom.contains(&format!("<b id=\"headline-ctr\">{ctr}</b>")), "headline CTR {ctr}");
    // The batch report is the same page.
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(report.contains(&format!("<b id=\"headline-ctr\">{ctr}</b>")));
    // A screenshot for people: CI keeps it as an artifact.
    let shots = std::env::var("COHORTCAST_ARTIFACTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dir.path().join("artifacts"));
    std::fs::create_dir_all(&shots).unwrap();
    let png = shots.join("dashboard.png");
    let shot = Command::new(&browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,2200"])
        .arg(format!("--screenshot={}", png.display()))
        .arg(&url)
        .output()
        .expect("chromium runs");
    assert!(shot.status.success(), "{}", String::from_utf8_lossy(&shot.stderr));
    assert!(std::fs::metadata(&png).unwrap().len() > 20_000, "a real picture");
}

/// Chromium, or `None` (the browser part is skipped) unless CI requires it.
fn chromium() -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .flat_map(|d| ["chromium", "chromium-browser", "google-chrome"].map(|n| d.join(n)))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("COHORTCAST_REQUIRE_BROWSER").is_err(),
            "COHORTCAST_REQUIRE_BROWSER is set but no chromium"
        );
        eprintln!("skipped the browser check: no chromium on PATH (.ci/run installs Debian's)");
    }
    found
}

#[test]
fn idle_connections_cannot_starve_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path());
    let out = dir.path().join("out");
    run_small_with(&data, &out, &[]);
    let server = Server::start(&out.join("model"), None, &["--max-connections", "50", "--idle-timeout", "2"]);
    let port = server.port;
    // Ten times the limit of connections that never send a byte.
    let idle: Vec<TcpStream> = (0..500).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    let start = std::time::Instant::now();
    let (status, v) = http(port, "GET", "/healthz", None, "");
    assert_eq!((status, &v["status"]), (200, &serde_json::Value::from("ok")));
    assert!(start.elapsed() < std::time::Duration::from_secs(1), "/healthz took {:?}", start.elapsed());
    // An idle connection is closed after the idle timeout.
    let mut last = idle.into_iter().last().unwrap();
    last.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let waited = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = last.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the idle connection got bytes");
    assert!(waited.elapsed() < std::time::Duration::from_secs(5), "closed after {:?}", waited.elapsed());
}

/// Schemathesis (`COHORTCAST_SCHEMATHESIS`: its `schemathesis` program;
/// CI installs it and sets `COHORTCAST_REQUIRE_SCHEMATHESIS`) against a
/// served model: every check, a fixed seed, and any finding fails.
#[test]
fn the_openapi_document_agrees_with_the_server() {
    let Some(st) = std::env::var_os("COHORTCAST_SCHEMATHESIS") else {
        assert!(
            std::env::var_os("COHORTCAST_REQUIRE_SCHEMATHESIS").is_none(),
            "COHORTCAST_REQUIRE_SCHEMATHESIS is set but COHORTCAST_SCHEMATHESIS is not"
        );
        eprintln!("skipped: set COHORTCAST_SCHEMATHESIS to the schemathesis program to check the OpenAPI document");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path());
    let out = dir.path().join("out");
    run_small_with(&data, &out, &[]);
    let token = "a-token-of-at-least-16-chars";
    let server = Server::start(&out.join("model"), Some(token), &[]);
    let url = format!("http://127.0.0.1:{}", server.port);
    let o = Command::new(st)
        .args(["run", &format!("{url}/openapi.json"), "--checks", "all", "--seed", "42", "--max-examples", "150"])
        .args(["--no-color", "-H", &format!("Authorization: Bearer {token}")])
        // Its cache of findings stays out of the checkout.
        .current_dir(dir.path())
        .output()
        .expect("schemathesis runs");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "schemathesis found disagreements:\n{text}\n{}", String::from_utf8_lossy(&o.stderr));
}
