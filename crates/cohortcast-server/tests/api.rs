//! The API against a small trained model with planted tastes: two groups
//! of users, one playing artists a0–a4, the other a5–a9. Requests go
//! through the router directly (no socket), as a client's would.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use cohortcast_core::als::{AlsModel, AlsParams};
use cohortcast_core::kmeans::{normalize_rows, Cohorts, KMeansParams};
use cohortcast_core::sparse::Csr;
use cohortcast_data::ingest::Ingested;
use cohortcast_data::stages::{save_ingested, save_model, ModelParams, StoredModel};
use cohortcast_server::{app, AppState, Config, Served};
use serde_json::Value;
use tower::ServiceExt;

const TOKEN: &str = "s3cret-token";

/// The planted hours: the first taste listens at 20:00 and 21:00 (every
/// third user only at 21:00), the second at 08:00 (every fifth also at 20:00).
fn hours_of(u: usize) -> u32 {
    if u.is_multiple_of(2) {
        if u.is_multiple_of(3) {
            1 << 21
        } else {
            1 << 20 | 1 << 21
        }
    } else if u.is_multiple_of(5) {
        1 << 8 | 1 << 20
    } else {
        1 << 8
    }
}

/// Writes model/ and ingest/ for 200 users; returns the folder.
fn fixture(users: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..users).map(|u| format!("{u:032x}")).collect();
    let artists: Vec<String> = (0..10).map(|a| format!("a{a}")).collect();
    let mut t = Vec::new();
    for u in 0..users {
        let base = if u % 2 == 0 { 0 } else { 5 };
        for j in 0..4 {
            t.push((u as u32, (base + (u / 2 + j) % 5) as u32, (5 + (u % 7)) as f32));
        }
    }
    let plays = Csr::from_triplets(users, 10, &t).unwrap();
    let als = AlsParams { factors: 8, iterations: 8, ..AlsParams::default() };
    let model = AlsModel::fit(&plays, &als).unwrap();
    let km = KMeansParams { n_clusters: 4, ..KMeansParams::default() };
    let cohorts = Cohorts::fit(&normalize_rows(model.user_factors(), 8), 8, &km).unwrap();
    let params = ModelParams { als, kmeans: km, loss_history: model.loss_history.clone(), inertia: cohorts.inertia };
    let stored = StoredModel {
        users: ids.clone(),
        artists: artists.clone(),
        labels: cohorts.labels().to_vec(),
        als: model,
        cohorts,
        params,
    };
    save_model(&dir.path().join("model"), &stored).unwrap();
    let ing = Ingested {
        users: ids,
        artists,
        plays,
        active_hours: (0..users).map(hours_of).collect(),
        notifications: Vec::new(),
        clicks: None,
        songs: (0..10).map(|a| (format!("s{a}"), format!("a{a}"))).collect(),
        report: cohortcast_data::ingest::IngestReport { utc_offset_minutes: 330, ..Default::default() },
    };
    save_ingested(&dir.path().join("ingest"), &ing).unwrap();
    dir
}

fn state(dir: &std::path::Path, token: Option<&str>) -> Arc<AppState> {
    let config = Config {
        token: token.map(String::from),
        model_dir: dir.join("model"),
        ingest_dir: dir.join("ingest"),
        ..Config::default()
    };
    AppState::new(config, Served::load(&dir.join("model"), &dir.join("ingest")).unwrap())
}

async fn call(
    st: &Arc<AppState>,
    method: &str,
    uri: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req.header(header::CONTENT_TYPE, "application/json").body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = app(st.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20).await.unwrap();
    let v = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, v)
}

