//! Push groups: who is pushed what, built for the batch being sent.
//!
//! Three ways to group the users of one batch of notifications, each user
//! pushed exactly one notification (see [`Grouping`]):
//!
//! * **release** (the default): groups built to maximise the batch's
//!   predicted clicks. With at least as many groups allowed as
//!   notifications, grouping users by their own best-scoring notification
//!   is already optimal for the batch. With fewer, it becomes choosing
//!   which notifications to send: each user then gets the best of the
//!   chosen ones, and the predicted clicks `F(S) = Σ_u max_{n ∈ S} s(u, n)`
//!   of a chosen set `S` are a monotone submodular function (a
//!   facility-location objective), so adding notifications greedily by
//!   their gain comes within `1 − 1/e` of the best set of that size
//!   (Nemhauser, Wolsey & Fisher 1978; evaluated lazily, Minoux 1978).
//!   A group smaller than the minimum size is dissolved, its users moved
//!   to their best remaining group, and the budget it frees offered again.
//! * **taste**: one notification per persistent taste cohort (k-means on
//!   the user factors), [`crate::targeting::expected_ctr_plan`]; what a
//!   release nobody has seen must use.
//! * **user**: every user their own best-scoring notification, the upper
//!   bound any grouping of this model can reach.
//!
//! The scores are [`crate::scores::Scorer`]'s. Only each user's best
//! [`TOP`] notifications are kept between passes; a user none of whose
//! best are chosen is scored again in full, so the assignment is exact.

use crate::policy::Policy;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::str::FromStr;

use crate::policy::PushPlan;
use crate::scores::Scorer;

/// How the users of a batch are grouped for pushing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Grouping {
    /// Groups built to maximise the batch's predicted clicks.
    #[default]
    Release,
    /// One notification per taste cohort.
    Taste,
    /// Each user their own best notification.
    User,
}

impl Grouping {
    /// Every grouping, the default first.
    pub const ALL: [Grouping; 3] = [Grouping::Release, Grouping::Taste, Grouping::User];

    /// The name of the expected-CTR plan grouped this way, as the reports
    /// print it.
    pub fn policy(self) -> Policy {
        match self {
            Grouping::Release => Policy::ExpectedCtr,
            Grouping::Taste => Policy::ExpectedCtrTaste,
            Grouping::User => Policy::ExpectedCtrUser,
        }
    }
}

impl fmt::Display for Grouping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Grouping::Release => "release",
            Grouping::Taste => "taste",
            Grouping::User => "user",
        })
    }
}

impl FromStr for Grouping {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "release" => Ok(Grouping::Release),
            "taste" => Ok(Grouping::Taste),
            "user" => Ok(Grouping::User),
            _ => Err(format!("unknown grouping `{s}`: give release, taste or user")),
        }
    }
}

/// Limits on release groups.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GroupingParams {
    /// Most groups (the CLI's `--cohorts`). Default 100.
    pub max_groups: usize,
    /// Fewest users in a group (`--min-cohort-size`). Default 20.
    pub min_group_size: usize,
}

impl Default for GroupingParams {
    fn default() -> Self {
        GroupingParams { max_groups: 100, min_group_size: 20 }
    }
}

impl GroupingParams {
    /// Validates every field.
    pub fn check(&self) -> Result<(), crate::ParamError> {
        crate::error::check_range("cohorts", self.max_groups as f64, 1.0, 1e7)?;
        crate::error::check_range("min-cohort-size", self.min_group_size as f64, 1.0, 1e9)
    }
}

/// Best notifications kept per user between passes.
pub const TOP: usize = 10;

/// Most rounds of choosing and dissolving in a release grouping.
const MAX_ROUNDS: usize = 16;

/// Each user's best [`TOP`] notifications (fewer when the batch is
/// smaller), best first, ties to the lower index; and, when asked, the
/// taste cohorts' mean scores, from the same pass.
pub struct BatchScores {
    t: usize,
    top: Vec<(u32, f32)>,
    taste: Option<TasteScores>,
}

