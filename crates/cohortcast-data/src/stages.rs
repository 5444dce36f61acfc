//! What each stage leaves for the next: the ingest folder and the model
//! folder. Every file is plain: CSV lists, Parquet for the play counts,
//! `.npy` for matrices, JSON for parameters and reports.
//!
//! ```text
//! ingest/  users.csv artists.csv plays.parquet (user, artist, plays as
//!          indices into the two lists) notifications.csv clicks.csv
//!          songs.csv (song_id, artist_id) active_hours.npy (a 24-bit
//!          mask of the hours of the day each user played at) report.json
//! model/   params.json users.csv artists.csv user_factors.npy
//!          artist_factors.npy centroids.npy cohorts.npy
//! ```

use std::path::Path;
use std::sync::Arc;

use cohortcast_core::als::{AlsModel, AlsParams};
use cohortcast_core::kmeans::{Cohorts, KMeansParams};
use cohortcast_core::sparse::Csr;
use datafusion::arrow::array::{Array, AsArray, Float32Array, PrimitiveArray, RecordBatch, UInt32Array};
use datafusion::arrow::datatypes::{ArrowPrimitiveType, DataType, Field, Float32Type, Schema, UInt32Type};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};

use crate::error::{IoError, Result};
use crate::files::{
    read_json, read_lines, read_npy_f32, read_npy_u32, write_json, write_lines, write_npy_f32, write_npy_u32,
};
use crate::ingest::{IngestReport, Ingested, RawNotification};

const NOTIFICATIONS_HEADER: &str = "notification_id,artist_id";
const CLICKS_HEADER: &str = "notification_id,user_id";
const SONGS_HEADER: &str = "song_id,artist_id";
/// Plays per batch handed to the Parquet writer (which cuts row groups of
/// its default 1 Mi rows).
const PLAYS_PER_BATCH: usize = 1 << 20;

/// Writes the ingest folder.
pub fn save_ingested(dir: &Path, ing: &Ingested) -> Result<()> {
    write_lines(&dir.join("users.csv"), None, &ing.users)?;
    write_lines(&dir.join("artists.csv"), None, &ing.artists)?;
    write_plays(&dir.join("plays.parquet"), &ing.plays, PLAYS_PER_BATCH)?;
    let notes: Vec<String> =
        ing.notifications.iter().flat_map(|n| n.artists.iter().map(move |a| format!("{},{a}", n.id))).collect();
    write_lines(&dir.join("notifications.csv"), Some(NOTIFICATIONS_HEADER), notes)?;
    if let Some(c) = &ing.clicks {
        write_lines(&dir.join("clicks.csv"), Some(CLICKS_HEADER), c.iter().map(|(n, u)| format!("{n},{u}")))?;
    }
    write_lines(&dir.join("songs.csv"), Some(SONGS_HEADER), ing.songs.iter().map(|(s, a)| format!("{s},{a}")))?;
    if !ing.active_hours.is_empty() {
        write_npy_u32(&dir.join("active_hours.npy"), &ing.active_hours)?;
    }
    write_json(&dir.join("report.json"), &ing.report)
}

/// Writes the play matrix as Parquet rows (user, artist, plays), in
/// batches of at least `per_batch` plays (whole users) built and written
/// one at a time: the writer runs beside training, so it holds no copy of
/// the whole table (233 M plays at full scale would be 2.8 GB more).
///
/// Each batch is counted before it is built, so its three columns are
/// allocated once at their size, and their buffers come back from the
/// arrays once the writer is done with them, for the next batch. (Grown
/// from empty for every batch, they were a third of the page faults of a
/// run on the medium set, half of them `realloc` copying the growing
/// columns, all on the thread that shares the cores with the ALS.)
fn write_plays(path: &Path, plays: &Csr, per_batch: usize) -> Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user", DataType::UInt32, false),
        Field::new("artist", DataType::UInt32, false),
        Field::new("plays", DataType::Float32, false),
    ]));
    let mut file = crate::files::AtomicFile::create(path)?;
    let parquet_err = |e| IoError::Parquet { path: path.into(), source: e };
    let mut writer = ArrowWriter::try_new(&mut file, schema.clone(), None).map_err(parquet_err)?;
    let (mut u, mut a, mut p): (Vec<u32>, Vec<u32>, Vec<f32>) = (Vec::new(), Vec::new(), Vec::new());
    let mut r = 0;
    while r < plays.rows() {
        let (from, mut n) = (r, 0);
        while r < plays.rows() && n < per_batch {
            n += plays.row(r).0.len();
            r += 1;
        }
        for v in [&mut u, &mut a] {
            v.clear();
            v.reserve_exact(n);
        }
        p.clear();
        p.reserve_exact(n);
        for row in from..r {
            let (idx, val) = plays.row(row);
            u.extend(std::iter::repeat_n(row as u32, idx.len()));
            a.extend_from_slice(idx);
            p.extend_from_slice(val);
        }
        let columns = (
            UInt32Array::from(std::mem::take(&mut u)),
            UInt32Array::from(std::mem::take(&mut a)),
            Float32Array::from(std::mem::take(&mut p)),
        );
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(columns.0.clone()), Arc::new(columns.1.clone()), Arc::new(columns.2.clone())],
        )
        .map_err(|e| IoError::engine("building the play table", e.into()))?;
        writer.write(&batch).map_err(parquet_err)?;
        drop(batch);
        (u, a, p) = (reclaim(columns.0), reclaim(columns.1), reclaim(columns.2));
    }
    writer.close().map_err(parquet_err)?;
    file.commit()
}

