//! The stages of the job and the whole run, sharing one implementation.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use cohortcast_app::model::{CohortHours, PEAK_HOURS};
use cohortcast_core::als::{AlsModel, AlsParams};
use cohortcast_core::ctr::{ctr_by_group, evaluate_expected, reach_curve, Clicks, Expected};
use cohortcast_core::grouping::{limit_reach, BatchScores, Grouping};
use cohortcast_core::hours;
use cohortcast_core::kmeans::{normalize_rows, Cohorts, KMeansParams};
use cohortcast_core::policy::Policy;
use cohortcast_core::saavn::UserIndex;
use cohortcast_core::scores::Scorer;
use cohortcast_core::targeting::{self, Notification, PushPlan};
use cohortcast_data::files::{write_dir_atomic, write_lines};
use cohortcast_data::ingest::{ingest, IngestOptions, Ingested};
use cohortcast_data::inputs::InputPaths;
use cohortcast_data::stages::{load_ingested, load_model, save_ingested, save_model, ModelParams, StoredModel};
use rayon::prelude::*;

use super::evaluation::{read_pushes, truth_pass, Evaluation, REACHES};
use super::report::{
    print_ingest, print_table, write_ctr_at_reach_csv, write_ctr_by_cohort_csv, write_ctr_by_policy_csv, write_ctr_csv,
    write_summary, Timings,
};
use super::{progress, DemoArgs, PolicyArg, Targeting};

/// Reads and checks the inputs.
/// Ingests for a command writing `out`. Inputs read from `out`'s staging
/// folder (the demo's generated data) are reported, and printed, where
/// they will be once it is swapped in.
fn read_inputs(paths: &InputPaths, opts: &IngestOptions, out: &Path) -> Result<Ingested> {
    let pb = progress::spinner("ingest");
    let mut ing = ingest(paths, opts).context("ingest failed")?;
    pb.finish_and_clear();
    if let Some(dest) = super::outdir::destination(out) {
        ing.report.rebase(out, &dest);
    }
    print_ingest(&ing.report);
    Ok(ing)
}

/// Fits ALS and k-means.
fn train(ing: &Ingested, als: &AlsParams, km: &KMeansParams, t: &mut Timings) -> Result<StoredModel> {
    let start = Instant::now();
    let pb = progress::bar(als.iterations as u64, "ALS");
    let model = AlsModel::fit_with_progress(&ing.plays, als, false, |_| pb.inc(1)).context("ALS failed")?;
    pb.finish_and_clear();
    t.als = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let pb = progress::spinner("k-means");
    // Spherical k-means: cohorts group users by the direction of their taste.
    let unit = normalize_rows(model.user_factors(), model.factors());
    let cohorts = Cohorts::fit(&unit, model.factors(), km).context("k-means failed")?;
    pb.finish_and_clear();
    t.kmeans = start.elapsed().as_secs_f64();
    let params = ModelParams {
        als: als.clone(),
        kmeans: km.clone(),
        loss_history: model.loss_history.clone(),
        inertia: cohorts.inertia,
    };
    Ok(StoredModel {
        users: ing.users.clone(),
        artists: ing.artists.clone(),
        labels: cohorts.labels().to_vec(),
        als: model,
        cohorts,
        params,
    })
}

/// Notifications with their artists mapped to model indices (unknown
/// artists dropped; a notification with none keeps an empty list).
fn notifications(model: &StoredModel, ing: &Ingested) -> Vec<Notification> {
    ing.notifications
        .iter()
        .map(|n| Notification {
            id: n.id.clone(),
            artists: n.artists.iter().filter_map(|a| model.artists.binary_search(a).ok().map(|i| i as u32)).collect(),
        })
        .collect()
}

/// A plan and each user's predicted score of what it pushes them (NaN
/// where it pushes nothing).
pub struct Decision {
    pub plan: PushPlan,
    pub scores: Vec<f32>,
}

