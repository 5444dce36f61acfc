//! Click-through rate of a push plan, measured on a click log.
//!
//! For each notification, the users pushed it (all cohorts pushed the same
//! notification combined) and, of those, the distinct users who clicked it:
//! `ctr = users_clicked / users_pushed`. Over the plan, the overall CTR is
//! all clicks by pushed users over all pushes (each user is pushed at most
//! once, so this is the user-weighted mean), and the mean CTR is the
//! unweighted mean over the notifications pushed. Where the generator's
//! ground truth is known, the expected CTR is the mean true click
//! probability over the pushes: the figure the realised CTR estimates.

use crate::policy::Policy;
use serde::Serialize;

use crate::policy::PushPlan;

/// The click log, by notification: sorted, distinct user indices.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Clicks {
    by_notification: Vec<Vec<u32>>,
}

impl Clicks {
    /// Builds the log from `(notification, user)` index pairs; duplicates
    /// (the same user clicking twice) count once.
    pub fn new(notifications: usize, pairs: impl IntoIterator<Item = (u32, u32)>) -> Self {
        let mut by_notification = vec![Vec::new(); notifications];
        for (n, u) in pairs {
            by_notification[n as usize].push(u);
        }
        for v in &mut by_notification {
            v.sort_unstable();
            v.dedup();
        }
        Clicks { by_notification }
    }

    /// Number of notifications.
    pub fn notifications(&self) -> usize {
        self.by_notification.len()
    }

    /// The distinct users who clicked notification `n`.
    pub fn clickers(&self, n: usize) -> &[u32] {
        &self.by_notification[n]
    }

    /// Whether user `u` clicked notification `n`.
    pub fn clicked(&self, n: usize, u: u32) -> bool {
        self.by_notification[n].binary_search(&u).is_ok()
    }
}

/// CTR of one notification under a plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotificationCtr {
    /// Notification index.
    pub notification: u32,
    /// Distinct cohorts among the users pushed it.
    pub cohorts: usize,
    /// Distinct users pushed it.
    pub users_pushed: usize,
    /// Of those, users who clicked it.
    pub users_clicked: usize,
    /// `users_clicked / users_pushed`.
    pub ctr: f64,
    /// Mean true click probability of the pushed users, when known.
    pub expected_ctr: Option<f64>,
}

/// The CTR figures of one plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CtrReport {
    /// The policy.
    pub policy: Policy,
    /// One row per notification pushed to at least one user, by index.
    pub per_notification: Vec<NotificationCtr>,
    /// Users pushed (each at most once).
    pub pushes: usize,
    /// Pushed users who clicked what they were pushed.
    pub clicks: usize,
    /// `clicks / pushes`.
    pub overall_ctr: f64,
    /// Unweighted mean of the per-notification CTRs.
    pub mean_ctr: f64,
    /// Mean true click probability over the pushes, when known.
    pub expected_ctr: Option<f64>,
    /// Users the plan did not push.
    pub users_not_pushed: usize,
}

/// A plan's true click probabilities summed per notification over the
/// users it pushed (NaN, unknown, left out): what its expected CTR is
/// computed from. Built one user at a time, so the truth can be streamed
/// row by row instead of held as a users × notifications matrix.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Expected {
    sum: Vec<f64>,
    known: Vec<usize>,
}

impl Expected {
    /// Nothing yet, for `notifications` notifications.
    pub fn new(notifications: usize) -> Self {
        Expected { sum: vec![0.0; notifications], known: vec![0; notifications] }
    }

    /// Adds a user pushed notification `n`, whose true click
    /// probabilities (one per notification) are `row`.
    pub fn add(&mut self, row: &[f32], n: usize) {
        let v = row.get(n).copied().unwrap_or(f32::NAN);
        if !v.is_nan() {
            self.sum[n] += v as f64;
            self.known[n] += 1;
        }
    }

    /// From a whole row-major users × notifications matrix of true click
    /// probabilities.
    pub fn of_matrix(plan: &PushPlan, truth: &[f32], notifications: usize) -> Self {
        let mut e = Expected::new(notifications);
        for (u, p) in plan.user_push.iter().enumerate() {
            if let Some(n) = *p {
                e.add(&truth[u * notifications..(u + 1) * notifications], n as usize);
            }
        }
        e
    }
}

/// Measures `plan` on `clicks`. `labels` gives each user's cohort (for the
/// cohort counts); `truth`, when given, is a row-major users × notifications
/// matrix of true click probabilities (NaN where unknown).
pub fn evaluate(plan: &PushPlan, labels: &[u32], clicks: &Clicks, truth: Option<&[f32]>) -> CtrReport {
    let expected = truth.map(|t| Expected::of_matrix(plan, t, clicks.notifications()));
    evaluate_expected(plan, labels, clicks, expected.as_ref())
}

