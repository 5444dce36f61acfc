//! # cohortcast-server
//!
//! The HTTP API over a trained model (axum): cohorts and their top
//! artists, a user's cohort, new plays folded into a user's factors (the
//! ALS fold-in, Hu, Koren & Volinsky 2008: one least-squares solve with the
//! artist factors fixed) and the nearest cohort, and the release decision,
//! meaning which cohorts to push a new notification and whom, ranked by
//! the same expected-CTR score as the batch policy. [`app`] builds the router
//! without a socket; [`serve`] binds it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use cohortcast_server::{app, serve, AppState, Config, Limits, Served};
//! let dir = std::path::Path::new("out");
//! let model = Served::load(&dir.join("model"), &dir.join("ingest"))?;
//! let config = Config { model_dir: dir.join("model"), ingest_dir: dir.join("ingest"), ..Config::default() };
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! serve(listener, AppState::new(config, model), Limits::default(), std::future::pending()).await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod api;
mod listen;
mod metrics;
mod openapi;

// The served model and the report page belong to the application crate.
use cohortcast_app::{dashboard, model};

pub use api::{
    ApiError, AppState, Config, PlayIn, PlaysRequest, ReleaseRequest, BODY_LIMIT, MAX_PLAYS, MAX_UPDATED_USERS, PAGE,
};
pub use cohortcast_app::{LoadError, Served};
pub use listen::Limits;

/// The API, without a socket (tests call it directly), with its OpenAPI
/// document at `/openapi.json`.
pub fn app(state: std::sync::Arc<AppState>) -> axum::Router {
    api::app(state, openapi::document())
}

/// Serves the API on `listener` within `limits` until `shutdown`
/// completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: std::sync::Arc<AppState>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listen::serve_limited(listener, app(state), limits, shutdown).await
}