/// The expected-CTR plan grouped as asked, and its push scores where the
/// grouping gives them without another pass over the users. `batch`: the
/// users' best notifications and the taste cohorts' scores, computed once
/// for every grouping.
fn grouped(
    grouping: Grouping,
    model: &StoredModel,
    notes: &[Notification],
    tc: &Targeting,
    scorer: &Scorer,
    batch: &mut Option<BatchScores>,
) -> (PushPlan, Option<Vec<f32>>) {
    let k = model.cohorts.k();
    let b = batch.get_or_insert_with(|| BatchScores::compute(scorer, Some((&model.labels, k))));
    match grouping {
        Grouping::Release => {
            let (plan, scores) = b.release_plan(scorer, &tc.grouping_params(k));
            (plan, Some(scores))
        }
        Grouping::User => {
            let (plan, scores) = b.user_plan(model.users.len());
            (plan, Some(scores))
        }
        Grouping::Taste => (b.taste_plan(notes.len()).expect("computed with the cohorts"), None),
    }
}

/// The chosen policy's plan, cut to `tc.reach`.
fn plan(
    policy: PolicyArg,
    model: &StoredModel,
    ing: &Ingested,
    notes: &[Notification],
    tc: &Targeting,
    batch: &mut Option<BatchScores>,
) -> Decision {
    let scorer = Scorer::new(&model.als, &ing.plays, notes, &tc.params);
    let (plan, scores) = match policy {
        PolicyArg::ExpectedCtr => grouped(tc.grouping, model, notes, tc, &scorer, batch),
        PolicyArg::TopArtist => (targeting::top_artist_plan(&ing.plays, &model.labels, model.cohorts.k(), notes), None),
    };
    let scores = scores.unwrap_or_else(|| scorer.push_scores(&[&plan.user_push]).pop().expect("one plan"));
    let mut d = Decision { plan, scores };
    if tc.reach < 1.0 {
        limit_reach(&mut d.plan, &d.scores, tc.reach);
    }
    if tc.min_score > 0.0 {
        for (p, &s) in d.plan.user_push.iter_mut().zip(&d.scores) {
            // NaN (nothing scored) is under any floor.
            if s.is_nan() || (s as f64) < tc.min_score {
                *p = None;
            }
        }
    }
    for (s, p) in d.scores.iter_mut().zip(&d.plan.user_push) {
        if p.is_none() {
            *s = f32::NAN;
        }
    }
    d
}

/// Writes cohorts.csv, groups.csv, pushes.csv and `notifications/<id>.csv`.
fn write_pushes(out: &Path, model: &StoredModel, ing: &Ingested, notes: &[Notification], d: &Decision) -> Result<()> {
    let plan = &d.plan;
    // Push groups: the plan's, else one per notification.
    let group = |u: usize| -> Option<u32> {
        let n = plan.user_push[u]?;
        Some(plan.groups.as_ref().map_or(n, |g| g[u]))
    };
    write_lines(
        &out.join("cohorts.csv"),
        Some("user_id,cohort,group"),
        model.users.iter().zip(&model.labels).enumerate().map(|(u, (id, l))| match group(u) {
            Some(g) => format!("{id},{l},{g}"),
            None => format!("{id},{l},"),
        }),
    )?;
    write_groups(out, model, ing, notes, d, &group)?;
    let mut by_note: Vec<Vec<&str>> = vec![Vec::new(); notes.len()];
    for (u, p) in plan.user_push.iter().enumerate() {
        if let Some(n) = p {
            by_note[*n as usize].push(&model.users[u]);
        }
    }
    write_lines(
        &out.join("pushes.csv"),
        Some("notification_id,user_id"),
        by_note.iter().enumerate().flat_map(|(n, us)| us.iter().map(move |u| format!("{},{u}", notes[n].id))),
    )?;
    write_dir_atomic(&out.join("notifications"), |dir| {
        for (n, us) in by_note.iter().enumerate().filter(|(_, us)| !us.is_empty()) {
            write_lines(&dir.join(format!("{}.csv", safe_file_name(&notes[n].id))), None, us)?;
        }
        Ok(())
    })?;
    write_lines(&out.join("target.txt"), None, [plan.policy.name()])?;
    Ok(())
}

