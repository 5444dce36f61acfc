//! Routes, handlers, authentication and errors.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cohortcast_core::grouping::Grouping;
use cohortcast_core::hours;
use cohortcast_core::targeting::TargetingParams;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::metrics::{Metrics, ModelGauges};
use crate::model::{rank, ArtistShare, HoursView, RankedCohort, Served};

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 1 << 20;
/// Pushed user ids returned per page of a release.
pub const PAGE: usize = 10_000;
/// Release decisions kept for paging (the oldest is dropped first).
pub const KEPT_RELEASES: usize = 64;

/// How the server is configured.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The bearer token mutating requests must carry. `None`: they are
    /// refused (never open).
    pub token: Option<String>,
    /// Whether reads need the token too.
    pub protect_reads: bool,
    /// The folders a reload reads: model and ingest.
    pub model_dir: PathBuf,
    /// The ingest folder beside it.
    pub ingest_dir: PathBuf,
    /// Targeting parameters of the release decisions.
    pub targeting: TargetingParams,
}

/// Users whose plays arrived since the model was loaded (most kept).
pub const MAX_UPDATED_USERS: usize = 1_000_000;
/// Plays accepted in one request, at most.
pub const MAX_PLAYS: usize = 10_000;
/// Distinct artists one notification may name.
pub const MAX_ARTISTS: usize = 100;

/// A user whose plays arrived since the model was loaded: all their plays
/// so far and the cohort their folded-in factors are nearest to.
#[derive(Debug, Clone)]
struct Update {
    cohort: u32,
    plays: Vec<(u32, f32)>,
    /// Hours of the day with plays ([`cohortcast_core::hours`] mask).
    hours: u32,
}

/// A release decision kept for paging: model rows, then updated users' ids.
type Kept = (String, Vec<u32>, Vec<String>);

/// What every handler shares.
pub struct AppState {
    config: Config,
    model: RwLock<Arc<Served>>,
    updates: RwLock<HashMap<String, Update>>,
    releases: Mutex<VecDeque<Kept>>,
    metrics: Metrics,
}

impl AppState {
    /// A state serving `model`.
    pub fn new(config: Config, model: Served) -> Arc<AppState> {
        Arc::new(AppState {
            config,
            model: RwLock::new(Arc::new(model)),
            updates: RwLock::new(HashMap::new()),
            releases: Mutex::new(VecDeque::new()),
            metrics: Metrics::default(),
        })
    }

    /// The model now; a request keeps the one it started with.
    fn model(&self) -> Arc<Served> {
        self.model.read().expect("a reload panicked").clone()
    }

    /// Users served and each cohort's size, counting the users whose plays
    /// were posted since training in their new cohorts.
    fn live_sizes(&self, m: &Served) -> (usize, Vec<usize>) {
        let mut sizes = m.sizes.clone();
        let mut users = m.model.users.len();
        for (id, up) in self.updates.read().expect("poisoned").iter() {
            match m.user(id) {
                Some(u) => sizes[m.model.labels[u] as usize] -= 1,
                None => users += 1,
            }
            sizes[up.cohort as usize] += 1;
        }
        (users, sizes)
    }
}

/// An error answer: a status and a message a person can act on.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.0.is_server_error() {
            tracing::error!(status = %self.0, "{}", self.1);
        }
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn err(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError(status, msg.into())
}

/// Bad JSON is a 400 (syntax) or 422 (a field missing or of the wrong type),
/// with serde's words, which name the field.
fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(v)| v).map_err(|r| {
        let status = match r {
            JsonRejection::JsonDataError(_) => StatusCode::UNPROCESSABLE_ENTITY,
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::BytesRejection(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        err(status, r.body_text())
    })
}

/// Runs CPU-bound work off the async workers; a panic in it is a 500
/// that names `what`.
async fn blocking<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("{what} failed: {e}")))
}

