//! Choosing what to push: one notification per cohort, and the baselines.
//!
//! The default policy, [`expected_ctr_plan`], scores every (cohort,
//! notification) pair by the cohort's *predicted* affinity to the
//! notification's artists and pushes each cohort its best. A user's affinity
//! to a notification is the best, over its artists, of
//!
//! ```text
//!   clamp(x_uᵀ y_a, 0, 1) + history_weight · share_u(a)
//! ```
//!
//! The first term is the ALS preference (fitted to `p_ui ∈ {0, 1}`, so the
//! clamp reads as a probability of liking); it generalises to artists the
//! user never played, but it saturates near 1 for every artist the user
//! played at all. The second term, the artist's share of the user's own
//! plays, restores *how much* the user listens, which is what makes them
//! open a "new song by X" notification. [`TargetingParams::history_weight`]
//! sets the blend (0 gives the pure factor score). Because every user is
//! pushed exactly once, picking the cohort-wise argmax of the summed
//! affinity maximises the predicted clicks, and so the overall CTR.
//!
//! Baselines, computed for every report on the same click log:
//! * [`top_artist_plan`]: the classic rule — each cohort's most played
//!   artist, and the notification naming it; a cohort whose top artist has
//!   no notification gets no push.
//! * [`random_plan`]: a uniformly random notification per user (seeded).
//! * [`single_plan`]: one notification for everyone; [`best_single`] picks
//!   the one with the most distinct clickers in the log (a hindsight choice,
//!   so a strong baseline).
//! * [`oracle_plan`]: each user their own most likely notification, from the
//!   generator's ground truth (synthetic data only).

use crate::als::AlsModel;
use crate::policy::Policy;
use crate::rng::Rng;
use crate::scores::Scorer;
use crate::sparse::Csr;

pub use crate::policy::PushPlan;
pub use crate::scores::{Notification, TargetingParams};

/// Mean predicted affinity of each cohort to each notification, row-major
/// `k × notifications`. Notifications with no known artist score 0.
/// `plays` (users × artists, same user order as the model) feeds the
/// listening-share term when `params.history_weight > 0`.
pub fn cohort_affinity(
    model: &AlsModel,
    plays: &Csr,
    labels: &[u32],
    k: usize,
    notifications: &[Notification],
    params: &TargetingParams,
) -> Vec<f64> {
    let nn = notifications.len();
    let scorer = Scorer::new(model, plays, notifications, params);
    // Fixed parts reduced in order, so the scores repeat bit for bit.
    let parts =
        scorer.visit(|| vec![0f64; k * nn], |acc, first, scores| add_cohort_scores(acc, labels, nn, first, scores));
    cohort_means(parts, labels, k, nn)
}

/// Adds a block of users' scores (from user `first` on) to their cohorts'
/// sums in `acc` (`k × nn`).
pub(crate) fn add_cohort_scores(acc: &mut [f64], labels: &[u32], nn: usize, first: usize, scores: &[f32]) {
    for (r, row) in scores.chunks(nn.max(1)).enumerate() {
        let l = labels[first + r] as usize;
        for (o, &s) in acc[l * nn..(l + 1) * nn].iter_mut().zip(row) {
            *o += s as f64;
        }
    }
}

/// The cohorts' mean scores from the parts' sums, reduced in part order.
pub(crate) fn cohort_means(parts: impl IntoIterator<Item = Vec<f64>>, labels: &[u32], k: usize, nn: usize) -> Vec<f64> {
    let mut sums = vec![0f64; k * nn];
    for p in parts {
        sums.iter_mut().zip(p).for_each(|(x, y)| *x += y);
    }
    let sizes = crate::kmeans::cohort_sizes(labels, k);
    sums.chunks(nn.max(1))
        .zip(&sizes)
        .flat_map(|(row, &s)| row.iter().map(move |v| if s > 0 { v / s as f64 } else { 0.0 }))
        .collect()
}

/// The default policy: each cohort gets the notification with the highest
/// predicted affinity (ties to the lower index). Every user is pushed.
pub fn expected_ctr_plan(
    model: &AlsModel,
    plays: &Csr,
    labels: &[u32],
    k: usize,
    notifications: &[Notification],
    params: &TargetingParams,
) -> PushPlan {
    let aff = cohort_affinity(model, plays, labels, k, notifications, params);
    plan_from_affinity(&aff, labels, k, notifications.len())
}

/// [`expected_ctr_plan`] from the cohorts' mean affinities already
/// computed (`k × notifications`, as [`cohort_affinity`] gives them).
pub fn plan_from_affinity(aff: &[f64], labels: &[u32], k: usize, nn: usize) -> PushPlan {
    let choice = (0..k)
        .map(|c| (0..nn).max_by(|&a, &b| aff[c * nn + a].total_cmp(&aff[c * nn + b]).then(b.cmp(&a))).map(|n| n as u32))
        .collect();
    PushPlan::from_cohorts(Policy::ExpectedCtrTaste, labels, choice)
}

