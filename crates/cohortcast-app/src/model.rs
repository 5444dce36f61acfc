//! The model a server answers from: the factors and cohorts `train` wrote,
//! the play counts `ingest` wrote, and what is derived from them once at
//! load (each cohort's top artists, id lookups).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use cohortcast_core::hours::{self, HOURS};
use cohortcast_core::sparse::Csr;
use cohortcast_core::targeting::{cohort_affinity, Notification, TargetingParams};
use cohortcast_data::ingest::Ingested;
use cohortcast_data::stages::{load_ingested, load_model, StoredModel};
use serde::Serialize;

/// Artists listed per cohort and per user.
pub const TOP_ARTISTS: usize = 10;

/// An artist with its share of a cohort's (or user's) plays.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArtistShare {
    /// Artist id.
    pub artist_id: String,
    /// Plays of the artist ÷ all plays, in [0, 1].
    pub share: f64,
}

/// How many hours a cohort's [`HoursView::peak_hours`] lists.
pub const PEAK_HOURS: usize = 3;

/// When each cohort listens: per cohort and hour of the day, the members
/// who played at that hour on some day (see [`cohortcast_core::hours`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CohortHours {
    /// Minutes east of UTC the hours are of.
    pub utc_offset_minutes: i32,
    /// Active members, cohort × hour.
    pub active: Vec<[u64; HOURS]>,
}

/// A cohort's hours as the API answers them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HoursView {
    /// The time zone of the hours, as `+HH:MM`.
    pub utc_offset: String,
    /// The hours most members listen at, most first.
    pub peak_hours: Vec<u8>,
    /// Per hour 0–23: members who played during that hour on some day.
    pub active_members: Vec<u64>,
    /// Per hour: active members ÷ members.
    pub active_share: Vec<f64>,
}

impl CohortHours {
    /// From the ingest's per-user masks (`None` when the ingest folder
    /// predates them).
    pub fn of(ing: &Ingested, labels: &[u32], k: usize) -> Option<CohortHours> {
        (!ing.active_hours.is_empty() && ing.active_hours.len() == labels.len()).then(|| CohortHours {
            utc_offset_minutes: ing.report.utc_offset_minutes,
            active: hours::cohort_hours(labels, &ing.active_hours, k),
        })
    }

    /// Cohort `c` with `members` users, for the API.
    pub fn view(&self, c: usize, members: usize) -> HoursView {
        let a = &self.active[c];
        HoursView {
            utc_offset: hours::format_utc_offset(self.utc_offset_minutes),
            peak_hours: hours::peak_hours(a, PEAK_HOURS),
            active_members: a.to_vec(),
            active_share: a.iter().map(|&n| if members > 0 { n as f64 / members as f64 } else { 0.0 }).collect(),
        }
    }
}