/// Equal in constant time for equal lengths (the token's length is not secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(config: &Config, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &config.token else {
        return Err(err(
            StatusCode::FORBIDDEN,
            "this server has no token configured (COHORTCAST_TOKEN or --token-file), so it refuses requests that need one",
        ));
    };
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match given {
        Some(g) if same(g.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(err(StatusCode::UNAUTHORIZED, "the bearer token is wrong")),
        None => Err(err(StatusCode::UNAUTHORIZED, "send `Authorization: Bearer <token>`")),
    }
}

async fn guard(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "other".into());
    let mutating = req.method() != axum::http::Method::GET && req.method() != axum::http::Method::HEAD;
    let open = matches!(route.as_str(), "/healthz" | "/metrics");
    let start = Instant::now();
    let resp = if !open && (mutating || st.config.protect_reads) {
        match authorized(&st.config, req.headers()) {
            Ok(()) => next.run(req).await,
            Err(e) => {
                let mut resp = e.into_response();
                if resp.status() == StatusCode::UNAUTHORIZED {
                    resp.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        header::HeaderValue::from_static("Bearer realm=\"cohortcast\""),
                    );
                }
                resp
            }
        }
    } else {
        next.run(req).await
    };
    st.metrics.record(&route, resp.status().as_u16(), start.elapsed());
    resp
}

/// The API, without a socket (tests call it directly).
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/cohorts", get(cohorts))
        .route("/v1/cohorts/{id}", get(cohort))
        .route("/v1/users/{user_id}", get(user))
        .route("/v1/users/{user_id}/plays", post(add_plays))
        .route("/v1/releases", post(release))
        .route("/v1/releases/{notification_id}/users", get(release_users))
        .route("/v1/model/reload", post(reload))
        .route("/openapi.json", get(openapi))
        .route_layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn dashboard(State(st): State<Arc<AppState>>) -> Result<axum::response::Html<String>, ApiError> {
    let m = st.model();
    let page = blocking("drawing the dashboard", move || crate::dashboard::of_served(&m).to_string()).await?;
    Ok(axum::response::Html(page))
}

async fn healthz(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let m = st.model();
    let (users, _) = st.live_sizes(&m);
    Json(json!({ "status": "ok", "users": users, "cohorts": m.k() }))
}

async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    let m = st.model();
    let age = SystemTime::now().duration_since(m.loaded_at).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let (users, _) = st.live_sizes(&m);
    let text = st.metrics.render(ModelGauges { age_seconds: age, users: users as i64, cohorts: m.k() as i64 });
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text)
}

#[derive(Serialize)]
struct CohortView {
    id: usize,
    size: usize,
    top_artists: Vec<ArtistShare>,
    /// `null` when the model's ingest kept no hours.
    active_hours: Option<HoursView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sample_members: Option<Vec<String>>,
}

fn cohort_view(m: &Served, sizes: &[usize], c: usize, sample: bool) -> CohortView {
    CohortView {
        id: c,
        size: sizes[c],
        top_artists: m.top_artists[c].clone(),
        active_hours: m.cohort_hours.as_ref().map(|h| h.view(c, m.sizes[c])),
        sample_members: sample.then(|| m.members(c).take(20).map(|u| m.model.users[u].clone()).collect()),
    }
}

async fn cohorts(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let m = st.model();
    let (_, sizes) = st.live_sizes(&m);
    let list: Vec<CohortView> = (0..m.k()).map(|c| cohort_view(&m, &sizes, c, false)).collect();
    Json(json!({ "cohorts": list }))
}