/// The vector under an array nothing else shares any more (an empty one
/// if something still does).
fn reclaim<T: ArrowPrimitiveType>(array: PrimitiveArray<T>) -> Vec<T::Native> {
    array.into_parts().1.into_inner().into_vec().unwrap_or_default()
}

/// Reads the play matrix [`write_plays`] wrote.
fn read_plays(path: &Path, users: usize, artists: usize) -> Result<Csr> {
    let file = std::fs::File::open(path).map_err(|e| IoError::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| IoError::Parquet { path: path.into(), source: e })?;
    let mut triplets = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| IoError::engine(format!("reading {}", path.display()), e.into()))?;
        let u = batch.column(0).as_primitive::<UInt32Type>();
        let a = batch.column(1).as_primitive::<UInt32Type>();
        let p = batch.column(2).as_primitive::<Float32Type>();
        for i in 0..batch.num_rows() {
            triplets.push((u.value(i), a.value(i), p.value(i)));
        }
        debug_assert_eq!(u.null_count(), 0);
    }
    Ok(Csr::from_triplets_owned(users, artists, triplets)?)
}

fn split2(path: &Path, line_no: usize, l: &str) -> Result<(String, String)> {
    l.split_once(',').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| IoError::Malformed {
        path: path.into(),
        line: line_no,
        detail: format!("expected two fields, found `{l}`"),
    })
}

/// The two-field rows of a CSV file with `header` (line numbers in errors
/// count the header).
fn read_pairs(path: &Path, header: &str) -> Result<Vec<(String, String)>> {
    read_lines(path, Some(header))?.iter().enumerate().map(|(i, l)| split2(path, i + 2, l)).collect()
}

/// Reads the ingest folder written by [`save_ingested`].
pub fn load_ingested(dir: &Path) -> Result<Ingested> {
    let users = read_lines(&dir.join("users.csv"), None)?;
    let artists = read_lines(&dir.join("artists.csv"), None)?;
    let plays = read_plays(&dir.join("plays.parquet"), users.len(), artists.len())?;
    let notifications = RawNotification::group(read_pairs(&dir.join("notifications.csv"), NOTIFICATIONS_HEADER)?);
    let cpath = dir.join("clicks.csv");
    let clicks = if cpath.exists() { Some(read_pairs(&cpath, CLICKS_HEADER)?) } else { None };
    // Older ingest folders have no song list; only the serve API's
    // fold-in needs it.
    let spath = dir.join("songs.csv");
    let songs = if spath.exists() { read_pairs(&spath, SONGS_HEADER)? } else { Vec::new() };
    // Nor hours.
    let hpath = dir.join("active_hours.npy");
    let active_hours = if hpath.exists() { read_npy_u32(&hpath)? } else { Vec::new() };
    if !active_hours.is_empty() && active_hours.len() != users.len() {
        return Err(IoError::Malformed {
            path: hpath,
            line: 0,
            detail: format!("{} hour masks for {} users in users.csv", active_hours.len(), users.len()),
        });
    }
    let report: IngestReport = read_json(&dir.join("report.json"))?;
    Ok(Ingested { users, artists, plays, active_hours, notifications, clicks, songs, report })
}

/// Parameters stored beside the factors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelParams {
    /// ALS hyperparameters.
    pub als: AlsParams,
    /// k-means hyperparameters.
    pub kmeans: KMeansParams,
    /// ALS training loss (after the last iteration).
    pub loss_history: Vec<f64>,
    /// k-means inertia.
    pub inertia: f64,
}