/// A loaded model, immutable: a reload builds a new one.
#[derive(Debug)]
pub struct Served {
    /// Where it was loaded from.
    pub model_dir: PathBuf,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// Factors, ids and cohorts.
    pub model: StoredModel,
    /// Play counts, users × artists, in the model's user order.
    pub plays: Csr,
    /// Users in each cohort.
    pub sizes: Vec<usize>,
    /// Each cohort's most played artists.
    pub top_artists: Vec<Vec<ArtistShare>>,
    /// Each user's hour mask (empty when the ingest folder has none).
    pub active_hours: Vec<u32>,
    /// When each cohort listens (`None` without hour masks).
    pub cohort_hours: Option<CohortHours>,
    users: HashMap<String, u32>,
    artists: HashMap<String, u32>,
    /// Plays per user (row sums of `plays`).
    row_totals: Vec<f32>,
    /// `YᵀY` of the artist factors, for the fold-in.
    item_gram: Vec<f32>,
    /// Song id → the model's artists of the song (artists nobody played
    /// are not in the model and are left out).
    songs: HashMap<String, Vec<u32>>,
    /// The dashboard, drawn on first request.
    page: std::sync::OnceLock<String>,
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file of the model or ingest folder.
    #[error(transparent)]
    Io(#[from] cohortcast_data::IoError),
    /// The two folders do not belong together.
    #[error("{0}")]
    Mismatch(String),
}

fn top_shares(totals: &[f64], artists: &[String], n: usize) -> Vec<ArtistShare> {
    let sum: f64 = totals.iter().sum();
    let mut idx: Vec<usize> = (0..totals.len()).filter(|&a| totals[a] > 0.0).collect();
    idx.sort_by(|&a, &b| totals[b].total_cmp(&totals[a]).then(a.cmp(&b)));
    idx.truncate(n);
    idx.into_iter().map(|a| ArtistShare { artist_id: artists[a].clone(), share: totals[a] / sum }).collect()
}

/// Each cohort's most played artists with their share of its plays.
pub fn cohort_top_artists(plays: &Csr, labels: &[u32], k: usize, artists: &[String]) -> Vec<Vec<ArtistShare>> {
    let na = artists.len();
    let mut totals = vec![0f64; k * na];
    for (u, &c) in labels.iter().enumerate() {
        let (idx, val) = plays.row(u);
        for (&a, &v) in idx.iter().zip(val) {
            totals[c as usize * na + a as usize] += v as f64;
        }
    }
    (0..k).map(|c| top_shares(&totals[c * na..(c + 1) * na], artists, TOP_ARTISTS)).collect()
}

impl Served {
    /// Loads `model_dir` (written by `train`) and `ingest_dir` (by `ingest`).
    pub fn load(model_dir: &Path, ingest_dir: &Path) -> Result<Served, LoadError> {
        let model = load_model(model_dir)?;
        let ing = load_ingested(ingest_dir)?;
        if ing.users != model.users || ing.artists != model.artists {
            return Err(LoadError::Mismatch(format!(
                "{} and {} are from different runs: their users or artists differ",
                model_dir.display(),
                ingest_dir.display()
            )));
        }
        let k = model.cohorts.k();
        let top_artists = cohort_top_artists(&ing.plays, &model.labels, k, &model.artists);
        let sizes = cohortcast_core::kmeans::cohort_sizes(&model.labels, k);
        let cohort_hours = CohortHours::of(&ing, &model.labels, k);
        let row_totals = (0..ing.plays.rows()).map(|u| ing.plays.row(u).1.iter().sum()).collect();
        let users = model.users.iter().enumerate().map(|(i, u)| (u.clone(), i as u32)).collect();
        let artists: HashMap<String, u32> =
            model.artists.iter().enumerate().map(|(i, a)| (a.clone(), i as u32)).collect();
        let mut songs: HashMap<String, Vec<u32>> = HashMap::new();
        for (song, artist) in &ing.songs {
            if let Some(&a) = artists.get(artist) {
                songs.entry(song.clone()).or_default().push(a);
            }
        }
        let item_gram = model.als.item_gram();
        Ok(Served {
            model_dir: model_dir.to_path_buf(),
            loaded_at: SystemTime::now(),
            model,
            plays: ing.plays,
            sizes,
            top_artists,
            active_hours: if cohort_hours.is_some() { ing.active_hours } else { Vec::new() },
            cohort_hours,
            row_totals,
            item_gram,
            users,
            artists,
            songs,
            page: std::sync::OnceLock::new(),
        })
    }