/// The taste cohorts' mean scores, `k × notifications`.
struct TasteScores {
    labels: Vec<u32>,
    k: usize,
    means: Vec<f64>,
}

impl BatchScores {
    /// Scores every user once; with `taste` (each user's cohort and the
    /// number of cohorts) also sums the cohorts' scores, exactly as
    /// [`crate::targeting::cohort_affinity`] does.
    pub fn compute(scorer: &Scorer, taste: Option<(&[u32], usize)>) -> Self {
        let nn = scorer.notifications();
        let t = TOP.min(nn);
        let cells = taste.map_or(0, |(_, k)| k * nn);
        let parts = scorer.visit(
            || (Vec::new(), vec![0f64; cells]),
            |(v, acc): &mut (Vec<(u32, f32)>, Vec<f64>), first, scores| {
                if nn == 0 {
                    return;
                }
                for row in scores.chunks(nn) {
                    push_top(row, t, v);
                }
                if let Some((labels, _)) = taste {
                    crate::targeting::add_cohort_scores(acc, labels, nn, first, scores);
                }
            },
        );
        let mut top = Vec::with_capacity(scorer.users() * t);
        let mut sums = Vec::with_capacity(parts.len());
        for (p, acc) in parts {
            top.extend(p);
            sums.push(acc);
        }
        let taste = taste.map(|(labels, k)| TasteScores {
            labels: labels.to_vec(),
            k,
            means: crate::targeting::cohort_means(sums, labels, k, nn),
        });
        BatchScores { t, top, taste }
    }

    /// One notification per taste cohort, as
    /// [`crate::targeting::expected_ctr_plan`] chooses it, when the
    /// cohorts were given to [`BatchScores::compute`].
    pub fn taste_plan(&self, notifications: usize) -> Option<PushPlan> {
        let t = self.taste.as_ref()?;
        Some(crate::targeting::plan_from_affinity(&t.means, &t.labels, t.k, notifications))
    }

    /// The score of notification `n` for user `u`, when it is among the
    /// user's kept best.
    pub fn kept(&self, u: usize, n: u32) -> Option<f32> {
        self.of(u).iter().find(|e| e.0 == n).map(|e| e.1)
    }

    /// The score of what `user_push` pushes each user (NaN where nothing):
    /// from the kept best where it is there, else scored again for just
    /// those users.
    pub fn push_scores(&self, scorer: &Scorer, user_push: &[Option<u32>]) -> Vec<f32> {
        let mut out = vec![f32::NAN; user_push.len()];
        let mut rescore = Vec::new();
        for (u, p) in user_push.iter().enumerate() {
            let Some(n) = *p else { continue };
            match self.kept(u, n) {
                Some(v) => out[u] = v,
                None => rescore.push(u),
            }
        }
        scorer.each_of(&rescore, |u, row| out[u] = row[user_push[u].expect("pushed") as usize]);
        out
    }

    fn users(&self) -> usize {
        self.top.len().checked_div(self.t).unwrap_or(0)
    }

    fn of(&self, u: usize) -> &[(u32, f32)] {
        &self.top[u * self.t..(u + 1) * self.t]
    }

    /// Each user their own best notification, and its score.
    pub fn user_plan(&self, users: usize) -> (PushPlan, Vec<f32>) {
        let best: Vec<Option<(u32, f32)>> = (0..users).map(|u| (self.t > 0).then(|| self.of(u)[0])).collect();
        let plan = PushPlan {
            policy: Grouping::User.policy(),
            user_push: best.iter().map(|b| b.map(|b| b.0)).collect(),
            cohort_push: None,
            groups: None,
        };
        (plan, best.iter().map(|b| b.map_or(f32::NAN, |b| b.1)).collect())
    }

