//! Predicted affinity of users to a batch of notifications.
//!
//! A user's score for a notification is the best, over its artists, of
//!
//! ```text
//!   clamp(x_uᵀ y_a, 0, 1) + history_weight · share_u(a)
//! ```
//!
//! the clamped ALS preference (Hu, Koren & Volinsky 2008 fit it to
//! `p ∈ {0, 1}`, so the clamp reads as a probability of liking) plus the
//! artist's share of the user's own plays. A notification with no artist
//! known to the model scores 0. The score ranks; it is not a calibrated
//! click probability.
//!
//! [`Scorer`] computes the scores of blocks of users as one matrix product
//! against the batch's distinct artists, in fixed parts reduced in order,
//! so every figure built from it repeats bit for bit.

use rayon::prelude::*;

use crate::als::AlsModel;
use crate::linalg::{matmul_t, part_rows, MAX_PARTS};
use crate::sparse::Csr;

/// A notification, with the model's indices of the artists it names.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// Identifier as in the input (`notification_id`).
    pub id: String,
    /// Indices of its artists known to the model (possibly empty).
    pub artists: Vec<u32>,
}

/// Parameters of the expected-CTR policy.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TargetingParams {
    /// Weight of the user's own listening share beside the ALS preference.
    /// Default 4.0 (measured: expected CTR rises from 0 to about 4 and is
    /// flat from 4 to 10; the history of BENCHMARKS.md); 0 scores by the factors alone.
    pub history_weight: f32,
}

impl Default for TargetingParams {
    fn default() -> Self {
        TargetingParams { history_weight: 4.0 }
    }
}

impl TargetingParams {
    /// Validates every field.
    pub fn check(&self) -> Result<(), crate::ParamError> {
        crate::error::check_range("history-weight", self.history_weight as f64, 0.0, 1e6)
    }
}

/// Users scored at a time: one matrix product of this many rows.
pub const BLOCK: usize = 2048;

/// Scores users against one batch of notifications.
pub struct Scorer<'a> {
    model: &'a AlsModel,
    plays: &'a Csr,
    history_weight: f32,
    /// Distinct artists named by any notification, sorted.
    artists: Vec<u32>,
    /// Their factor rows, `artists.len() × factors`.
    ya: Vec<f32>,
    /// Per notification, its artists' places in `artists`.
    slots: Vec<Vec<usize>>,
}

impl<'a> Scorer<'a> {
    /// A scorer for `notifications`. `plays` (users × artists, the model's
    /// user order) feeds the listening-share term when
    /// `params.history_weight > 0`; users beyond its rows get none.
    pub fn new(model: &'a AlsModel, plays: &'a Csr, notifications: &[Notification], params: &TargetingParams) -> Self {
        let mut artists: Vec<u32> = notifications.iter().flat_map(|n| n.artists.iter().copied()).collect();
        artists.sort_unstable();
        artists.dedup();
        let ya = artists.iter().flat_map(|&a| model.item(a as usize).iter().copied()).collect();
        let slots = notifications
            .iter()
            .map(|n| n.artists.iter().map(|a| artists.binary_search(a).expect("collected above")).collect())
            .collect();
        Scorer { model, plays, history_weight: params.history_weight, artists, ya, slots }
    }

    /// Notifications in the batch.
    pub fn notifications(&self) -> usize {
        self.slots.len()
    }

    /// Users of the model.
    pub fn users(&self) -> usize {
        self.model.users()
    }

    /// Scores of `users` (model indices) whose factor rows are `x`
    /// (`users.len() × factors`), written row-major to `out`
    /// (`users.len() × notifications`).
    fn score_rows(&self, users: &[usize], x: &[f32], out: &mut [f32], share: &mut [f32]) {
        let (f, na, nn) = (self.model.factors(), self.artists.len(), self.slots.len());
        let rows = users.len();
        let mut pref = matmul_t(x, &self.ya, rows, f, na);
        for (r, &u) in users.iter().enumerate() {
            let row = &mut pref[r * na..(r + 1) * na];
            row.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
            if self.history_weight > 0.0 && u < self.plays.rows() {
                let (idx, val) = self.plays.row(u);
                let total: f32 = val.iter().sum();
                share.iter_mut().for_each(|s| *s = 0.0);
                for (&i, &v) in idx.iter().zip(val) {
                    if let Ok(j) = self.artists.binary_search(&i) {
                        share[j] = v / total;
                    }
                }
                for (v, s) in row.iter_mut().zip(share.iter()) {
                    *v += self.history_weight * s;
                }
            }
            let o = &mut out[r * nn..(r + 1) * nn];
            for (o, s) in o.iter_mut().zip(&self.slots) {
                *o = s.iter().map(|&j| row[j]).fold(0f32, f32::max);
            }
        }
    }

    /// Scores any users, a block at a time: `each(user, scores)` for each
    /// of `users` in order, `scores` one per notification.
    pub fn each_of(&self, users: &[usize], mut each: impl FnMut(usize, &[f32])) {
        let nn = self.slots.len();
        let mut out = vec![0f32; BLOCK * nn];
        let mut share = vec![0f32; self.artists.len()];
        for us in users.chunks(BLOCK) {
            let x: Vec<f32> = us.iter().flat_map(|&u| self.model.user(u).iter().copied()).collect();
            let rows = &mut out[..us.len() * nn];
            self.score_rows(us, &x, rows, &mut share);
            for (&u, row) in us.iter().zip(rows.chunks(nn.max(1))) {
                each(u, row);
            }
        }
    }

