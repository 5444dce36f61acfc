//! What an evaluation measures: the shares of users every plan is
//! measured at, and the result the reports print and write.

use cohortcast_core::ctr::{CtrReport, GroupCtr, ReachPoint};

/// The shares of users every plan is measured at.
pub const REACHES: [f64; 4] = [0.10, 0.25, 0.50, 1.0];

/// The chosen plan and every baseline, measured on the same click log.
pub struct Evaluation {
    pub reports: Vec<CtrReport>,
    /// Per report: its CTR at [`REACHES`] (none where it pushes fewer
    /// users), and at its own reach.
    pub reach: Vec<(Vec<Option<ReachPoint>>, ReachPoint)>,
    /// The chosen plan's CTR per push group.
    pub by_group: Vec<GroupCtr>,
    pub clicks_outside_model: usize,
}
