//! What an evaluation measures: the shares of users every plan is
//! measured at, the pushes a `target` wrote read back, the pass over the
//! generator's truth, and the result the reports print and write.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use cohortcast_core::ctr::{CtrReport, Expected, GroupCtr, ReachPoint};
use cohortcast_core::grouping::Grouping;
use cohortcast_core::policy::Policy;
use cohortcast_core::saavn::UserIndex;
use cohortcast_core::targeting::{self, Notification, PushPlan};
use cohortcast_data::files::{read_lines, read_npy_f32_rows};
use cohortcast_data::stages::StoredModel;

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

/// The pushes a `target` wrote, with the groups they were decided for.
pub fn read_pushes(out: &Path, model: &StoredModel, notes: &[Notification]) -> Result<PushPlan> {
    let path = out.join("pushes.csv");
    let note_index: HashMap<&str, u32> = notes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i as u32)).collect();
    let mut user_push = vec![None; model.users.len()];
    for (i, l) in read_lines(&path, Some("notification_id,user_id"))?.iter().enumerate() {
        let (n, u) = l
            .split_once(',')
            .with_context(|| format!("{}: line {}: expected notification_id,user_id", path.display(), i + 2))?;
        let ni = *note_index
            .get(n)
            .with_context(|| format!("{}: line {}: unknown notification `{n}`", path.display(), i + 2))?;
        let ui = model
            .users
            .binary_search(&u.to_string())
            .map_err(|_| anyhow::anyhow!("{}: line {}: user `{u}` is not in the model", path.display(), i + 2))?;
        user_push[ui] = Some(ni);
    }
    let policy = read_lines(&out.join("target.txt"), None)?.first().cloned().unwrap_or_default();
    let policy = Policy::from_name(&policy)
        .filter(|p| Grouping::ALL.iter().any(|g| g.policy() == *p) || *p == Policy::TopArtist)
        .with_context(|| format!("{}: unknown policy `{policy}`", out.join("target.txt").display()))?;
    // The groups the pushes were decided for, from cohorts.csv.
    let path = out.join("cohorts.csv");
    let mut groups = vec![0u32; model.users.len()];
    let mut grouped = false;
    if let Ok(lines) = read_lines(&path, Some("user_id,cohort,group")) {
        for (i, l) in lines.iter().enumerate() {
            let bad = || anyhow::anyhow!("{}: line {}: expected user_id,cohort,group", path.display(), i + 2);
            let mut f = l.split(',');
            let (Some(u), Some(_), Some(g)) = (f.next(), f.next(), f.next()) else { return Err(bad()) };
            let Ok(ui) = model.users.binary_search(&u.to_string()) else { continue };
            if !g.is_empty() {
                groups[ui] = g.parse().map_err(|_| bad())?;
                grouped = true;
            }
        }
    }
    Ok(PushPlan { policy, user_push, cohort_push: None, groups: grouped.then_some(groups) })
}

/// The generator's truth, read once: each plan's true click probabilities
/// summed over its pushes, and the per-user oracle's plan with its own.
/// The file is streamed row by row in its own (the generator's) user
/// order and nothing of it is kept. (Aligning it first to model users ×
/// notifications wrote a 400 MB matrix row by row at random places: the
/// medium benchmark set's evaluation took 1.1–2.4 s with it, 0.85–0.90 s
/// without.) Users the model does not know, and notifications the truth
/// does not list, count as unknown.
/// `index` numbers the model's users.
pub fn truth_pass(
    dir: &Path,
    model: &StoredModel,
    index: &UserIndex,
    notes: &[Notification],
    plans: &[PushPlan],
) -> Result<TruthPass> {
    let users = read_lines(&dir.join("users.csv"), None)?;
    let tnotes = read_lines(&dir.join("notifications.csv"), None)?;
    // Truth row -> model user.
    let model_row: Vec<Option<usize>> = users.iter().map(|id| index.get(id).map(|u| u as usize)).collect();
    let ncol: Vec<Option<usize>> = notes.iter().map(|n| tnotes.iter().position(|t| *t == n.id)).collect();
    let nn = notes.len();
    // The truth's own columns in our order need no copy of a row.
    let in_order = ncol.iter().enumerate().all(|(n, c)| *c == Some(n));
    // A row in our column order, when the truth's columns are not.
    let mut reordered = vec![f32::NAN; nn];
    let mut expected = vec![Expected::new(nn); plans.len()];
    let mut of_push = vec![vec![f32::NAN; model.users.len()]; plans.len()];
    let mut oracle =
        PushPlan { policy: Policy::Oracle, user_push: vec![None; model.users.len()], cohort_push: None, groups: None };
    let mut oracle_expected = Expected::new(nn);
    let mut oracle_of_push = vec![f32::NAN; model.users.len()];
    let path = dir.join("click_probability.npy");
    let (rows, cols) = read_npy_f32_rows(&path, |r, probs| {
        let Some(u) = model_row.get(r).copied().flatten() else { return };
        let row: &[f32] = if in_order && probs.len() >= nn {
            &probs[..nn]
        } else {
            for (v, c) in reordered.iter_mut().zip(&ncol) {
                *v = c.and_then(|c| probs.get(c).copied()).unwrap_or(f32::NAN);
            }
            &reordered
        };
        for ((plan, e), t) in plans.iter().zip(&mut expected).zip(&mut of_push) {
            if let Some(n) = plan.user_push[u] {
                e.add(row, n as usize);
                t[u] = row[n as usize];
            }
        }
        let choice = targeting::oracle_choice(row);
        oracle.user_push[u] = choice;
        if let Some(n) = choice {
            oracle_expected.add(row, n as usize);
            oracle_of_push[u] = row[n as usize];
        }
    })?;
    if users.len() != rows || tnotes.len() != cols {
        bail!(
            "{}: click_probability.npy is {rows}x{cols} but users.csv has {} and notifications.csv {} rows",
            dir.display(),
            users.len(),
            tnotes.len()
        );
    }
    Ok(TruthPass { expected, of_push, oracle, oracle_expected, oracle_of_push })
}

/// What the truth says of each plan: its expected sums and, per user, the
/// true probability of what it pushed; and the per-user oracle's own.
pub struct TruthPass {
    pub expected: Vec<Expected>,
    pub of_push: Vec<Vec<f32>>,
    pub oracle: PushPlan,
    pub oracle_expected: Expected,
    pub oracle_of_push: Vec<f32>,
}