/// As [`evaluate`], with the truth already summed over the plan's pushes.
pub fn evaluate_expected(plan: &PushPlan, labels: &[u32], clicks: &Clicks, expected: Option<&Expected>) -> CtrReport {
    let nn = clicks.notifications();
    let mut pushed = vec![0usize; nn];
    let mut clicked = vec![0usize; nn];
    let mut cohorts: Vec<Vec<u32>> = vec![Vec::new(); nn];
    for (u, p) in plan.user_push.iter().enumerate() {
        let Some(n) = *p else { continue };
        let n = n as usize;
        pushed[n] += 1;
        if clicks.clicked(n, u as u32) {
            clicked[n] += 1;
        }
        if let Some(&l) = labels.get(u) {
            cohorts[n].push(l);
        }
    }
    let unknown = Expected::new(nn);
    let e = expected.unwrap_or(&unknown);
    let per_notification: Vec<NotificationCtr> = (0..nn)
        .filter(|&n| pushed[n] > 0)
        .map(|n| {
            let c = &mut cohorts[n];
            c.sort_unstable();
            c.dedup();
            NotificationCtr {
                notification: n as u32,
                cohorts: c.len(),
                users_pushed: pushed[n],
                users_clicked: clicked[n],
                ctr: clicked[n] as f64 / pushed[n] as f64,
                expected_ctr: (e.known[n] > 0).then(|| e.sum[n] / e.known[n] as f64),
            }
        })
        .collect();
    let pushes: usize = pushed.iter().sum();
    let clicks_total: usize = clicked.iter().sum();
    let ratio = |a: f64, b: usize| if b > 0 { a / b as f64 } else { 0.0 };
    CtrReport {
        policy: plan.policy,
        mean_ctr: ratio(per_notification.iter().map(|r| r.ctr).sum(), per_notification.len()),
        per_notification,
        pushes,
        clicks: clicks_total,
        overall_ctr: ratio(clicks_total as f64, pushes),
        expected_ctr: expected.map(|e| ratio(e.sum.iter().sum(), e.known.iter().sum())),
        users_not_pushed: plan.users_not_pushed(),
    }
}

/// A plan's CTR when it pushes only some users.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReachPoint {
    /// Users pushed, as a share of all users.
    pub reach: f64,
    /// Users pushed.
    pub users_pushed: usize,
    /// Of those, users who clicked what they were pushed.
    pub users_clicked: usize,
    /// `users_clicked / users_pushed`.
    pub ctr: f64,
    /// Mean true click probability of the pushed users, when known.
    pub expected_ctr: Option<f64>,
}

/// The plan at each of `reaches` (shares of all users): its pushed users
/// ranked by `rank` (highest first, NaN last, ties to the lower user
/// index) and cut at the share, rounded up. `None` where the plan pushes
/// fewer users than the share asks. `truth`, when given, holds each user's
/// true click probability of what the plan pushed them (NaN unknown).
/// The last point is the plan's own reach, everything it pushed.
pub fn reach_curve(
    plan: &PushPlan,
    rank: &[f32],
    clicks: &Clicks,
    truth: Option<&[f32]>,
    reaches: &[f64],
) -> (Vec<Option<ReachPoint>>, ReachPoint) {
    let users = plan.user_push.len();
    let mut order: Vec<usize> = (0..users).filter(|&u| plan.user_push[u].is_some()).collect();
    let key = |u: usize| if rank[u].is_nan() { f32::NEG_INFINITY } else { rank[u] };
    // Distinct keys (the index breaks ties): an unstable sort is exact.
    order.sort_unstable_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    // Running sums over the ranked users.
    let mut clicked = Vec::with_capacity(order.len() + 1);
    let mut known = Vec::with_capacity(order.len() + 1);
    let mut prob = Vec::with_capacity(order.len() + 1);
    let (mut c, mut k, mut p) = (0usize, 0usize, 0f64);
    clicked.push(0);
    known.push(0);
    prob.push(0.0);
    for &u in &order {
        let n = plan.user_push[u].expect("pushed") as usize;
        c += clicks.clicked(n, u as u32) as usize;
        if let Some(v) = truth.map(|t| t[u]).filter(|v| !v.is_nan()) {
            k += 1;
            p += v as f64;
        }
        clicked.push(c);
        known.push(k);
        prob.push(p);
    }
    let point = |m: usize| ReachPoint {
        reach: if users > 0 { m as f64 / users as f64 } else { 0.0 },
        users_pushed: m,
        users_clicked: clicked[m],
        ctr: if m > 0 { clicked[m] as f64 / m as f64 } else { 0.0 },
        expected_ctr: (truth.is_some() && known[m] > 0).then(|| prob[m] / known[m] as f64),
    };
    let points = reaches
        .iter()
        .map(|&r| {
            let m = ((r * users as f64).ceil() as usize).min(users);
            (m <= order.len()).then(|| point(m))
        })
        .collect();
    (points, point(order.len()))
}

