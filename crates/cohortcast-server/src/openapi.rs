//! The OpenAPI document served at `/openapi.json`, derived by utoipa from
//! the request types (`PlaysRequest`, `ReleaseRequest`: their fields,
//! bounds and `deny_unknown_fields`) and from the `#[utoipa::path]` on
//! each handler (every status code it can answer). Schemathesis checks the
//! served document against the server in CI (`tests/cli/serve.rs`).

use serde_json::{json, Value};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::api::{self, releases};

/// The body of every error answer.
#[derive(ToSchema)]
#[allow(dead_code)] // written by `ApiError`, described here
pub struct ErrorBody {
    /// What was wrong, in words a person can act on.
    error: String,
}

/// `grouping` of a release: `taste` (the default), `user` or `release`.
pub fn grouping_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .enum_values(Some([json!("taste"), json!("user"), json!("release"), Value::Null]))
        .default(Some("taste".into()))
        .description(Some(
            "`taste` (whole taste cohorts, ranked by their mean score) or `user` (each user by their own score); `release`, grouping for a batch, is the same for one notification",
        ))
        .into()
}

/// The bearer token the mutating routes (and, with `--protect-reads`,
/// the reads) require.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "cohortcast", description = "Cohorts of listeners and the notifications to push them."),
    paths(
        api::healthz,
        api::metrics,
        api::cohorts,
        api::cohort,
        api::user,
        api::add_plays,
        releases::release,
        releases::release_users,
        api::reload
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth)
)]
struct Document;

/// The document, as JSON.
pub fn document() -> Value {
    serde_json::to_value(Document::openapi()).expect("the OpenAPI document serialises")
}
