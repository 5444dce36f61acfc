//! # cohortcast-app
//!
//! What cohortcast makes of its stage folders, shared by the command
//! line and the HTTP server:
//! - [`model`]: the model served and reported on: the factors and cohorts
//!   `train` wrote, the play counts `ingest` wrote, and what is derived
//!   from them once at load (each cohort's top artists and listening
//!   hours, id lookups, cohorts ranked for a release);
//! - [`dashboard`]: the report page, one server-rendered HTML page of SVG
//!   charts, which `cohortcast run` writes as `report.html` and
//!   `cohortcast serve` answers `GET /` with.
//!
//! It neither trains nor speaks HTTP: `cohortcast-core` holds the maths,
//! `cohortcast-data` the reading and writing, `cohortcast-server` the
//! routes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dashboard;
pub mod model;

pub use model::{LoadError, Served};
