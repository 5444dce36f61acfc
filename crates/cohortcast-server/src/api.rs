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
use cohortcast_core::targeting::TargetingParams;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::metrics::Metrics;
use crate::model::{rank, ArtistShare, RankedCohort, Served};

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

/// What every handler shares.
pub struct AppState {
    config: Config,
    model: RwLock<Arc<Served>>,
    releases: Mutex<VecDeque<(String, Vec<u32>)>>,
    metrics: Metrics,
}

impl AppState {
    /// A state serving `model`.
    pub fn new(config: Config, model: Served) -> Arc<AppState> {
        Arc::new(AppState {
            config,
            model: RwLock::new(Arc::new(model)),
            releases: Mutex::new(VecDeque::new()),
            metrics: Metrics::default(),
        })
    }

    /// The model now; a request keeps the one it started with.
    fn model(&self) -> Arc<Served> {
        self.model.read().expect("a reload panicked").clone()
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
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
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
            Err(e) => e.into_response(),
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
    let page = tokio::task::spawn_blocking(move || m.dashboard())
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("drawing the dashboard failed: {e}")))?;
    Ok(axum::response::Html(page))
}

async fn healthz(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let m = st.model();
    Json(json!({ "status": "ok", "users": m.model.users.len(), "cohorts": m.k() }))
}

async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    let m = st.model();
    let age = SystemTime::now().duration_since(m.loaded_at).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let text = st.metrics.render(&[
        ("cohortcast_model_age_seconds", "Seconds since the model was loaded.", age),
        ("cohortcast_users", "Users in the model.", m.model.users.len() as f64),
        ("cohortcast_cohorts", "Cohorts in the model.", m.k() as f64),
    ]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

#[derive(Serialize)]
struct CohortView {
    id: usize,
    size: usize,
    top_artists: Vec<ArtistShare>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sample_members: Option<Vec<String>>,
}

fn cohort_view(m: &Served, c: usize, sample: bool) -> CohortView {
    CohortView {
        id: c,
        size: m.sizes[c],
        top_artists: m.top_artists[c].clone(),
        sample_members: sample.then(|| m.members(c).take(20).map(|u| m.model.users[u].clone()).collect()),
    }
}

async fn cohorts(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let m = st.model();
    let list: Vec<CohortView> = (0..m.k()).map(|c| cohort_view(&m, c, false)).collect();
    Json(json!({ "cohorts": list }))
}

async fn cohort(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<CohortView>, ApiError> {
    let m = st.model();
    let c: usize = id.parse().map_err(|_| err(StatusCode::BAD_REQUEST, format!("cohort `{id}` is not a number")))?;
    if c >= m.k() {
        return Err(err(StatusCode::NOT_FOUND, format!("no cohort {c}: the model has cohorts 0 to {}", m.k() - 1)));
    }
    Ok(Json(cohort_view(&m, c, true)))
}

async fn user(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let m = st.model();
    let u = m.user(&id).ok_or_else(|| err(StatusCode::NOT_FOUND, format!("unknown user `{id}`: not in the model")))?;
    Ok(Json(json!({
        "user_id": m.model.users[u],
        "cohort": m.model.labels[u],
        "top_artists": m.user_top_artists(u),
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
    /// Cohorts below this expected CTR are not pushed.
    pub min_expected_ctr: Option<f64>,
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
    if r.notification_id.trim().is_empty() {
        return Err(unprocessable("notification_id: must not be empty".into()));
    }
    if r.artist_ids.is_empty() {
        return Err(unprocessable("artist_ids: name at least one artist".into()));
    }
    let min = r.min_expected_ctr.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&min) {
        return Err(unprocessable(format!("min_expected_ctr: {min} is not in [0, 1]")));
    }
    let m = st.model();
    let (known, unknown): (Vec<&String>, Vec<&String>) = r.artist_ids.iter().partition(|a| m.artist(a).is_some());
    if known.is_empty() {
        return Err(unprocessable(format!(
            "artist_ids: no artist of this notification is known to the model ({}); nobody has played them",
            r.artist_ids.join(", ")
        )));
    }
    let ids: Vec<u32> = known.iter().filter_map(|a| m.artist(a)).collect();
    let tp = st.config.targeting.clone();
    let m2 = m.clone();
    let ctr = tokio::task::spawn_blocking(move || m2.affinity(&ids, &tp))
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("scoring failed: {e}")))?;
    let ranked = rank(&m.sizes, &ctr, r.max_users, min);
    let chosen: Vec<bool> = {
        let mut v = vec![false; m.k()];
        ranked.iter().filter(|c| c.pushed).for_each(|c| v[c.cohort] = true);
        v
    };
    let users: Vec<u32> =
        m.model.labels.iter().enumerate().filter(|(_, &c)| chosen[c as usize]).map(|(u, _)| u as u32).collect();
    let expected_clicks: f64 = ranked.iter().filter(|c| c.pushed).map(|c| c.size as f64 * c.expected_ctr).sum();
    let answer = ReleaseAnswer {
        notification_id: r.notification_id.clone(),
        known_artists: known.into_iter().cloned().collect(),
        unknown_artists: unknown.into_iter().cloned().collect(),
        pushed_users: users.len(),
        expected_clicks,
        expected_ctr: (!users.is_empty()).then(|| expected_clicks / users.len() as f64),
        users: users.iter().take(PAGE).map(|&u| m.model.users[u as usize].clone()).collect(),
        next: (users.len() > PAGE).then(|| format!("/v1/releases/{}/users?page=1", encode(&r.notification_id))),
        cohorts: ranked,
    };
    let mut kept = st.releases.lock().expect("poisoned");
    kept.retain(|(id, _)| id != &r.notification_id);
    if kept.len() >= KEPT_RELEASES {
        kept.pop_front();
    }
    kept.push_back((r.notification_id, users));
    Ok(Json(answer))
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
    let Some((_, users)) = kept.iter().find(|(n, _)| n == &id) else {
        return Err(err(
            StatusCode::NOT_FOUND,
            format!("no recent release decision for `{id}`: POST /v1/releases first"),
        ));
    };
    let slice: Vec<&str> =
        users.iter().skip(page * PAGE).take(PAGE).map(|&u| m.model.users[u as usize].as_str()).collect();
    let next =
        ((page + 1) * PAGE < users.len()).then(|| format!("/v1/releases/{}/users?page={}", encode(&id), page + 1));
    Ok(Json(json!({ "notification_id": id, "page": page, "total": users.len(), "users": slice, "next": next })))
}

async fn reload(State(st): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let (model_dir, ingest_dir) = (st.config.model_dir.clone(), st.config.ingest_dir.clone());
    let loaded = tokio::task::spawn_blocking(move || Served::load(&model_dir, &ingest_dir))
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("reload failed: {e}")))?
        .map_err(|e| {
            err(StatusCode::UNPROCESSABLE_ENTITY, format!("the model was not reloaded, the old one serves on: {e}"))
        })?;
    let (users, k) = (loaded.model.users.len(), loaded.k());
    // Requests in flight hold the old model's Arc and finish on it.
    *st.model.write().expect("poisoned") = Arc::new(loaded);
    st.releases.lock().expect("poisoned").clear();
    Ok(Json(json!({ "reloaded": true, "users": users, "cohorts": k })))
}

async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

/// Counts of the routes, for tests.
pub fn route_counts(state: &AppState) -> HashMap<String, u64> {
    state.metrics.counts()
}
