//! Turning play counts into implicit-feedback confidence.
//!
//! Hu, Koren & Volinsky ("Collaborative Filtering for Implicit Feedback
//! Datasets", ICDM 2008) separate *preference* `p_ui = 1 if r_ui > 0` from
//! *confidence* `c_ui`, which grows with the evidence `r_ui` (here: plays of
//! artist `i` by user `u`). Every scheme below gives `c_ui = 1 + alpha * w(r_ui)`
//! for observed cells and `c_ui = 1` elsewhere, so confidence is never below
//! the baseline and the ALS systems stay positive definite:
//!
//! * [`Weighting::Linear`]: `w = r`, the paper's first proposal (eq. 2).
//! * [`Weighting::Log`]: `w = ln(1 + r / epsilon)`, the paper's log variant
//!   (section 4), which keeps a user who played one artist 3 000 times from
//!   drowning everything else. The default, with `epsilon = 1`.
//! * [`Weighting::Bm25`]: Okapi BM25 term weighting (Robertson & Zaragoza
//!   2009) as used by the `implicit` library's `bm25_weight`: per-artist idf
//!   `ln(U) - ln(1 + df)` (clamped at 0) times a per-user length-normalised
//!   saturation `r (K1 + 1) / (K1 (1 - B + B len/avglen) + r)`, `K1 = 100`,
//!   `B = 0.8`.

use serde::{Deserialize, Serialize};

use crate::sparse::Csr;

/// How play counts become confidence weights; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Weighting {
    /// `c = 1 + alpha * plays`.
    Linear,
    /// `c = 1 + alpha * ln(1 + plays)` (default).
    #[default]
    Log,
    /// `c = 1 + alpha * bm25(plays)`.
    Bm25,
}

impl Weighting {
    /// Name as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Weighting::Linear => "linear",
            Weighting::Log => "log",
            Weighting::Bm25 => "bm25",
        }
    }

    /// Parses the CLI spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "linear" => Some(Weighting::Linear),
            "log" => Some(Weighting::Log),
            "bm25" => Some(Weighting::Bm25),
            _ => None,
        }
    }
}

/// BM25 saturation constant, as in `implicit`.
pub const BM25_K1: f32 = 100.0;
/// BM25 length-normalisation strength, as in `implicit`.
pub const BM25_B: f32 = 0.8;

/// The confidence matrix `c_ui` (stored cells only) for a user × artist play
/// matrix.
pub fn confidence(plays: &Csr, weighting: Weighting, alpha: f32) -> Csr {
    match weighting {
        Weighting::Linear => plays.map_values(|r| 1.0 + alpha * r),
        Weighting::Log => plays.map_values(|r| 1.0 + alpha * r.ln_1p()),
        Weighting::Bm25 => {
            let users = plays.rows().max(1) as f32;
            let idf: Vec<f32> =
                plays.col_counts().iter().map(|&df| (users.ln() - (df as f32).ln_1p()).max(0.0)).collect();
            let lens = plays.row_sums();
            let avg = (lens.iter().sum::<f32>() / lens.len().max(1) as f32).max(f32::MIN_POSITIVE);
            let mut out = Vec::with_capacity(plays.nnz());
            for (u, len) in lens.iter().enumerate() {
                let norm = 1.0 - BM25_B + BM25_B * len / avg;
                let (idx, val) = plays.row(u);
                for (&i, &r) in idx.iter().zip(val) {
                    let w = r * (BM25_K1 + 1.0) / (BM25_K1 * norm + r) * idf[i as usize];
                    out.push(1.0 + alpha * w);
                }
            }
            plays.with_values(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plays() -> Csr {
        Csr::from_triplets(3, 3, &[(0, 0, 1.0), (0, 1, 100.0), (1, 0, 3.0), (2, 0, 2.0), (2, 2, 5.0)]).unwrap()
    }

    #[test]
    fn linear_and_log_follow_their_formulas() {
        let c = confidence(&plays(), Weighting::Linear, 2.0);
        assert_eq!(c.get(0, 1), 201.0);
        let c = confidence(&plays(), Weighting::Log, 2.0);
        assert!((c.get(0, 1) - (1.0 + 2.0 * 101f32.ln())).abs() < 1e-4);
        assert_eq!(c.nnz(), 5);
    }

    #[test]
    fn bm25_downweights_artists_everyone_plays_and_stays_at_least_one() {
        let c = confidence(&plays(), Weighting::Bm25, 1.0);
        // Artist 0 is played by all three users: idf clamps to zero.
        assert_eq!(c.get(1, 0), 1.0);
        assert!(c.get(2, 2) > 1.0);
        assert!(c.values().iter().all(|&v| v >= 1.0));
        assert_eq!(Weighting::parse("bm25"), Some(Weighting::Bm25));
        assert_eq!(Weighting::parse("nope"), None);
    }
}