/// CTR of one push group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupCtr {
    /// Group number (taste cohort or release group; the notification's
    /// index for a plan without groups).
    pub group: u32,
    /// Notification pushed.
    pub notification: u32,
    /// Users pushed.
    pub users: usize,
    /// Mean predicted score of the pushes (NaN where none was scored).
    pub predicted_score: f64,
    /// Of the users, those who clicked.
    pub users_clicked: usize,
    /// `users_clicked / users`.
    pub ctr: f64,
    /// Mean true click probability, when known.
    pub expected_ctr: Option<f64>,
}

/// CTR of each group of `plan` that pushed someone, by group number.
/// `scores` and `truth` hold, per user, the predicted score and the true
/// probability of what was pushed (NaN unknown).
pub fn ctr_by_group(plan: &PushPlan, clicks: &Clicks, scores: &[f32], truth: Option<&[f32]>) -> Vec<GroupCtr> {
    let group = |u: usize, n: u32| plan.groups.as_ref().map_or(n, |g| g[u]);
    let groups = plan.user_push.iter().enumerate().filter_map(|(u, p)| p.map(|n| group(u, n) + 1)).max().unwrap_or(0);
    #[derive(Clone, Default)]
    struct Acc {
        note: u32,
        users: usize,
        clicked: usize,
        scored: usize,
        score: f64,
        known: usize,
        prob: f64,
    }
    let mut acc = vec![Acc::default(); groups as usize];
    for (u, p) in plan.user_push.iter().enumerate() {
        let Some(n) = *p else { continue };
        let a = &mut acc[group(u, n) as usize];
        a.note = n;
        a.users += 1;
        a.clicked += clicks.clicked(n as usize, u as u32) as usize;
        if !scores[u].is_nan() {
            a.scored += 1;
            a.score += scores[u] as f64;
        }
        if let Some(v) = truth.map(|t| t[u]).filter(|v| !v.is_nan()) {
            a.known += 1;
            a.prob += v as f64;
        }
    }
    acc.into_iter()
        .enumerate()
        .filter(|(_, a)| a.users > 0)
        .map(|(g, a)| GroupCtr {
            group: g as u32,
            notification: a.note,
            users: a.users,
            predicted_score: if a.scored > 0 { a.score / a.scored as f64 } else { f64::NAN },
            users_clicked: a.clicked,
            ctr: a.clicked as f64 / a.users as f64,
            expected_ctr: (truth.is_some() && a.known > 0).then(|| a.prob / a.known as f64),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_checked_example_with_combined_cohorts() {
        // 6 users in 3 cohorts; cohorts 0 and 2 are both pushed notification 1.
        let labels = [0, 0, 1, 1, 2, 2];
        let plan = PushPlan {
            policy: Policy::ExpectedCtr,
            user_push: vec![Some(1), Some(1), Some(0), Some(0), Some(1), Some(1)],
            cohort_push: Some(vec![Some(1), Some(0), Some(1)]),
            groups: Some(labels.to_vec()),
        };
        // Clicks: user 0 and 4 clicked n1 (user 4 twice), user 2 clicked n1
        // (not what they were pushed), user 3 clicked n0.
        let clicks = Clicks::new(2, [(1, 0), (1, 4), (1, 4), (1, 2), (0, 3)]);
        let truth = [0.0, 0.5, 0.0, 0.1, 0.2, 0.3, 0.4, 0.0, 0.0, 0.2, 0.0, 0.6];
        let r = evaluate(&plan, &labels, &clicks, Some(&truth));
        assert_eq!(r.per_notification.len(), 2);
        let n0 = &r.per_notification[0];
        assert_eq!((n0.cohorts, n0.users_pushed, n0.users_clicked), (1, 2, 1));
        assert_eq!(n0.ctr, 0.5);
        assert!((n0.expected_ctr.unwrap() - 0.3).abs() < 1e-6);
        let n1 = &r.per_notification[1];
        assert_eq!((n1.cohorts, n1.users_pushed, n1.users_clicked), (2, 4, 2));
        assert_eq!(n1.ctr, 0.5);
        assert_eq!((r.pushes, r.clicks), (6, 3));
        assert_eq!(r.overall_ctr, 0.5);
        assert_eq!(r.mean_ctr, 0.5);
        // users 0,1,4,5 pushed n1 (0.5, 0.1, 0.2, 0.6); users 2,3 pushed n0 (0.2, 0.4).
        let want = (0.5 + 0.1 + 0.2 + 0.4 + 0.2 + 0.6) / 6.0;
        assert!((r.expected_ctr.unwrap() - want).abs() < 1e-6, "{:?}", r.expected_ctr);
    }

    #[test]
    fn expected_sums_streamed_in_any_user_order_match_the_matrix() {
        // 4 users × 3 notifications; user 2's probability of n0 is unknown.
        let truth = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, f32::NAN, 0.8, 0.9, 0.25, 0.35, 0.45];
        let plan = PushPlan {
            policy: Policy::Random,
            user_push: vec![Some(2), Some(0), Some(0), None],
            cohort_push: None,
            groups: None,
        };
        let whole = Expected::of_matrix(&plan, &truth, 3);
        let mut streamed = Expected::new(3);
        for u in [3, 1, 2, 0] {
            if let Some(n) = plan.user_push[u] {
                streamed.add(&truth[u * 3..(u + 1) * 3], n as usize);
            }
        }
        assert_eq!(streamed, whole);
        let clicks = Clicks::new(3, []);
        let r = evaluate_expected(&plan, &[0, 0, 1, 1], &clicks, Some(&streamed));
        // n0: user 1 (0.4) and user 2 (unknown); n2: user 0 (0.3).
        assert_eq!(r.per_notification[0].expected_ctr, Some(0.4f32 as f64));
        assert_eq!(r.per_notification[1].expected_ctr, Some(0.3f32 as f64));
        assert_eq!(r.expected_ctr, Some((0.4f32 as f64 + 0.3f32 as f64) / 2.0));
        assert_eq!(r, evaluate(&plan, &[0, 0, 1, 1], &clicks, Some(&truth)));
    }

    #[test]
    fn reach_cuts_the_ranked_pushes_and_groups_sum_their_members() {
        // 5 users; user 4 not pushed. Ranked: 2 (0.9), 0 (0.5), 3 (0.5), 1 (NaN).
        let plan = PushPlan {
            policy: Policy::Random,
            user_push: vec![Some(0), Some(1), Some(0), Some(1), None],
            cohort_push: Some(vec![Some(0), Some(1)]),
            groups: Some(vec![0, 1, 0, 1, 1]),
        };
        let rank = [0.5, f32::NAN, 0.9, 0.5, 1.0];
        let clicks = Clicks::new(2, [(0, 2), (1, 3), (1, 1), (0, 4)]);
        let truth = [0.4, 0.1, f32::NAN, 0.3, 0.9];
        let (points, own) = reach_curve(&plan, &rank, &clicks, Some(&truth), &[0.2, 0.5, 1.0]);
        // 20% of 5 users: user 2 (clicked, truth unknown).
        let p = points[0].as_ref().unwrap();
        assert_eq!((p.users_pushed, p.users_clicked, p.ctr, p.expected_ctr), (1, 1, 1.0, None));
        // 50%: ceil(2.5) = 3: users 2, 0, 3; clicks by 2 and 3.
        let p = points[1].as_ref().unwrap();
        assert_eq!((p.users_pushed, p.users_clicked), (3, 2));
        assert!((p.expected_ctr.unwrap() - 0.35).abs() < 1e-6);
        assert!(points[2].is_none(), "the plan pushes 4 of 5 users");
        assert_eq!((own.users_pushed, own.users_clicked, own.reach), (4, 3, 0.8));
        let g = ctr_by_group(&plan, &clicks, &rank, Some(&truth));
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].group, g[0].notification, g[0].users, g[0].users_clicked), (0, 0, 2, 1));
        assert!((g[0].predicted_score - 0.7).abs() < 1e-6);
        assert!((g[0].expected_ctr.unwrap() - 0.4).abs() < 1e-6);
        assert_eq!((g[1].users, g[1].users_clicked, g[1].ctr), (2, 2, 1.0));
        assert!((g[1].predicted_score - 0.5).abs() < 1e-6, "NaN scores left out");
        let ungrouped = PushPlan { groups: None, ..plan.clone() };
        assert_eq!(ctr_by_group(&ungrouped, &clicks, &rank, None)[1].group, 1);
    }

    #[test]
    fn unequal_notifications_separate_overall_and_mean() {
        let plan = PushPlan {
            policy: Policy::Random,
            user_push: vec![Some(0), Some(0), Some(0), Some(1), None],
            cohort_push: None,
            groups: None,
        };
        let clicks = Clicks::new(2, [(0, 0), (1, 3)]);
        let r = evaluate(&plan, &[0, 0, 0, 1, 1], &clicks, None);
        assert!((r.overall_ctr - 0.5).abs() < 1e-12);
        assert!((r.mean_ctr - (1.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
        assert_eq!(r.users_not_pushed, 1);
        assert_eq!(r.expected_ctr, None);
    }
}
