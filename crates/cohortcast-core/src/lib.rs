//! # cohortcast-core
//!
//! The maths and the domain of cohortcast, synchronous and free of I/O:
//!
//! * [`sparse`]: the user × artist play matrix ([`sparse::Csr`]).
//! * [`confidence`]: play counts to implicit-feedback confidence.
//! * [`counts`]: the hash table the ingest sums (user, artist) plays in.
//! * [`als`]: implicit ALS (Hu, Koren & Volinsky 2008) with the
//!   conjugate-gradient solver (Takács et al. 2011) and an exact reference.
//! * [`kmeans`]: cohorts by k-means|| (or k-means++) seeding and Lloyd iterations.
//! * [`scores`]: predicted affinity of users to a batch of notifications.
//! * [`grouping`]: push groups built for the batch (release, taste, user).
//! * [`targeting`]: one notification per cohort, and the baselines.
//! * [`ctr`]: click-through rate of a push plan on a click log.
//! * [`hours`]: the hours of the day users and cohorts listen at.
//! * [`saavn`]: the input layout and its row rules.
//! * [`synth`]: realistic generated data with known ground truth.
//!
//! ```
//! use cohortcast_core::{als::{AlsModel, AlsParams}, kmeans::{Cohorts, KMeansParams}, sparse::Csr};
//! // Two users who play artists 0 and 1, two who play artists 2 and 3.
//! let plays = Csr::from_triplets(4, 4, &[
//!     (0, 0, 9.0), (0, 1, 3.0), (1, 0, 4.0), (1, 1, 6.0),
//!     (2, 2, 7.0), (2, 3, 2.0), (3, 2, 5.0), (3, 3, 8.0),
//! ]).unwrap();
//! let model = AlsModel::fit(&plays, &AlsParams { factors: 4, ..AlsParams::default() }).unwrap();
//! let cohorts = Cohorts::fit(model.user_factors(), 4, &KMeansParams { n_clusters: 2, ..KMeansParams::default() }).unwrap();
//! assert_eq!(cohorts.labels()[0], cohorts.labels()[1]);
//! assert_ne!(cohorts.labels()[0], cohorts.labels()[2]);
//! ```

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod als;
pub mod confidence;
pub mod counts;
pub mod ctr;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod grouping;
pub mod hours;
pub mod kernels;
pub mod kmeans;
pub mod linalg;
pub mod policy;
pub mod rng;
pub mod saavn;
pub mod scores;
pub mod sparse;
pub mod synth;
pub mod targeting;

pub use error::{DataError, FitError, ParamError};
