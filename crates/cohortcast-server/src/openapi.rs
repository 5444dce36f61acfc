//! The OpenAPI 3 description served at `/openapi.json`.

use serde_json::{json, Value};

fn error_responses() -> Value {
    json!({ "description": "An error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

/// The document.
pub fn document() -> Value {
    let ok = |d: &str| json!({ "description": d, "content": { "application/json": {} } });
    json!({
        "openapi": "3.0.3",
        "info": { "title": "cohortcast", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Cohorts of listeners and the notifications to push them." },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } },
                "Release": {
                    "type": "object", "required": ["notification_id", "artist_ids"], "additionalProperties": false,
                    "properties": {
                        "notification_id": { "type": "string", "pattern": "[^ \\t\\n\\f\\r]" },
                        "artist_ids": { "type": "array", "items": { "type": "string" }, "minItems": 1,
                                        "description": "repeats count once; at most 100 distinct; artists nobody has played are listed in `unknown_artists`, and a release of only those pushes nobody" },
                        "max_users": { "type": "integer", "minimum": 0, "maximum": 9007199254740991u64, "nullable": true },
                        "min_expected_ctr": { "type": "number", "minimum": 0, "maximum": 1, "nullable": true },
                        "grouping": { "type": "string", "enum": ["taste", "user", "release", null], "default": "taste", "nullable": true }
                    }
                }
            }
        },
        "paths": {
            "/healthz": { "get": { "summary": "Liveness, with the model's size", "responses": { "200": ok("Up") } } },
            "/metrics": { "get": { "summary": "Metrics for Prometheus", "responses": { "200": { "description": "the OpenMetrics text exposition" } } } },
            "/v1/cohorts": { "get": { "summary": "Every cohort: size, top artists with play shares, and active hours (members who play at each hour of the day, the peak hours first)",
                                       "responses": { "200": ok("The cohorts") } } },
            "/v1/cohorts/{id}": { "get": {
                "summary": "One cohort, with a sample of members",
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "integer", "minimum": 0, "maximum": 4294967295u64 } }],
                "responses": { "200": ok("The cohort"), "400": error_responses(), "404": error_responses() } } },
            "/v1/users/{user_id}": { "get": {
                "summary": "A user's cohort, top artists and the hours of the day they play at",
                "parameters": [{ "name": "user_id", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": { "200": ok("The user"), "404": error_responses() } } },
            "/v1/users/{user_id}/plays": { "post": {
                "summary": "New plays of a user (new users too): the factors are folded in from the fixed artist factors and the user moves to the nearest cohort; reads see it at once",
                "security": [{ "bearer": [] }],
                "parameters": [{ "name": "user_id", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[0-9a-fA-F]{32}$" } }],
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "required": ["plays"], "additionalProperties": false,
                    "properties": { "plays": { "type": "array", "minItems": 1, "maxItems": 10000, "items": {
                        "type": "object", "required": ["song_id", "timestamp"], "additionalProperties": false,
                        "properties": { "song_id": { "type": "string", "description": "a song the catalogue does not know is counted in `unknown_songs` and skipped" },
                                        "timestamp": { "type": "integer", "minimum": 0, "maximum": 253402300799u64 } } } } } } } } },
                "responses": { "200": ok("The user's cohort now (unchanged when no song was known)"), "400": error_responses(),
                               "401": error_responses(), "403": error_responses(), "409": error_responses(),
                               "413": error_responses(), "415": error_responses(), "422": error_responses(),
                               "503": error_responses() } } },
            "/v1/releases": { "post": {
                "summary": "Decide whom to push a new release: cohorts ranked by expected CTR, those pushed under the limits, expected clicks, the first page of user ids",
                "security": [{ "bearer": [] }],
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Release" } } } },
                "responses": { "200": ok("The decision"), "400": error_responses(), "401": error_responses(),
                               "403": error_responses(), "413": error_responses(), "415": error_responses(),
                               "422": error_responses() } } },
            "/v1/releases/{notification_id}/users": { "get": {
                "summary": "A page of a recent decision's pushed user ids",
                "parameters": [
                    { "name": "notification_id", "in": "path", "required": true, "schema": { "type": "string" } },
                    { "name": "page", "in": "query", "schema": { "type": "integer", "minimum": 0, "maximum": 4294967295u64 } }],
                "responses": { "200": ok("The page"), "400": error_responses(), "404": error_responses() } } },
            "/v1/model/reload": { "post": {
                "summary": "Load the model folder again, atomically; requests in flight finish on the old model",
                "security": [{ "bearer": [] }],
                "responses": { "200": ok("Reloaded"), "401": error_responses(), "403": error_responses(),
                               "422": error_responses() } } }
        }
    })
}