/// The classic rule: each cohort's most played artist (summing raw plays of
/// its members) and the first notification naming that artist.
pub fn top_artist_plan(plays: &Csr, labels: &[u32], k: usize, notifications: &[Notification]) -> PushPlan {
    let mut totals = vec![0f64; k * plays.cols()];
    for (u, &l) in labels.iter().enumerate() {
        let (idx, val) = plays.row(u);
        for (&a, &v) in idx.iter().zip(val) {
            totals[l as usize * plays.cols() + a as usize] += v as f64;
        }
    }
    let choice = (0..k)
        .map(|c| {
            let row = &totals[c * plays.cols()..(c + 1) * plays.cols()];
            let top =
                (0..row.len()).filter(|&a| row[a] > 0.0).max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))?;
            notifications.iter().position(|n| n.artists.contains(&(top as u32))).map(|n| n as u32)
        })
        .collect();
    PushPlan::from_cohorts(Policy::TopArtist, labels, choice)
}

/// A uniformly random notification for each user.
pub fn random_plan(users: usize, notifications: usize, seed: u64) -> PushPlan {
    let mut rng = Rng::new(seed);
    let user_push = (0..users).map(|_| (notifications > 0).then(|| rng.below(notifications) as u32)).collect();
    PushPlan { policy: Policy::Random, user_push, cohort_push: None, groups: None }
}

/// The same notification for everyone.
pub fn single_plan(users: usize, notification: Option<u32>) -> PushPlan {
    PushPlan { policy: Policy::BestSingle, user_push: vec![notification; users], cohort_push: None, groups: None }
}

/// The notification with the most distinct clickers (ties to the lower index).
pub fn best_single(clicks: &crate::ctr::Clicks) -> Option<u32> {
    (0..clicks.notifications())
        .max_by(|&a, &b| clicks.clickers(a).len().cmp(&clicks.clickers(b).len()).then(b.cmp(&a)))
        .map(|n| n as u32)
}

/// Each user their own most likely notification under `truth`, a row-major
/// `users × notifications` matrix of click probabilities (NaN where unknown).
pub fn oracle_plan(truth: &[f32], notifications: usize) -> PushPlan {
    let user_push = truth.chunks(notifications.max(1)).map(oracle_choice).collect();
    PushPlan { policy: Policy::Oracle, user_push, cohort_push: None, groups: None }
}