async fn cohort(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<CohortView>, ApiError> {
    let m = st.model();
    let c: usize = id.parse().map_err(|_| err(StatusCode::BAD_REQUEST, format!("cohort `{id}` is not a number")))?;
    if c >= m.k() {
        return Err(err(StatusCode::NOT_FOUND, format!("no cohort {c}: the model has cohorts 0 to {}", m.k() - 1)));
    }
    let (_, sizes) = st.live_sizes(&m);
    Ok(Json(cohort_view(&m, &sizes, c, true)))
}

async fn user(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let m = st.model();
    let key = id.to_ascii_lowercase();
    if let Some(up) = st.updates.read().expect("poisoned").get(&key) {
        return Ok(Json(json!({
            "user_id": key,
            "cohort": up.cohort,
            "top_artists": m.top_of(&up.plays),
            "active_hours": m.utc_offset_minutes().map(|_| hours::hours_in(up.hours)),
            "utc_offset": m.utc_offset_minutes().map(hours::format_utc_offset),
            "updated_since_training": true,
        })));
    }
    let u = m.user(&id).ok_or_else(|| err(StatusCode::NOT_FOUND, format!("unknown user `{id}`: not in the model")))?;
    Ok(Json(json!({
        "user_id": m.model.users[u],
        "cohort": m.model.labels[u],
        "top_artists": m.user_top_artists(u),
        "active_hours": m.user_hours(u),
        "utc_offset": m.utc_offset_minutes().map(hours::format_utc_offset),
        "updated_since_training": false,
    })))
}

/// One play of `POST /v1/users/{user_id}/plays`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlayIn {
    /// The song, as in the metadata.
    pub song_id: String,
    /// Unix seconds.
    pub timestamp: i64,
}

/// `POST /v1/users/{user_id}/plays`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaysRequest {
    /// New plays, at most [`MAX_PLAYS`].
    pub plays: Vec<PlayIn>,
}

async fn add_plays(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Result<Json<PlaysRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let r = json_body(body)?;
    let unprocessable = |m: String| err(StatusCode::UNPROCESSABLE_ENTITY, m);
    if cohortcast_core::saavn::user_key(&id).is_none() {
        return Err(unprocessable(format!("user_id `{id}` is not 32 hexadecimal characters")));
    }
    if r.plays.is_empty() || r.plays.len() > MAX_PLAYS {
        return Err(unprocessable(format!("plays: send 1 to {MAX_PLAYS} plays, not {}", r.plays.len())));
    }
    if let Some((i, p)) = r.plays.iter().enumerate().find(|(_, p)| !cohortcast_core::saavn::is_timestamp(p.timestamp)) {
        return Err(unprocessable(format!(
            "plays[{i}].timestamp: {} is not a Unix time in seconds from 1970 to 9999",
            p.timestamp
        )));
    }
    let m = st.model();
    if !m.has_songs() {
        return Err(err(
            StatusCode::CONFLICT,
            "the ingest folder has no songs.csv (older runs did not write it): run `cohortcast ingest` again",
        ));
    }
    let key = id.to_ascii_lowercase();
    let mut added: HashMap<u32, f32> = HashMap::new();
    let mut unknown: Vec<&str> = Vec::new();
    // Hours count plays of known songs, as in ingest.
    let mut new_hours = 0u32;
    for p in &r.plays {
        let artists = m.song_artists(&p.song_id);
        if artists.is_empty() {
            unknown.push(&p.song_id);
        } else if let Some(offset) = m.utc_offset_minutes() {
            new_hours |= hours::hour_bit(p.timestamp, offset);
        }
        for &a in artists {
            *added.entry(a).or_default() += 1.0;
        }
    }
    let before = st.updates.read().expect("poisoned").get(&key).cloned();
    let in_model = m.user(&key);
    let previous = before.as_ref().map(|b| b.cohort).or_else(|| in_model.map(|u| m.model.labels[u]));
    if added.is_empty() {
        // Songs the catalogue does not know yet are counted and skipped:
        // the user stays where they are (a user the model has never seen
        // stays unknown, `cohort` null).
        return Ok(Json(json!({
            "user_id": key,
            "cohort": previous,
            "previous_cohort": previous,
            "new_user": false,
            "plays_added": 0,
            "unknown_songs": unknown.len(),
        })));
    }
    let mut merged: HashMap<u32, f32> = match (&before, in_model) {
        (Some(b), _) => b.plays.iter().copied().collect(),
        (None, Some(u)) => m.user_plays(u).into_iter().collect(),
        (None, None) => HashMap::new(),
    };
    for (a, n) in added {
        *merged.entry(a).or_default() += n;
    }
    let hours_now = before.as_ref().map(|b| b.hours).unwrap_or_else(|| m.user_mask(in_model)) | new_hours;
    let mut plays: Vec<(u32, f32)> = merged.into_iter().collect();
    plays.sort_unstable_by_key(|p| p.0);
    let (m2, p2) = (m.clone(), plays.clone());
    let cohort = blocking("the fold-in", move || m2.cohort_of(&p2))
        .await?
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("fold-in failed: {e}")))?;
    {
        let mut updates = st.updates.write().expect("poisoned");
        if !updates.contains_key(&key) && updates.len() >= MAX_UPDATED_USERS {
            return Err(err(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{MAX_UPDATED_USERS} users were updated since the model was loaded: retrain and reload"),
            ));
        }
        updates.insert(key.clone(), Update { cohort, plays: plays.clone(), hours: hours_now });
    }
    Ok(Json(json!({
        "user_id": key,
        "cohort": cohort,
        "previous_cohort": previous,
        "new_user": in_model.is_none() && before.is_none(),
        "plays_added": r.plays.len() - unknown.len(),
        "unknown_songs": unknown.len(),
        "top_artists": m.top_of(&plays),
        "active_hours": m.utc_offset_minutes().map(|_| hours::hours_in(hours_now)),
    })))
}

