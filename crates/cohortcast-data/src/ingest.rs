//! Ingest on DataFusion: parse and check every row, join plays to the song
//! metadata, and aggregate to play counts per (user, artist), in one scan of
//! the clickstream.
//!
//! Every input is read as one text column per line (the CSV reader with a
//! delimiter and quote that do not occur in the data), and the row rules of
//! [`cohortcast_core::saavn`] run as scalar UDFs (`cc_reject_<input>`), so a
//! malformed row becomes a counted reject instead of a failed job. The plan:
//!
//! ```text
//! clickstream lines ─ cc_reject ─┬─ rejected ──────────────────────────┐
//!                                └─ user_id, song_id ─ LEFT JOIN songs ─┴─ GROUP BY (reject, user, artist) → count
//! metadata lines ─ cc_reject ─ song_id, unnest(artist columns) ─ DISTINCT ┘
//! ```
//!
//! A play of a song with several artists counts once for each; a play of a
//! song missing from the metadata lands in the `artist = NULL` group and is
//! counted per user. Parquet inputs with the layout's column names are turned
//! into the same lines, so one plan serves both.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cohortcast_core::saavn::{Input, Reject};
use cohortcast_core::sparse::Csr;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::logical_expr::{create_udf, ColumnarValue, Volatility};
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionConfig, SessionContext};
use serde::{Deserialize, Serialize};

use crate::error::{IoError, Result};
use crate::inputs::{resolve, sniff, Encoding, InputFiles, InputPaths};
use crate::samples::{find_examples, RejectExample};

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
}

/// A notification as read: its id and artist ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawNotification {
    /// `notification_id`.
    pub id: String,
    /// Its `artist_id`s, in input order, distinct.
    pub artists: Vec<String>,
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
    /// Notifications, sorted by id.
    pub notifications: Vec<RawNotification>,
    /// Distinct (notification_id, user_id) clicks, when clicks were given.
    pub clicks: Option<Vec<(String, String)>>,
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
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions { partitions: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2), max_examples: 5 }
    }
}

/// The UDF `cc_reject_<input>(line)`: the reject code, or NULL for a good row.
fn reject_udf(input: Input) -> datafusion::logical_expr::ScalarUDF {
    let fun = move |args: &[ColumnarValue]| -> datafusion::error::Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(args)?;
        let lines = cast(&arrays[0], &DataType::Utf8)?;
        let out: StringArray = lines
            .as_string::<i32>()
            .iter()
            .map(|l| match l {
                None => Some(Reject::WrongFieldCount.code()),
                Some(l) => input.check(l).err().map(|r| r.code()),
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
    };
    create_udf(&format!("cc_reject_{}", input.name()), vec![DataType::Utf8], DataType::Utf8, Volatility::Immutable, Arc::new(fun))
}

/// A session with the UDFs registered.
pub fn session(partitions: usize) -> SessionContext {
    let config = SessionConfig::new().with_target_partitions(partitions.max(1)).with_batch_size(16 * 1024);
    let ctx = SessionContext::new_with_config(config);
    for input in Input::ALL {
        ctx.register_udf(reject_udf(input));
    }
    ctx
}

fn parquet_columns(input: Input) -> &'static [&'static str] {
    match input {
        Input::Clickstream => &["user_id", "timestamp", "song_id", "date"],
        Input::Metadata => &["song_id", "artist_id"],
        Input::NotificationActor => &["notification_id", "artist_id"],
        Input::NotificationClicks => &["notification_id", "user_id", "date"],
    }
}

/// Registers `<input>_lines(line)` for an input's files.
async fn register_lines(ctx: &SessionContext, files: &InputFiles) -> Result<()> {
    let name = format!("{}_lines", files.input.name());
    let paths: Vec<String> = files.files.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let context = || format!("{}: reading {}", files.input.name(), paths.first().cloned().unwrap_or_default());
    let df = match files.encoding {
        Encoding::Csv => {
            let schema = Schema::new(vec![Field::new("raw", DataType::Utf8, true)]);
            // 0x1F/0x1E (unit/record separators) never occur in this data, so
            // each line arrives whole, whatever its commas or quotes.
            let opts = CsvReadOptions::new().has_header(false).delimiter(0x1f).quote(0x1e).schema(&schema).file_extension("");
            let raw = ctx.read_csv(paths.clone(), opts).await.map_err(|e| IoError::engine(context(), e))?;
            ctx.register_table("tmp_raw", raw.into_view()).map_err(|e| IoError::engine(context(), e))?;
            ctx.sql("SELECT rtrim(raw, chr(13)) AS line FROM tmp_raw").await.map_err(|e| IoError::engine(context(), e))?
        }
        Encoding::Parquet => {
            let raw = ctx
                .read_parquet(paths.clone(), ParquetReadOptions::default().file_extension(".parquet"))
                .await
                .map_err(|e| IoError::engine(context(), e))?;
            ctx.register_table("tmp_raw", raw.into_view()).map_err(|e| IoError::engine(context(), e))?;
            let cols: Vec<String> = parquet_columns(files.input)
                .iter()
                .map(|c| format!("coalesce(CAST(\"{c}\" AS VARCHAR), '')"))
                .collect();
            ctx.sql(&format!("SELECT concat({}) AS line FROM tmp_raw", cols.join(", ',', ")))
                .await
                .map_err(|e| IoError::engine(context(), e))?
        }
    };
    let view = df.into_view();
    ctx.deregister_table("tmp_raw").map_err(|e| IoError::engine(context(), e))?;
    ctx.register_table(name.as_str(), view).map_err(|e| IoError::engine(context(), e))?;
    Ok(())
}