/// `groups.csv`: per push group, its notification, size, mean predicted
/// score, the taste cohorts its users come from and its most played
/// artists (each with its share), so every group can be explained.
fn write_groups(
    out: &Path,
    model: &StoredModel,
    ing: &Ingested,
    notes: &[Notification],
    d: &Decision,
    group: &dyn Fn(usize) -> Option<u32>,
) -> Result<()> {
    let users = model.users.len();
    let groups = (0..users).filter_map(group).max().map_or(0, |g| g as usize + 1);
    let k = model.cohorts.k();
    let (mut size, mut note, mut score) = (vec![0usize; groups], vec![0u32; groups], vec![0f64; groups]);
    let mut taste = vec![0usize; groups * k];
    // Group labels for the artist shares; users not pushed are left out
    // by giving them a group of their own past the last.
    let mut labels = vec![groups as u32; users];
    for u in 0..users {
        let Some(g) = group(u) else { continue };
        let g = g as usize;
        labels[u] = g as u32;
        size[g] += 1;
        note[g] = d.plan.user_push[u].expect("grouped users are pushed");
        if !d.scores[u].is_nan() {
            score[g] += d.scores[u] as f64;
        }
        taste[g * k + model.labels[u] as usize] += 1;
    }
    let top = cohortcast_app::model::cohort_top_artists(&ing.plays, &labels, groups + 1, &model.artists);
    let shares = |v: Vec<(String, f64)>| v.iter().map(|(id, s)| format!("{id}:{s:.3}")).collect::<Vec<_>>().join(" ");
    write_lines(
        &out.join("groups.csv"),
        Some("group,notification_id,users,predicted_score,taste_cohorts,top_artists"),
        (0..groups).filter(|&g| size[g] > 0).map(|g| {
            let mut t: Vec<(usize, usize)> = (0..k).map(|c| (c, taste[g * k + c])).filter(|x| x.1 > 0).collect();
            t.sort_by_key(|&(c, n)| (std::cmp::Reverse(n), c));
            let t = t.iter().take(3).map(|&(c, n)| (c.to_string(), n as f64 / size[g] as f64)).collect();
            let a = top[g].iter().take(3).map(|a| (csv_safe(&a.artist_id), a.share)).collect();
            format!(
                "{g},{},{},{:.6},{},{}",
                csv_safe(&notes[note[g] as usize].id),
                size[g],
                score[g] / size[g] as f64,
                shares(t),
                shares(a)
            )
        }),
    )?;
    Ok(())
}

/// An id inside a CSV field: a comma or a quote would cut the row.
fn csv_safe(id: &str) -> String {
    id.replace([',', '"', '\n', '\r'], "_")
}

/// A notification id as a file name: anything but `[A-Za-z0-9._-]` becomes `_`.
fn safe_file_name(id: &str) -> String {
    let s: String = id.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    if s.starts_with('.') {
        format!("_{s}")
    } else {
        s
    }
}

