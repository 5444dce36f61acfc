//! What a run tells a person (stdout table, stderr notes) and what it
//! leaves for tools (ctr.csv, summary.json).

use std::path::Path;

use anyhow::Result;
use cohortcast_core::ctr::{CtrReport, GroupCtr, ReachPoint};
use cohortcast_core::policy::Policy;
use cohortcast_core::targeting::Notification;
use cohortcast_data::files::{write_json, write_lines};
use cohortcast_data::ingest::{IngestReport, Ingested};
use cohortcast_data::stages::StoredModel;
use serde::Serialize;

use super::evaluation::{Evaluation, REACHES};
use super::Targeting;

/// Seconds spent per stage.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Timings {
    pub ingest: f64,
    pub als: f64,
    pub kmeans: f64,
    pub targeting: f64,
    pub evaluation: f64,
    pub total: f64,
}

/// Rejected rows and their first examples, on stderr.
pub fn print_ingest(r: &IngestReport) {
    for (name, input) in &r.inputs {
        if input.rejected_total() == 0 {
            continue;
        }
        let reasons: Vec<String> = input.rejected.iter().map(|(k, v)| format!("{k} {v}")).collect();
        eprintln!("{name}: rejected {} of {} rows ({})", input.rejected_total(), input.rows, reasons.join(", "));
        for ex in &input.examples {
            eprintln!("  {ex}");
        }
    }
    if r.plays_unknown_song > 0 {
        eprintln!("clickstream: {} plays of songs missing from the metadata were left out", r.plays_unknown_song);
    }
    if r.users_without_usable_plays > 0 {
        eprintln!("{} users have no usable plays (only unknown songs) and get no cohort", r.users_without_usable_plays);
    }
    let e = &r.engine;
    if e.spill_files > 0 {
        eprintln!(
            "ingest: {:.1} MB spilled to disk in {} files with a {} MiB memory pool over {} partitions \
             (a larger --ingest-memory-mb keeps it in memory)",
            e.spilled_bytes as f64 / 1e6,
            e.spill_files,
            e.memory_limit >> 20,
            e.partitions
        );
    }
}

fn pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

/// The CTR table, on stdout.
pub fn print_table(ing: &Ingested, model: &StoredModel, notifications: usize, ev: &Evaluation) {
    println!(
        "{} users, {} artists, {} cohorts, {} notifications, {} clicks",
        model.users.len(),
        model.artists.len(),
        model.cohorts.k(),
        notifications,
        ing.report.clicks
    );
    let oracle = ev.reports.iter().find(|r| r.policy == Policy::Oracle).and_then(|r| r.expected_ctr);
    // `of oracle` compares expected CTR over the pushed users with the
    // oracle's over all users; `clicks/user` counts unpushed users as
    // non-clicks (what a campaign gains in opens).
    let users = model.users.len().max(1) as f64;
    println!(
        "{:<30} {:>8} {:>8} {:>8} {:>9} {:>11} {:>7} {:>9} {:>10}",
        "policy", "pushed", "clicked", "CTR", "mean CTR", "clicks/user", "notifs", "exp. CTR", "of oracle"
    );
    for r in &ev.reports {
        let exp = r.expected_ctr.map(pct).unwrap_or_else(|| "-".into());
        let of = match (r.expected_ctr, oracle) {
            (Some(e), Some(o)) if o > 0.0 => format!("{:.1}%", 100.0 * e / o),
            _ => "-".into(),
        };
        println!(
            "{:<30} {:>8} {:>8} {:>8} {:>9} {:>11} {:>7} {:>9} {:>10}",
            r.policy,
            r.pushes,
            r.clicks,
            pct(r.overall_ctr),
            pct(r.mean_ctr),
            pct(r.clicks as f64 / users),
            r.per_notification.len(),
            exp,
            of
        );
    }
    print_reach_table(ev, oracle.is_some());
    if let Some(r) = ev.reports.first() {
        if r.users_not_pushed > 0 {
            println!("{}: {} users not pushed", r.policy, r.users_not_pushed);
        }
    }
    if let Some(t) = ev.reports.iter().find(|r| r.policy == Policy::TopArtist) {
        if t.users_not_pushed > 0 {
            println!(
                "top-artist: {} users in cohorts whose top artist has no notification were not pushed; \
                 expected-ctr@top-artist-users is the default policy measured on the {} users it did push",
                t.users_not_pushed, t.pushes
            );
        }
    }
}