    /// The model's artists of a song (empty for an unknown song).
    pub fn song_artists(&self, song: &str) -> &[u32] {
        self.songs.get(song).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whether the ingest folder had the song list (older ones did not).
    pub fn has_songs(&self) -> bool {
        !self.songs.is_empty()
    }

    /// A user's (artist, plays) as trained.
    pub fn user_plays(&self, u: usize) -> Vec<(u32, f32)> {
        let (idx, val) = self.plays.row(u);
        idx.iter().copied().zip(val.iter().copied()).collect()
    }

    /// The cohort of a user who played `plays`: factors folded in with the
    /// artist factors fixed (the ALS fold-in, with `YᵀY` computed once at
    /// load), then the nearest centroid of the unit-length factors (the
    /// cohorts were fitted on unit-length factors).
    pub fn cohort_of(&self, plays: &[(u32, f32)]) -> Result<u32, cohortcast_core::DataError> {
        let x = self.model.als.fold_in_with(&self.item_gram, plays)?;
        let unit = cohortcast_core::kmeans::normalize_rows(&x, x.len());
        Ok(self.model.cohorts.predict(&unit))
    }

    /// Top artists of `(artist, plays)`.
    pub fn top_of(&self, plays: &[(u32, f32)]) -> Vec<ArtistShare> {
        let totals: Vec<f64> = plays.iter().map(|p| p.1 as f64).collect();
        let names: Vec<String> = plays.iter().map(|p| self.model.artists[p.0 as usize].clone()).collect();
        top_shares(&totals, &names, TOP_ARTISTS)
    }

    /// Cohorts.
    pub fn k(&self) -> usize {
        self.sizes.len()
    }

    /// The row of a user id (ids are matched in lowercase, as ingest writes them).
    pub fn user(&self, id: &str) -> Option<usize> {
        self.users.get(&id.to_ascii_lowercase()).map(|&u| u as usize)
    }

    /// The column of an artist id.
    pub fn artist(&self, id: &str) -> Option<u32> {
        self.artists.get(id).copied()
    }

    /// The hours of the day a user played at, in order (`None` when the
    /// model has no hour masks).
    pub fn user_hours(&self, u: usize) -> Option<Vec<u8>> {
        self.active_hours.get(u).map(|&m| hours::hours_in(m))
    }

    /// The hour mask of model row `u` (0 for none or no masks).
    pub fn user_mask(&self, u: Option<usize>) -> u32 {
        u.and_then(|u| self.active_hours.get(u)).copied().unwrap_or(0)
    }

    /// The time zone of the hours, when the model has them.
    pub fn utc_offset_minutes(&self) -> Option<i32> {
        self.cohort_hours.as_ref().map(|h| h.utc_offset_minutes)
    }

    /// A user's most played artists.
    pub fn user_top_artists(&self, u: usize) -> Vec<ArtistShare> {
        self.top_of(&self.user_plays(u))
    }

    /// Members of a cohort, in user order.
    pub fn members(&self, cohort: usize) -> impl Iterator<Item = usize> + '_ {
        self.model.labels.iter().enumerate().filter(move |(_, &c)| c as usize == cohort).map(|(u, _)| u)
    }

    /// Where the dashboard of this model is kept once drawn
    /// ([`crate::dashboard::of_served`]); a reload starts a new one.
    pub(crate) fn page(&self) -> &std::sync::OnceLock<String> {
        &self.page
    }

    /// Each cohort's predicted affinity to a notification naming `artists`:
    /// the batch policy's score ([`cohort_affinity`]) computed for one
    /// notification. Per user, the best over the artists of the clamped
    /// preference `x·y` plus `history_weight` × the user's share of plays of
    /// that artist; averaged per cohort. Row totals are computed once at
    /// load, and users are scored in parallel blocks reduced in order, so
    /// the result repeats exactly.
    pub fn affinity(&self, artists: &[u32], tp: &TargetingParams) -> Vec<f64> {
        use rayon::prelude::*;
        const BLOCK: usize = 8192;
        let (k, als) = (self.k(), &self.model.als);
        let ys: Vec<&[f32]> = artists.iter().map(|&a| als.item(a as usize)).collect();
        let labels = &self.model.labels;
        let parts: Vec<Vec<f64>> = (0..labels.len().div_ceil(BLOCK))
            .into_par_iter()
            .map(|b| {
                let mut acc = vec![0f64; k];
                for u in b * BLOCK..((b + 1) * BLOCK).min(labels.len()) {
                    let x = als.user(u);
                    let (idx, val) = self.plays.row(u);
                    let mut best = 0f32;
                    for (&a, y) in artists.iter().zip(&ys) {
                        let mut p = cohortcast_core::linalg::dot(x, y).clamp(0.0, 1.0);
                        if tp.history_weight > 0.0 && self.row_totals[u] > 0.0 {
                            if let Ok(i) = idx.binary_search(&a) {
                                p += tp.history_weight * (val[i] / self.row_totals[u]);
                            }
                        }
                        best = best.max(p);
                    }
                    acc[labels[u] as usize] += best as f64;
                }
                acc
            })
            .collect();
        let mut sums = vec![0f64; k];
        for p in parts {
            sums.iter_mut().zip(p).for_each(|(s, v)| *s += v);
        }
        sums.iter().zip(&self.sizes).map(|(s, &n)| if n > 0 { s / n as f64 } else { 0.0 }).collect()
    }