#[allow(clippy::too_many_arguments)]
fn evaluate_all(
    model: &StoredModel,
    ing: &Ingested,
    notes: &[Notification],
    chosen: &PushPlan,
    truth_dir: Option<&Path>,
    tc: &Targeting,
    seed: u64,
    mut batch: Option<BatchScores>,
) -> Result<Option<Evaluation>> {
    let user_index = UserIndex::new(model.users.iter().map(String::as_str));
    let Some(raw) = &ing.clicks else { return Ok(None) };
    let note_index: HashMap<&str, u32> = notes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i as u32)).collect();
    // One hash lookup a click, in parallel (a binary search over the user
    // ids compared ~19 strings a click).
    let mapped: Vec<Option<(u32, u32)>> =
        raw.par_iter().map(|(n, u)| Some((*note_index.get(n.as_str())?, user_index.get(u)?))).collect();
    let outside = mapped.iter().filter(|m| m.is_none()).count();
    let clicks = Clicks::new(notes.len(), mapped.into_iter().flatten());
    let users = model.users.len();
    let k = model.cohorts.k();
    let scorer = Scorer::new(&model.als, &ing.plays, notes, &tc.params);
    // The chosen plan, the expected-CTR plan under every other grouping
    // (so the cost of grouping is always in view), and the baselines.
    let mut plans = vec![chosen.clone()];
    for g in Grouping::ALL {
        if chosen.policy != g.policy() {
            plans.push(grouped(g, model, notes, tc, &scorer, &mut batch).0);
        }
    }
    let modelled = plans.len();
    if chosen.policy != Policy::TopArtist {
        plans.push(targeting::top_artist_plan(&ing.plays, &model.labels, k, notes));
    }
    plans.push(targeting::single_plan(users, targeting::best_single(&clicks)));
    plans.push(targeting::random_plan(users, notes.len(), seed));
    // The top-artist rule pushes only the cohorts whose top artist has a
    // notification: its CTR is over a chosen subset. Measure the default
    // policy on exactly those users too, so the two compare like for like.
    let ours = plans.iter().find(|p| p.policy == Grouping::Release.policy()).expect("always planned");
    let top = plans.iter().find(|p| p.policy == Policy::TopArtist).expect("always planned");
    let matched = PushPlan {
        policy: Policy::ExpectedCtrOnTopArtistUsers,
        user_push: ours.user_push.iter().zip(&top.user_push).map(|(o, t)| t.and(*o)).collect(),
        cohort_push: None,
        groups: None,
    };
    plans.push(matched);
    // For the CTR at each reach: the expected-CTR plans rank their pushes
    // by the model's score (the matched plan by the default plan's); the
    // baselines have no model to rank by, and push a random share.
    let batch = batch.expect("computed for the groupings");
    let mut ranks: Vec<Vec<f32>> = plans[..modelled].iter().map(|p| batch.push_scores(&scorer, &p.user_push)).collect();
    drop(batch);
    for (i, p) in plans.iter().enumerate().skip(modelled) {
        let mut rng = cohortcast_core::rng::Rng::stream(seed, i as u64);
        ranks.push(match p.policy {
            Policy::ExpectedCtrOnTopArtistUsers => {
                let release = plans.iter().position(|q| q.policy == Grouping::Release.policy()).expect("planned");
                ranks[release].clone()
            }
            _ => (0..users).map(|_| rng.f32()).collect(),
        });
    }
    // With the truth, the oracle goes before the matched plan; it ranks
    // its users by their true probability.
    let mut expected: Vec<Option<Expected>> = vec![None; plans.len()];
    let mut of_push: Vec<Option<Vec<f32>>> = vec![None; plans.len()];
    if let Some(dir) = truth_dir {
        let t = truth_pass(dir, model, &user_index, notes, &plans)?;
        expected = t.expected.into_iter().map(Some).collect();
        of_push = t.of_push.into_iter().map(Some).collect();
        let at = plans.len() - 1;
        expected.insert(at, Some(t.oracle_expected));
        of_push.insert(at, Some(t.oracle_of_push.clone()));
        ranks.insert(at, t.oracle_of_push);
        plans.insert(at, t.oracle);
    }
    drop(user_index);
    let reports = plans
        .par_iter()
        .zip(&expected)
        .map(|(p, e)| evaluate_expected(p, &model.labels, &clicks, e.as_ref()))
        .collect();
    let reach = plans
        .par_iter()
        .zip(&ranks)
        .zip(&of_push)
        .map(|((p, r), t)| reach_curve(p, r, &clicks, t.as_deref(), &REACHES))
        .collect();
    let by_group = ctr_by_group(&plans[0], &clicks, &ranks[0], of_push[0].as_deref());
    Ok(Some(Evaluation { reports, reach, by_group, clicks_outside_model: outside }))
}

/// ctr.csv, ctr_by_policy.csv, ctr_at_reach.csv and ctr_by_cohort.csv.
fn write_evaluation(out: &Path, notes: &[Notification], ev: &Evaluation) -> Result<()> {
    write_ctr_csv(&out.join("ctr.csv"), notes, &ev.reports[0])?;
    write_ctr_by_policy_csv(&out.join("ctr_by_policy.csv"), notes, &ev.reports)?;
    write_ctr_at_reach_csv(&out.join("ctr_at_reach.csv"), ev)?;
    write_ctr_by_cohort_csv(&out.join("ctr_by_cohort.csv"), notes, &ev.by_group)?;
    Ok(())
}

/// `cohortcast ingest`.
pub fn ingest_stage(paths: &InputPaths, opts: &IngestOptions, out: &Path) -> Result<()> {
    let ing = read_inputs(paths, opts, out)?;
    save_ingested(&out.join("ingest"), &ing)?;
    Ok(())
}

/// `cohortcast train`.
pub fn train_stage(out: &Path, als: &AlsParams, km: &KMeansParams) -> Result<()> {
    let ing = load_ingested(&out.join("ingest")).context("run `cohortcast ingest` first")?;
    let model = train(&ing, als, km, &mut Timings::default())?;
    save_model(&out.join("model"), &model)?;
    Ok(())
}