/// `ctr.csv`: one row per notification pushed.
pub fn write_ctr_csv(path: &Path, notes: &[Notification], r: &CtrReport) -> Result<()> {
    write_lines(
        path,
        Some("notification_id,cohorts,users_pushed,users_clicked,ctr"),
        r.per_notification.iter().map(|n| {
            format!(
                "{},{},{},{},{:.6}",
                notes[n.notification as usize].id, n.cohorts, n.users_pushed, n.users_clicked, n.ctr
            )
        }),
    )?;
    Ok(())
}

/// `ctr_by_policy.csv`: every evaluated policy's CTR per notification it
/// pushed, the chosen policy first (what the report's per-notification
/// chart sets beside each other).
pub fn write_ctr_by_policy_csv(path: &Path, notes: &[Notification], reports: &[CtrReport]) -> Result<()> {
    write_lines(
        path,
        Some("policy,notification_id,users_pushed,users_clicked,ctr"),
        reports.iter().flat_map(|r| {
            r.per_notification.iter().map(move |n| {
                format!(
                    "{},{},{},{},{:.6}",
                    r.policy, notes[n.notification as usize].id, n.users_pushed, n.users_clicked, n.ctr
                )
            })
        }),
    )?;
    Ok(())
}

/// CTR at equal reach: each plan's best-scored users first.
fn print_reach_table(ev: &Evaluation, truth: bool) {
    if ev.reach.is_empty() {
        return;
    }
    // The oracle's expected CTR at each reach, for `of oracle`.
    let oracle = ev.reports.iter().zip(&ev.reach).find(|(r, _)| r.policy == Policy::Oracle).map(|(_, c)| &c.0);
    println!(
        "CTR at reach (share of users pushed: the expected-CTR plans' best-scored users first, a random share of \
         the baselines'{})",
        if truth { "; in brackets expected CTR as a share of the oracle's best users at that reach" } else { "" }
    );
    let head: Vec<String> = REACHES.iter().map(|r| format!("{:.0}%", r * 100.0)).collect();
    let w = if truth { 15 } else { 8 };
    print!("{:<30}", "policy");
    for h in &head {
        print!(" {h:>w$}");
    }
    println!(" {:>10}", "own reach");
    for (r, (points, own)) in ev.reports.iter().zip(&ev.reach) {
        print!("{:<30}", r.policy);
        for (i, p) in points.iter().enumerate() {
            let cell = match p {
                None => "-".to_string(),
                Some(p) => {
                    let of = match (p.expected_ctr, oracle.and_then(|o| o[i].as_ref()).and_then(|o| o.expected_ctr)) {
                        (Some(e), Some(o)) if truth && o > 0.0 => format!(" ({:.0}%)", 100.0 * e / o),
                        _ => String::new(),
                    };
                    format!("{}{of}", pct(p.ctr))
                }
            };
            print!(" {cell:>w$}");
        }
        println!(" {:>10}", format!("{:.1}%", own.reach * 100.0));
    }
}

/// An optional figure in a CSV cell: empty when unknown.
fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.6}")).unwrap_or_default()
}

/// `ctr_at_reach.csv`: every evaluated plan's CTR at each reach it can
/// fill, then at its own reach.
pub fn write_ctr_at_reach_csv(path: &Path, ev: &Evaluation) -> Result<()> {
    write_lines(
        path,
        Some("policy,reach,users_pushed,users_clicked,ctr,expected_ctr"),
        ev.reports.iter().zip(&ev.reach).flat_map(|(r, (points, own))| {
            let own = (!points.iter().flatten().any(|p| p.users_pushed == own.users_pushed)).then_some(own);
            points.iter().flatten().chain(own).map(move |p| {
                format!(
                    "{},{:.6},{},{},{:.6},{}",
                    r.policy,
                    p.reach,
                    p.users_pushed,
                    p.users_clicked,
                    p.ctr,
                    opt(p.expected_ctr)
                )
            })
        }),
    )?;
    Ok(())
}