async fn collect(ctx: &SessionContext, sql: &str, context: &str) -> Result<Vec<RecordBatch>> {
    let df = ctx.sql(sql).await.map_err(|e| IoError::engine(context, e))?;
    df.collect().await.map_err(|e| IoError::engine(context, e))
}

fn strings(col: &ArrayRef) -> Result<StringArray> {
    let c = cast(col, &DataType::Utf8).map_err(|e| IoError::engine("reading a result column", e.into()))?;
    Ok(c.as_string::<i32>().clone())
}

fn ints(col: &ArrayRef) -> Result<Int64Array> {
    let c = cast(col, &DataType::Int64).map_err(|e| IoError::engine("reading a result column", e.into()))?;
    Ok(c.as_primitive::<datafusion::arrow::datatypes::Int64Type>().clone())
}

/// Counts rows by reject code for a small input and returns the good lines'
/// first two fields.
async fn small_input(ctx: &SessionContext, input: Input, report: &mut InputReport) -> Result<Vec<(String, String)>> {
    let t = input.name();
    let sql = format!(
        "SELECT cc_reject_{t}(line) AS reject, split_part(line, ',', 1) AS a, split_part(line, ',', 2) AS b, count(*) AS n \
         FROM {t}_lines GROUP BY 1, 2, 3"
    );
    let mut good = Vec::new();
    for batch in collect(ctx, &sql, &format!("{t}: parsing")).await? {
        let (rej, a, b, n) = (strings(batch.column(0))?, strings(batch.column(1))?, strings(batch.column(2))?, ints(batch.column(3))?);
        for i in 0..batch.num_rows() {
            report.rows += n.value(i) as u64;
            if rej.is_valid(i) {
                *report.rejected.entry(rej.value(i).to_string()).or_default() += n.value(i) as u64;
            } else {
                good.push((a.value(i).to_string(), b.value(i).to_string()));
            }
        }
    }
    good.sort();
    good.dedup();
    Ok(good)
}

/// Runs the whole ingest on the embedded engine.
pub fn ingest(paths: &InputPaths, opts: &IngestOptions) -> Result<Ingested> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.partitions.max(1))
        .enable_all()
        .build()
        .map_err(|e| IoError::io("<tokio runtime>", e))?;
    rt.block_on(ingest_async(paths, opts))
}

/// Resolves and sniffs every given input, before any work starts.
pub fn resolve_all(paths: &InputPaths) -> Result<Vec<InputFiles>> {
    let mut out = Vec::new();
    for input in Input::ALL {
        match paths.get(input) {
            Some(spec) => {
                let files = resolve(input, spec)?;
                sniff(&files)?;
                out.push(files);
            }
            None if input == Input::NotificationClicks => {}
            None => {
                return Err(IoError::Missing { input: input.name().into(), path: "(not given)".into() });
            }
        }
    }
    Ok(out)
}