/// `cohort_hours.csv`: per cohort, its members, its peak hours and the
/// members who played during each hour of the day (h00 to h23, in the
/// ingest's time zone). Not written when the ingest kept no hours.
fn write_cohort_hours(out: &Path, hours: Option<&CohortHours>, model: &StoredModel) -> Result<()> {
    let Some(h) = hours else { return Ok(()) };
    let sizes = cohortcast_core::kmeans::cohort_sizes(&model.labels, model.cohorts.k());
    let zone = hours::format_utc_offset(h.utc_offset_minutes);
    let header = format!(
        "cohort,members,utc_offset,peak_hours,{}",
        (0..hours::HOURS).map(|x| format!("h{x:02}")).collect::<Vec<_>>().join(",")
    );
    write_lines(
        &out.join("cohort_hours.csv"),
        Some(&header),
        h.active.iter().enumerate().map(|(c, a)| {
            let peaks: Vec<String> = hours::peak_hours(a, PEAK_HOURS).iter().map(u8::to_string).collect();
            let counts: Vec<String> = a.iter().map(u64::to_string).collect();
            format!("{c},{},{zone},{},{}", sizes[c], peaks.join(" "), counts.join(","))
        }),
    )?;
    Ok(())
}

/// `cohortcast target`.
pub fn target_stage(out: &Path, policy: PolicyArg, tc: &Targeting) -> Result<()> {
    let ing = load_ingested(&out.join("ingest")).context("run `cohortcast ingest` first")?;
    let model = load_model(&out.join("model")).context("run `cohortcast train` first")?;
    let notes = notifications(&model, &ing);
    let d = plan(policy, &model, &ing, &notes, tc, &mut None);
    write_pushes(out, &model, &ing, &notes, &d)?;
    write_cohort_hours(out, CohortHours::of(&ing, &model.labels, model.cohorts.k()).as_ref(), &model)
}

/// `cohortcast evaluate`.
pub fn evaluate_stage(out: &Path, truth_dir: Option<&Path>, tc: &Targeting, seed: u64) -> Result<()> {
    let ing = load_ingested(&out.join("ingest")).context("run `cohortcast ingest` first")?;
    let model = load_model(&out.join("model")).context("run `cohortcast train` first")?;
    let notes = notifications(&model, &ing);
    let chosen = read_pushes(out, &model, &notes).context("run `cohortcast target` first")?;
    let Some(ev) = evaluate_all(&model, &ing, &notes, &chosen, truth_dir, tc, seed, None)? else {
        bail!("no notification_clicks were ingested: CTR needs the click log");
    };
    write_evaluation(out, &notes, &ev)?;
    write_summary(&out.join("summary.json"), &ing, &model, notes.len(), &ev, &Timings::default(), tc, chosen.policy)?;
    print_table(&ing, &model, notes.len(), &ev);
    Ok(())
}

/// `cohortcast run`: everything, in memory, writing every output.
#[allow(clippy::too_many_arguments)]
pub fn run_all(
    paths: &InputPaths,
    opts: &IngestOptions,
    truth_dir: Option<&Path>,
    als: &AlsParams,
    km: &KMeansParams,
    tc: &Targeting,
    policy: PolicyArg,
    out: &Path,
) -> Result<Option<Evaluation>> {
    let total = Instant::now();
    let mut t = Timings::default();
    let start = Instant::now();
    let ing = read_inputs(paths, opts, out)?;
    t.ingest = start.elapsed().as_secs_f64();
    if ing.users.len() < km.n_clusters {
        bail!(
            "only {} users have usable plays, fewer than --cohorts {}; lower --cohorts",
            ing.users.len(),
            km.n_clusters
        );
    }
    // The ingest and model folders are written on a second thread while
    // the next stage computes: writing them is one thread's work (2.2 s of
    // Parquet encoding for the medium set) that would leave a core idle.
    let model = std::thread::scope(|s| {
        let saving = s.spawn(|| save_ingested(&out.join("ingest"), &ing));
        let model = train(&ing, als, km, &mut t);
        let saved = saving.join().expect("the ingest folder's writer does not panic");
        let model = model?;
        saved?;
        Ok::<_, anyhow::Error>(model)
    })?;
    let (notes, chosen, hours, ev) = std::thread::scope(|s| {
        let saving = s.spawn(|| save_model(&out.join("model"), &model));
        let rest = target_and_evaluate(&model, &ing, truth_dir, tc, km.seed, policy, out, &mut t);
        let saved = saving.join().expect("the model folder's writer does not panic");
        let rest = rest?;
        saved?;
        Ok::<_, anyhow::Error>(rest)
    })?;
    t.total = total.elapsed().as_secs_f64();
    let empty = Evaluation { reports: Vec::new(), reach: Vec::new(), by_group: Vec::new(), clicks_outside_model: 0 };
    if let Some(ev) = &ev {
        write_evaluation(out, &notes, ev)?;
        print_table(&ing, &model, notes.len(), ev);
    } else {
        let used = chosen.user_push.iter().flatten().collect::<std::collections::BTreeSet<_>>().len();
        println!(
            "{} users in {} cohorts pushed {} of {} notifications ({}); no notification_clicks given, so no CTR",
            model.users.len() - chosen.users_not_pushed(),
            model.cohorts.k(),
            used,
            notes.len(),
            chosen.policy
        );
    }
    write_summary(
        &out.join("summary.json"),
        &ing,
        &model,
        notes.len(),
        ev.as_ref().unwrap_or(&empty),
        &t,
        tc,
        chosen.policy,
    )?;
    write_report(out, &ing, &model, hours.as_ref())?;
    Ok(ev)
}