/// `ctr_by_cohort.csv`: the chosen plan's CTR per push group.
pub fn write_ctr_by_cohort_csv(path: &Path, notes: &[Notification], groups: &[GroupCtr]) -> Result<()> {
    write_lines(
        path,
        Some("cohort,users,notification_id,predicted_score,users_clicked,ctr,expected_ctr"),
        groups.iter().map(|g| {
            format!(
                "{},{},{},{:.6},{},{:.6},{}",
                g.group,
                g.users,
                notes[g.notification as usize].id,
                g.predicted_score,
                g.users_clicked,
                g.ctr,
                opt(g.expected_ctr)
            )
        }),
    )?;
    Ok(())
}

#[derive(Serialize)]
struct CtrSummary<'a> {
    policy: Policy,
    overall_ctr: f64,
    mean_ctr: f64,
    expected_ctr: Option<f64>,
    pushes: usize,
    clicks: usize,
    notifications_pushed: usize,
    users_not_pushed: usize,
    /// CTR at each reach the plan fills, then at its own.
    at_reach: Vec<&'a ReachPoint>,
}

impl<'a> CtrSummary<'a> {
    fn new(r: &'a CtrReport, reach: Option<&'a (Vec<Option<ReachPoint>>, ReachPoint)>) -> Self {
        CtrSummary {
            at_reach: reach.map(|(p, own)| p.iter().flatten().chain([own]).collect()).unwrap_or_default(),
            policy: r.policy,
            overall_ctr: r.overall_ctr,
            mean_ctr: r.mean_ctr,
            expected_ctr: r.expected_ctr,
            pushes: r.pushes,
            clicks: r.clicks,
            notifications_pushed: r.per_notification.len(),
            users_not_pushed: r.users_not_pushed,
        }
    }
}

#[derive(Serialize)]
struct Summary<'a> {
    inputs: &'a IngestReport,
    users: usize,
    artists: usize,
    cohorts: usize,
    cohort_sizes: Vec<usize>,
    notifications: usize,
    params: &'a cohortcast_data::stages::ModelParams,
    targeting: TargetingSummary,
    policy: Policy,
    timings_s: &'a Timings,
    ctr: Vec<CtrSummary<'a>>,
    clicks_outside_model: usize,
}

#[derive(Serialize)]
struct TargetingSummary {
    history_weight: f32,
    grouping: String,
    min_cohort_size: usize,
    reach: f64,
    min_expected_ctr: f64,
}

/// `summary.json`.
#[allow(clippy::too_many_arguments)]
pub fn write_summary(
    path: &Path,
    ing: &Ingested,
    model: &StoredModel,
    notifications: usize,
    ev: &Evaluation,
    t: &Timings,
    tc: &Targeting,
    policy: Policy,
) -> Result<()> {
    let s = Summary {
        inputs: &ing.report,
        users: model.users.len(),
        artists: model.artists.len(),
        cohorts: model.cohorts.k(),
        cohort_sizes: cohortcast_core::kmeans::cohort_sizes(&model.labels, model.cohorts.k()),
        notifications,
        params: &model.params,
        targeting: TargetingSummary {
            history_weight: tc.params.history_weight,
            grouping: tc.grouping.to_string(),
            min_cohort_size: tc.min_group_size,
            reach: tc.reach,
            min_expected_ctr: tc.min_score,
        },
        policy,
        timings_s: t,
        ctr: ev.reports.iter().enumerate().map(|(i, r)| CtrSummary::new(r, ev.reach.get(i))).collect(),
        clicks_outside_model: ev.clicks_outside_model,
    };
    write_json(path, &s)?;
    Ok(())
}
