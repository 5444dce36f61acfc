//! `POST /v1/releases` (who to push a new release to) and its paged
//! user lists.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use cohortcast_core::grouping::Grouping;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::model::{rank, RankedCohort, Served};

use super::state::{blocking, err, json_body, ApiError, AppState, KEPT_RELEASES, MAX_ARTISTS, PAGE};

/// `POST /v1/releases`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Release)]
pub struct ReleaseRequest {
    /// The notification to push.
    #[schema(pattern = "[^ \\t\\n\\f\\r]")]
    pub notification_id: String,
    /// The artists it names: repeats count once; at most 100 distinct;
    /// artists nobody has played are listed in `unknown_artists`, and a
    /// release of only those pushes nobody.
    #[schema(min_items = 1)]
    pub artist_ids: Vec<String>,
    /// Most users to push.
    #[schema(minimum = 0, maximum = 9007199254740991_u64)]
    #[serde(default, deserialize_with = "super::whole::opt_usize")]
    pub max_users: Option<usize>,
    /// Cohorts (or, grouped by user, users) below this expected CTR are
    /// not pushed.
    #[schema(minimum = 0, maximum = 1)]
    pub min_expected_ctr: Option<f64>,
    /// `taste` (the default: whole taste cohorts, ranked by their mean
    /// score) or `user` (each user by their own score; `release`, grouping
    /// for a batch, is the same for one notification).
    #[schema(schema_with = crate::openapi::grouping_schema)]
    pub grouping: Option<Grouping>,
}

#[derive(Serialize)]
pub(crate) struct ReleaseAnswer {
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

/// Decide whom to push a new release: cohorts ranked by expected CTR,
/// those pushed under the limits, expected clicks, the first page of user
/// ids.
#[utoipa::path(post, path = "/v1/releases", security(("bearer" = [])),
    request_body = ReleaseRequest,
    responses((status = 200, description = "The decision", body = serde_json::Value),
              (status = 400, description = "An error", body = crate::openapi::ErrorBody),
              (status = 401, description = "An error", body = crate::openapi::ErrorBody),
              (status = 403, description = "An error", body = crate::openapi::ErrorBody),
              (status = 413, description = "An error", body = crate::openapi::ErrorBody),
              (status = 415, description = "An error", body = crate::openapi::ErrorBody),
              (status = 422, description = "An error", body = crate::openapi::ErrorBody)))]

pub(crate) async fn release(
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

/// A page of a recent decision's pushed user ids.
#[utoipa::path(get, path = "/v1/releases/{notification_id}/users",
    params(("notification_id" = String, Path, description = "A recent release's notification"),
           ("page" = Option<u64>, Query, minimum = 0, maximum = 4294967295_u64, description = "The page, from 0")),
    responses((status = 200, description = "The page", body = serde_json::Value),
              (status = 400, description = "An error", body = crate::openapi::ErrorBody),
              (status = 404, description = "An error", body = crate::openapi::ErrorBody)))]

pub(crate) async fn release_users(
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