/// The oracle's choice for one user: the notification of highest true
/// click probability in `row` (the first on ties; NaN, unknown, never),
/// or none when every one is unknown.
pub fn oracle_choice(row: &[f32]) -> Option<u32> {
    // Two passes over integer keys in `f32::total_cmp`'s order (the bits,
    // the others flipped for a negative value; NaN below all): the
    // largest key, then the first value with it. (`max_by` with
    // `total_cmp` and an index tie-break carried each comparison into the
    // next: on 100 k rows of 200, 0.08–0.10 s against 0.05–0.06 s, about
    // half of the per-row work in the evaluation's pass over the medium
    // set's truth.)
    fn key(v: f32) -> i32 {
        let bits = v.to_bits() as i32;
        if v.is_nan() {
            i32::MIN
        } else {
            bits ^ (((bits >> 31) as u32) >> 1) as i32
        }
    }
    let best = row.iter().map(|&v| key(v)).max()?;
    if best == i32::MIN {
        return None;
    }
    row.iter().position(|&v| key(v) == best).map(|n| n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::als::AlsParams;

    fn model_two_tastes() -> AlsModel {
        // factors 2: users 0,1 like artist 0; users 2,3 like artist 1.
        let params = AlsParams { factors: 2, ..AlsParams::default() };
        AlsModel::from_factors(params, vec![1.0, 0.0, 0.9, 0.1, 0.0, 1.0, 0.2, 0.8], vec![1.0, 0.0, 0.0, 1.0, 0.5, 0.5])
            .unwrap()
    }

    #[test]
    fn expected_ctr_pushes_each_cohort_its_favourite() {
        let m = model_two_tastes();
        let notes = vec![
            Notification { id: "n-b".into(), artists: vec![1] },
            Notification { id: "n-a".into(), artists: vec![0] },
            Notification { id: "n-none".into(), artists: vec![] },
        ];
        let labels = [0, 0, 1, 1];
        let none = Csr::from_triplets(4, 3, &[]).unwrap();
        let factors_only = TargetingParams { history_weight: 0.0 };
        let plan = expected_ctr_plan(&m, &none, &labels, 2, &notes, &TargetingParams::default());
        assert_eq!(plan.user_push, vec![Some(1), Some(1), Some(0), Some(0)]);
        assert_eq!(plan.users_not_pushed(), 0);
        let aff = cohort_affinity(&m, &none, &labels, 2, &notes, &factors_only);
        assert!((aff[1] - 0.95).abs() < 1e-6, "{aff:?}");
        assert_eq!(aff[2], 0.0);
    }

    #[test]
    fn multi_artist_notification_uses_the_best_artist() {
        let m = model_two_tastes();
        let notes = vec![
            Notification { id: "mid".into(), artists: vec![2] },
            Notification { id: "both".into(), artists: vec![0, 1] },
        ];
        let none = Csr::from_triplets(4, 3, &[]).unwrap();
        let plan = expected_ctr_plan(&m, &none, &[0, 0, 0, 0], 1, &notes, &TargetingParams::default());
        assert_eq!(plan.cohort_push, Some(vec![Some(1)]));
    }

    #[test]
    fn listening_share_breaks_saturated_preferences() {
        // Both artists predicted at the clamp (1.0) for everyone: the factor
        // score cannot choose; the users' own listening can.
        let params = AlsParams { factors: 1, ..AlsParams::default() };
        let m = AlsModel::from_factors(params, vec![2.0, 2.0], vec![1.0, 1.0]).unwrap();
        let plays = Csr::from_triplets(2, 2, &[(0, 0, 1.0), (0, 1, 9.0), (1, 0, 2.0), (1, 1, 8.0)]).unwrap();
        let notes = vec![
            Notification { id: "a0".into(), artists: vec![0] },
            Notification { id: "a1".into(), artists: vec![1] },
        ];
        let aff = cohort_affinity(&m, &plays, &[0, 0], 1, &notes, &TargetingParams { history_weight: 2.0 });
        assert!((aff[0] - (1.0 + 2.0 * 0.15)).abs() < 1e-6, "{aff:?}");
        assert!((aff[1] - (1.0 + 2.0 * 0.85)).abs() < 1e-6, "{aff:?}");
        let plan = expected_ctr_plan(&m, &plays, &[0, 0], 1, &notes, &TargetingParams::default());
        assert_eq!(plan.cohort_push, Some(vec![Some(1)]));
        assert!(TargetingParams { history_weight: -1.0 }.check().is_err());
    }

    #[test]
    fn top_artist_rule_may_leave_cohorts_unpushed() {
        let plays =
            Csr::from_triplets(4, 3, &[(0, 0, 5.0), (1, 2, 9.0), (1, 0, 1.0), (2, 1, 3.0), (3, 1, 1.0)]).unwrap();
        let notes =
            vec![Notification { id: "x".into(), artists: vec![1] }, Notification { id: "y".into(), artists: vec![0] }];
        // cohort 0 = users 0,1: artist 2 (9 plays) beats artist 0 (6): no notification.
        let plan = top_artist_plan(&plays, &[0, 0, 1, 1], 2, &notes);
        assert_eq!(plan.cohort_push, Some(vec![None, Some(0)]));
        assert_eq!(plan.users_not_pushed(), 2);
    }

    #[test]
    fn random_and_oracle_plans() {
        let r = random_plan(1000, 4, 1);
        assert!(r.user_push.iter().all(|p| p.unwrap() < 4));
        assert_eq!(r, random_plan(1000, 4, 1));
        let truth = [0.1, 0.3, 0.2, f32::NAN, 0.5, 0.4];
        assert_eq!(oracle_plan(&truth, 3).user_push, vec![Some(1), Some(1)]);
    }

    #[test]
    fn the_oracle_takes_the_largest_in_total_order_the_first_on_ties_never_nan() {
        // The reference: the largest by `total_cmp`, the lowest index on
        // ties, NaN skipped.
        let reference = |row: &[f32]| {
            (0..row.len())
                .filter(|&n| !row[n].is_nan())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
                .map(|n| n as u32)
        };
        let values = [0.0, -0.0, 0.25, 0.5, 1.0, -1.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, 1e-40];
        let mut rng = crate::rng::Rng::new(3);
        for len in [0, 1, 2, 3, 7, 40] {
            for _ in 0..2000 {
                let row: Vec<f32> = (0..len).map(|_| values[rng.below(values.len())]).collect();
                assert_eq!(oracle_choice(&row), reference(&row), "{row:?}");
            }
        }
        assert_eq!(oracle_choice(&[f32::NAN, f32::NAN]), None);
        assert_eq!(oracle_choice(&[-0.0, 0.0, 0.0]), Some(1), "+0 above -0, the first of equals");
        assert_eq!(oracle_choice(&[f32::NEG_INFINITY, f32::NAN]), Some(0));
    }
}
