//! # cohortcast-data
//!
//! Reading and writing for cohortcast: the Saavn inputs through DataFusion
//! ([`ingest`], read a line at a time by [`lines`], with the embedded
//! engine's plays summed in [`pair_sums`]),
//! and the files a run leaves behind ([`files`], [`stages`]), each written
//! under a temporary name and renamed when complete.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod files;
pub mod ingest;
pub mod inputs;
pub mod lines;
pub mod pair_sums;
pub mod samples;
pub mod stages;
pub mod store;

pub use error::{IoError, Result};
pub use ingest::cluster;
