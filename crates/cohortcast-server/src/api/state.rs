//! What every handler shares: the limits, the served model and its
//! overlay of posted plays, errors, and the token guard.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cohortcast_core::targeting::TargetingParams;
use serde_json::json;

use crate::metrics::Metrics;
use crate::model::Served;

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
pub(super) struct Update {
    pub(super) cohort: u32,
    pub(super) plays: Vec<(u32, f32)>,
    /// Hours of the day with plays ([`cohortcast_core::hours`] mask).
    pub(super) hours: u32,
}

/// A release decision kept for paging: model rows, then updated users' ids.
type Kept = (String, Vec<u32>, Vec<String>);

/// What every handler shares.
pub struct AppState {
    pub(super) config: Config,
    pub(super) model: RwLock<Arc<Served>>,
    pub(super) updates: RwLock<HashMap<String, Update>>,
    pub(super) releases: Mutex<VecDeque<Kept>>,
    pub(super) metrics: Metrics,
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
    pub(super) fn model(&self) -> Arc<Served> {
        self.model.read().expect("a reload panicked").clone()
    }

    /// Users served and each cohort's size, counting the users whose plays
    /// were posted since training in their new cohorts.
    pub(super) fn live_sizes(&self, m: &Served) -> (usize, Vec<usize>) {
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
pub struct ApiError(pub(super) StatusCode, pub(super) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.0.is_server_error() {
            tracing::error!(status = %self.0, "{}", self.1);
        }
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

pub(super) fn err(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError(status, msg.into())
}

/// Bad JSON is a 400 (syntax) or 422 (a field missing or of the wrong type),
/// with serde's words, which name the field.
pub(super) fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
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
pub(super) async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
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

pub(super) async fn guard(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
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