/// `POST /v1/releases`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// The notification to push.
    pub notification_id: String,
    /// The artists it names.
    pub artist_ids: Vec<String>,
    /// Most users to push.
    pub max_users: Option<usize>,
    /// Cohorts (or, grouped by user, users) below this expected CTR are
    /// not pushed.
    pub min_expected_ctr: Option<f64>,
    /// `taste` (the default: whole taste cohorts, ranked by their mean
    /// score) or `user` (each user by their own score; `release`, grouping
    /// for a batch, is the same for one notification).
    pub grouping: Option<Grouping>,
}

#[derive(Serialize)]
struct ReleaseAnswer {
    notification_id: String,
    known_artists: Vec<String>,
    unknown_artists: Vec<String>,
    cohorts: Vec<RankedCohort>,
    pushed_users: usize,
    expected_clicks: f64,
    expected_ctr: Option<f64>,
    users: Vec<String>,
    next: Option<String>,
}

async fn release(
    State(st): State<Arc<AppState>>,
    body: Result<Json<ReleaseRequest>, JsonRejection>,
) -> Result<Json<ReleaseAnswer>, ApiError> {
    let r = json_body(body)?;
    let unprocessable = |m: String| err(StatusCode::UNPROCESSABLE_ENTITY, m);
    if r.notification_id.trim_ascii().is_empty() {
        return Err(unprocessable("notification_id: must not be empty".into()));
    }
    if r.artist_ids.is_empty() {
        return Err(unprocessable("artist_ids: name at least one artist".into()));
    }
    let mut artist_ids = r.artist_ids.clone();
    artist_ids.sort_unstable();
    artist_ids.dedup();
    if artist_ids.len() > MAX_ARTISTS {
        return Err(unprocessable(format!(
            "artist_ids: {} distinct artists; a notification names at most {MAX_ARTISTS}",
            artist_ids.len()
        )));
    }
    // The largest integer every JSON client reads exactly (2^53 - 1).
    if r.max_users.is_some_and(|n| n as u64 > 9_007_199_254_740_991) {
        return Err(unprocessable("max_users: at most 9007199254740991".into()));
    }
    let min = r.min_expected_ctr.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&min) {
        return Err(unprocessable(format!("min_expected_ctr: {min} is not in [0, 1]")));
    }
    let m = st.model();
    let (known, unknown): (Vec<&String>, Vec<&String>) = artist_ids.iter().partition(|a| m.artist(a).is_some());
    if known.is_empty() {
        // Nobody has played any of them: nobody to push.
        return Ok(Json(ReleaseAnswer {
            notification_id: r.notification_id.clone(),
            known_artists: Vec::new(),
            unknown_artists: artist_ids.clone(),
            cohorts: Vec::new(),
            pushed_users: 0,
            expected_clicks: 0.0,
            expected_ctr: None,
            users: Vec::new(),
            next: None,
        }));
    }
    let ids: Vec<u32> = known.iter().filter_map(|a| m.artist(a)).collect();
    let tp = st.config.targeting.clone();
    let m2 = m.clone();
    let by_user = r.grouping.unwrap_or(Grouping::Taste) != Grouping::Taste;
    let (ctr, scores) = blocking("scoring", move || {
        if by_user {
            // The cohorts' means of the users' own scores: one pass.
            let scores = m2.user_scores(&ids, &tp);
            (m2.cohort_means(&scores), Some(scores))
        } else {
            (m2.affinity(&ids, &tp), None)
        }
    })
    .await?;
    // Users updated since training count in their new cohorts.
    let (mut sizes, mut moved, mut extra) = (m.sizes.clone(), vec![false; m.model.users.len()], Vec::new());
    for (id, up) in st.updates.read().expect("poisoned").iter() {
        if let Some(u) = m.user(id) {
            sizes[m.model.labels[u] as usize] -= 1;
            moved[u] = true;
        }
        sizes[up.cohort as usize] += 1;
        extra.push((id.clone(), up.cohort));
    }
    extra.sort();
    if let Some(scores) = scores {
        let (cohorts, users, extra, expected_clicks) =
            by_user_decision(&m.model.labels, &scores, &moved, &extra, &ctr, r.max_users, min);
        return Ok(Json(decide(&st, &m, r.notification_id, known, unknown, cohorts, users, extra, expected_clicks)));
    }
    let ranked = rank(&sizes, &ctr, r.max_users, min);
    let chosen: Vec<bool> = {
        let mut v = vec![false; m.k()];
        ranked.iter().filter(|c| c.pushed).for_each(|c| v[c.cohort] = true);
        v
    };
    let users: Vec<u32> = m
        .model
        .labels
        .iter()
        .enumerate()
        .filter(|&(u, &c)| chosen[c as usize] && !moved[u])
        .map(|(u, _)| u as u32)
        .collect();
    let extra: Vec<String> = extra.into_iter().filter(|(_, c)| chosen[*c as usize]).map(|(id, _)| id).collect();
    let expected_clicks: f64 = ranked.iter().filter(|c| c.pushed).map(|c| c.size as f64 * c.expected_ctr).sum();
    Ok(Json(decide(&st, &m, r.notification_id, known, unknown, ranked, users, extra, expected_clicks)))
}

