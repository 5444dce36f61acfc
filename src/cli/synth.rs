//! `cohortcast synth`: realistic generated data in the Saavn layout.
//!
//! Users are generated in blocks, in parallel; each block's clickstream and
//! clicks are appended in user order to the current part file, and its rows
//! of the truth matrix streamed into `truth/click_probability.npy`, so memory
//! stays flat however many plays are written.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use cohortcast_core::synth::{notification_id, SynthParams, SynthStats, World};
use cohortcast_data::files::{npy_header, write_atomic, write_json, write_lines, AtomicFile};
use rayon::prelude::*;

use super::progress;

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Output folder (gets clickstream/, metadata/, notification_actor/,
    /// notification_clicks/ and truth/).
    #[arg(long)]
    out: PathBuf,
    /// Users.
    #[arg(long, default_value_t = SynthParams::default().users)]
    users: usize,
    /// Artists.
    #[arg(long, default_value_t = SynthParams::default().artists)]
    artists: usize,
    /// Songs.
    #[arg(long, default_value_t = SynthParams::default().songs)]
    songs: usize,
    /// Notifications.
    #[arg(long, default_value_t = SynthParams::default().notifications)]
    notifications: usize,
    /// Mean plays per user (log-normal).
    #[arg(long, default_value_t = SynthParams::default().plays_per_user)]
    plays_per_user: f64,
    /// Days covered.
    #[arg(long, default_value_t = SynthParams::default().days)]
    days: u32,
    /// Share of malformed clickstream lines.
    #[arg(long, default_value_t = SynthParams::default().malformed_share)]
    malformed_share: f64,
    /// Share of plays of songs missing from the metadata.
    #[arg(long, default_value_t = SynthParams::default().unknown_song_share)]
    unknown_song_share: f64,
    /// Clickstream part files.
    #[arg(long, default_value_t = 4)]
    parts: usize,
    /// Seed.
    #[arg(long, default_value_t = SynthParams::default().seed)]
    seed: u64,
}

impl SynthArgs {
    /// Arguments for `demo`.
    pub fn demo(out: PathBuf, users: usize, seed: u64) -> Self {
        let d = SynthParams::default();
        SynthArgs {
            out,
            users,
            artists: d.artists,
            songs: d.songs,
            notifications: d.notifications,
            plays_per_user: d.plays_per_user,
            days: d.days,
            malformed_share: d.malformed_share,
            unknown_song_share: d.unknown_song_share,
            parts: 4,
            seed,
        }
    }
}

/// What was written, for messages and tests.
#[derive(Debug, serde::Serialize)]
struct SynthSummary {
    params: SynthParams,
    stats: SynthStats,
    clicks: u64,
    seconds: f64,
}

const BLOCK: usize = 2048;

/// One generated user: id, clickstream lines, click lines, truth row, counts.
struct UserOutput {
    id: String,
    plays: Vec<u8>,
    clicks: Vec<u8>,
    probs: Vec<f32>,
    stats: SynthStats,
    n_clicks: u64,
}

pub fn run(a: SynthArgs) -> Result<()> {
    let params = SynthParams {
        users: a.users,
        artists: a.artists,
        songs: a.songs,
        notifications: a.notifications,
        plays_per_user: a.plays_per_user,
        days: a.days,
        malformed_share: a.malformed_share,
        unknown_song_share: a.unknown_song_share,
        seed: a.seed,
        ..SynthParams::default()
    };
    let parts = a.parts.max(1);
    generate(params, parts, &a.out)
}

fn part(dir: &Path, name: &str, i: usize) -> PathBuf {
    dir.join(name).join(format!("part-{i:05}.csv"))
}

pub fn generate(params: SynthParams, parts: usize, out: &Path) -> Result<()> {
    let start = std::time::Instant::now();
    let world = World::new(params.clone()).context("invalid synth parameters")?;
    write_atomic(&part(out, "metadata", 0), |w| w.write_all(&world.metadata_csv()))?;
    write_atomic(&part(out, "notification_actor", 0), |w| w.write_all(&world.notification_actor_csv()))?;
    let n = params.users;
    let nn = params.notifications;
    let users_per_part = n.div_ceil(parts);
    let mut clicks = AtomicFile::create(&part(out, "notification_clicks", 0))?;
    let truth_dir = out.join("truth");
    let mut truth = AtomicFile::create(&truth_dir.join("click_probability.npy"))?;
    truth.write_all(&npy_header("<f4", n, nn))?;
    let mut user_ids = Vec::with_capacity(n);
    let mut stats = SynthStats::default();
    let mut n_clicks = 0u64;
    let pb = progress::bar(n as u64, "users");
    for p in 0..parts {
        let lo = p * users_per_part;
        let hi = ((p + 1) * users_per_part).min(n);
        if lo >= hi {
            break;
        }
        let mut plays = AtomicFile::create(&part(out, "clickstream", p))?;
        for block in (lo..hi).step_by(BLOCK) {
            let end = (block + BLOCK).min(hi);
            // Each user has its own random streams: order and threads do not
            // change the output.
            let chunks: Vec<UserOutput> = (block..end)
                .into_par_iter()
                .map(|u| {
                    let user = world.user(u);
                    let mut pl = Vec::with_capacity(user.plays * 64);
                    let mut st = SynthStats::default();
                    world.write_plays(&user, &mut pl, &mut st);
                    let probs = world.click_probabilities(&user);
                    let mut cl = Vec::new();
                    let n_clicks = world.write_clicks(&user, &probs, &mut cl);
                    UserOutput { id: user.id, plays: pl, clicks: cl, probs, stats: st, n_clicks }
                })
                .collect();
            for o in chunks {
                plays.write_all(&o.plays).context("writing the clickstream")?;
                clicks.write_all(&o.clicks).context("writing the clicks")?;
                for v in o.probs {
                    truth.write_all(&v.to_le_bytes()).context("writing the truth matrix")?;
                }
                stats.merge(o.stats);
                n_clicks += o.n_clicks;
                user_ids.push(o.id);
            }
            pb.inc((end - block) as u64);
        }
        plays.commit()?;
    }
    pb.finish_and_clear();
    clicks.commit()?;
    truth.commit()?;
    write_lines(&truth_dir.join("users.csv"), None, &user_ids)?;
    write_lines(&truth_dir.join("notifications.csv"), None, (0..nn).map(notification_id))?;
    let summary = SynthSummary { params, stats, clicks: n_clicks, seconds: start.elapsed().as_secs_f64() };
    write_json(&truth_dir.join("synth.json"), &summary)?;
    progress::note(&format!(
        "synth: {} users, {} plays ({} malformed lines, {} plays of unknown songs), {} clicks in {:.1}s -> {}",
        n,
        summary.stats.plays,
        summary.stats.malformed.values().sum::<u64>(),
        summary.stats.unknown_song_plays,
        n_clicks,
        summary.seconds,
        out.display()
    ));
    Ok(())
}
