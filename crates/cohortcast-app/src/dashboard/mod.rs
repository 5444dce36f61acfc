//! The dashboard: one server-rendered HTML page of SVG charts, with no
//! scripts and no build chain. `GET /` serves it, and `cohortcast run`
//! writes the same page as `report.html`.
//!
//! Charts: cohort sizes; the top artists of the largest cohorts; a 2-D map
//! of users (the first two principal components of their factors, a
//! sample of at most [`MAP_POINTS`]) coloured by cohort; the hours of the
//! day the largest cohorts listen at; and, when the run was evaluated, CTR
//! by policy, the reach–CTR frontier of every policy, CTR per push group
//! of the chosen policy, and CTR per notification of the chosen policy
//! beside the baselines.

use std::fmt::Write;

use serde_json::Value;

use crate::model::{ArtistShare, CohortHours};

mod charts;

use charts::{bars, bars_titled, colour, esc, pca2};

/// Users drawn on the map, at most.
pub const MAP_POINTS: usize = 4000;
/// Cohorts whose top artists are drawn (the largest).
pub const ARTIST_PANELS: usize = 12;
/// Cohorts in the hour-of-day heat map (the largest).
pub const HOUR_ROWS: usize = 24;
/// Notifications in the per-notification CTR chart (the most pushed).
pub const CTR_NOTIFICATIONS: usize = 20;

/// What the page shows.
pub struct Inputs<'a> {
    /// Page title.
    pub title: &'a str,
    /// Each user's cohort.
    pub labels: &'a [u32],
    /// Users in each cohort.
    pub sizes: &'a [usize],
    /// User factors, row-major `users × factors`.
    pub user_factors: &'a [f32],
    /// Factors per user.
    pub factors: usize,
    /// Each cohort's top artists.
    pub top_artists: &'a [Vec<ArtistShare>],
    /// `summary.json` of the run, when there is one.
    pub summary: Option<&'a Value>,
    /// `ctr.csv` of the run (notification_id, cohorts, users_pushed,
    /// users_clicked, ctr), when there is one.
    pub ctr_csv: Option<&'a str>,
    /// `ctr_by_policy.csv` of the run (policy, notification_id,
    /// users_pushed, users_clicked, ctr), when there is one.
    pub ctr_by_policy_csv: Option<&'a str>,
    /// `ctr_by_cohort.csv` of the run (cohort, users, notification_id,
    /// predicted_score, users_clicked, ctr, expected_ctr), when there is one.
    pub ctr_by_cohort_csv: Option<&'a str>,
    /// `groups.csv` of the run (group, notification_id, users,
    /// predicted_score, taste_cohorts, top_artists), when there is one.
    pub groups_csv: Option<&'a str>,
    /// When each cohort listens, when the ingest kept hours.
    pub hours: Option<&'a CohortHours>,
}

fn map(inp: &Inputs) -> String {
    let users = inp.labels.len();
    let step = users.div_ceil(MAP_POINTS).max(1);
    let rows: Vec<usize> = (0..users).step_by(step).collect();
    let pts = pca2(inp.user_factors, inp.factors, &rows);
    let (w, h, pad) = (560.0, 420.0, 12.0);
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    let sx = (w - 2.0 * pad) / (x1 - x0).max(1e-12);
    let sy = (h - 2.0 * pad) / (y1 - y0).max(1e-12);
    let title = format!("Users on the first two principal components of their taste ({} of {users} drawn)", rows.len());
    let mut s = format!(
        r#"<figure><figcaption>{}</figcaption><svg id="user-map" viewBox="0 0 {w} {h}" width="62%" role="img" aria-label="{}">"#,
        esc(&title),
        esc(&title)
    );
    for (&r, &(x, y)) in rows.iter().zip(&pts) {
        let c = inp.labels[r] as usize;
        let _ = write!(
            s,
            r#"<circle class="user" cx="{:.1}" cy="{:.1}" r="2" fill="{}" fill-opacity="0.7"><title>cohort {c}</title></circle>"#,
            pad + (x - x0) * sx,
            h - pad - (y - y0) * sy,
            colour(c)
        );
    }
    s.push_str("</svg></figure>");
    s
}

/// Cohorts largest first (ties to the lower number), at most `n`, the
/// empty ones left out when `skip_empty`.
fn largest(sizes: &[usize], n: usize, skip_empty: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..sizes.len()).filter(|&c| !skip_empty || sizes[c] > 0).collect();
    order.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]).then(a.cmp(&b)));
    order.truncate(n);
    order
}

