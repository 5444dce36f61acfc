//! What an ingest hands on and reports: the checked inputs, the rows read
//! and rejected, the engine's figures, and the options it runs with.

use std::collections::BTreeMap;

use cohortcast_core::sparse::Csr;
use serde::{Deserialize, Serialize};

use crate::samples::RejectExample;
use crate::store::S3Options;

/// Rejected rows of one input, by reason code, and the first examples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InputReport {
    /// Files read.
    pub files: usize,
    /// Rows read (good and bad).
    pub rows: u64,
    /// Rows rejected, by reason code.
    pub rejected: BTreeMap<String, u64>,
    /// The first few rejected rows, with file and line.
    pub examples: Vec<RejectExample>,
}

impl InputReport {
    /// Total rejected rows.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// What ingest read, for `summary.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IngestReport {
    /// Per input name.
    pub inputs: BTreeMap<String, InputReport>,
    /// Well-formed plays.
    pub plays: u64,
    /// Well-formed plays of songs missing from the metadata.
    pub plays_unknown_song: u64,
    /// Distinct users with at least one well-formed play.
    pub users_seen: usize,
    /// Users whose every play was of an unknown song (no usable plays).
    pub users_without_usable_plays: usize,
    /// Distinct songs in the metadata.
    pub songs: u64,
    /// Distinct (user, artist) pairs.
    pub user_artist_pairs: usize,
    /// Notifications named in notification_actor.
    pub notifications: usize,
    /// Notification artists unknown to the plays (no user played them).
    pub notification_artists_unplayed: usize,
    /// Distinct (notification, user) clicks.
    pub clicks: usize,
    /// How the engine ran the clickstream query.
    #[serde(default)]
    pub engine: EngineReport,
    /// Minutes east of UTC of the users' hours of the day.
    #[serde(default)]
    pub utc_offset_minutes: i32,
}

impl IngestReport {
    /// Names the files of the reject examples under `to` where they were
    /// read under `from`: a command that reads inputs from its staging
    /// folder reports where they will be once the folder is swapped in.
    pub fn rebase(&mut self, from: &std::path::Path, to: &std::path::Path) {
        for example in self.inputs.values_mut().flat_map(|i| i.examples.iter_mut()) {
            if let Ok(rest) = example.file.strip_prefix(from) {
                example.file = to.join(rest);
            }
        }
    }
}

/// How the engine ran the clickstream query: its parallelism, its memory
/// pool and what its operators spilled to disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineReport {
    /// Partitions the query ran with (see [`IngestOptions::effective_partitions`]).
    pub partitions: usize,
    /// Bytes of the memory pool.
    pub memory_limit: usize,
    /// Spill files written by the aggregation (the embedded engine's
    /// [`PairSums`], DataFusion's join, aggregation and sort operators).
    pub spill_files: usize,
    /// Bytes written to those files.
    pub spilled_bytes: u64,
    /// The Ballista cluster it ran on (`None`: embedded; spills are then
    /// the executors' and not counted here).
    #[serde(default)]
    pub cluster: Option<String>,
}

/// A notification as read: its id and artist ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawNotification {
    /// `notification_id`.
    pub id: String,
    /// Its `artist_id`s, in input order, distinct.
    pub artists: Vec<String>,
}

impl RawNotification {
    /// Groups `(notification_id, artist_id)` rows sorted by notification
    /// into notifications, keeping the artists in row order.
    pub fn group(rows: impl IntoIterator<Item = (String, String)>) -> Vec<RawNotification> {
        let mut out: Vec<RawNotification> = Vec::new();
        for (n, a) in rows {
            match out.last_mut() {
                Some(last) if last.id == n => last.artists.push(a),
                _ => out.push(RawNotification { id: n, artists: vec![a] }),
            }
        }
        out
    }
}

/// Everything the model needs, with ids mapped to dense indices (sorted ids,
/// so the mapping repeats exactly).
#[derive(Debug, Clone)]
pub struct Ingested {
    /// Users (rows of `plays`), sorted.
    pub users: Vec<String>,
    /// Artists (columns of `plays`), sorted.
    pub artists: Vec<String>,
    /// Play counts, users × artists.
    pub plays: Csr,
    /// Each user's hours of the day with plays ([`hours`] masks, at the
    /// report's `utc_offset_minutes`); empty for folders written before
    /// hours were kept.
    pub active_hours: Vec<u32>,
    /// Notifications, sorted by id.
    pub notifications: Vec<RawNotification>,
    /// Distinct (notification_id, user_id) clicks, when clicks were given.
    pub clicks: Option<Vec<(String, String)>>,
    /// The metadata's (song_id, artist_id) pairs, sorted: what the serve
    /// API folds new plays in with.
    pub songs: Vec<(String, String)>,
    /// Counts for the summary.
    pub report: IngestReport,
}

/// Options of the ingest.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Parallel partitions (default: the machine's cores).
    pub partitions: usize,
    /// Example rejected rows to show per input. Default 5.
    pub max_examples: usize,
    /// Bytes the embedded engine's play counts, and DataFusion's operators,
    /// may each hold; beyond it the counts spill to the temporary folder
    /// (DataFusion's as sorted runs). Default: a quarter of the machine's
    /// memory, at most 8 GiB.
    pub memory_limit: usize,
    /// How to reach `s3://` inputs.
    pub s3: S3Options,
    /// A Ballista cluster (`ballista://HOST:PORT`) to run the ingest on;
    /// `None`: the embedded engine.
    pub cluster: Option<String>,
    /// Minutes east of UTC that hours of the day are counted at (330 for
    /// India). Default 0.
    pub utc_offset_minutes: i32,
}

/// A quarter of the machine's memory (Linux `/proc/meminfo`), at most 8 GiB;
/// 2 GiB where it cannot be read.
fn default_memory_limit() -> usize {
    let total_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse::<usize>().ok());
    total_kb.map(|kb| (kb << 10) / 4).unwrap_or(2 << 30).min(8 << 30)
}

/// The least share of the memory pool a partition gets. Every partition's
/// aggregation, join and sort must hold a few 16 k-row batches before it
/// can spill; below about 2 MiB a partition fails rather than spills
/// (measured: 8 partitions in 12 MiB fail, 8 in 16 MiB do not).
pub const MIN_PARTITION_MEMORY: usize = 8 << 20;

impl IngestOptions {
    /// The partitions the engine runs with: those asked for, fewer when the
    /// memory pool cannot give each [`MIN_PARTITION_MEMORY`], and at least one.
    pub fn effective_partitions(&self) -> usize {
        self.partitions.min(self.memory_limit / MIN_PARTITION_MEMORY).max(1)
    }
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            partitions: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            max_examples: 5,
            memory_limit: default_memory_limit(),
            s3: S3Options::default(),
            cluster: None,
            utc_offset_minutes: 0,
        }
    }
}
