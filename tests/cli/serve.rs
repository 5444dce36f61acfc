//! `cohortcast serve` over a real socket, on the model a `run` wrote.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use super::{ok, s, synth, MODEL};

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

#[test]
fn serve_answers_from_the_model_a_run_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path());
    let out = dir.path().join("out");
    let mut args = vec!["run", "--data", s(&data), "--out", s(&out)];
    args.extend_from_slice(MODEL);
    ok(&args);
    let token = "a-token-of-at-least-16-chars";
    let mut child = Command::new(env!("CARGO_BIN_EXE_cohortcast"))
        .args(["serve", "--model", s(&out.join("model")), "--addr", "127.0.0.1:0"])
        .env("COHORTCAST_TOKEN", token)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = child.stderr.take().unwrap();
    let _guard = Kill(child);
    // The bound address is announced on stderr once the model is loaded.
    let line = BufReader::new(stderr)
        .lines()
        .map(|l| l.unwrap())
        .find(|l| l.starts_with("serving on http://"))
        .expect("the server announces its address");
    let port: u16 = line.rsplit(':').next().unwrap().parse().unwrap();

    // Every user's cohort is the one cohorts.csv says.
    let cohorts = std::fs::read_to_string(out.join("cohorts.csv")).unwrap();
    for row in cohorts.lines().skip(1).step_by(997) {
        let (user, cohort) = row.split_once(',').unwrap();
        let (status, v) = http(port, "GET", &format!("/v1/users/{user}"), None, "");
        assert_eq!(status, 200);
        assert_eq!(v["cohort"].as_u64().unwrap().to_string(), cohort, "{user}");
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
}