fn artist_panels(inp: &Inputs) -> String {
    let order = largest(inp.sizes, ARTIST_PANELS, true);
    let mut s = format!(
        r#"<h2>Top artists of the {} largest cohorts (share of the cohort's plays)</h2><div class="panels" id="top-artists">"#,
        order.len()
    );
    for c in order {
        let _ = write!(
            s,
            r#"<div class="panel"><h3 style="color:{}">cohort {c} · {} users</h3><svg class="artists" viewBox="0 0 260 110" width="260">"#,
            colour(c),
            inp.sizes[c]
        );
        let top = &inp.top_artists[c];
        let max = top.first().map(|a| a.share).unwrap_or(1.0).max(1e-12);
        for (i, a) in top.iter().take(5).enumerate() {
            let y = 4.0 + i as f64 * 21.0;
            let _ = write!(
                s,
                r#"<text x="0" y="{:.0}" font-size="11">{}</text><rect x="90" y="{y:.0}" width="{:.1}" height="15" fill="{}"/><text x="{:.1}" y="{:.0}" font-size="10">{:.1}%</text>"#,
                y + 12.0,
                esc(&a.artist_id.chars().take(14).collect::<String>()),
                130.0 * a.share / max,
                colour(c),
                94.0 + 130.0 * a.share / max,
                y + 12.0,
                100.0 * a.share
            );
        }
        s.push_str("</svg></div>");
    }
    s.push_str("</div>");
    s
}

fn evaluation(inp: &Inputs) -> String {
    let mut s = String::new();
    if let Some(ctr) = inp.summary.and_then(|v| v["ctr"].as_array()) {
        let vals: Vec<(String, f64, String)> = ctr
            .iter()
            .filter_map(|p| Some((p["policy"].as_str()?.to_string(), p["overall_ctr"].as_f64()?)))
            .enumerate()
            .map(|(i, (name, v))| (name, v, colour(i * 3)))
            .collect();
        if !vals.is_empty() {
            s.push_str(&bars("ctr-by-policy", "CTR by policy: users who clicked ÷ users pushed", &vals, &|v| {
                format!("{:.2}%", 100.0 * v)
            }));
        }
    }
    if let Some(chart) = frontier(inp) {
        s.push_str(&chart);
    }
    if let Some(chart) = ctr_per_cohort(inp) {
        s.push_str(&chart);
    }
    s.push_str(&groups_table(inp));
    if let Some(chart) = ctr_per_notification(inp) {
        s.push_str(&chart);
    }
    s
}