/// A release grouped by user: every user ranked by their own score (a user
/// updated since training by their new cohort's mean, as the model has no
/// factors trained on their plays), pushed in rank order while the score
/// reaches `min` and `max_users` is not reached. Returns the taste cohorts
/// of the pushed users (each with how many were pushed and their mean
/// score), the pushed model users and updated ids, and the expected clicks.
fn by_user_decision(
    labels: &[u32],
    scores: &[f32],
    moved: &[bool],
    extra: &[(String, u32)],
    cohort_ctr: &[f64],
    max_users: Option<usize>,
    min: f64,
) -> (Vec<RankedCohort>, Vec<u32>, Vec<String>, f64) {
    // (score, cohort, model user or updated id's index), best first.
    let mut all: Vec<(f64, u32, Result<u32, usize>)> = (0..labels.len())
        .filter(|&u| !moved[u])
        .map(|u| (scores[u] as f64, labels[u], Ok(u as u32)))
        .chain(extra.iter().enumerate().map(|(i, (_, c))| (cohort_ctr[*c as usize], *c, Err(i))))
        .collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.2.cmp(&b.2)));
    let limit = max_users.unwrap_or(usize::MAX);
    let (mut users, mut ids, mut clicks) = (Vec::new(), Vec::new(), 0f64);
    let (mut size, mut sum) = (vec![0usize; cohort_ctr.len()], vec![0f64; cohort_ctr.len()]);
    for &(s, c, who) in all.iter().take_while(|x| x.0 >= min).take(limit) {
        match who {
            Ok(u) => users.push(u),
            Err(i) => ids.push(extra[i].0.clone()),
        }
        clicks += s;
        size[c as usize] += 1;
        sum[c as usize] += s;
    }
    users.sort_unstable();
    let mut cohorts: Vec<RankedCohort> = (0..size.len())
        .filter(|&c| size[c] > 0)
        .map(|c| RankedCohort { cohort: c, size: size[c], expected_ctr: sum[c] / size[c] as f64, pushed: true })
        .collect();
    cohorts.sort_by(|a, b| b.expected_ctr.total_cmp(&a.expected_ctr).then(a.cohort.cmp(&b.cohort)));
    (cohorts, users, ids, clicks)
}

