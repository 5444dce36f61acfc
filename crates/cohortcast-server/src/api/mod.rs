//! Routes and the handlers of reads, plays and reloads; the release
//! handlers are in `releases`, what they share in `state`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use cohortcast_core::hours;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::metrics::ModelGauges;
use crate::model::{ArtistShare, HoursView, Served};

pub(crate) mod releases;
mod state;
mod whole;

pub use releases::ReleaseRequest;
use releases::{release, release_users};
use state::{blocking, err, guard, json_body, Update};
pub use state::{ApiError, AppState, Config, BODY_LIMIT, MAX_PLAYS, MAX_UPDATED_USERS, PAGE};

/// The API, without a socket (tests call it directly).
pub fn app(state: Arc<AppState>, document: serde_json::Value) -> Router {
    let document = Arc::new(document);
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
        .route("/openapi.json", get(move || async move { Json(document.as_ref().clone()) }))
        .route_layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn dashboard(State(st): State<Arc<AppState>>) -> Result<axum::response::Html<String>, ApiError> {
    let m = st.model();
    let page = blocking("drawing the dashboard", move || crate::dashboard::of_served(&m).to_string()).await?;
    Ok(axum::response::Html(page))
}

/// Liveness, with the model's size.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "Up", body = serde_json::Value)))]

pub(crate) async fn healthz(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let m = st.model();
    let (users, _) = st.live_sizes(&m);
    Json(json!({ "status": "ok", "users": users, "cohorts": m.k() }))
}

/// Metrics for Prometheus.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "The OpenMetrics text exposition")))]

pub(crate) async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    let m = st.model();
    let age = SystemTime::now().duration_since(m.loaded_at).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let (users, _) = st.live_sizes(&m);
    let text = st.metrics.render(ModelGauges { age_seconds: age, users: users as i64, cohorts: m.k() as i64 });
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text)
}

#[derive(Serialize)]
pub(crate) struct CohortView {
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

/// Every cohort: size, top artists with play shares, and active hours
/// (members who play at each hour of the day, the peak hours first).
#[utoipa::path(get, path = "/v1/cohorts", responses((status = 200, description = "The cohorts", body = serde_json::Value)))]

pub(crate) async fn cohorts(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let m = st.model();
    let (_, sizes) = st.live_sizes(&m);
    let list: Vec<CohortView> = (0..m.k()).map(|c| cohort_view(&m, &sizes, c, false)).collect();
    Json(json!({ "cohorts": list }))
}

/// One cohort, with a sample of members.
#[utoipa::path(get, path = "/v1/cohorts/{id}",
    params(("id" = u64, Path, minimum = 0, maximum = 4294967295_u64, description = "The cohort's number")),
    responses((status = 200, description = "The cohort", body = serde_json::Value),
              (status = 400, description = "An error", body = crate::openapi::ErrorBody),
              (status = 404, description = "An error", body = crate::openapi::ErrorBody)))]

pub(crate) async fn cohort(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<CohortView>, ApiError> {
    let m = st.model();
    let c: usize = id.parse().map_err(|_| err(StatusCode::BAD_REQUEST, format!("cohort `{id}` is not a number")))?;
    if c >= m.k() {
        return Err(err(StatusCode::NOT_FOUND, format!("no cohort {c}: the model has cohorts 0 to {}", m.k() - 1)));
    }
    let (_, sizes) = st.live_sizes(&m);
    Ok(Json(cohort_view(&m, &sizes, c, true)))
}

/// A user's cohort, top artists and the hours of the day they play at.
#[utoipa::path(get, path = "/v1/users/{user_id}",
    params(("user_id" = String, Path, description = "32 hex digits")),
    responses((status = 200, description = "The user", body = serde_json::Value),
              (status = 404, description = "An error", body = crate::openapi::ErrorBody)))]

pub(crate) async fn user(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlayIn {
    /// The song, as in the metadata; a song the catalogue does not know
    /// is counted in `unknown_songs` and skipped.
    pub song_id: String,
    /// Unix seconds, up to the end of the year 9999.
    #[schema(minimum = 0, maximum = 253402300799_i64)]
    #[serde(deserialize_with = "whole::i64")]
    pub timestamp: i64,
}

/// `POST /v1/users/{user_id}/plays`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaysRequest {
    /// New plays, 1 to 10 000 ([`MAX_PLAYS`]).
    #[schema(min_items = 1, max_items = 10000)]
    pub plays: Vec<PlayIn>,
}

/// New plays of a user (new users too): the factors are folded in from the
/// fixed artist factors and the user moves to the nearest cohort; reads
/// see it at once.
#[utoipa::path(post, path = "/v1/users/{user_id}/plays", security(("bearer" = [])),
    params(("user_id" = String, Path, pattern = "^[0-9a-fA-F]{32}$", description = "32 hex digits")),
    request_body = PlaysRequest,
    responses((status = 200, description = "The user's cohort now (unchanged when no song was known)", body = serde_json::Value),
              (status = 400, description = "An error", body = crate::openapi::ErrorBody),
              (status = 401, description = "An error", body = crate::openapi::ErrorBody),
              (status = 403, description = "An error", body = crate::openapi::ErrorBody),
              (status = 409, description = "An error", body = crate::openapi::ErrorBody),
              (status = 413, description = "An error", body = crate::openapi::ErrorBody),
              (status = 415, description = "An error", body = crate::openapi::ErrorBody),
              (status = 422, description = "An error", body = crate::openapi::ErrorBody),
              (status = 503, description = "An error", body = crate::openapi::ErrorBody)))]

pub(crate) async fn add_plays(
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

/// Load the model folder again, atomically; requests in flight finish on
/// the old model.
#[utoipa::path(post, path = "/v1/model/reload", security(("bearer" = [])),
    responses((status = 200, description = "Reloaded", body = serde_json::Value),
              (status = 401, description = "An error", body = crate::openapi::ErrorBody),
              (status = 403, description = "An error", body = crate::openapi::ErrorBody),
              (status = 422, description = "An error", body = crate::openapi::ErrorBody)))]

pub(crate) async fn reload(State(st): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
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