    /// Each user's own predicted score for a notification naming
    /// `artists` ([`cohortcast_core::scores`]), in the model's user order.
    pub fn user_scores(&self, artists: &[u32], tp: &TargetingParams) -> Vec<f32> {
        let note = Notification { id: String::new(), artists: artists.to_vec() };
        let scorer = cohortcast_core::scores::Scorer::new(&self.model.als, &self.plays, &[note], tp);
        scorer.visit(Vec::new, |v: &mut Vec<f32>, _, s| v.extend_from_slice(s)).concat()
    }

    /// Each cohort's mean of per-user `scores` (as [`Served::user_scores`]
    /// gives them), over the cohort's members at load.
    pub fn cohort_means(&self, scores: &[f32]) -> Vec<f64> {
        let mut sums = vec![0f64; self.k()];
        for (&l, &s) in self.model.labels.iter().zip(scores) {
            sums[l as usize] += s as f64;
        }
        sums.iter().zip(&self.sizes).map(|(s, &n)| if n > 0 { s / n as f64 } else { 0.0 }).collect()
    }

    /// [`cohort_affinity`] itself, for checking [`Served::affinity`].
    pub fn affinity_reference(&self, artists: &[u32], tp: &TargetingParams) -> Vec<f64> {
        let note = Notification { id: String::new(), artists: artists.to_vec() };
        cohort_affinity(&self.model.als, &self.plays, &self.model.labels, self.k(), &[note], tp)
    }
}

/// One cohort in a release decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankedCohort {
    /// Cohort number.
    pub cohort: usize,
    /// Users in it.
    pub size: usize,
    /// Predicted click-through rate of the release in this cohort.
    pub expected_ctr: f64,
    /// Whether it is pushed under the limits.
    pub pushed: bool,
}

/// Cohorts ranked by expected CTR (ties to the lower number), and which are
/// pushed: in rank order, each whose expected CTR reaches `min_ctr` and
/// whose users still fit under `max_users` (a cohort that does not fit is
/// skipped and smaller ones further down may still be taken).
pub fn rank(sizes: &[usize], ctr: &[f64], max_users: Option<usize>, min_ctr: f64) -> Vec<RankedCohort> {
    let mut order: Vec<usize> = (0..sizes.len()).filter(|&c| sizes[c] > 0).collect();
    order.sort_by(|&a, &b| ctr[b].total_cmp(&ctr[a]).then(a.cmp(&b)));
    let mut left = max_users.unwrap_or(usize::MAX);
    order
        .into_iter()
        .map(|c| {
            let pushed = ctr[c] >= min_ctr && sizes[c] <= left;
            if pushed {
                left -= sizes[c];
            }
            RankedCohort { cohort: c, size: sizes[c], expected_ctr: ctr[c], pushed }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_respects_the_limits_and_skips_what_does_not_fit() {
        let sizes = [100, 50, 0, 30, 20];
        let ctr = [0.05, 0.10, 0.9, 0.01, 0.10];
        let r = rank(&sizes, &ctr, Some(80), 0.02);
        // Empty cohorts are left out; ties go to the lower number.
        let order: Vec<usize> = r.iter().map(|c| c.cohort).collect();
        assert_eq!(order, vec![1, 4, 0, 3]);
        let pushed: Vec<usize> = r.iter().filter(|c| c.pushed).map(|c| c.cohort).collect();
        // 50 + 20 fit; 100 does not; cohort 3 is under the CTR floor.
        assert_eq!(pushed, vec![1, 4]);
        let all = rank(&sizes, &ctr, None, 0.0);
        assert_eq!(all.iter().filter(|c| c.pushed).count(), 4);
    }

    #[test]
    fn top_shares_are_sorted_shares_of_the_total() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let t = top_shares(&[1.0, 3.0, 0.0], &names, 5);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].artist_id.as_str(), t[0].share), ("b", 0.75));
        assert_eq!((t[1].artist_id.as_str(), t[1].share), ("a", 0.25));
    }
}