/// The reach–CTR frontier: each policy's CTR when only a share of its
/// users is pushed, against the share of users pushed (from
/// `summary.json`'s `at_reach`); a policy that cannot push everyone ends
/// at its own reach.
fn frontier(inp: &Inputs) -> Option<String> {
    let ctr = inp.summary?["ctr"].as_array()?;
    let lines: Vec<(String, Vec<(f64, f64)>)> = ctr
        .iter()
        .filter_map(|p| {
            let name = p["policy"].as_str()?.to_string();
            let mut pts: Vec<(f64, f64)> = p["at_reach"]
                .as_array()?
                .iter()
                .filter_map(|q| Some((q["reach"].as_f64()?, q["ctr"].as_f64()?)))
                .filter(|q| q.0 > 0.0)
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            pts.dedup_by(|a, b| a.0 == b.0);
            (!name.contains('@') && !pts.is_empty()).then_some((name, pts))
        })
        .collect();
    if lines.is_empty() {
        return None;
    }
    let (w, h, left, bottom, top, legend) = (900.0, 320.0, 50.0, 36.0, 14.0, 190.0);
    let max = lines.iter().flat_map(|l| l.1.iter().map(|p| p.1)).fold(0.0, f64::max).max(1e-9) * 1.05;
    let x = |r: f64| left + r * (w - left - legend - 10.0);
    let y = |c: f64| h - bottom - c / max * (h - bottom - top);
    let title = "CTR at reach: users who clicked ÷ users pushed, when only a share of users is pushed (the \
                 expected-CTR plans' best-scored users first, a random share of the baselines'; compare policies \
                 at equal reach)";
    let mut s = format!(
        r#"<figure><figcaption>{}</figcaption><svg id="reach-frontier" viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{}">"#,
        esc(title),
        esc(title)
    );
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{b}" x2="{r}" y2="{b}" stroke="#888"/><line x1="{left}" y1="{top}" x2="{left}" y2="{b}" stroke="#888"/>"##,
        b = h - bottom,
        r = x(1.0)
    );
    for t in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{}" font-size="10" text-anchor="middle">{:.0}%</text>"#,
            x(t),
            h - bottom + 14.0,
            100.0 * t
        );
    }
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{}" font-size="10" text-anchor="middle">share of users pushed</text>"#,
        x(0.5),
        h - 6.0
    );
    let _ = write!(
        s,
        r#"<text x="{}" y="{:.1}" font-size="10" text-anchor="end">{:.1}%</text>"#,
        left - 4.0,
        y(max),
        100.0 * max
    );
    for (i, (name, pts)) in lines.iter().enumerate() {
        let col = colour(i * 3);
        let path: Vec<String> = pts.iter().map(|&(r, c)| format!("{:.1},{:.1}", x(r), y(c))).collect();
        let _ = write!(
            s,
            r#"<polyline class="frontier" points="{}" fill="none" stroke="{col}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for &(r, c) in pts {
            let _ = write!(
                s,
                r#"<circle class="reach" cx="{:.1}" cy="{:.1}" r="3.5" fill="{col}"><title>{}: {:.2}% at {:.1}% of users</title></circle>"#,
                x(r),
                y(c),
                esc(name),
                100.0 * c,
                100.0 * r
            );
        }
        let _ = write!(
            s,
            r#"<text class="legend" x="{:.1}" y="{:.1}" font-size="11" fill="{col}">{}</text>"#,
            w - legend + 4.0,
            top + 8.0 + 15.0 * i as f64,
            esc(name)
        );
    }
    s.push_str("</svg></figure>");
    Some(s)
}

/// Push groups listed in the report's table (the largest).
pub const GROUP_ROWS: usize = 20;