    /// Visits every user's scores in parallel: the users are cut into at
    /// most [`MAX_PARTS`] fixed parts of whole blocks; each part starts a
    /// state with `init` and calls `visit(state, first_user, scores)` for
    /// each of its blocks in order (`scores` row-major, one row a user from
    /// `first_user` on). The states come back in part order, so a
    /// reduction over them repeats exactly.
    pub fn visit<T: Send>(&self, init: impl Fn() -> T + Sync, visit: impl Fn(&mut T, usize, &[f32]) + Sync) -> Vec<T> {
        let (f, nn) = (self.model.factors(), self.slots.len());
        let users = self.model.users();
        let per = part_rows(users, MAX_PARTS, BLOCK);
        let x = &self.model.user_factors()[..users * f];
        x.par_chunks((per * f).max(1))
            .enumerate()
            .map(|(p, xp)| {
                let mut state = init();
                let mut share = vec![0f32; self.artists.len()];
                let mut out = vec![0f32; BLOCK * nn];
                let mut ids = Vec::with_capacity(BLOCK);
                for (b, xb) in xp.chunks(BLOCK * f).enumerate() {
                    let first = p * per + b * BLOCK;
                    let rows = xb.len() / f;
                    ids.clear();
                    ids.extend(first..first + rows);
                    self.score_rows(&ids, xb, &mut out[..rows * nn], &mut share);
                    visit(&mut state, first, &out[..rows * nn]);
                }
                state
            })
            .collect()
    }

    /// For each plan (a notification or none per user), the score of what
    /// it pushed each user (NaN where it pushed nothing).
    pub fn push_scores(&self, plans: &[&[Option<u32>]]) -> Vec<Vec<f32>> {
        let nn = self.slots.len().max(1);
        let parts = self.visit(
            || (usize::MAX, vec![Vec::<f32>::new(); plans.len()]),
            |(start, out), first, scores| {
                if *start == usize::MAX {
                    *start = first;
                }
                for (r, row) in scores.chunks(nn).enumerate() {
                    for (plan, o) in plans.iter().zip(out.iter_mut()) {
                        o.push(plan[first + r].map_or(f32::NAN, |n| row[n as usize]));
                    }
                }
            },
        );
        let mut all = vec![Vec::with_capacity(self.users()); plans.len()];
        for (_, part) in parts {
            for (a, p) in all.iter_mut().zip(part) {
                a.extend(p);
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::als::AlsParams;

    fn model(users: usize, artists: usize, seed: u64) -> AlsModel {
        let f = 3;
        let mut rng = crate::rng::Rng::new(seed);
        let x = (0..users * f).map(|_| rng.f32()).collect();
        let y = (0..artists * f).map(|_| rng.f32() - 0.3).collect();
        AlsModel::from_factors(AlsParams { factors: f, ..AlsParams::default() }, x, y).unwrap()
    }

    #[test]
    fn blocks_gathers_and_the_plain_formula_agree() {
        let (users, artists) = (2 * BLOCK + 37, 6);
        let m = model(users, artists, 5);
        let triplets: Vec<(u32, u32, f32)> =
            (0..users as u32).flat_map(|u| [(u, u % 6, 1.0 + (u % 5) as f32), (u, (u + 2) % 6, 3.0)]).collect();
        let plays = Csr::from_triplets(users, artists, &triplets).unwrap();
        let notes = vec![
            Notification { id: "a".into(), artists: vec![0, 3] },
            Notification { id: "b".into(), artists: vec![5] },
            Notification { id: "none".into(), artists: vec![] },
        ];
        let tp = TargetingParams { history_weight: 2.0 };
        let s = Scorer::new(&m, &plays, &notes, &tp);
        // The formula, one pair at a time.
        let plain = |u: usize, n: usize| {
            let (idx, val) = plays.row(u);
            let total: f32 = val.iter().sum();
            notes[n]
                .artists
                .iter()
                .map(|&a| {
                    let p = crate::linalg::dot(m.user(u), m.item(a as usize)).clamp(0.0, 1.0);
                    let share = idx.iter().position(|&i| i == a).map_or(0.0, |k| val[k] / total);
                    p + 2.0 * share
                })
                .fold(0f32, f32::max)
        };
        let mut seen = vec![false; users];
        let parts = s.visit(Vec::new, |v, first, scores| v.push((first, scores.to_vec())));
        for (first, scores) in parts.into_iter().flatten() {
            for (r, row) in scores.chunks(3).enumerate() {
                let u = first + r;
                assert!(!seen[u], "user {u} visited twice");
                seen[u] = true;
                for (n, &v) in row.iter().enumerate() {
                    assert!((v - plain(u, n)).abs() < 1e-5, "user {u} n {n}: {v} vs {}", plain(u, n));
                }
                assert_eq!(row[2], 0.0);
            }
        }
        assert!(seen.iter().all(|&x| x), "every user visited");
        let some = [7usize, BLOCK + 3, 1, users - 1];
        let mut got = Vec::new();
        let mut order = Vec::new();
        s.each_of(&some, |u, row| {
            order.push(u);
            got.extend_from_slice(row);
        });
        assert_eq!(order, some);
        let pushed: Vec<Option<u32>> = (0..users).map(|u| (u % 4 != 0).then_some((u % 3) as u32)).collect();
        let ps = s.push_scores(&[&pushed]);
        for (i, &u) in some.iter().enumerate() {
            for n in 0..3 {
                assert!((got[i * 3 + n] - plain(u, n)).abs() < 1e-5);
            }
            match pushed[u] {
                Some(n) => assert_eq!(ps[0][u], got[i * 3 + n as usize]),
                None => assert!(ps[0][u].is_nan()),
            }
        }
        assert_eq!(ps[0].len(), users);
    }
}