    /// Release groups: at most `params.max_groups`, each of at least
    /// `params.min_group_size` users (unless fewer users exist), every user
    /// pushed once, chosen to maximise the summed scores. Group 0 is the
    /// largest. Returns the plan and each user's score of their push.
    pub fn release_plan(&self, scorer: &Scorer, params: &GroupingParams) -> (PushPlan, Vec<f32>) {
        let (users, nn) = (self.users(), scorer.notifications());
        if nn == 0 || users == 0 {
            let plan = PushPlan {
                policy: Grouping::Release.policy(),
                user_push: vec![None; users],
                cohort_push: Some(Vec::new()),
                groups: Some(vec![0; users]),
            };
            return (plan, vec![f32::NAN; users]);
        }
        let mut inv: Vec<Vec<(u32, f32)>> = vec![Vec::new(); nn];
        for u in 0..users {
            for &(n, s) in self.of(u) {
                inv[n as usize].push((u as u32, s));
            }
        }
        let mut st = State {
            selected: vec![false; nn],
            banned: vec![false; nn],
            assign: vec![u32::MAX; users],
            value: vec![0.0; users],
            members: vec![Vec::new(); nn],
        };
        // Each round bans at least one notification; the greedy's size
        // rule keeps the rounds few, and a bound keeps them finite.
        for _ in 0..MAX_ROUNDS {
            let chosen = st.selected.iter().filter(|&&s| s).count();
            let budget = params.max_groups.saturating_sub(chosen);
            let added = greedy(&inv, &st.value, &mut st.selected, &st.banned, budget, params.min_group_size);
            if added == 0 && chosen > 0 {
                break;
            }
            st.assign_all(self, scorer);
            if !st.dissolve_small(self, scorer, params.min_group_size) {
                break;
            }
        }
        // Groups by size, largest first.
        let mut order: Vec<usize> = (0..nn).filter(|&n| st.selected[n] && !st.members[n].is_empty()).collect();
        order.sort_by_key(|&n| (Reverse(st.members[n].len()), n));
        let mut group_of = vec![u32::MAX; nn];
        for (g, &n) in order.iter().enumerate() {
            group_of[n] = g as u32;
        }
        let plan = PushPlan {
            policy: Grouping::Release.policy(),
            user_push: st.assign.iter().map(|&n| Some(n)).collect(),
            cohort_push: Some(order.iter().map(|&n| Some(n as u32)).collect()),
            groups: Some(st.assign.iter().map(|&n| group_of[n as usize]).collect()),
        };
        (plan, st.value)
    }
}

/// Inserts `row`'s best `t` entries, best first and ties to the lower
/// index, at the end of `out`.
fn push_top(row: &[f32], t: usize, out: &mut Vec<(u32, f32)>) {
    let t = t.min(row.len());
    if t == 0 {
        return;
    }
    let start = out.len();
    // The first `t` sorted, then only what beats the last kept.
    out.extend(row[..t].iter().enumerate().map(|(n, &s)| (n as u32, s)));
    out[start..].sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut floor = out[start + t - 1].1;
    for (n, &s) in row.iter().enumerate().skip(t) {
        if s <= floor {
            continue;
        }
        let kept = &mut out[start..];
        let mut at = t - 1;
        while at > 0 && kept[at - 1].1 < s {
            kept[at] = kept[at - 1];
            at -= 1;
        }
        kept[at] = (n as u32, s);
        floor = kept[t - 1].1;
    }
}

/// The release search's state: what is chosen and who is where.
struct State {
    selected: Vec<bool>,
    banned: Vec<bool>,
    /// Each user's notification (`u32::MAX` before the first assignment).
    assign: Vec<u32>,
    /// Each user's score of it.
    value: Vec<f32>,
    /// Users of each notification.
    members: Vec<Vec<u32>>,
}

impl State {
    /// Every user to their best chosen notification.
    fn assign_all(&mut self, top: &BatchScores, scorer: &Scorer) {
        let all: Vec<u32> = (0..self.assign.len() as u32).collect();
        self.members.iter_mut().for_each(Vec::clear);
        self.place(&all, top, scorer);
    }