/// A trained model: factors, ids and cohorts.
#[derive(Debug, Clone)]
pub struct StoredModel {
    /// Users, in factor-row order.
    pub users: Vec<String>,
    /// Artists, in factor-row order.
    pub artists: Vec<String>,
    /// The factors.
    pub als: AlsModel,
    /// Centroids and each user's cohort.
    pub cohorts: Cohorts,
    /// The cohort of each user.
    pub labels: Vec<u32>,
    /// Parameters and fit diagnostics.
    pub params: ModelParams,
}

/// Writes the model folder (as a whole: a failed write leaves the old one).
pub fn save_model(dir: &Path, m: &StoredModel) -> Result<()> {
    crate::files::write_dir_atomic(dir, |tmp| {
        write_json(&tmp.join("params.json"), &m.params)?;
        write_lines(&tmp.join("users.csv"), None, &m.users)?;
        write_lines(&tmp.join("artists.csv"), None, &m.artists)?;
        let f = m.als.factors();
        write_npy_f32(&tmp.join("user_factors.npy"), m.als.user_factors(), m.als.users(), f)?;
        write_npy_f32(&tmp.join("artist_factors.npy"), m.als.item_factors(), m.als.items(), f)?;
        write_npy_f32(&tmp.join("centroids.npy"), m.cohorts.centroids(), m.cohorts.k(), m.cohorts.dim())?;
        write_npy_u32(&tmp.join("cohorts.npy"), &m.labels)
    })
}

/// Reads the model folder, checking that its parts agree.
pub fn load_model(dir: &Path) -> Result<StoredModel> {
    let params: ModelParams = read_json(&dir.join("params.json"))?;
    let users = read_lines(&dir.join("users.csv"), None)?;
    let artists = read_lines(&dir.join("artists.csv"), None)?;
    let (uf, ur, uc) = read_npy_f32(&dir.join("user_factors.npy"))?;
    let (af, ar, ac) = read_npy_f32(&dir.join("artist_factors.npy"))?;
    let (cf, _, cc) = read_npy_f32(&dir.join("centroids.npy"))?;
    let labels = read_npy_u32(&dir.join("cohorts.npy"))?;
    let mismatch = |detail: String| IoError::Malformed { path: dir.into(), line: 0, detail };
    if ur != users.len()
        || ar != artists.len()
        || uc != params.als.factors
        || ac != params.als.factors
        || cc != uc
        || labels.len() != ur
    {
        return Err(mismatch(format!(
            "model parts disagree: {} users, user factors {ur}x{uc}, {} artists, artist factors {ar}x{ac}, centroids of width {cc}, {} cohort labels, {} factors in params.json",
            users.len(),
            artists.len(),
            labels.len(),
            params.als.factors
        )));
    }
    let als = AlsModel::from_factors(params.als.clone(), uf, af)?;
    let cohorts = Cohorts::from_centroids(cf, cc)?;
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= cohorts.k()) {
        return Err(mismatch(format!("cohort label {bad} but only {} centroids", cohorts.k())));
    }
    Ok(StoredModel { users, artists, als, cohorts, labels, params })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plays_written_in_small_batches_read_back_the_same() {
        // Users of 0 to 6 plays, so that batches of 4 plays end inside,
        // between and after runs of users, and one user's plays never split.
        let mut t = Vec::new();
        for u in 0..40u32 {
            for k in 0..(u % 7) {
                t.push((u, (u * 3 + k * 5) % 23, (u + k) as f32 + 0.5));
            }
        }
        let plays = Csr::from_triplets(40, 23, &t).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for per_batch in [1, 4, 9, 1 << 20] {
            let path = dir.path().join(format!("plays{per_batch}.parquet"));
            write_plays(&path, &plays, per_batch).unwrap();
            let back = read_plays(&path, 40, 23).unwrap();
            assert_eq!(back.nnz(), plays.nnz(), "batches of {per_batch}");
            for u in 0..40 {
                assert_eq!(back.row(u), plays.row(u), "batches of {per_batch}, user {u}");
            }
        }
    }

    #[test]
    fn a_column_comes_back_for_reuse_once_unshared() {
        let v: Vec<u32> = (0..100).collect();
        let array = UInt32Array::from(v);
        let shared = array.clone();
        assert_eq!(reclaim(array).capacity(), 0, "still shared: a fresh vector");
        assert!(reclaim(shared).capacity() >= 100, "unshared: the same allocation");
    }
}