#[tokio::test]
async fn cohorts_and_users_describe_the_planted_tastes() {
    let dir = fixture(200);
    let st = state(dir.path(), Some(TOKEN));
    let (s, v) = call(&st, "GET", "/v1/cohorts", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let cohorts = v["cohorts"].as_array().unwrap();
    assert_eq!(cohorts.len(), 4);
    assert_eq!(cohorts.iter().map(|c| c["size"].as_u64().unwrap()).sum::<u64>(), 200);
    for c in cohorts.iter().filter(|c| c["size"].as_u64().unwrap() > 0) {
        // A cohort is one taste group: its top artists all come from one half.
        let tops: Vec<usize> = c["top_artists"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["artist_id"].as_str().unwrap()[1..].parse().unwrap())
            .collect();
        assert!(tops.iter().all(|&a| a < 5) || tops.iter().all(|&a| a >= 5), "{c}");
        let shares: f64 = c["top_artists"].as_array().unwrap().iter().map(|a| a["share"].as_f64().unwrap()).sum();
        assert!((shares - 1.0).abs() < 1e-9, "five artists hold all the plays: {shares}");
        // And it listens at that taste's hours.
        let h = &c["active_hours"];
        assert_eq!(h["utc_offset"], "+05:30");
        let peaks: Vec<u64> = h["peak_hours"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
        let members: Vec<u64> = h["active_members"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
        assert_eq!(members.len(), 24);
        let size = c["size"].as_u64().unwrap();
        if tops[0] < 5 {
            assert_eq!(peaks[0], 21, "{c}");
            assert_eq!(members[21], size);
            assert!(members[20] < size && members[20] > size / 2, "{c}");
        } else {
            assert_eq!(peaks[0], 8, "{c}");
            assert!(peaks.iter().all(|&h| h == 8 || h == 20), "{c}");
            assert_eq!(members[8], size);
        }
        let share = h["active_share"][peaks[0] as usize].as_f64().unwrap();
        assert!((share - 1.0).abs() < 1e-12);
    }
    let (s, v) = call(&st, "GET", "/v1/cohorts/0", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(!v["sample_members"].as_array().unwrap().is_empty());
    let (s, v) = call(&st, "GET", "/v1/cohorts/9", None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["error"].as_str().unwrap().contains("no cohort 9"));

    // User 1 plays the second half; ids are matched whatever their case.
    let id = format!("{:032X}", 1);
    let (s, v) = call(&st, "GET", &format!("/v1/users/{id}"), None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["user_id"], format!("{:032x}", 1));
    assert!(v["top_artists"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["artist_id"].as_str().unwrap()[1..].parse::<u32>().unwrap() >= 5));
    assert_eq!(v["active_hours"], serde_json::json!([8]));
    assert_eq!(v["utc_offset"], "+05:30");
    let (_, v) = call(&st, "GET", &format!("/v1/users/{:032x}", 4), None, None).await;
    assert_eq!(v["active_hours"], serde_json::json!([20, 21]));
    let (s, v) = call(&st, "GET", "/v1/users/nobody", None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["error"].as_str().unwrap().contains("unknown user `nobody`"));
}

#[tokio::test]
async fn a_release_goes_to_the_cohorts_of_its_artist_and_respects_the_limits() {
    let dir = fixture(200);
    let st = state(dir.path(), Some(TOKEN));
    let body = r#"{"notification_id": "n-1", "artist_ids": ["a2", "not-an-artist"]}"#;
    let (s, v) = call(&st, "POST", "/v1/releases", Some(body), Some(TOKEN)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["unknown_artists"][0], "not-an-artist");
    let ranked = v["cohorts"].as_array().unwrap();
    // The best cohort is a first-half cohort, and scores are descending.
    let first = ranked[0]["cohort"].as_u64().unwrap();
    let (_, c) = call(&st, "GET", &format!("/v1/cohorts/{first}"), None, None).await;
    assert!(c["top_artists"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["artist_id"].as_str().unwrap()[1..].parse::<u32>().unwrap() < 5));
    let ctrs: Vec<f64> = ranked.iter().map(|c| c["expected_ctr"].as_f64().unwrap()).collect();
    assert!(ctrs.windows(2).all(|w| w[0] >= w[1]), "{ctrs:?}");
    assert_eq!(v["pushed_users"], 200, "no limits: everybody");
    assert_eq!(v["users"].as_array().unwrap().len(), 200);

    // Limits: at most 60 users, and only cohorts above the median score.
    let floor = ctrs[ctrs.len() / 2];
    let body =
        format!(r#"{{"notification_id": "n-2", "artist_ids": ["a2"], "max_users": 60, "min_expected_ctr": {floor}}}"#);
    let (s, v) = call(&st, "POST", "/v1/releases", Some(&body), Some(TOKEN)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let pushed: Vec<&Value> = v["cohorts"].as_array().unwrap().iter().filter(|c| c["pushed"] == true).collect();
    let n: u64 = pushed.iter().map(|c| c["size"].as_u64().unwrap()).sum();
    assert!(n <= 60 && n == v["pushed_users"].as_u64().unwrap());
    assert!(pushed.iter().all(|c| c["expected_ctr"].as_f64().unwrap() >= floor));
    let clicks: f64 = pushed.iter().map(|c| c["size"].as_f64().unwrap() * c["expected_ctr"].as_f64().unwrap()).sum();
    assert!((v["expected_clicks"].as_f64().unwrap() - clicks).abs() < 1e-9);
    let (s, page) = call(&st, "GET", "/v1/releases/n-2/users?page=0", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(page["total"].as_u64().unwrap(), n);

    // Only unknown artists: nobody has played them, so nobody is pushed.
    let (s, v) =
        call(&st, "POST", "/v1/releases", Some(r#"{"notification_id": "n-3", "artist_ids": ["zz"]}"#), Some(TOKEN))
            .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((&v["pushed_users"], &v["unknown_artists"][0]), (&Value::from(0), &Value::from("zz")), "{v}");
    assert!(v["cohorts"].as_array().unwrap().is_empty() && v["users"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_release_grouped_by_user_pushes_the_best_scored_users_whatever_their_cohort() {
    let dir = fixture(200);
    let st = state(dir.path(), Some(TOKEN));
    let m = Served::load(&dir.path().join("model"), &dir.path().join("ingest")).unwrap();
    let a2 = m.artist("a2").unwrap();
    let tp = cohortcast_core::targeting::TargetingParams::default();
    let scores = m.user_scores(&[a2], &tp);
    // The cohorts' means of those scores are the cohorts' affinity.
    for (mean, aff) in m.cohort_means(&scores).iter().zip(m.affinity(&[a2], &tp)) {
        assert!((mean - aff).abs() < 1e-5, "{mean} vs {aff}");
    }
    let body = r#"{"notification_id": "n-u", "artist_ids": ["a2"], "max_users": 30, "grouping": "user"}"#;
    let (s, v) = call(&st, "POST", "/v1/releases", Some(body), Some(TOKEN)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["pushed_users"], 30);
    // The 30 pushed are the 30 best scores.
    let mut order: Vec<usize> = (0..200).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut want: Vec<String> = order[..30].iter().map(|&u| format!("{u:032x}")).collect();
    let mut got: Vec<String> = v["users"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_string()).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    // They are all of the taste that plays a2 (even users), and the
    // expected clicks are their summed scores.
    assert!(order[..30].iter().all(|u| u % 2 == 0), "{:?}", &order[..30]);
    let clicks: f64 = order[..30].iter().map(|&u| scores[u] as f64).sum();
    assert!((v["expected_clicks"].as_f64().unwrap() - clicks).abs() < 1e-6);
    let sizes: u64 = v["cohorts"].as_array().unwrap().iter().map(|c| c["size"].as_u64().unwrap()).sum();
    assert_eq!(sizes, 30);
    // Grouped by taste the same limit pushes whole cohorts, and fewer of
    // the best users.
    let body = r#"{"notification_id": "n-t", "artist_ids": ["a2"], "max_users": 30, "grouping": "taste"}"#;
    let (_, t) = call(&st, "POST", "/v1/releases", Some(body), Some(TOKEN)).await;
    assert!(t["expected_clicks"].as_f64().unwrap() <= clicks + 1e-9, "{t}");
    let body = r#"{"notification_id": "n-x", "artist_ids": ["a2"], "grouping": "cohort"}"#;
    let (s, v) = call(&st, "POST", "/v1/releases", Some(body), Some(TOKEN)).await;
    assert!(s.is_client_error(), "{v}");
    assert!(v["error"].as_str().unwrap().contains("grouping"), "{v}");
}

#[tokio::test]
async fn bad_requests_name_the_problem_and_mutations_need_the_token() {
    let dir = fixture(200);
    let st = state(dir.path(), Some(TOKEN));
    let good = r#"{"notification_id": "n", "artist_ids": ["a1"]}"#;
    let (s, v) = call(&st, "POST", "/v1/releases", Some(good), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, _) = call(&st, "POST", "/v1/releases", Some(good), Some("wrong")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = call(&st, "POST", "/v1/releases", Some(r#"{"notification_id": "n"}"#), Some(TOKEN)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(v["error"].as_str().unwrap().contains("artist_ids"), "{v}");
    let (s, _) = call(&st, "POST", "/v1/releases", Some("{not json"), Some(TOKEN)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = call(
        &st,
        "POST",
        "/v1/releases",
        Some(r#"{"notification_id": "n", "artist_ids": ["a1"], "max_users": -3}"#),
        Some(TOKEN),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(v["error"].as_str().unwrap().contains("max_users"), "{v}");
    let big = format!(r#"{{"notification_id": "n", "artist_ids": ["{}"]}}"#, "x".repeat(cohortcast_server::BODY_LIMIT));
    let (s, _) = call(&st, "POST", "/v1/releases", Some(&big), Some(TOKEN)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    // Without a configured token, mutations are refused, not open.
    let open = state(dir.path(), None);
    let (s, v) = call(&open, "POST", "/v1/releases", Some(good), Some("anything")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(v["error"].as_str().unwrap().contains("no token configured"));
    // Reads stay open; metrics count what happened.
    let (s, _) = call(&st, "GET", "/healthz", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (_, m) = call(&st, "GET", "/metrics", None, None).await;
    let m = m.as_str().unwrap();
    assert!(m.contains(r#"cohortcast_http_requests_total{route="/v1/releases",status="401"} 2"#), "{m}");
    assert!(m.contains("cohortcast_users 200"), "{m}");
    assert!(m.contains(r#"cohortcast_http_request_duration_seconds_count{route="/v1/releases"}"#));
    let (s, doc) = call(&st, "GET", "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["paths"]["/v1/releases"]["post"].is_object());
    // Derived from the handlers and the request types: every status a
    // route answers, and the bounds the handlers enforce.
    for (path, method) in
        [("/v1/releases", "post"), ("/v1/users/{user_id}/plays", "post"), ("/v1/model/reload", "post")]
    {
        let op = &doc["paths"][path][method];
        assert!(op["responses"]["401"].is_object() && op["responses"]["403"].is_object(), "{path}");
        assert_eq!(op["security"][0]["bearer"], serde_json::json!([]), "{path}");
    }
    let release = &doc["components"]["schemas"]["Release"];
    assert_eq!(release["additionalProperties"], false);
    assert_eq!(release["properties"]["max_users"]["maximum"], 9007199254740991u64);
    let play = &doc["components"]["schemas"]["PlayIn"];
    assert_eq!(play["properties"]["timestamp"]["maximum"], 253402300799u64);
    assert_eq!(doc["components"]["schemas"]["PlaysRequest"]["properties"]["plays"]["maxItems"], 10000);
}

#[tokio::test]
async fn a_reload_swaps_the_model_and_a_broken_one_keeps_the_old() {
    let dir = fixture(200);
    let st = state(dir.path(), Some(TOKEN));
    // A newer run with more users lands in the same folders.
    let newer = fixture(240);
    for sub in ["model", "ingest"] {
        std::fs::remove_dir_all(dir.path().join(sub)).unwrap();
        std::fs::rename(newer.path().join(sub), dir.path().join(sub)).unwrap();
    }
    let (s, v) = call(&st, "POST", "/v1/model/reload", None, Some(TOKEN)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["users"], 240);
    let (_, h) = call(&st, "GET", "/healthz", None, None).await;
    assert_eq!(h["users"], 240);
    // A broken model folder: the reload fails and the old model serves on.
    std::fs::write(dir.path().join("model/users.csv"), "just one\n").unwrap();
    let (s, v) = call(&st, "POST", "/v1/model/reload", None, Some(TOKEN)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["error"].as_str().unwrap().contains("old one serves on"));
    let (_, h) = call(&st, "GET", "/healthz", None, None).await;
    assert_eq!(h["users"], 240);
}

#[tokio::test]
async fn new_plays_move_a_user_and_add_new_users_without_retraining() {
    let dir = fixture(200);
    let st = state(dir.path(), Some(TOKEN));
    let user0 = format!("{:032x}", 0);
    let half = |v: &Value| -> Vec<bool> {
        v["top_artists"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["artist_id"].as_str().unwrap()[1..].parse::<u32>().unwrap() >= 5)
            .collect()
    };
    let post = |user: String, songs: Vec<(usize, usize)>| {
        let plays: Vec<String> = songs
            .iter()
            .flat_map(|&(song, n)| {
                (0..n).map(move |i| format!(r#"{{"song_id": "s{song}", "timestamp": {}}}"#, 1_485_000_000 + i))
            })
            .collect();
        (format!("/v1/users/{user}/plays"), format!(r#"{{"plays": [{}]}}"#, plays.join(",")))
    };
    // A listener the model never saw plays one first-taste artist ...
    let mover = "e".repeat(32);
    let (path, body) = post(mover.clone(), vec![(1, 2)]);
    let (s, v) = call(&st, "POST", &path, Some(&body), Some(TOKEN)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["new_user"].as_bool(), v["previous_cohort"].is_null()), (Some(true), true));
    let first = v["cohort"].as_u64().unwrap();
    let (_, c) = call(&st, "GET", &format!("/v1/cohorts/{first}"), None, None).await;
    assert!(half(&c).iter().all(|&h| !h), "a first-taste cohort: {c}");
    // ... then the five second-taste artists, many times: the user moves.
    let (path, body) = post(mover.clone(), (5..10).map(|s| (s, 20)).collect());
    let (s, v) = call(&st, "POST", &path, Some(&body), Some(TOKEN)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["new_user"].as_bool(), v["previous_cohort"].as_u64()), (Some(false), Some(first)));
    let second = v["cohort"].as_u64().unwrap();
    let (_, c) = call(&st, "GET", &format!("/v1/cohorts/{second}"), None, None).await;
    assert!(half(&c).iter().all(|&h| h), "a second-taste cohort: {c}");
    let (_, after) = call(&st, "GET", &format!("/v1/users/{mover}"), None, None).await;
    assert_eq!((after["cohort"].as_u64(), after["updated_since_training"].as_bool()), (Some(second), Some(true)));
    assert!(half(&after)[0], "the new taste leads: {after}");
    // A user of the model gets new plays: they count on top of the old ones.
    let (path, body) = post(user0.clone(), vec![(2, 3)]);
    let (s, v) = call(&st, "POST", &path, Some(&body), Some(TOKEN)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["new_user"], false);
    assert!(v["top_artists"].as_array().unwrap().iter().any(|a| a["artist_id"] == "a2"));
    // Its hours (21:00) gain the new plays' hour (1 485 000 000 is 12:00
    // UTC, 17:30 at +05:30).
    assert_eq!(v["active_hours"], serde_json::json!([17, 21]));
    let (_, u0) = call(&st, "GET", &format!("/v1/users/{user0}"), None, None).await;
    assert_eq!(u0["active_hours"], serde_json::json!([17, 21]));

    // A user the model never saw.
    let newbie = "F".repeat(32); // ids match whatever their case
    let (s, v) = call(&st, "POST", &format!("/v1/users/{newbie}/plays"), Some(r#"{"plays": [{"song_id": "s1", "timestamp": 1485000000}, {"song_id": "s2", "timestamp": 1485000100}, {"song_id": "zzz", "timestamp": 1485000200}]}"#), Some(TOKEN)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["new_user"].as_bool(), v["unknown_songs"].as_u64(), v["plays_added"].as_u64()),
        (Some(true), Some(1), Some(2))
    );
    // The unknown song's play gives no hour; the two others fall in 17:00.
    assert_eq!(v["active_hours"], serde_json::json!([17]));
    // A release to the newbie's cohort pushes them too, and user 0 counts in its new cohort.
    let body = r#"{"notification_id": "n", "artist_ids": ["a1", "a7"]}"#;
    let (_, r) = call(&st, "POST", "/v1/releases", Some(body), Some(TOKEN)).await;
    let ids: Vec<&str> = r["users"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
    assert_eq!(r["pushed_users"], 202, "everybody, both new users included: {}", r["pushed_users"]);
    assert!(ids.contains(&"f".repeat(32).as_str()));
    assert_eq!(ids.iter().filter(|&&u| u == user0).count(), 1);

    // Bad requests.
    let bad = [
        ("nothex", r#"{"plays": [{"song_id": "s1", "timestamp": 1}]}"#, "32 hexadecimal"),
        (user0.as_str(), r#"{"plays": []}"#, "plays: send 1 to"),
        (user0.as_str(), r#"{"plays": [{"song_id": "s1", "timestamp": -5}]}"#, "plays[0].timestamp"),
        (user0.as_str(), r#"{"plays": [{"song": "s1"}]}"#, "unknown field"),
    ];
    for (user, body, needle) in bad {
        let (s, v) = call(&st, "POST", &format!("/v1/users/{user}/plays"), Some(body), Some(TOKEN)).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(needle), "{body}: {v}");
    }
    // Songs the catalogue does not know are counted and skipped: the user
    // stays where they were, a user never seen stays unknown.
    let (_, was) = call(&st, "GET", &format!("/v1/users/{user0}"), None, None).await;
    let unknown = r#"{"plays": [{"song_id": "nope", "timestamp": 5}, {"song_id": "", "timestamp": 6}]}"#;
    let (s, v) = call(&st, "POST", &format!("/v1/users/{user0}/plays"), Some(unknown), Some(TOKEN)).await;
    assert_eq!((s, &v["plays_added"], &v["unknown_songs"]), (StatusCode::OK, &Value::from(0), &Value::from(2)), "{v}");
    assert_eq!(v["cohort"], was["cohort"]);
    let stranger = "d".repeat(32);
    let (s, v) = call(&st, "POST", &format!("/v1/users/{stranger}/plays"), Some(unknown), Some(TOKEN)).await;
    assert_eq!((s, v["cohort"].is_null()), (StatusCode::OK, true), "{v}");
    let (s, _) = call(&st, "GET", &format!("/v1/users/{stranger}"), None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(
        &st,
        "POST",
        &format!("/v1/users/{user0}/plays"),
        Some(r#"{"plays": [{"song_id": "s1", "timestamp": 5}]}"#),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[test]
fn the_release_score_is_the_batch_policys_score() {
    let dir = fixture(200);
    let m = Served::load(&dir.path().join("model"), &dir.path().join("ingest")).unwrap();
    for hw in [0.0, 0.5, 2.0] {
        let tp = cohortcast_core::targeting::TargetingParams { history_weight: hw };
        for artists in [vec![2u32], vec![1, 7], vec![0, 4, 9]] {
            let (fast, reference) = (m.affinity(&artists, &tp), m.affinity_reference(&artists, &tp));
            assert_eq!(fast.len(), 4);
            for (a, b) in fast.iter().zip(&reference) {
                assert!((a - b).abs() < 1e-5, "history weight {hw}, artists {artists:?}: {fast:?} vs {reference:?}");
            }
        }
    }
}

#[tokio::test]
async fn an_ingest_folder_without_hours_still_serves_and_says_null() {
    let dir = fixture(40);
    std::fs::remove_file(dir.path().join("ingest/active_hours.npy")).unwrap();
    let st = state(dir.path(), Some(TOKEN));
    let (s, v) = call(&st, "GET", "/v1/cohorts", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["cohorts"].as_array().unwrap().iter().all(|c| c["active_hours"].is_null()), "{v}");
    let (_, u) = call(&st, "GET", &format!("/v1/users/{:032x}", 3), None, None).await;
    assert!(u["active_hours"].is_null() && u["utc_offset"].is_null(), "{u}");
    let body = r#"{"plays": [{"song_id": "s6", "timestamp": 1485000000}]}"#;
    let (s, v) = call(&st, "POST", &format!("/v1/users/{:032x}/plays", 3), Some(body), Some(TOKEN)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["active_hours"].is_null(), "{v}");
    let (s, page) = call(&st, "GET", "/", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let page = page.as_str().unwrap();
    assert!(page.contains("id=\"cohort-sizes\"") && !page.contains("id=\"cohort-hours\""));
    // A mask file that does not match the users is refused at load.
    std::fs::write(dir.path().join("ingest/active_hours.npy"), b"not npy").unwrap();
    assert!(Served::load(&dir.path().join("model"), &dir.path().join("ingest")).is_err());
}

#[tokio::test]
async fn hostile_requests_get_clear_answers() {
    let dir = fixture(200);
    let st = state(dir.path(), Some(TOKEN));
    // Pages past the end, however large, are not found; none wraps to 0.
    let body = r#"{"notification_id": "n-1", "artist_ids": ["a2"]}"#;
    let (s, v) = call(&st, "POST", "/v1/releases", Some(body), Some(TOKEN)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["next"].is_null(), "200 users fit one page");
    let (s, v) = call(&st, "GET", "/v1/releases/n-1/users?page=0", None, None).await;
    assert_eq!((s, v["users"].as_array().unwrap().len()), (StatusCode::OK, 200));
    for page in ["1", "1152921504606846976", "18446744073709551615"] {
        let (s, v) = call(&st, "GET", &format!("/v1/releases/n-1/users?page={page}"), None, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "page {page}: {v}");
        assert!(v["error"].as_str().unwrap().contains("past the last page"), "{v}");
    }
    // Repeated artists count once; too many distinct ones are refused.
    let many = vec!["\"a2\""; 100_000].join(",");
    let (s, v) = call(
        &st,
        "POST",
        "/v1/releases",
        Some(&format!(r#"{{"notification_id": "n-3", "artist_ids": [{many}]}}"#)),
        Some(TOKEN),
    )
    .await;
    assert_eq!((s, &v["pushed_users"]), (StatusCode::OK, &Value::from(200)), "{v}");
    let distinct: Vec<String> = (0..101).map(|i| format!("\"x{i}\"")).collect();
    let (s, v) = call(
        &st,
        "POST",
        "/v1/releases",
        Some(&format!(r#"{{"notification_id": "n-4", "artist_ids": [{}]}}"#, distinct.join(","))),
        Some(TOKEN),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(v["error"].as_str().unwrap().contains("at most 100"), "{v}");
    // The limit is one every JSON client reads exactly.
    let body = r#"{"notification_id": "n-5", "artist_ids": ["a2"], "max_users": 9007199254740992}"#;
    let (s, v) = call(&st, "POST", "/v1/releases", Some(body), Some(TOKEN)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    // The scheme is case-insensitive; a 401 says which scheme to use.
    let req = |auth: &str| {
        Request::builder()
            .method("POST")
            .uri("/v1/model/reload")
            .header(header::AUTHORIZATION, auth)
            .body(Body::empty())
            .unwrap()
    };
    let resp = app(st.clone()).oneshot(req(&format!("bearer {TOKEN}"))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app(st.clone()).oneshot(req(&format!("BEARER  {TOKEN}"))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app(st.clone()).oneshot(req("Bearer wrong")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"cohortcast\"");
    // Times are those the ingest accepts: 1970 to 9999.
    let user = "f".repeat(32);
    for (t, ok) in [(-1i64, false), (i64::MAX, false), (253_402_300_800, false), (0, true), (1_485_000_000, true)] {
        let body = format!(r#"{{"plays": [{{"song_id": "s1", "timestamp": {t}}}]}}"#);
        let (s, v) = call(&st, "POST", &format!("/v1/users/{user}/plays"), Some(&body), Some(TOKEN)).await;
        assert_eq!(s == StatusCode::OK, ok, "timestamp {t}: {v}");
    }
    // A user added by their plays counts everywhere.
    let (_, h) = call(&st, "GET", "/healthz", None, None).await;
    assert_eq!(h["users"], 201);
    let (_, m) = call(&st, "GET", "/metrics", None, None).await;
    assert!(m.as_str().unwrap().contains("cohortcast_users 201"), "{m}");
    let (_, c) = call(&st, "GET", "/v1/cohorts", None, None).await;
    let sizes: u64 = c["cohorts"].as_array().unwrap().iter().map(|c| c["size"].as_u64().unwrap()).sum();
    assert_eq!(sizes, 201);
    // A model user who moves leaves the old cohort's size.
    let moved = format!("{:032x}", 0);
    let body = r#"{"plays": [{"song_id": "s7", "timestamp": 1485000000}]}"#;
    let (s, v) = call(&st, "POST", &format!("/v1/users/{moved}/plays"), Some(body), Some(TOKEN)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, c) = call(&st, "GET", "/v1/cohorts", None, None).await;
    let sizes: u64 = c["cohorts"].as_array().unwrap().iter().map(|c| c["size"].as_u64().unwrap()).sum();
    assert_eq!(sizes, 201);
}

/// A random JSON value, small or extreme.
fn fuzz_value(rng: &mut cohortcast_core::rng::Rng, depth: usize) -> Value {
    match rng.below(if depth > 2 { 8 } else { 10 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(0.5)),
        2 => [
            Value::from(-1),
            Value::from(0),
            Value::from(1),
            Value::from(i64::MAX),
            Value::from(i64::MIN),
            Value::from(u64::MAX),
        ][rng.below(6)]
        .clone(),
        3 => Value::from([1e308, -1e-308, 0.5, -0.0, 1.0000001][rng.below(5)]),
        4 => Value::String(String::new()),
        5 => Value::String("a2".into()),
        6 => Value::String(String::from_utf8_lossy(&cohortcast_core::fuzz::line(rng, 6)).into_owned()),
        7 => Value::String("x".repeat(rng.below(5000))),
        8 => Value::Array((0..rng.below(4)).map(|_| fuzz_value(rng, depth + 1)).collect()),
        _ => Value::Object(
            (0..rng.below(4))
                .map(|i| {
                    (["song_id", "timestamp", "notification_id", "z"][i % 4].to_string(), fuzz_value(rng, depth + 1))
                })
                .collect(),
        ),
    }
}

/// Fuzz: the JSON handlers answer any body with a 2xx or a 4xx that
/// carries a JSON error, never a 5xx or a panic.
#[tokio::test]
async fn fuzzed_json_bodies_get_a_clear_answer() {
    let dir = fixture(200);
    let st = state(dir.path(), Some(TOKEN));
    let mut rng = cohortcast_core::rng::Rng::new(99);
    let release = serde_json::json!({
        "notification_id": "n-1", "artist_ids": ["a2", "a7"], "max_users": 50,
        "min_expected_ctr": 0.1, "grouping": "user"
    });
    let plays = serde_json::json!({"plays": [{"song_id": "s1", "timestamp": 1485000000}]});
    let keys = ["notification_id", "artist_ids", "max_users", "min_expected_ctr", "grouping", "plays", "extra"];
    for case in 0..(cohortcast_core::fuzz::cases() / 100).max(50) {
        let (uri, base) = if case % 2 == 0 {
            ("/v1/releases".to_string(), release.clone())
        } else {
            (
                format!("/v1/users/{}/plays", ["f".repeat(32), format!("{:032x}", 3), "zz".into()][rng.below(3)]),
                plays.clone(),
            )
        };
        let mut v = base;
        for _ in 0..1 + rng.below(3) {
            let obj = v.as_object_mut().unwrap();
            let key = keys[rng.below(keys.len())].to_string();
            match rng.below(3) {
                0 => {
                    obj.remove(&key);
                }
                1 => {
                    obj.insert(key, fuzz_value(&mut rng, 0));
                }
                _ => {
                    if let Some(Value::Array(a)) = obj.get_mut("plays") {
                        a.push(fuzz_value(&mut rng, 1));
                    }
                }
            }
        }
        let mut body = v.to_string();
        if rng.below(10) == 0 {
            let mut cut = rng.below(body.len() + 1);
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
        }
        let (s, answer) = call(&st, "POST", &uri, Some(&body), Some(TOKEN)).await;
        assert!(!s.is_server_error(), "{s} for {uri} {body}: {answer}");
        if !s.is_success() {
            assert!(answer["error"].is_string(), "{s} for {uri} {body}: {answer}");
        }
    }
}