    /// `users` to their best chosen notification, from their kept best
    /// where one is chosen, else scored again in full.
    fn place(&mut self, users: &[u32], top: &BatchScores, scorer: &Scorer) {
        let mut rescore = Vec::new();
        for &u in users {
            match top.of(u as usize).iter().find(|&&(n, _)| self.selected[n as usize]) {
                Some(&(n, s)) => self.put(u, n, s),
                None => rescore.push(u as usize),
            }
        }
        scorer.each_of(&rescore, |u, row| {
            let best = (0..row.len())
                .filter(|&n| self.selected[n])
                .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
                .expect("at least one notification is chosen");
            self.put(u as u32, best as u32, row[best]);
        });
    }

    fn put(&mut self, u: u32, n: u32, s: f32) {
        self.assign[u as usize] = n;
        self.value[u as usize] = s;
        self.members[n as usize].push(u);
    }

    /// Dissolves groups under `min` users, smallest first (ties to the
    /// lower index), moving their users to their best remaining group,
    /// until none is left or one group holds everyone. Returns whether any
    /// chosen notification was given up.
    fn dissolve_small(&mut self, top: &BatchScores, scorer: &Scorer, min: usize) -> bool {
        let mut changed = false;
        loop {
            for n in 0..self.selected.len() {
                if self.selected[n] && self.members[n].is_empty() {
                    self.selected[n] = false;
                    self.banned[n] = true;
                    changed = true;
                }
            }
            let live = self.selected.iter().filter(|&&s| s).count();
            let smallest = (0..self.selected.len())
                .filter(|&n| self.selected[n] && self.members[n].len() < min)
                .min_by_key(|&n| (self.members[n].len(), n));
            let Some(n) = smallest else { return changed };
            if live <= 1 {
                return changed;
            }
            self.selected[n] = false;
            self.banned[n] = true;
            changed = true;
            let moved = std::mem::take(&mut self.members[n]);
            self.place(&moved, top, scorer);
        }
    }
}

/// Adds up to `budget` notifications to `selected`, greedily by their gain
/// in summed scores over the users' current `value`s (from their kept best
/// only), lazily re-evaluated. A notification fewer than `min` users would
/// move to gains nothing: its group would be dissolved. Stops early when
/// nothing gains, unless nothing is chosen yet. Returns how many were added.
fn greedy(
    inv: &[Vec<(u32, f32)>],
    value: &[f32],
    selected: &mut [bool],
    banned: &[bool],
    budget: usize,
    min: usize,
) -> usize {
    if budget == 0 {
        return 0;
    }
    let mut value = value.to_vec();
    let mut any = selected.iter().any(|&s| s);
    // Gains only shrink as values grow, so a stale gain bounds the fresh one.
    let gain = |n: usize, value: &[f32], any: bool| -> f64 {
        let (mut sum, mut movers) = (0f64, 0usize);
        for &(u, s) in &inv[n] {
            let d = s - value[u as usize];
            if d > 0.0 {
                sum += d as f64;
                movers += 1;
            }
        }
        if any && movers < min {
            0.0
        } else {
            sum
        }
    };
    let mut heap: BinaryHeap<(Key, Reverse<usize>)> = (0..inv.len())
        .filter(|&n| !selected[n] && !banned[n])
        .map(|n| (Key(gain(n, &value, any)), Reverse(n)))
        .collect();
    let mut added = 0;
    while added < budget {
        let Some((_, Reverse(n))) = heap.pop() else { break };
        let g = gain(n, &value, any);
        if heap.peek().is_some_and(|(next, _)| next.0 > g) {
            heap.push((Key(g), Reverse(n)));
            continue;
        }
        if g <= 0.0 && any {
            break;
        }
        selected[n] = true;
        any = true;
        added += 1;
        for &(u, s) in &inv[n] {
            let v = &mut value[u as usize];
            *v = v.max(s);
        }
    }
    added
}