async fn ingest_async(paths: &InputPaths, opts: &IngestOptions) -> Result<Ingested> {
    let all = resolve_all(paths)?;
    let ctx = session(opts.partitions);
    let mut report = IngestReport::default();
    for files in &all {
        register_lines(&ctx, files).await?;
        report.inputs.insert(files.input.name().into(), InputReport { files: files.files.len(), ..Default::default() });
    }

    // Metadata: reject counts and songs.
    let meta_sql = "SELECT cc_reject_metadata(line) AS reject, count(*) AS n, count(DISTINCT split_part(line, ',', 1)) AS songs \
                    FROM metadata_lines GROUP BY 1";
    {
        let r = report.inputs.get_mut("metadata").expect("registered");
        for batch in collect(&ctx, meta_sql, "metadata: parsing").await? {
            let (rej, n, songs) = (strings(batch.column(0))?, ints(batch.column(1))?, ints(batch.column(2))?);
            for i in 0..batch.num_rows() {
                r.rows += n.value(i) as u64;
                if rej.is_valid(i) {
                    *r.rejected.entry(rej.value(i).to_string()).or_default() += n.value(i) as u64;
                } else {
                    report.songs = songs.value(i) as u64;
                }
            }
        }
    }

    // Clickstream: one scan, one join, one aggregation.
    let sql = "WITH checked AS ( \
          SELECT line, cc_reject_clickstream(line) AS reject FROM clickstream_lines), \
        plays AS ( \
          SELECT reject, \
                 CASE WHEN reject IS NULL THEN split_part(line, ',', 1) END AS user_id, \
                 CASE WHEN reject IS NULL THEN split_part(line, ',', 3) END AS song_id \
          FROM checked), \
        pairs AS ( \
          SELECT DISTINCT song_id, artist_id FROM ( \
            SELECT split_part(line, ',', 1) AS song_id, \
                   unnest(string_to_array(substr(line, strpos(line, ',') + 1), ',')) AS artist_id \
            FROM metadata_lines WHERE cc_reject_metadata(line) IS NULL) s \
          WHERE artist_id <> ''), \
        songs AS ( \
          SELECT song_id, artist_id, artist_id = min(artist_id) OVER (PARTITION BY song_id) AS rep FROM pairs) \
        SELECT p.reject, p.user_id, s.artist_id, count(*) AS plays, \
               sum(CASE WHEN s.rep IS NULL OR s.rep THEN 1 ELSE 0 END) AS play_rows \
        FROM plays p LEFT JOIN songs s ON p.song_id = s.song_id \
        GROUP BY p.reject, p.user_id, s.artist_id";
    let batches = collect(&ctx, sql, "clickstream: parsing and aggregating plays").await?;
    let mut pairs: Vec<(String, String, u64)> = Vec::new();
    let mut unknown_by_user: HashMap<String, u64> = HashMap::new();
    {
        let r = report.inputs.get_mut("clickstream").expect("registered");
        for batch in &batches {
            let (rej, user, artist, n) = (strings(batch.column(0))?, strings(batch.column(1))?, strings(batch.column(2))?, ints(batch.column(3))?);
            let rows = ints(batch.column(4))?;
            for i in 0..batch.num_rows() {
                let n = n.value(i) as u64;
                // A play of a song with k artists is k groups' worth of
                // `plays` but one row, counted where its artist is the
                // song's representative (the smallest artist id).
                r.rows += rows.value(i) as u64;
                if rej.is_valid(i) {
                    *r.rejected.entry(rej.value(i).to_string()).or_default() += n;
                } else if artist.is_null(i) {
                    *unknown_by_user.entry(user.value(i).to_string()).or_default() += n;
                } else {
                    pairs.push((user.value(i).to_string(), artist.value(i).to_string(), n));
                }
            }
        }
    }
    drop(batches);
    pairs.sort_unstable();
    let mut users: Vec<String> = pairs.iter().map(|p| p.0.clone()).collect();
    users.dedup();
    let mut artists: Vec<String> = pairs.iter().map(|p| p.1.clone()).collect();
    artists.sort_unstable();
    artists.dedup();
    let artist_index: HashMap<&str, u32> = artists.iter().enumerate().map(|(i, a)| (a.as_str(), i as u32)).collect();
    let mut triplets = Vec::with_capacity(pairs.len());
    let mut u = 0usize;
    for (k, (user, artist, n)) in pairs.iter().enumerate() {
        if k > 0 && pairs[k - 1].0 != *user {
            u += 1;
        }
        triplets.push((u as u32, artist_index[artist.as_str()], *n as f32));
    }
    let plays = Csr::from_triplets(users.len(), artists.len(), &triplets)?;
    report.plays_unknown_song = unknown_by_user.values().sum();
    {
        let r = &report.inputs["clickstream"];
        report.plays = r.rows - r.rejected_total();
    }
    let known: std::collections::HashSet<&str> = users.iter().map(|s| s.as_str()).collect();
    report.users_without_usable_plays = unknown_by_user.keys().filter(|u| !known.contains(u.as_str())).count();
    report.users_seen = users.len() + report.users_without_usable_plays;
    report.user_artist_pairs = plays.nnz();

    // Notifications.
    let mut actor = InputReport::default();
    let rows = small_input(&ctx, Input::NotificationActor, &mut actor).await?;
    let mut notifications: Vec<RawNotification> = Vec::new();
    for (n, a) in rows {
        match notifications.last_mut() {
            Some(last) if last.id == n => last.artists.push(a),
            _ => notifications.push(RawNotification { id: n, artists: vec![a] }),
        }
    }
    report.notifications = notifications.len();
    let mut unplayed: Vec<&str> = notifications
        .iter()
        .flat_map(|n| n.artists.iter())
        .filter(|a| !artist_index.contains_key(a.as_str()))
        .map(|a| a.as_str())
        .collect();
    unplayed.sort_unstable();
    unplayed.dedup();
    report.notification_artists_unplayed = unplayed.len();
    let entry = report.inputs.get_mut("notification_actor").expect("registered");
    actor.files = entry.files;
    *entry = actor;

    // Clicks.
    let clicks = if paths.notification_clicks.is_some() {
        let mut r = InputReport::default();
        let c = small_input(&ctx, Input::NotificationClicks, &mut r).await?;
        let entry = report.inputs.get_mut("notification_clicks").expect("registered");
        r.files = entry.files;
        *entry = r;
        report.clicks = c.len();
        Some(c)
    } else {
        None
    };

    // Examples of rejected rows, with file and line.
    for files in &all {
        let r = report.inputs.get_mut(files.input.name()).expect("registered");
        if r.rejected_total() > 0 && opts.max_examples > 0 {
            r.examples = find_examples(files, opts.max_examples)?;
        }
    }
    Ok(Ingested { users, artists, plays, notifications, clicks, report })
}