/// What `run` works out after training: the notifications, the chosen
/// plan (its pushes and cohort hours written), and the evaluation.
type Targeted = (Vec<Notification>, PushPlan, Option<CohortHours>, Option<Evaluation>);

/// `run` after training: targeting, the pushes and the evaluation.
#[allow(clippy::too_many_arguments)]
fn target_and_evaluate(
    model: &StoredModel,
    ing: &Ingested,
    truth_dir: Option<&Path>,
    tc: &Targeting,
    seed: u64,
    policy: PolicyArg,
    out: &Path,
    t: &mut Timings,
) -> Result<Targeted> {
    let start = Instant::now();
    let notes = notifications(model, ing);
    if notes.iter().all(|n| n.artists.is_empty()) {
        bail!("no notification names an artist that anyone played; check --notification-actor against --metadata");
    }
    let mut batch = None;
    let chosen = plan(policy, model, ing, &notes, tc, &mut batch);
    t.targeting = start.elapsed().as_secs_f64();
    // The push lists are written on a second thread while the evaluation
    // runs: formatting them is one thread's work, and so is most of the
    // evaluation's pass over the truth file.
    let (hours, ev) = std::thread::scope(|s| {
        let writing = s.spawn(|| {
            write_pushes(out, model, ing, &notes, &chosen)?;
            let hours = CohortHours::of(ing, &model.labels, model.cohorts.k());
            write_cohort_hours(out, hours.as_ref(), model)?;
            Ok::<_, anyhow::Error>(hours)
        });
        let start = Instant::now();
        let ev = evaluate_all(model, ing, &notes, &chosen.plan, truth_dir, tc, seed, batch);
        t.evaluation = start.elapsed().as_secs_f64();
        let hours = writing.join().expect("the push lists' writer does not panic");
        Ok::<_, anyhow::Error>((hours?, ev?))
    })?;
    Ok((notes, chosen.plan, hours, ev))
}

/// `report.html`: the dashboard's charts for this run, written last (it
/// reads back summary.json and ctr.csv).
fn write_report(out: &Path, ing: &Ingested, model: &StoredModel, hours: Option<&CohortHours>) -> Result<()> {
    let k = model.cohorts.k();
    let top = cohortcast_app::model::cohort_top_artists(&ing.plays, &model.labels, k, &model.artists);
    let sizes = cohortcast_core::kmeans::cohort_sizes(&model.labels, k);
    let page = cohortcast_app::dashboard::render_run("cohortcast run", model, &sizes, &top, hours, out);
    cohortcast_data::files::write_atomic(&out.join("report.html"), |w| w.write_all(page.as_bytes()))?;
    Ok(())
}

/// `cohortcast demo`, writing into `out` (the staging folder).
pub fn demo(a: &DemoArgs, out: &Path) -> Result<()> {
    let data = out.join("data");
    super::synth::run(super::synth::SynthArgs::demo(data.clone(), a.users, a.seed))?;
    let paths = InputPaths::from_data_dir(&data);
    let als = AlsParams { seed: a.seed, ..AlsParams::default() };
    let km = KMeansParams { n_clusters: a.cohorts, seed: a.seed, ..KMeansParams::default() };
    run_all(
        &paths,
        &IngestOptions::default(),
        Some(&data.join("truth")),
        &als,
        &km,
        &Targeting::default(),
        PolicyArg::ExpectedCtr,
        out,
    )?;
    Ok(())
}