/// An `f64` ordered by `total_cmp`, for the greedy's heap.
#[derive(PartialEq)]
struct Key(f64);
impl Eq for Key {}
impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Keeps the plan's pushes to the `reach` share of all users (rounded up)
/// with the highest `scores`, ties to the lower user index; the others are
/// not pushed. A reach of 1 or more keeps everything.
pub fn limit_reach(plan: &mut PushPlan, scores: &[f32], reach: f64) {
    let users = plan.user_push.len();
    let keep = (reach * users as f64).ceil() as usize;
    if keep >= users {
        return;
    }
    let mut pushed: Vec<usize> = (0..users).filter(|&u| plan.user_push[u].is_some()).collect();
    if pushed.len() <= keep {
        return;
    }
    pushed.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    for &u in &pushed[keep..] {
        plan.user_push[u] = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::als::{AlsModel, AlsParams};
    use crate::sparse::Csr;
    use crate::targeting::{Notification, TargetingParams};

    /// A model whose scores are the factor preferences alone: one factor
    /// per artist, users given directly.
    fn scorer_parts(users: &[Vec<f32>]) -> (AlsModel, Csr) {
        let f = users[0].len();
        let x = users.iter().flatten().copied().collect();
        let y = (0..f * f).map(|i| if i % (f + 1) == 0 { 1.0 } else { 0.0 }).collect();
        let m = AlsModel::from_factors(AlsParams { factors: f, ..AlsParams::default() }, x, y).unwrap();
        (m, Csr::from_triplets(users.len(), f, &[]).unwrap())
    }

    fn notes(n: usize) -> Vec<Notification> {
        (0..n).map(|a| Notification { id: format!("n{a}"), artists: vec![a as u32] }).collect()
    }

    fn total(plan: &PushPlan, rows: &[Vec<f32>]) -> f32 {
        plan.user_push.iter().zip(rows).map(|(p, r)| r[p.unwrap() as usize]).sum()
    }

    #[test]
    fn top_keeps_the_best_in_order_ties_to_the_lower_index() {
        let mut out = Vec::new();
        push_top(&[0.2, 0.9, 0.2, 0.5, 0.9, 0.1], 3, &mut out);
        assert_eq!(out, vec![(1, 0.9), (4, 0.9), (3, 0.5)]);
        push_top(&[0.3, 0.3], 3, &mut out);
        assert_eq!(&out[3..], &[(0, 0.3), (1, 0.3)]);
    }

    #[test]
    fn top_agrees_with_a_full_sort_and_the_taste_sums_with_cohort_affinity() {
        let mut rng = crate::rng::Rng::new(4);
        for len in [1, 3, 10, 11, 40] {
            for _ in 0..200 {
                // Few distinct values, so ties are common.
                let row: Vec<f32> = (0..len).map(|_| rng.below(6) as f32 / 5.0).collect();
                let t = TOP.min(len);
                let mut want: Vec<(u32, f32)> = row.iter().enumerate().map(|(n, &s)| (n as u32, s)).collect();
                want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                want.truncate(t);
                let mut got = vec![(9, 9.0)];
                push_top(&row, t, &mut got);
                assert_eq!(got[1..], want[..], "{row:?}");
            }
        }
        let rows: Vec<Vec<f32>> = (0..300).map(|_| (0..5).map(|_| rng.f32()).collect()).collect();
        let (m, plays) = scorer_parts(&rows);
        let notes = notes(5);
        let tp = TargetingParams { history_weight: 0.0 };
        let labels: Vec<u32> = (0..300).map(|u| (u % 7) as u32).collect();
        let s = Scorer::new(&m, &plays, &notes, &tp);
        let b = BatchScores::compute(&s, Some((&labels, 7)));
        let want = crate::targeting::expected_ctr_plan(&m, &plays, &labels, 7, &notes, &tp);
        assert_eq!(b.taste_plan(5), Some(want));
        assert!(BatchScores::compute(&s, None).taste_plan(5).is_none());
        assert_eq!(b.kept(0, b.of(0)[0].0), Some(b.of(0)[0].1));
        // Push scores from the kept best or scored again agree with a pass.
        let pushed: Vec<Option<u32>> = (0..300).map(|u| (u % 3 != 0).then_some((u % 5) as u32)).collect();
        assert_eq!(
            b.push_scores(&s, &pushed).iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            s.push_scores(&[&pushed])[0].iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn with_groups_for_every_notification_each_user_gets_their_best() {
        let rows = vec![vec![0.9, 0.1, 0.0], vec![0.2, 0.8, 0.1], vec![0.1, 0.2, 0.7], vec![0.6, 0.5, 0.0]];
        let (m, plays) = scorer_parts(&rows);
        let s = Scorer::new(&m, &plays, &notes(3), &TargetingParams { history_weight: 0.0 });
        let b = BatchScores::compute(&s, None);
        let p = GroupingParams { max_groups: 5, min_group_size: 1 };
        let (plan, scores) = b.release_plan(&s, &p);
        assert_eq!(plan.user_push, vec![Some(0), Some(1), Some(2), Some(0)]);
        assert_eq!(plan.user_push, b.user_plan(4).0.user_push);
        assert_eq!(scores, vec![0.9, 0.8, 0.7, 0.6]);
        // Group 0 is the largest (notification 0, two users).
        assert_eq!(plan.groups, Some(vec![0, 1, 2, 0]));
        assert_eq!(plan.cohort_push, Some(vec![Some(0), Some(1), Some(2)]));
    }

    #[test]
    fn fewer_groups_than_notifications_match_the_best_set_by_brute_force() {
        let mut rng = crate::rng::Rng::new(11);
        for trial in 0..30 {
            let (users, nn, g) = (40, 6, 1 + trial % 4);
            let rows: Vec<Vec<f32>> = (0..users).map(|_| (0..nn).map(|_| rng.f32() * rng.f32()).collect()).collect();
            let (m, plays) = scorer_parts(&rows);
            let s = Scorer::new(&m, &plays, &notes(nn), &TargetingParams { history_weight: 0.0 });
            let b = BatchScores::compute(&s, None);
            let (plan, _) = b.release_plan(&s, &GroupingParams { max_groups: g, min_group_size: 1 });
            let used: std::collections::BTreeSet<u32> = plan.user_push.iter().flatten().copied().collect();
            assert!(used.len() <= g, "{used:?} over {g} groups");
            // Each user gets the best of the chosen set.
            for (u, p) in plan.user_push.iter().enumerate() {
                let best = used.iter().map(|&n| rows[u][n as usize]).fold(f32::MIN, f32::max);
                assert_eq!(rows[u][p.unwrap() as usize], best);
            }
            // The best set of g notifications, by brute force.
            let best_set: f32 = (0u32..1 << nn)
                .filter(|m| m.count_ones() as usize == g)
                .map(|mask| {
                    rows.iter().map(|r| (0..nn).filter(|n| mask >> n & 1 == 1).map(|n| r[n]).fold(0f32, f32::max)).sum()
                })
                .fold(0f32, f32::max);
            let got = total(&plan, &rows);
            assert!(got >= (1.0 - 1.0 / std::f32::consts::E) * best_set, "{got} vs best {best_set}");
            assert!(got >= 0.95 * best_set, "greedy well short on trial {trial}: {got} vs {best_set}");
        }
    }

    #[test]
    fn no_group_is_smaller_than_the_minimum() {
        // Users 0..5 love notification 0; user 6 alone loves 1 but likes 0;
        // user 7 alone loves 2 and likes 1 a little, 0 not at all.
        let mut rows = vec![vec![0.9, 0.1, 0.0]; 6];
        rows.push(vec![0.5, 0.9, 0.0]);
        rows.push(vec![0.0, 0.3, 0.95]);
        let (m, plays) = scorer_parts(&rows);
        let s = Scorer::new(&m, &plays, &notes(3), &TargetingParams { history_weight: 0.0 });
        let b = BatchScores::compute(&s, None);
        // At least 2 a group: 2 alone would hold user 7; 1 holds users 6
        // and 7, who both gain by it.
        let (plan, scores) = b.release_plan(&s, &GroupingParams { max_groups: 3, min_group_size: 2 });
        assert_eq!(plan.user_push[5..], [Some(0), Some(1), Some(1)]);
        assert_eq!(scores[7], 0.3);
        // At least 3: everyone on 0, user 7 at a score of 0.
        let (plan, scores) = b.release_plan(&s, &GroupingParams { max_groups: 3, min_group_size: 3 });
        assert_eq!(plan.user_push, vec![Some(0); 8]);
        assert_eq!(scores[7], 0.0);
        let (all, _) = b.release_plan(&s, &GroupingParams { max_groups: 3, min_group_size: 1 });
        assert_eq!(all.user_push[6..], [Some(1), Some(2)]);
        // Fewer users than the minimum: one group of everyone.
        let (one, _) = b.release_plan(&s, &GroupingParams { max_groups: 3, min_group_size: 100 });
        assert_eq!(one.cohort_push, Some(vec![Some(0)]));
        assert!(GroupingParams { max_groups: 0, min_group_size: 1 }.check().is_err());
    }

    #[test]
    fn a_group_left_too_small_by_a_later_choice_is_dissolved() {
        // 1 is chosen for users 6 and 7, then 2 takes user 7 (0.7 > 0.6),
        // leaving 1 with one user: it is dissolved and user 6 goes to 0.
        let mut rows = vec![vec![0.9, 0.0, 0.0]; 6];
        rows.extend([vec![0.1, 1.0, 0.0], vec![0.0, 0.6, 0.7], vec![0.0, 0.0, 0.5]]);
        let (m, plays) = scorer_parts(&rows);
        let s = Scorer::new(&m, &plays, &notes(3), &TargetingParams { history_weight: 0.0 });
        let b = BatchScores::compute(&s, None);
        let (plan, scores) = b.release_plan(&s, &GroupingParams { max_groups: 3, min_group_size: 2 });
        assert_eq!(plan.user_push[6..], [Some(0), Some(2), Some(2)]);
        assert_eq!(scores[6], 0.1);
        assert_eq!(plan.cohort_push, Some(vec![Some(0), Some(2)]));
    }

    #[test]
    fn users_whose_kept_best_are_all_given_up_are_scored_in_full() {
        // 12 notifications, more than TOP: the small groups' users keep
        // only their best ten, none of which survives.
        let nn = TOP + 2;
        let mut rows = Vec::new();
        for _ in 0..30 {
            let mut r = vec![0.0; nn];
            r[nn - 1] = 0.9;
            rows.push(r);
        }
        let mut odd: Vec<f32> = (0..nn).map(|n| 0.5 - n as f32 * 0.01).collect();
        odd[nn - 1] = 0.1;
        rows.push(odd);
        let (m, plays) = scorer_parts(&rows);
        let s = Scorer::new(&m, &plays, &notes(nn), &TargetingParams { history_weight: 0.0 });
        let b = BatchScores::compute(&s, None);
        let (plan, scores) = b.release_plan(&s, &GroupingParams { max_groups: 4, min_group_size: 5 });
        assert_eq!(plan.user_push, vec![Some(nn as u32 - 1); 31]);
        assert!((scores[30] - 0.1).abs() < 1e-6);
    }

    #[test]
    fn reach_keeps_the_highest_scores() {
        let mut plan = PushPlan {
            policy: Policy::Random,
            user_push: vec![Some(0), Some(1), None, Some(0)],
            cohort_push: None,
            groups: None,
        };
        limit_reach(&mut plan, &[0.2, 0.9, f32::NAN, 0.2], 0.5);
        assert_eq!(plan.user_push, vec![Some(0), Some(1), None, None]);
        let mut all = plan.clone();
        limit_reach(&mut all, &[0.0; 4], 1.0);
        assert_eq!(all, plan);
        assert_eq!("user".parse::<Grouping>(), Ok(Grouping::User));
        assert!("cohort".parse::<Grouping>().is_err());
        assert_eq!(Grouping::Taste.to_string(), "taste");
    }
}