/// The answer to a release decision, kept for paging.
#[allow(clippy::too_many_arguments)]
fn decide(
    st: &AppState,
    m: &Served,
    notification_id: String,
    known: Vec<&String>,
    unknown: Vec<&String>,
    cohorts: Vec<RankedCohort>,
    users: Vec<u32>,
    extra: Vec<String>,
    expected_clicks: f64,
) -> ReleaseAnswer {
    let total = users.len() + extra.len();
    let answer = ReleaseAnswer {
        notification_id: notification_id.clone(),
        known_artists: known.into_iter().cloned().collect(),
        unknown_artists: unknown.into_iter().cloned().collect(),
        pushed_users: total,
        expected_clicks,
        expected_ctr: (total > 0).then(|| expected_clicks / total as f64),
        users: page_of(m, &users, &extra, 0),
        next: (total > PAGE).then(|| format!("/v1/releases/{}/users?page=1", encode(&notification_id))),
        cohorts,
    };
    let mut kept = st.releases.lock().expect("poisoned");
    kept.retain(|(id, _, _)| id != &notification_id);
    if kept.len() >= KEPT_RELEASES {
        kept.pop_front();
    }
    kept.push_back((notification_id, users, extra));
    answer
}

/// Page `page` of the pushed ids: the model's users, then the updated ones.
fn page_of(m: &Served, users: &[u32], extra: &[String], page: usize) -> Vec<String> {
    let ids = users.iter().map(|&u| m.model.users[u as usize].as_str()).chain(extra.iter().map(String::as_str));
    ids.skip(page.saturating_mul(PAGE)).take(PAGE).map(String::from).collect()
}

/// Percent-encodes what is not unreserved in a URL path segment.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn release_users(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let page: usize = match q.get("page") {
        Some(p) => p.parse().map_err(|_| err(StatusCode::BAD_REQUEST, format!("page `{p}` is not a number")))?,
        None => 0,
    };
    let m = st.model();
    let kept = st.releases.lock().expect("poisoned");
    let Some((_, users, extra)) = kept.iter().find(|(n, _, _)| n == &id) else {
        return Err(err(
            StatusCode::NOT_FOUND,
            format!("no recent release decision for `{id}`: POST /v1/releases first"),
        ));
    };
    let total = users.len() + extra.len();
    let pages = total.div_ceil(PAGE).max(1);
    if page >= pages {
        return Err(err(
            StatusCode::NOT_FOUND,
            format!("page {page} is past the last page of `{id}` ({}): pages are 0 to {}", pages - 1, pages - 1),
        ));
    }
    let slice = page_of(&m, users, extra, page);
    let next = ((page + 1) * PAGE < total).then(|| format!("/v1/releases/{}/users?page={}", encode(&id), page + 1));
    Ok(Json(json!({ "notification_id": id, "page": page, "total": total, "users": slice, "next": next })))
}

async fn reload(State(st): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let (model_dir, ingest_dir) = (st.config.model_dir.clone(), st.config.ingest_dir.clone());
    let loaded = blocking("the reload", move || Served::load(&model_dir, &ingest_dir)).await?.map_err(|e| {
        err(StatusCode::UNPROCESSABLE_ENTITY, format!("the model was not reloaded, the old one serves on: {e}"))
    })?;
    let (users, k) = (loaded.model.users.len(), loaded.k());
    // Requests in flight hold the old model's Arc and finish on it.
    *st.model.write().expect("poisoned") = Arc::new(loaded);
    // A newer model was trained on newer plays: the updates are dropped
    // with the decisions made on the old one.
    st.updates.write().expect("poisoned").clear();
    st.releases.lock().expect("poisoned").clear();
    Ok(Json(json!({ "reloaded": true, "users": users, "cohorts": k })))
}

async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}