/// The largest push groups, each explained: its notification, size, mean
/// predicted score, the taste cohorts its users come from and its most
/// played artists (from `groups.csv`, largest first).
fn groups_table(inp: &Inputs) -> String {
    let Some(csv) = inp.groups_csv else { return String::new() };
    let rows: Vec<Vec<&str>> =
        csv.lines().skip(1).map(|l| l.split(',').collect()).filter(|f: &Vec<&str>| f.len() == 6).collect();
    if rows.is_empty() {
        return String::new();
    }
    let shares = |cell: &str, prefix: &str| -> String {
        cell.split(' ')
            .filter_map(|x| x.rsplit_once(':'))
            .map(|(id, share)| format!("{prefix}{} {:.0}%", esc(id), 100.0 * share.parse::<f64>().unwrap_or(0.0)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = format!(
        r#"<figure><figcaption>The {} largest of {} push groups: who each one is</figcaption><table id="groups"><tr><th>group</th><th>notification</th><th>users</th><th>mean score</th><th>taste cohorts (share of the group)</th><th>top artists (share of its plays)</th></tr>"#,
        rows.len().min(GROUP_ROWS),
        rows.len()
    );
    for f in rows.iter().take(GROUP_ROWS) {
        let _ = write!(
            s,
            r#"<tr class="group"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            esc(f[0]),
            esc(f[1]),
            esc(f[2]),
            esc(f[3]),
            shares(f[4], "cohort "),
            shares(f[5], "")
        );
    }
    s.push_str("</table></figure>");
    s
}

/// Groups drawn in the per-cohort CTR chart (the largest).
pub const CTR_COHORTS: usize = 40;

/// CTR of each push group of the chosen policy, the largest groups first
/// (from `ctr_by_cohort.csv`).
fn ctr_per_cohort(inp: &Inputs) -> Option<String> {
    let mut rows: Vec<(String, usize, String, f64, f64)> = inp
        .ctr_by_cohort_csv?
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some((
                f.first()?.to_string(),
                f.get(1)?.parse().ok()?,
                f.get(2)?.to_string(),
                f.get(3)?.parse().ok()?,
                f.get(5)?.parse().ok()?,
            ))
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let shown = rows.len().min(CTR_COHORTS);
    let vals: Vec<(String, f64, String)> =
        rows[..shown].iter().enumerate().map(|(i, (g, _, _, _, ctr))| (g.clone(), *ctr, colour(i))).collect();
    let titles: Vec<String> = rows[..shown]
        .iter()
        .map(|(g, users, note, score, _)| format!("group {g} · {note} · {users} users · score {score:.2}"))
        .collect();
    let title =
        format!("CTR per push group of the chosen policy, the {shown} largest of {}, largest first", rows.len());
    Some(bars_titled("ctr-by-cohort", &title, &vals, Some(&titles), &|v| format!("{:.1}%", 100.0 * v)))
}

/// CTR per notification: the chosen policy's most pushed notifications,
/// each with a bar per policy that pushed it (from `ctr_by_policy.csv`;
/// the chosen policy alone from `ctr.csv` when only that exists).
fn ctr_per_notification(inp: &Inputs) -> Option<String> {
    // (policy, notification, users pushed, ctr). Both files hold users
    // pushed and CTR in columns 2 and 4; the notification is column 1 of
    // ctr_by_policy.csv (after the policy) and column 0 of ctr.csv.
    let row = |l: &str, note: usize| -> Option<(String, f64, f64)> {
        let f: Vec<&str> = l.split(',').collect();
        Some((f.get(note)?.to_string(), f.get(2)?.parse().ok()?, f.get(4)?.parse().ok()?))
    };
    let mut rows: Vec<(String, String, f64, f64)> = Vec::new();
    if let Some(csv) = inp.ctr_by_policy_csv {
        for l in csv.lines().skip(1) {
            let policy = l.split(',').next().unwrap_or_default();
            // Policies measured on another policy's users (`a@b`) are for
            // the summary, not this chart.
            if let Some((n, u, c)) = row(l, 1).filter(|_| !policy.contains('@')) {
                rows.push((policy.to_string(), n, u, c));
            }
        }
    } else if let Some(csv) = inp.ctr_csv {
        let chosen = inp
            .summary
            .and_then(|v| v["ctr"].as_array()?.first()?["policy"].as_str().map(str::to_string))
            .unwrap_or_else(|| "chosen".into());
        for (n, u, c) in csv.lines().skip(1).filter_map(|l| row(l, 0)) {
            rows.push((chosen.clone(), n, u, c));
        }
    }
    let first = rows.first()?.0.clone();
    let mut policies: Vec<String> = Vec::new();
    for r in &rows {
        if !policies.contains(&r.0) {
            policies.push(r.0.clone());
        }
    }
    let mut notes: Vec<(String, f64)> =
        rows.iter().filter(|r| r.0 == first && r.2 > 0.0).map(|r| (r.1.clone(), r.2)).collect();
    notes.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    notes.truncate(CTR_NOTIFICATIONS);
    if notes.is_empty() {
        return None;
    }
    let value = |p: &str, n: &str| rows.iter().find(|r| r.0 == p && r.1 == n && r.2 > 0.0).map(|r| r.3);
    let (w, h, left, bottom, top) = (1000.0, 300.0, 50.0, 50.0, 28.0);
    let max =
        notes.iter().flat_map(|(n, _)| policies.iter().filter_map(|p| value(p, n))).fold(0.0, f64::max).max(1e-12);
    let gw = (w - left - 10.0) / notes.len() as f64;
    let bw = gw * 0.85 / policies.len() as f64;
    let title = format!(
        "CTR per notification: {first} beside the baselines, on the {} notifications {first} pushed to most users \
         (a missing bar: that policy did not push it)",
        notes.len()
    );
    let mut s = format!(
        r#"<figure><figcaption>{}</figcaption><svg id="ctr-by-notification" viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{}">"#,
        esc(&title),
        esc(&title)
    );
    for (i, p) in policies.iter().enumerate() {
        let x = left + i as f64 * 170.0;
        let _ = write!(
            s,
            r#"<rect x="{x}" y="4" width="12" height="12" fill="{}"/><text class="legend" x="{}" y="14" font-size="11">{}</text>"#,
            colour(i * 3),
            x + 16.0,
            esc(p)
        );
    }
    let _ = write!(s, r##"<line x1="{left}" y1="{}" x2="{w}" y2="{}" stroke="#888"/>"##, h - bottom, h - bottom);
    let _ = write!(
        s,
        r##"<text x="{}" y="{}" font-size="11" text-anchor="end">{:.1}%</text>"##,
        left - 4.0,
        top + 4.0,
        100.0 * max
    );
    for (g, (n, _)) in notes.iter().enumerate() {
        let gx = left + g as f64 * gw;
        for (i, p) in policies.iter().enumerate() {
            if let Some(v) = value(p, n) {
                let bh = (h - bottom - top) * v / max;
                let _ = write!(
                    s,
                    r#"<rect class="bar" x="{:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{}"><title>{}, {}: {:.2}%</title></rect>"#,
                    gx + i as f64 * bw,
                    h - bottom - bh,
                    bw.max(0.5),
                    colour(i * 3),
                    esc(n),
                    esc(p),
                    100.0 * v
                );
            }
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{}" font-size="9" text-anchor="end" transform="rotate(-35 {:.1} {})">{}</text>"#,
            gx + gw / 2.0,
            h - bottom + 12.0,
            gx + gw / 2.0,
            h - bottom + 12.0,
            esc(&n.chars().take(16).collect::<String>())
        );
    }
    s.push_str("</svg></figure>");
    Some(s)
}

/// Hours of the day × the largest cohorts: each cell's shade is the share
/// of the cohort's members who played during that hour on some day.
fn hour_map(inp: &Inputs) -> String {
    let Some(hours) = inp.hours else { return String::new() };
    let order = largest(inp.sizes, HOUR_ROWS, true);
    let share = |c: usize, hr: usize| hours.active[c][hr] as f64 / inp.sizes[c] as f64;
    let max =
        order.iter().flat_map(|&c| (0..24).map(move |hr| (c, hr))).map(|(c, hr)| share(c, hr)).fold(0.0, f64::max);
    let zone = cohortcast_core::hours::format_utc_offset(hours.utc_offset_minutes);
    let (left, cell, rh, top) = (130.0, 30.0, 16.0, 22.0);
    let (w, h) = (left + 24.0 * cell + 150.0, top + rh * order.len() as f64 + 4.0);
    let title = format!(
        "When the {} largest cohorts listen: share of members who played during each hour of the day (UTC{zone}), \
         darkest = {:.0}%",
        order.len(),
        100.0 * max
    );
    let mut s = format!(
        r#"<figure><figcaption>{}</figcaption><svg id="cohort-hours" viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{}">"#,
        esc(&title),
        esc(&title)
    );
    for hr in 0..24 {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="14" font-size="10" text-anchor="middle">{hr:02}</text>"#,
            left + (hr as f64 + 0.5) * cell
        );
    }
    for (row, &c) in order.iter().enumerate() {
        let y = top + row as f64 * rh;
        let _ = write!(
            s,
            r#"<text x="{}" y="{:.1}" font-size="10" text-anchor="end" fill="{}">cohort {c} · {}</text>"#,
            left - 6.0,
            y + rh - 4.0,
            colour(c),
            inp.sizes[c]
        );
        for hr in 0..24 {
            let v = share(c, hr);
            let _ = write!(
                s,
                r#"<rect class="hour" x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="hsl(220,70%,35%)" fill-opacity="{:.3}"><title>cohort {c}, {hr:02}:00–{:02}:00: {:.1}% of {} members</title></rect>"#,
                left + hr as f64 * cell,
                cell - 1.0,
                rh - 1.0,
                if max > 0.0 { 0.05 + 0.95 * v / max } else { 0.05 },
                (hr + 1) % 24,
                100.0 * v,
                inp.sizes[c]
            );
        }
        let peaks: Vec<String> =
            cohortcast_core::hours::peak_hours(&hours.active[c], 3).iter().map(|h| format!("{h:02}")).collect();
        let _ = write!(
            s,
            r#"<text class="peak" x="{:.1}" y="{:.1}" font-size="10">peak {}</text>"#,
            left + 24.0 * cell + 8.0,
            y + rh - 4.0,
            peaks.join(", ")
        );
    }
    s.push_str("</svg></figure>");
    s
}

/// The page of a trained model, with the evaluation of the run in
/// `run_dir` when it holds `summary.json` and `ctr.csv`: what `GET /`
/// serves and what `cohortcast run` writes as `report.html`.
pub fn render_run(
    title: &str,
    model: &cohortcast_data::stages::StoredModel,
    sizes: &[usize],
    top_artists: &[Vec<ArtistShare>],
    hours: Option<&CohortHours>,
    run_dir: &std::path::Path,
) -> String {
    let summary: Option<Value> =
        std::fs::read_to_string(run_dir.join("summary.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
    let ctr = std::fs::read_to_string(run_dir.join("ctr.csv")).ok();
    let by_policy = std::fs::read_to_string(run_dir.join("ctr_by_policy.csv")).ok();
    let by_cohort = std::fs::read_to_string(run_dir.join("ctr_by_cohort.csv")).ok();
    let groups = std::fs::read_to_string(run_dir.join("groups.csv")).ok();
    render(&Inputs {
        title,
        labels: &model.labels,
        sizes,
        user_factors: model.als.user_factors(),
        factors: model.als.factors(),
        top_artists,
        summary: summary.as_ref(),
        ctr_csv: ctr.as_deref(),
        ctr_by_policy_csv: by_policy.as_deref(),
        ctr_by_cohort_csv: by_cohort.as_deref(),
        groups_csv: groups.as_deref(),
        hours,
    })
}

/// The whole page.
pub fn render(inp: &Inputs) -> String {
    let users = inp.labels.len();
    let k = inp.sizes.len();
    let order = largest(inp.sizes, k, false);
    let size_bars: Vec<(String, f64, String)> =
        order.iter().map(|&c| (c.to_string(), inp.sizes[c] as f64, colour(c))).collect();
    let headline = inp
        .summary
        .and_then(|v| v["ctr"].as_array()?.first().cloned())
        .map(|p| {
            format!(
                r#"<p class="headline">Policy <b>{}</b>: CTR <b id="headline-ctr">{:.2}%</b> over {} users pushed.</p>"#,
                esc(p["policy"].as_str().unwrap_or("?")),
                100.0 * p["overall_ctr"].as_f64().unwrap_or(0.0),
                p["pushes"].as_u64().unwrap_or(0)
            )
        })
        .unwrap_or_default();
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}}
figure{{margin:18px 0}}figcaption,h2{{font-weight:600;font-size:15px;margin:6px 0}}
.panels{{display:flex;flex-wrap:wrap;gap:14px}}.panel h3{{font-size:13px;margin:2px 0}}
.stats span{{display:inline-block;margin-right:28px}}.stats b{{font-size:20px}}
table{{border-collapse:collapse;font-size:12px}}td,th{{padding:2px 8px;text-align:left;border-bottom:1px solid #eee}}</style></head><body>
<h1>{title}</h1><p class="stats"><span><b id="users">{users}</b> users</span><span><b id="cohorts">{k}</b> cohorts</span><span><b>{factors}</b> factors</span></p>{headline}"#,
        title = esc(inp.title),
        factors = inp.factors
    );
    s.push_str(&bars("cohort-sizes", "Cohort sizes (users), largest first", &size_bars, &|v| format!("{v:.0}")));
    s.push_str(&map(inp));
    s.push_str(&artist_panels(inp));
    s.push_str(&hour_map(inp));
    s.push_str(&evaluation(inp));
    s.push_str("</body></html>\n");
    s
}

/// The dashboard of a served model, with the run's evaluation when its
/// folder (the model folder's parent) holds `summary.json` and `ctr.csv`.
/// Drawn once per loaded model: a reload draws it anew.
pub fn of_served(m: &crate::model::Served) -> &str {
    m.page().get_or_init(|| {
        let run = m.model_dir.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
        render_run("cohortcast", &m.model, &m.sizes, &m.top_artists, m.cohort_hours.as_ref(), &run)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctr_per_notification_sets_the_baselines_beside_the_chosen_policy() {
        let by_policy = "policy,notification_id,users_pushed,users_clicked,ctr\n\
            expected-ctr,n1,100,20,0.200000\nexpected-ctr,n2,300,30,0.100000\n\
            random,n1,50,2,0.040000\nrandom,n2,50,1,0.020000\nrandom,n3,50,1,0.020000\n\
            best-single,n2,400,20,0.050000\nexpected-ctr@top-artist-users,n1,10,3,0.300000\n";
        let inp = Inputs {
            title: "t",
            labels: &[],
            sizes: &[],
            user_factors: &[],
            factors: 1,
            top_artists: &[],
            summary: None,
            ctr_csv: None,
            ctr_by_policy_csv: Some(by_policy),
            ctr_by_cohort_csv: None,
            groups_csv: None,
            hours: None,
        };
        let chart = ctr_per_notification(&inp).unwrap();
        // n2 (300 pushed) before n1; n3 is not the chosen policy's.
        assert!(chart.find("n2, expected-ctr: 10.00%").unwrap() < chart.find("n1, expected-ctr: 20.00%").unwrap());
        assert!(chart.contains("n1, random: 4.00%") && chart.contains("n2, best-single: 5.00%"));
        assert!(!chart.contains("n3") && !chart.contains("@"));
        assert_eq!(chart.matches("class=\"bar\"").count(), 5);
        assert_eq!(chart.matches("class=\"legend\"").count(), 3);
    }

    #[test]
    fn pca_finds_the_axis_of_largest_spread() {
        // Points along (1, 1, 0) with a little noise on the third axis.
        let mut x = Vec::new();
        for i in 0..100 {
            let t = i as f32 - 50.0;
            x.extend([t, t, ((i * 7) % 5) as f32 * 0.01]);
        }
        let rows: Vec<usize> = (0..100).collect();
        let p = pca2(&x, 3, &rows);
        // The first component is ±√2 (t − mean t), mean t = −0.5.
        let ratio = p[10].0 / (10.0 - 50.0 + 0.5);
        assert!((ratio.abs() - 2f64.sqrt()).abs() < 1e-6, "{ratio}");
        assert!(p.iter().all(|q| q.1.abs() < 0.1));
    }

    #[test]
    fn the_page_has_every_chart_and_escapes_ids() {
        let labels = [0u32, 1, 1, 0];
        let top = vec![vec![ArtistShare { artist_id: "<b>".into(), share: 1.0 }], vec![]];
        let summary = serde_json::json!({"ctr": [
            {"policy": "expected-ctr", "overall_ctr": 0.1234, "pushes": 4,
             "at_reach": [{"reach": 0.5, "ctr": 0.2}, {"reach": 1.0, "ctr": 0.1234}]},
            {"policy": "expected-ctr@top-artist-users", "overall_ctr": 0.2, "pushes": 2,
             "at_reach": [{"reach": 0.5, "ctr": 0.2}]}
        ]});
        let mut active = vec![[0u64; 24]; 2];
        active[0][21] = 1;
        active[1][8] = 2;
        active[1][21] = 1;
        let hours = CohortHours { utc_offset_minutes: 330, active };
        let page = render(&Inputs {
            title: "t",
            labels: &labels,
            sizes: &[2, 2],
            user_factors: &[1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 1.0, 1.0],
            factors: 2,
            top_artists: &top,
            summary: Some(&summary),
            ctr_csv: Some("notification_id,cohorts,users_pushed,users_clicked,ctr\nn1,2,4,1,0.25\n"),
            ctr_by_policy_csv: None,
            ctr_by_cohort_csv: Some(
                "cohort,users,notification_id,predicted_score,users_clicked,ctr,expected_ctr\n0,3,n1,0.9,1,0.333333,\n",
            ),
            groups_csv: Some(
                "group,notification_id,users,predicted_score,taste_cohorts,top_artists\n\
                 0,n1,3,0.900000,1:0.667 0:0.333,<b>:1.000\n",
            ),
            hours: Some(&hours),
        });
        for id in [
            "cohort-sizes",
            "user-map",
            "top-artists",
            "cohort-hours",
            "ctr-by-policy",
            "ctr-by-notification",
            "reach-frontier",
            "ctr-by-cohort",
        ] {
            assert!(page.contains(&format!("id=\"{id}\"")), "{id}");
        }
        assert!(page.contains("group 0 · n1 · 3 users · score 0.90: 33.3%"), "{page}");
        assert_eq!(page.matches("class=\"frontier\"").count(), 1);
        assert!(page.contains("<td>cohort 1 67%, cohort 0 33%</td><td>&lt;b&gt; 100%</td>"), "{page}");
        assert_eq!(page.matches("class=\"group\"").count(), 1);
        assert!(page.contains("expected-ctr: 20.00% at 50.0% of users"), "{page}");
        assert_eq!(page.matches("class=\"hour\"").count(), 48);
        assert!(page.contains("UTC+05:30") && page.contains("cohort 1, 08:00–09:00: 100.0% of 2 members"));
        assert!(page.contains("peak 08, 21"), "{page}");
        assert_eq!(page.matches("class=\"user\"").count(), 4);
        assert!(page.contains("12.34%") && page.contains("&lt;b&gt;") && !page.contains("<b></b>"));
    }
}
