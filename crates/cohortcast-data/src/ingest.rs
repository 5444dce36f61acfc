//! Ingest on DataFusion: parse and check every row, map plays to the song
//! metadata's artists, and aggregate to play counts per (user, artist), in
//! one scan of the clickstream.
//!
//! Every input is read as one text column per line ([`crate::lines`] on the
//! embedded engine; for a cluster, the CSV reader with a delimiter and
//! quote that do not occur in the data), and the row rules of
//! [`cohortcast_core::saavn`] run as scalar UDFs, so a malformed row becomes
//! a counted reject instead of a failed job. Every key in the big
//! aggregation is an integer. On the embedded engine (the default) the
//! parse UDF `cc_pair` numbers users as it meets them and looks the song up
//! in the metadata's song → artist map, so each play becomes one 64-bit
//! key (user number, artist key). DataFusion scans and parses in parallel
//! partitions, and the client counts the keys in its own hash table
//! ([`crate::pair_sums`], which spills to disk beyond `--ingest-memory-mb`)
//! and ORs each play's hour into its user's mask:
//!
//! ```text
//! clickstream lines ─ cc_pair ─ (pair, hour_bit) ─ client: count per pair, hours per user
//! ```
//!
//! (DataFusion's own `GROUP BY pair` took about half of the medium set's
//! scan: 6.1 s against 3.0 s without it, for a general table that probes
//! its group indices, its keys and each aggregate's array in turn.)
//!
//! A song with several artists maps to the key of its artist set, which
//! the client expands. A Ballista cluster's executors cannot share a user
//! numbering, so there the plan keys users by the 128-bit number their 32
//! hex characters spell (two `UInt64` halves) and joins the songs:
//!
//! ```text
//! clickstream lines ─ cc_play ─ (reject, user_hi, user_lo, song_key, hour_bit) ─┐
//!                                                  RIGHT JOIN ─ GROUP BY (user, artist) → count, bit_or(hour_bit)
//! metadata lines ─ cc_reject ─ song_key, unnest(artists) ─ dense_rank ─┘   (songs are the build side)
//! ```
//!
//! Both give the same pairs (the cluster test compares the outputs). The
//! client renumbers users in id order and builds the play matrix from the
//! sums (never the plays): straight from the embedded engine's table, or
//! from a cluster's (user, artist, count) triplets. A play of a
//! song with several artists counts once for each; a play of a song
//! missing from the metadata is counted per user and left out. Parquet
//! inputs with the layout's column names are turned into the same lines,
//! so one plan serves both.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cohortcast_core::counts::PackedCounts;
use cohortcast_core::hours;
use cohortcast_core::saavn::{self, Input, KeyHash, Reject};
use cohortcast_core::sparse::{Cells, Csr};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, StructArray, UInt32Builder, UInt64Array,
    UInt64Builder, UInt8Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, UInt32Type, UInt64Type};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{create_udf, ColumnarValue, Volatility};
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{IoError, Result};
use crate::inputs::{resolve, sniff, Encoding, InputFiles, InputPaths};
use crate::pair_sums::{PairSums, Spilled};
use crate::samples::{find_examples, RejectExample};
use crate::store::{S3Options, Stores};

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
    create_udf(
        &format!("cc_reject_{}", input.name()),
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(fun),
    )
}

/// The fields `cc_play` returns: the reject code (0 for a good row, else
/// 1 + its index in [`Reject::ALL`]), the user key's high and low halves,
/// the song key ([`saavn::song_key`]) and the bit of the play's hour of the
/// day ([`hours::hour_bit`]; all but the first NULL on a rejected row).
fn play_fields() -> Fields {
    Fields::from(vec![
        Field::new("reject", DataType::UInt8, false),
        Field::new("user_hi", DataType::UInt64, true),
        Field::new("user_lo", DataType::UInt64, true),
        Field::new("song_key", DataType::UInt64, true),
        Field::new("hour_bit", DataType::UInt32, true),
    ])
}

/// The reject code `cc_play` uses for `r`.
fn reject_number(r: Reject) -> u8 {
    1 + Reject::ALL.iter().position(|x| *x == r).expect("every reject is listed") as u8
}

/// A clickstream line's play, or why it is rejected (a NULL line has no
/// fields at all).
fn play_of(line: Option<&str>) -> std::result::Result<saavn::Play<'_>, Reject> {
    line.map_or(Err(Reject::WrongFieldCount), saavn::parse_play)
}

/// Parses a batch of clickstream lines into the [`play_fields`] struct.
/// Hours are of the day at `offset_minutes` east of UTC.
fn parse_plays(lines: &ArrayRef, offset_minutes: i32) -> datafusion::error::Result<ArrayRef> {
    let lines = cast(lines, &DataType::Utf8)?;
    let lines = lines.as_string::<i32>();
    let n = lines.len();
    let mut reject = Vec::with_capacity(n);
    let mut hi = UInt64Builder::with_capacity(n);
    let mut lo = UInt64Builder::with_capacity(n);
    let mut song = UInt64Builder::with_capacity(n);
    let mut hour = UInt32Builder::with_capacity(n);
    for line in lines.iter() {
        match play_of(line) {
            Ok(p) => {
                reject.push(0u8);
                hi.append_value((p.user >> 64) as u64);
                lo.append_value(p.user as u64);
                song.append_value(saavn::song_key(p.song));
                hour.append_value(hours::hour_bit(p.timestamp, offset_minutes));
            }
            Err(r) => {
                reject.push(reject_number(r));
                hi.append_null();
                lo.append_null();
                song.append_null();
                hour.append_null();
            }
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt8Array::from(reject)),
        Arc::new(hi.finish()),
        Arc::new(lo.finish()),
        Arc::new(song.finish()),
        Arc::new(hour.finish()),
    ];
    Ok(Arc::new(StructArray::try_new(play_fields(), columns, None)?))
}

/// A thread's last (input, output) batch of a struct-valued UDF.
type LastBatch = std::thread::LocalKey<std::cell::RefCell<Option<(ArrayRef, ArrayRef)>>>;

/// `parse(input)`, or the output kept in `last` when `input` is the batch
/// it was computed from: the kept input holds its buffers alive, so equal
/// pointers mean equal contents.
fn memoized(
    last: &'static LastBatch,
    input: &ArrayRef,
    parse: impl FnOnce(&ArrayRef) -> datafusion::error::Result<ArrayRef>,
) -> datafusion::error::Result<ArrayRef> {
    let hit = last
        .with(|l| l.borrow().as_ref().filter(|(i, _)| i.to_data().ptr_eq(&input.to_data())).map(|(_, o)| o.clone()));
    if let Some(out) = hit {
        return Ok(out);
    }
    let out = parse(input)?;
    last.with(|l| *l.borrow_mut() = Some((input.clone(), out.clone())));
    Ok(out)
}

thread_local! {
    /// The last batch `cc_play` parsed on this thread: (input, output).
    static LAST_PLAYS: std::cell::RefCell<Option<(ArrayRef, ArrayRef)>> = const { std::cell::RefCell::new(None) };
}

/// The UDF `cc_play(line, offset_minutes)`: one parse of a clickstream
/// line into the [`play_fields`] struct, so the plan groups by integers (the
/// user id as two 64-bit halves, see [`saavn::user_key`]) and never copies
/// the line. The offset (a literal) sets the day the hour bit is of.
///
/// DataFusion 55 pushes each `p['field']` access down into the scan as its
/// own `get_field(cc_play(raw), field)`, so the function is called once per
/// field on the same batch (even when declared volatile). The last batch's
/// result is kept per thread and returned when the same input buffers come
/// again: the kept input holds its buffers alive, so equal pointers mean
/// equal contents, and each line is parsed once.
fn play_udf() -> datafusion::logical_expr::ScalarUDF {
    let fun = move |args: &[ColumnarValue]| -> datafusion::error::Result<ColumnarValue> {
        let offset = match args.get(1) {
            Some(ColumnarValue::Scalar(ScalarValue::Int32(Some(m)))) if hours::check_offset(*m).is_ok() => *m,
            other => {
                return Err(datafusion::error::DataFusionError::Execution(format!(
                    "cc_play: the second argument must be a UTC offset in minutes (-840 to 840), got {other:?}"
                )))
            }
        };
        let arrays = ColumnarValue::values_to_arrays(&args[..1])?;
        Ok(ColumnarValue::Array(memoized(&LAST_PLAYS, &arrays[0], |input| parse_plays(input, offset))?))
    };
    create_udf(
        "cc_play",
        vec![DataType::Utf8, DataType::Int32],
        DataType::Struct(play_fields()),
        Volatility::Immutable,
        Arc::new(fun),
    )
}

/// The UDF `cc_song_key(song_id)`: [`saavn::song_key`].
fn song_key_udf() -> datafusion::logical_expr::ScalarUDF {
    let fun = move |args: &[ColumnarValue]| -> datafusion::error::Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(args)?;
        let ids = cast(&arrays[0], &DataType::Utf8)?;
        let keys: UInt64Array = ids.as_string::<i32>().iter().map(|s| s.map(saavn::song_key)).collect();
        Ok(ColumnarValue::Array(Arc::new(keys) as ArrayRef))
    };
    create_udf("cc_song_key", vec![DataType::Utf8], DataType::UInt64, Volatility::Immutable, Arc::new(fun))
}

/// A session with the UDFs registered, its operators held to
/// `memory_limit` bytes (they spill beyond it), `s3://` read through `stores`.
pub fn session(partitions: usize, memory_limit: usize, stores: Arc<Stores>) -> Result<SessionContext> {
    // DATAFUSION_* environment variables tune the engine (as in every
    // DataFusion program); the partitions and batch size are set here.
    let config = SessionConfig::from_env()
        .map_err(|e| IoError::engine("reading DATAFUSION_* settings", e))?
        .with_target_partitions(partitions.max(1))
        .with_batch_size(16 * 1024);
    // What a sort or aggregation keeps back for merging its spills: at most
    // an eighth of the pool, so a small pool still spills instead of failing.
    let mut config = config;
    let reserve = &mut config.options_mut().execution.sort_spill_reservation_bytes;
    *reserve = (*reserve).min(memory_limit / 8);
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(memory_limit)))
        .with_object_store_registry(Arc::new(crate::cluster::Registry::new(stores)))
        .build_arc()
        .map_err(|e| IoError::engine("starting the ingest engine", e))?;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    for f in udfs() {
        ctx.register_udf(f);
    }
    Ok(ctx)
}

/// The scalar UDFs of the ingest plan: `cc_reject_<input>`, `cc_play`,
/// `cc_song_key`. A cluster must have them registered too.
pub fn udfs() -> Vec<datafusion::logical_expr::ScalarUDF> {
    let mut out: Vec<_> = Input::ALL.into_iter().map(reject_udf).collect();
    out.extend([play_udf(), song_key_udf()]);
    out
}

fn parquet_columns(input: Input) -> &'static [&'static str] {
    match input {
        Input::Clickstream => &["user_id", "timestamp", "song_id", "date"],
        Input::Metadata => &["song_id", "artist_id"],
        Input::NotificationActor => &["notification_id", "artist_id"],
        Input::NotificationClicks => &["notification_id", "user_id", "date"],
    }
}

/// Registers `<input>_lines(line)` for an input's files: CSV through
/// [`crate::lines::LinesFormat`] on the embedded engine, through
/// DataFusion's CSV reader for a cluster (`embedded` false).
async fn register_lines(ctx: &SessionContext, files: &InputFiles, embedded: bool) -> Result<()> {
    let name = format!("{}_lines", files.input.name());
    let paths: Vec<String> = files.files.clone();
    let context = || format!("{}: reading {}", files.input.name(), paths.first().cloned().unwrap_or_default());
    let df = match files.encoding {
        Encoding::Csv if embedded => {
            let table = crate::lines::lines_table(&paths).map_err(|e| IoError::engine(context(), e))?;
            ctx.register_table(name.as_str(), Arc::new(table)).map_err(|e| IoError::engine(context(), e))?;
            return Ok(());
        }
        Encoding::Csv => {
            let schema = Schema::new(vec![Field::new("raw", DataType::Utf8, true)]);
            // 0x1F/0x1E (unit/record separators) never occur in this data, so
            // each line arrives whole, whatever its commas or quotes.
            let opts =
                CsvReadOptions::new().has_header(false).delimiter(0x1f).quote(0x1e).schema(&schema).file_extension("");
            let raw = ctx.read_csv(paths.clone(), opts).await.map_err(|e| IoError::engine(context(), e))?;
            // The row rules ignore a trailing `\r`, so lines are not copied to trim it.
            ctx.register_table("tmp_raw", raw.into_view()).map_err(|e| IoError::engine(context(), e))?;
            ctx.sql("SELECT raw AS line FROM tmp_raw").await.map_err(|e| IoError::engine(context(), e))?
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

/// Counts rows by reject code for a small input and hands the good lines'
/// first two fields to `keep`.
async fn small_input(
    ctx: &SessionContext,
    input: Input,
    location: &str,
    report: &mut InputReport,
    mut keep: impl FnMut(&str, &str) -> Result<()>,
) -> Result<()> {
    let t = input.name();
    // No GROUP BY: grouping a million distinct string pairs cost more than
    // the callers' sort and dedup (1.2 M clicks: 1.6 s against 0.6 s).
    let sql = format!(
        "SELECT cc_reject_{t}(line) AS reject, split_part(l, ',', 1) AS a, split_part(l, ',', 2) AS b \
         FROM (SELECT line, rtrim(line, chr(13)) AS l FROM {t}_lines)"
    );
    for batch in collect(ctx, &sql, &format!("{t} ({location}): parsing")).await? {
        let (rej, a, b) = (strings(batch.column(0))?, strings(batch.column(1))?, strings(batch.column(2))?);
        report.rows += batch.num_rows() as u64;
        for i in 0..batch.num_rows() {
            if rej.is_valid(i) {
                *report.rejected.entry(rej.value(i).to_string()).or_default() += 1;
            } else {
                keep(a.value(i), b.value(i))?;
            }
        }
    }
    Ok(())
}

/// The good click rows as (notification id, lowercase user id), sorted and
/// without repeats. Sorted as (rank of the notification id, user key), which
/// is the strings' order (the key is the fixed-width lowercase hex number),
/// without comparing strings: 1.2 M clicks took 1.5 s as string pairs.
async fn read_clicks(ctx: &SessionContext, location: &str, report: &mut InputReport) -> Result<Vec<(String, String)>> {
    let mut index: HashMap<String, u32> = HashMap::new();
    let mut names: Vec<String> = Vec::new();
    let mut keyed: Vec<(u32, u128)> = Vec::new();
    small_input(ctx, Input::NotificationClicks, location, report, |n, u| {
        let id = match index.get(n) {
            Some(&id) => id,
            None => {
                let id = names.len() as u32;
                names.push(n.to_string());
                index.insert(n.to_string(), id);
                id
            }
        };
        // The reject check passed, so the id is 32 hex digits.
        let key = saavn::user_key(u).ok_or_else(|| IoError::Malformed {
            path: location.into(),
            line: 0,
            detail: format!("user id `{u}` passed the checks but is not 32 hexadecimal digits"),
        })?;
        keyed.push((id, key));
        Ok(())
    })
    .await?;
    let mut order: Vec<u32> = (0..names.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| names[a as usize].cmp(&names[b as usize]));
    let mut rank = vec![0u32; names.len()];
    for (r, &id) in order.iter().enumerate() {
        rank[id as usize] = r as u32;
    }
    for k in keyed.iter_mut() {
        k.0 = rank[k.0 as usize];
    }
    keyed.sort_unstable();
    keyed.dedup();
    Ok(keyed.into_iter().map(|(r, k)| (names[order[r as usize] as usize].clone(), saavn::user_id(k))).collect())
}

/// The small inputs read after the clickstream: notification_actor's
/// report and good (notification, artist) rows, sorted and without
/// repeats, and notification_clicks' report and clicks (see
/// [`read_clicks`]) when `clicks` names them.
type SideInputs = (InputReport, Vec<(String, String)>, Option<(InputReport, Vec<(String, String)>)>);

/// Reads notification_actor at `actor` and notification_clicks at
/// `clicks` (owned arguments, so it can run as a task of its own).
async fn read_side_inputs(ctx: SessionContext, actor: String, clicks: Option<String>) -> Result<SideInputs> {
    let mut actor_report = InputReport::default();
    let mut rows: Vec<(String, String)> = Vec::new();
    small_input(&ctx, Input::NotificationActor, &actor, &mut actor_report, |n, a| {
        rows.push((n.to_string(), a.to_string()));
        Ok(())
    })
    .await?;
    rows.sort_unstable();
    rows.dedup();
    let clicks = match clicks {
        Some(location) => {
            let mut r = InputReport::default();
            let c = read_clicks(&ctx, &location, &mut r).await?;
            Some((r, c))
        }
        None => None,
    };
    Ok((actor_report, rows, clicks))
}

/// What the clickstream aggregation leaves for the client, users by
/// provisional number (renumbered in id order afterwards).
#[derive(Default)]
struct Aggregate {
    /// Every user with a well-formed row, by provisional number.
    users: Vec<u128>,
    /// Whether the user played a song of the metadata.
    usable: Vec<bool>,
    /// Hours of the day with such plays ([`hours`] masks).
    masks: Vec<u32>,
    /// The plays per (provisional user, artist rank).
    pairs: Pairs,
    /// Rows read, good and bad.
    rows_read: u64,
    /// Rejected rows by [`Reject::ALL`] index.
    rejected: [u64; Reject::ALL.len()],
    /// Well-formed plays of songs missing from the metadata.
    unknown_plays: u64,
}

/// The summed plays per (provisional user, artist rank), as the
/// aggregation left them.
enum Pairs {
    /// (provisional user, artist rank, plays) triplets: a cluster's groups,
    /// or sums read back from spill files.
    Triplets(Vec<(u32, u32, f32)>),
    /// The embedded engine's table of plays per (user, artist or group of a
    /// song's artists) key, packed and read in place: writing it out as
    /// triplets first took 291 MB more on the medium set (24.3 M triplets
    /// for 17.4 M pairs), all of it touched for the first time.
    Table {
        counts: PackedCounts,
        coder: Arc<PairCoder>,
        /// Whether each artist rank has a play.
        played: Vec<bool>,
    },
}

impl Default for Pairs {
    fn default() -> Self {
        Pairs::Triplets(Vec::new())
    }
}

impl Pairs {
    /// Whether each of `artists` artist ranks has a play.
    fn artists_played(&self, artists: usize) -> Vec<bool> {
        match self {
            Pairs::Triplets(triplets) => {
                let mut played = vec![false; artists];
                for t in triplets {
                    played[t.1 as usize] = true;
                }
                played
            }
            Pairs::Table { played, .. } => played.clone(),
        }
    }

    /// The `users × artists` play matrix, provisional users and artist
    /// ranks renumbered through `user_remap` and `artist_remap`. A song
    /// with several artists can reach an artist a second time for a user
    /// (alone and with others): the matrix sums such cells.
    fn into_matrix(self, users: usize, artists: usize, user_remap: &[u32], artist_remap: &[u32]) -> Result<Csr> {
        let plays = match self {
            Pairs::Triplets(mut triplets) => {
                for t in triplets.iter_mut() {
                    *t = (user_remap[t.0 as usize], artist_remap[t.1 as usize], t.2);
                }
                // Freed as soon as they are spread into rows.
                Csr::from_triplets_owned(users, artists, triplets)?
            }
            Pairs::Table { counts, coder, .. } => {
                // The table is freed once spread into rows.
                Csr::from_cells(users, artists, TableCells { counts, coder, user_remap, artist_remap })?
            }
        };
        Ok(plays)
    }
}

/// A [`Pairs::Table`]'s keys as matrix cells: one for each artist of a
/// key's code, users and artists renumbered.
struct TableCells<'a> {
    counts: PackedCounts,
    coder: Arc<PairCoder>,
    user_remap: &'a [u32],
    artist_remap: &'a [u32],
}

impl Cells for TableCells<'_> {
    fn part(&self, part: usize, parts: usize, mut each: impl FnMut(u32, u32, f32)) {
        self.counts.each_in_part(part, parts, |key, count| {
            let u = self.user_remap[(key >> 32) as usize];
            for &a in self.coder.artists_of(&(key as u32)) {
                each(u, self.artist_remap[a as usize], count as f32);
            }
        });
    }
}

impl Aggregate {
    /// Marks a usable play of user `u` at the hours of `mask`.
    fn usable_at(&mut self, u: u32, mask: u32) {
        let u = u as usize;
        if self.usable.len() <= u {
            self.usable.resize(u + 1, false);
            self.masks.resize(u + 1, 0);
        }
        self.usable[u] = true;
        self.masks[u] |= mask;
    }
}

/// Song key → artist key, by open addressing with linear probing in one
/// array of (key, code) slots at most half full, so that a batch's lookups
/// can be prefetched a few plays ahead: with 80 k songs the table is larger
/// than a core's L2, and the lookup's cache miss was most of the parse
/// UDF's time.
struct SongTable {
    slots: Vec<(u64, u32)>,
    mask: usize,
}

/// The code of an empty [`SongTable`] slot (also what a missing song gets).
const EMPTY_SLOT: u32 = UNKNOWN_SONG;

impl SongTable {
    fn new(entries: &HashMap<u64, u32, KeyHash>) -> SongTable {
        let size = (2 * entries.len()).next_power_of_two().max(16);
        let mut t = SongTable { slots: vec![(0, EMPTY_SLOT); size], mask: size - 1 };
        for (&key, &code) in entries {
            let mut at = t.home(key);
            while t.slots[at].1 != EMPTY_SLOT {
                at = (at + 1) & t.mask;
            }
            t.slots[at] = (key, code);
        }
        t
    }

    fn home(&self, key: u64) -> usize {
        saavn::mix64(key) as usize & self.mask
    }

    /// The artist key of a song, or [`UNKNOWN_SONG`].
    fn get(&self, key: u64) -> u32 {
        let mut at = self.home(key);
        loop {
            let (k, code) = self.slots[at];
            if code == EMPTY_SLOT || k == key {
                return code;
            }
            at = (at + 1) & self.mask;
        }
    }

    /// Starts loading the slot where a lookup of `key` begins.
    fn prefetch(&self, key: u64) {
        cohortcast_core::simd::prefetch(&self.slots[self.home(key)]);
    }
}

/// User key → number, numbered in order of first sight, by open
/// addressing with linear probing in one array of (key, number) slots at
/// most half full, so that a batch's lookups can be prefetched. With plays
/// in time order (as real exports are) the last user's number is rarely
/// the next row's, and the general map's cache miss per play, taken under
/// the lock that serialises the partitions, put the parse UDF at 16% of
/// the ingest's samples (4% with plays in user order).
struct UserTable {
    slots: Vec<(u128, u32)>,
    len: usize,
}

/// The number of an empty [`UserTable`] slot (never a user's: see
/// [`REJECTED`]).
const NO_USER: u32 = u32::MAX;

impl Default for UserTable {
    fn default() -> Self {
        UserTable { slots: vec![(0, NO_USER); 1024], len: 0 }
    }
}

impl UserTable {
    /// The first slot of `key`, by the client's [`KeyHash`] (as its maps).
    fn home(&self, key: u128) -> usize {
        use std::hash::BuildHasher;
        KeyHash::default().hash_one(key) as usize & (self.slots.len() - 1)
    }

    /// Users numbered so far.
    fn len(&self) -> usize {
        self.len
    }

    /// Starts loading the slot where a lookup of `key` begins.
    fn prefetch(&self, key: u128) {
        cohortcast_core::simd::prefetch(&self.slots[self.home(key)]);
    }

    /// The number of `key`, the next one if it is new.
    fn number(&mut self, key: u128) -> u32 {
        if (self.len + 1) * 2 > self.slots.len() {
            let size = self.slots.len() * 2;
            let old = std::mem::replace(&mut self.slots, vec![(0, NO_USER); size]);
            for (k, n) in old.into_iter().filter(|s| s.1 != NO_USER) {
                let mut at = self.home(k);
                while self.slots[at].1 != NO_USER {
                    at = (at + 1) & (self.slots.len() - 1);
                }
                self.slots[at] = (k, n);
            }
        }
        let mut at = self.home(key);
        loop {
            let (k, n) = self.slots[at];
            if n == NO_USER {
                let n = self.len as u32;
                self.slots[at] = (key, n);
                self.len += 1;
                return n;
            }
            if k == key {
                return n;
            }
            at = (at + 1) & (self.slots.len() - 1);
        }
    }

    /// The keys by number.
    fn into_keys(self) -> Vec<u128> {
        let mut keys = vec![0; self.len];
        for (k, n) in self.slots {
            if n != NO_USER {
                keys[n as usize] = k;
            }
        }
        keys
    }
}

/// The embedded engine's parse: each play becomes one 64-bit key, the
/// user's number (given as lines are parsed) over the song's artist key,
/// so the aggregation groups by a single integer column and needs no join.
///
/// An artist key is the artist's rank for a song with one artist; a song
/// with several artists gets the key of its artist set (numbered after the
/// ranks), which the client expands. A cluster's executors cannot share
/// the user numbering, so there the plan joins instead (see
/// [`aggregate_joined`]); both give the same pairs (a test checks it).
struct PairCoder {
    /// Song key → artist key.
    songs: SongTable,
    /// Artist sets of the keys from `artists` on.
    groups: Vec<Vec<u32>>,
    /// Artist ranks.
    artists: u32,
    /// User key → number, in order of first sight.
    users: std::sync::Mutex<UserTable>,
    /// Minutes east of UTC of the hours.
    offset_minutes: i32,
    /// Bytes of the lines parsed so far (each line's newline counted).
    bytes_parsed: std::sync::atomic::AtomicU64,
}

/// The user number of a rejected row; its artist key is the reject number.
const REJECTED: u32 = u32::MAX;
/// The artist key of a song missing from the metadata.
const UNKNOWN_SONG: u32 = u32::MAX;

impl PairCoder {
    /// The artist ranks of a pair key's code: an artist, or a group of a
    /// song's artists.
    fn artists_of<'a>(&'a self, code: &'a u32) -> &'a [u32] {
        if *code < self.artists {
            std::slice::from_ref(code)
        } else {
            &self.groups[(*code - self.artists) as usize]
        }
    }

    /// From the songs table's (song key, artist rank) rows and the number
    /// of artists.
    fn new(song_ranks: &[(u64, u32)], artists: usize, offset_minutes: i32) -> Arc<PairCoder> {
        let mut sets: HashMap<u64, Vec<u32>, KeyHash> = HashMap::default();
        for &(song, rank) in song_ranks {
            sets.entry(song).or_default().push(rank);
        }
        let artists = artists as u32;
        let mut group_of: HashMap<Vec<u32>, u32> = HashMap::new();
        let mut groups = Vec::new();
        let mut map: HashMap<u64, u32, KeyHash> = HashMap::default();
        for (key, mut set) in sets {
            set.sort_unstable();
            set.dedup();
            let code = if set.len() == 1 {
                set[0]
            } else {
                *group_of.entry(set.clone()).or_insert_with(|| {
                    groups.push(set);
                    artists + groups.len() as u32 - 1
                })
            };
            map.insert(key, code);
        }
        Arc::new(PairCoder {
            songs: SongTable::new(&map),
            groups,
            artists,
            users: Default::default(),
            offset_minutes,
            bytes_parsed: Default::default(),
        })
    }
}

/// The fields `cc_pair` returns: the 64-bit pair key and the play's hour
/// bit (NULL on a rejected row).
fn pair_fields() -> Fields {
    Fields::from(vec![Field::new("pair", DataType::UInt64, false), Field::new("hour_bit", DataType::UInt32, true)])
}

/// Parses a batch of clickstream lines into [`pair_fields`]. Lines are
/// parsed outside the lock; only the numbering of users holds it.
fn parse_pairs(coder: &PairCoder, lines: &ArrayRef) -> datafusion::error::Result<ArrayRef> {
    let lines = cast(lines, &DataType::Utf8)?;
    let lines = lines.as_string::<i32>();
    let n = lines.len();
    let offsets = lines.value_offsets();
    let bytes = (offsets[n] - offsets[0]) as u64 + n as u64;
    coder.bytes_parsed.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    // (user, song key), or the reject number.
    let mut parsed: Vec<std::result::Result<(u128, u64), u32>> = Vec::with_capacity(n);
    let mut hour = UInt32Builder::with_capacity(n);
    for line in lines.iter() {
        match play_of(line) {
            Ok(p) => {
                parsed.push(Ok((p.user, saavn::song_key(p.song))));
                hour.append_value(hours::hour_bit(p.timestamp, coder.offset_minutes));
            }
            Err(r) => {
                parsed.push(Err(reject_number(r) as u32));
                hour.append_null();
            }
        }
    }
    // Song keys to artist keys, each lookup's slot prefetched 8 plays before.
    const AHEAD: usize = 8;
    for p in parsed.iter().take(AHEAD).flatten() {
        coder.songs.prefetch(p.1);
    }
    let codes: Vec<u32> = (0..n)
        .map(|j| {
            if let Some(Ok((_, song))) = parsed.get(j + AHEAD) {
                coder.songs.prefetch(*song);
            }
            match parsed[j] {
                Ok((_, song)) => coder.songs.get(song),
                Err(_) => 0,
            }
        })
        .collect();
    let mut pairs = Vec::with_capacity(n);
    {
        let mut users = coder.users.lock().expect("a parse panicked");
        // Plays come in sessions, a user's rows one after another: the last
        // user's number is kept, so most rows need no table lookup (the
        // table misses the cache, and the lock serialises the partitions).
        // Otherwise each lookup's slot is prefetched 8 plays before.
        let mut last: Option<(u128, u32)> = None;
        for p in parsed.iter().take(AHEAD).flatten() {
            users.prefetch(p.0);
        }
        for (j, code) in codes.into_iter().enumerate() {
            if let Some(Ok((user, _))) = parsed.get(j + AHEAD) {
                users.prefetch(*user);
            }
            pairs.push(match parsed[j] {
                Ok((user, _)) => {
                    let number = match last {
                        Some((u, n)) if u == user => n,
                        _ => {
                            let n = users.number(user);
                            last = Some((user, n));
                            n
                        }
                    };
                    ((number as u64) << 32) | code as u64
                }
                Err(reject) => ((REJECTED as u64) << 32) | reject as u64,
            });
        }
        if users.len() as u64 >= REJECTED as u64 {
            return Err(datafusion::error::DataFusionError::Execution(format!(
                "more than {} distinct users: too many for one embedded ingest; use a cluster (--engine)",
                REJECTED - 1
            )));
        }
    }
    let columns: Vec<ArrayRef> = vec![Arc::new(UInt64Array::from(pairs)), Arc::new(hour.finish())];
    Ok(Arc::new(StructArray::try_new(pair_fields(), columns, None)?))
}

thread_local! {
    /// The last batch `cc_pair` coded on this thread: (input, output).
    static LAST_PAIRS: std::cell::RefCell<Option<(ArrayRef, ArrayRef)>> = const { std::cell::RefCell::new(None) };
}

/// The UDF `cc_pair(line)` of one embedded ingest (it holds that ingest's
/// song map and user numbering), with `cc_play`'s per-thread reuse of the
/// last batch (each struct field is pushed down as its own call).
fn pair_udf(coder: Arc<PairCoder>) -> datafusion::logical_expr::ScalarUDF {
    let fun = move |args: &[ColumnarValue]| -> datafusion::error::Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(args)?;
        Ok(ColumnarValue::Array(memoized(&LAST_PAIRS, &arrays[0], |input| parse_pairs(&coder, input))?))
    };
    create_udf("cc_pair", vec![DataType::Utf8], DataType::Struct(pair_fields()), Volatility::Immutable, Arc::new(fun))
}

type Plan = Arc<dyn datafusion::physical_plan::ExecutionPlan>;

/// Runs `sql` and hands every result batch to `each`.
async fn stream_sql(
    ctx: &SessionContext,
    sql: &str,
    context: &str,
    mut each: impl FnMut(&RecordBatch) -> Result<()>,
) -> Result<Plan> {
    let df = ctx.sql(sql).await.map_err(|e| IoError::engine(context, e))?;
    let plan = df.create_physical_plan().await.map_err(|e| IoError::engine(context, e))?;
    let mut stream = datafusion::physical_plan::execute_stream(plan.clone(), ctx.task_ctx())
        .map_err(|e| IoError::engine(context, e))?;
    while let Some(batch) = stream.next().await {
        each(&batch.map_err(|e| IoError::engine(context, e))?)?;
    }
    Ok(plan)
}

/// The embedded plan: DataFusion scans and parses (`cc_pair`), and the
/// client sums the plays per pair key in a [`PairSums`] within
/// `memory_limit` bytes; also what it spilled. With the clickstream's
/// `text_bytes` (CSV files), the sums are told the share of them parsed,
/// so their table grows once to the size the whole input needs instead
/// of doubling step by step.
async fn aggregate_embedded(
    ctx: &SessionContext,
    coder: Arc<PairCoder>,
    memory_limit: usize,
    text_bytes: Option<u64>,
    context: &str,
) -> Result<(Aggregate, Plan, Spilled)> {
    ctx.register_udf(pair_udf(coder.clone()));
    let sql = "SELECT cc_pair(line) AS p FROM clickstream_lines";
    let mut agg = Aggregate::default();
    let mut sums = PairSums::new(memory_limit);
    let mut keys: Vec<u64> = Vec::new();
    // Which codes (artists or groups) have a usable play.
    let mut codes = vec![false; coder.artists as usize + coder.groups.len()];
    let plan = stream_sql(ctx, sql, context, |batch| {
        let p = batch.column(0).as_struct();
        let pair = cast(p.column(0), &DataType::UInt64).map_err(|e| IoError::engine(context, e.into()))?;
        let pair = pair.as_primitive::<UInt64Type>();
        let hour = cast(p.column(1), &DataType::UInt32).map_err(|e| IoError::engine(context, e.into()))?;
        let hour = hour.as_primitive::<UInt32Type>();
        keys.clear();
        agg.rows_read += batch.num_rows() as u64;
        if let Some(total) = text_bytes.filter(|&t| t > 0) {
            // The partitions parse a batch or two ahead of this one.
            let parsed = coder.bytes_parsed.load(std::sync::atomic::Ordering::Relaxed);
            sums.set_read(parsed as f64 / total as f64);
        }
        for i in 0..batch.num_rows() {
            let key = pair.value(i);
            let (u, code) = ((key >> 32) as u32, key as u32);
            if u == REJECTED {
                agg.rejected[code as usize - 1] += 1;
            } else if code == UNKNOWN_SONG {
                agg.unknown_plays += 1;
            } else {
                agg.usable_at(u, hour.value(i));
                codes[code as usize] = true;
                keys.push(key);
            }
        }
        sums.add_all(&keys)
    })
    .await?;
    ctx.deregister_udf("cc_pair");
    agg.users = std::mem::take(&mut *coder.users.lock().expect("a parse panicked")).into_keys();
    let spilled = match sums.into_memory() {
        Ok(counts) => {
            let mut played = vec![false; coder.artists as usize];
            for code in (0..codes.len() as u32).filter(|&c| codes[c as usize]) {
                for &a in coder.artists_of(&code) {
                    played[a as usize] = true;
                }
            }
            // Packed first: what the empty slots held serves the matrix.
            agg.pairs = Pairs::Table { counts: counts.into_packed(), coder, played };
            Spilled::default()
        }
        // A key's code is an artist, or a group of a song's artists: one
        // triplet for each.
        Err(sums) => {
            let mut triplets = Vec::new();
            let spilled = sums.finish(|key, count| {
                let u = (key >> 32) as u32;
                triplets.extend(coder.artists_of(&(key as u32)).iter().map(|&a| (u, a, count as f32)));
            })?;
            agg.pairs = Pairs::Triplets(triplets);
            spilled
        }
    };
    Ok((agg, plan, spilled))
}

/// The plan a cluster runs: `cc_play` keys joined to the songs table and
/// grouped by (user, artist); no state is shared between executors.
async fn aggregate_joined(ctx: &SessionContext, offset_minutes: i32, context: &str) -> Result<(Aggregate, Plan)> {
    let sql = format!(
        "WITH plays AS ( \
          SELECT p['reject'] AS reject, p['user_hi'] AS user_hi, p['user_lo'] AS user_lo, p['song_key'] AS song_key, \
                 p['hour_bit'] AS hour_bit \
          FROM (SELECT cc_play(line, CAST({offset_minutes} AS INT)) AS p FROM clickstream_lines) c) \
        SELECT p.user_hi, p.user_lo, COALESCE(s.artist, -1 - CAST(p.reject AS BIGINT)) AS artist, count(*) AS plays, \
               sum(CASE WHEN s.rep IS NULL OR s.rep THEN 1 ELSE 0 END) AS play_rows, bit_or(p.hour_bit) AS hours \
        FROM songs s RIGHT JOIN plays p ON p.song_key = s.song_key \
        GROUP BY 1, 2, 3"
    );
    let mut agg = Aggregate::default();
    let mut triplets = Vec::new();
    let mut index: HashMap<u128, u32, KeyHash> = HashMap::default();
    let plan = stream_sql(ctx, &sql, context, |batch| {
        let hi = cast(batch.column(0), &DataType::UInt64).map_err(|e| IoError::engine(context, e.into()))?;
        let hi = hi.as_primitive::<UInt64Type>();
        let lo = cast(batch.column(1), &DataType::UInt64).map_err(|e| IoError::engine(context, e.into()))?;
        let lo = lo.as_primitive::<UInt64Type>();
        let (artist, n, rows) = (ints(batch.column(2))?, ints(batch.column(3))?, ints(batch.column(4))?);
        let mask = ints(batch.column(5))?;
        for i in 0..batch.num_rows() {
            let count = n.value(i) as u64;
            // A play of a song with k artists is k groups' worth of
            // `plays` but one row, counted where its artist is the song's
            // representative (the smallest artist id).
            agg.rows_read += rows.value(i) as u64;
            // The third key is the artist (>= 0), an unknown song (-1), or
            // a rejected row (-1 - its `cc_play` reject number): one key
            // column fewer to hash and compare for every play.
            let a = artist.value(i);
            if a < -1 {
                agg.rejected[(-1 - a) as usize - 1] += count;
                continue;
            }
            let user = ((hi.value(i) as u128) << 64) | lo.value(i) as u128;
            let next = index.len() as u32;
            let u = *index.entry(user).or_insert(next);
            if u == next {
                agg.users.push(user);
            }
            if a == -1 {
                agg.unknown_plays += count;
            } else {
                agg.usable_at(u, mask.value(i) as u32);
                triplets.push((u, a as u32, count as f32));
            }
        }
        Ok(())
    })
    .await?;
    agg.pairs = Pairs::Triplets(triplets);
    Ok((agg, plan))
}

/// Spill files and bytes over every operator of an executed plan.
fn spills(plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> (usize, u64) {
    let own = plan.metrics().map(|m| (m.spill_count().unwrap_or(0), m.spilled_bytes().unwrap_or(0) as u64));
    plan.children().into_iter().map(spills).fold(own.unwrap_or((0, 0)), |(f, b), (cf, cb)| (f + cf, b + cb))
}

/// Runs the whole ingest on the embedded engine.
pub fn ingest(paths: &InputPaths, opts: &IngestOptions) -> Result<Ingested> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.partitions.max(1))
        .enable_all()
        .build()
        .map_err(|e| IoError::io("<tokio runtime>", e))?;
    rt.block_on(ingest_async(paths, opts, false))
}

/// Resolves and sniffs every given input, before any work starts.
pub async fn resolve_all(paths: &InputPaths, stores: &Stores) -> Result<Vec<InputFiles>> {
    let mut out = Vec::new();
    for input in Input::ALL {
        match paths.get(input) {
            Some(spec) => {
                let files = resolve(input, spec, stores).await?;
                sniff(&files, stores).await?;
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

/// `joined`: the cluster's plan on the embedded engine (for tests).
async fn ingest_async(paths: &InputPaths, opts: &IngestOptions, joined: bool) -> Result<Ingested> {
    let clock = std::time::Instant::now();
    let lap = |what: &str| tracing::info!(seconds = clock.elapsed().as_secs_f64(), "ingest: {what}");
    let stores = Arc::new(Stores::new(opts.s3.clone()));
    let all = resolve_all(paths, &stores).await?;
    if opts.cluster.is_some() {
        if let Some((f, path)) =
            all.iter().find_map(|f| f.files.iter().find(|p| crate::lines::is_gzip(p)).map(|p| (f, p)))
        {
            return Err(IoError::NotTheLayout {
                input: f.input.name().into(),
                path: path.into(),
                layout: f.input.layout().into(),
                detail: "gzip files are read by the embedded engine only; decompress them for a cluster".into(),
            });
        }
    }
    // Errors name the input and where it was read from.
    let meta = |what: &str| format!("metadata ({}): {what}", paths.metadata.as_deref().unwrap_or_default());
    let partitions = opts.effective_partitions();
    if partitions < opts.partitions {
        tracing::info!(
            asked = opts.partitions,
            partitions,
            memory_mb = opts.memory_limit >> 20,
            "ingest: fewer partitions, so each has its share of the memory pool"
        );
    }
    let ctx = match &opts.cluster {
        None => session(partitions, opts.memory_limit, stores.clone())?,
        Some(url) => crate::cluster::client_session(url, partitions, stores.clone()).await?,
    };
    let mut report = IngestReport { utc_offset_minutes: opts.utc_offset_minutes, ..IngestReport::default() };
    report.engine.cluster = opts.cluster.clone();
    report.engine.partitions = partitions;
    report.engine.memory_limit = opts.memory_limit;
    for files in &all {
        register_lines(&ctx, files, opts.cluster.is_none()).await?;
        report.inputs.insert(files.input.name().into(), InputReport { files: files.files.len(), ..Default::default() });
    }

    // Metadata: reject counts and songs.
    let meta_sql =
        "SELECT cc_reject_metadata(line) AS reject, count(*) AS n, count(DISTINCT split_part(line, ',', 1)) AS songs \
                    FROM metadata_lines GROUP BY 1";
    {
        let r = report.inputs.get_mut("metadata").expect("registered");
        for batch in collect(&ctx, meta_sql, &meta("parsing")).await? {
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

    // Clickstream: one scan, one join, one aggregation, all keys integers.
    // Artists are numbered in id order (dense_rank), so the client maps
    // them back from one small query.
    let artists_sql = "WITH pairs AS ( \
          SELECT DISTINCT song_id, artist_id FROM ( \
            SELECT split_part(line, ',', 1) AS song_id, \
                   unnest(string_to_array(rtrim(substr(line, strpos(line, ',') + 1), chr(13)), ',')) AS artist_id \
            FROM metadata_lines WHERE cc_reject_metadata(line) IS NULL) s \
          WHERE artist_id <> '') \
        SELECT song_id, cc_song_key(song_id) AS song_key, artist_id, \
               CAST(dense_rank() OVER (ORDER BY artist_id) - 1 AS BIGINT) AS artist, \
               artist_id = min(artist_id) OVER (PARTITION BY song_id) AS rep \
        FROM pairs";
    // Materialised once: the key check, the artist list and the join all
    // read it. A memory table cannot travel to a cluster's executors: there
    // it stays a view, planned three times (it is small).
    let songs = ctx.sql(artists_sql).await.map_err(|e| IoError::engine(meta("numbering artists"), e))?;
    let songs = match opts.cluster {
        None => songs.cache().await.map_err(|e| IoError::engine(meta("numbering artists"), e))?,
        Some(_) => songs,
    };
    ctx.register_table("songs", songs.into_view()).map_err(|e| IoError::engine(meta("numbering artists"), e))?;
    let keys_sql = "SELECT count(DISTINCT song_id), count(DISTINCT song_key) FROM songs";
    for batch in collect(&ctx, keys_sql, &meta("song keys")).await? {
        let (ids, keys) = (ints(batch.column(0))?, ints(batch.column(1))?);
        if ids.value(0) != keys.value(0) {
            return Err(IoError::engine(
                meta("song keys"),
                datafusion::error::DataFusionError::Execution(format!(
                    "{} song ids hash to {} keys: two song ids share a 64-bit key; rename one",
                    ids.value(0),
                    keys.value(0)
                )),
            ));
        }
    }
    // One read of the song table gives both the (song, artist) list the
    // serve API folds plays in with and the artist ids by rank.
    let mut songs_list: Vec<(String, String)> = Vec::new();
    let mut song_ranks: Vec<(u64, u32)> = Vec::new();
    let mut by_rank: Vec<Option<String>> = Vec::new();
    for batch in collect(&ctx, "SELECT song_id, artist_id, artist, song_key FROM songs", &meta("artists")).await? {
        let (song, id, rank) = (strings(batch.column(0))?, strings(batch.column(1))?, ints(batch.column(2))?);
        let key = cast(batch.column(3), &DataType::UInt64).map_err(|e| IoError::engine(meta("artists"), e.into()))?;
        let key = key.as_primitive::<UInt64Type>();
        for i in 0..batch.num_rows() {
            song_ranks.push((key.value(i), rank.value(i) as u32));
            let r = rank.value(i) as usize;
            if by_rank.len() <= r {
                by_rank.resize(r + 1, None);
            }
            by_rank[r].get_or_insert_with(|| id.value(i).to_string());
            songs_list.push((song.value(i).to_string(), id.value(i).to_string()));
        }
    }
    songs_list.sort_unstable();
    // dense_rank numbers every artist of the table: no rank is missing.
    let mut all_artists: Vec<String> = by_rank.into_iter().map(|a| a.expect("dense ranks")).collect();
    lap("inputs resolved and metadata counted");
    let context =
        &format!("clickstream ({}): parsing and aggregating plays", paths.clickstream.as_deref().unwrap_or_default());
    let (agg, plan, spilled) = match opts.cluster {
        None if !joined => {
            let coder = PairCoder::new(&song_ranks, all_artists.len(), opts.utc_offset_minutes);
            let plays = all.iter().find(|f| f.input == Input::Clickstream).expect("the clickstream is required");
            let text_bytes = (plays.encoding == Encoding::Csv).then(|| plays.sizes.iter().sum());
            aggregate_embedded(&ctx, coder, opts.memory_limit, text_bytes, context).await?
        }
        _ => {
            let (agg, plan) = aggregate_joined(&ctx, opts.utc_offset_minutes, context).await?;
            (agg, plan, Spilled::default())
        }
    };
    lap("clickstream scanned and aggregated");
    let (files, bytes) = spills(&plan);
    (report.engine.spill_files, report.engine.spilled_bytes) = (files + spilled.files, bytes + spilled.bytes);
    {
        let r = report.inputs.get_mut("clickstream").expect("registered");
        r.rows = agg.rows_read;
        for (reason, n) in Reject::ALL.iter().zip(agg.rejected) {
            if n > 0 {
                r.rejected.insert(reason.code().to_string(), n);
            }
        }
    }
    // The notifications and clicks are read by the runtime's workers while
    // this thread maps the pairs, mostly one thread's work (on the medium
    // set 0.45 s of reading beside 0.65 s of mapping, one after the other
    // before). They are then held at the mapping's peak: at full scale
    // (4.86 M clicks) the peak RSS rose by 0.66 GB, to 8.0 GiB.
    let side = tokio::spawn(read_side_inputs(
        ctx.clone(),
        paths.notification_actor.clone().unwrap_or_default(),
        paths.notification_clicks.clone(),
    ));
    let Aggregate { users: seen, mut usable, mut masks, pairs, unknown_plays, .. } = agg;
    // Users whose last rows were unusable were never sized in.
    usable.resize(seen.len(), false);
    masks.resize(seen.len(), 0);
    // Renumber users and artists in id order (sorted keys are sorted
    // lowercase ids), keeping only users and artists with a usable play.
    let mut keys: Vec<(u128, u32)> =
        seen.iter().enumerate().filter(|&(u, _)| usable[u]).map(|(u, k)| (*k, u as u32)).collect();
    keys.sort_unstable();
    let mut user_remap = vec![u32::MAX; seen.len()];
    for (sorted, (_, provisional)) in keys.iter().enumerate() {
        user_remap[*provisional as usize] = sorted as u32;
    }
    let mut artist_remap = vec![u32::MAX; all_artists.len()];
    let mut artists: Vec<String> = Vec::new();
    for (i, played) in pairs.artists_played(all_artists.len()).into_iter().enumerate() {
        if played {
            artist_remap[i] = artists.len() as u32;
            artists.push(std::mem::take(&mut all_artists[i]));
        }
    }
    let mut active_hours = vec![0u32; keys.len()];
    for (provisional, mask) in masks.into_iter().enumerate() {
        if let Some(slot) = active_hours.get_mut(user_remap[provisional] as usize) {
            *slot = mask;
        }
    }
    let plays = pairs.into_matrix(keys.len(), artists.len(), &user_remap, &artist_remap)?;
    drop(user_remap);
    tracing::info!(pairs = plays.nnz(), "ingest: the pairs in the play matrix");
    let users: Vec<String> = keys.iter().map(|(k, _)| saavn::user_id(*k)).collect();
    drop(keys);
    let artist_index: HashMap<&str, u32> = artists.iter().enumerate().map(|(i, a)| (a.as_str(), i as u32)).collect();
    lap("pairs mapped to indices");
    report.plays_unknown_song = unknown_plays;
    {
        let r = &report.inputs["clickstream"];
        report.plays = r.rows - r.rejected_total();
    }
    report.users_seen = seen.len();
    report.users_without_usable_plays = seen.len() - users.len();
    report.user_artist_pairs = plays.nnz();

    // Notifications.
    let (mut actor, rows, clicks) = match side.await {
        Ok(read) => read?,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    let notifications = RawNotification::group(rows);
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
    let clicks = clicks.map(|(mut r, c)| {
        let entry = report.inputs.get_mut("notification_clicks").expect("registered");
        r.files = entry.files;
        *entry = r;
        report.clicks = c.len();
        c
    });

    lap("notifications and clicks read");
    // Examples of rejected rows, with file and line.
    for files in &all {
        let r = report.inputs.get_mut(files.input.name()).expect("registered");
        if r.rejected_total() > 0 && opts.max_examples > 0 {
            r.examples = find_examples(files, opts.max_examples, &stores).await?;
        }
    }
    lap("reject examples found");
    Ok(Ingested { users, artists, plays, active_hours, notifications, clicks, songs: songs_list, report })
}

#[cfg(test)]
mod tests {
    use super::*;

    const U1: &str = "0123456789abcdef0123456789abcdef";
    const U2: &str = "fedcba9876543210fedcba9876543210";
    const U3: &str = "00000000000000000000000000000003";

    fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("part-00000"), text).unwrap();
        d.to_string_lossy().into_owned()
    }

    #[test]
    fn every_bad_row_kind_is_counted_with_file_and_line_and_both_metadata_layouts_join() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let clicks = [
            format!("{U1},1500000000,s1,20170714"),   // good: s1 → a1
            format!("{U1},1500000100,s2,20170714"),   // good: s2 → a1, a2 (columns layout)
            format!("{U1},1500000200,s3,20170714\r"), // good, CRLF: s3 → a2, a3 (rows layout)
            format!("{U2},1500000300,s3,20170714"),
            format!("{U1},1500000400,s1"),            // line 5: wrong field count
            ",1500000500,s1,20170714".to_string(),    // line 6: empty user id
            format!("{U2},notatime,s1,20170714"),     // line 7: bad timestamp
            format!("{U2},1500000600,,20170714"),     // line 8: empty song id
            format!("{U2},1500000700,s1,2017-07-14"), // line 9: bad date
            format!("{U3},1500000800,s404,20170714"), // unknown song: U3 has no usable plays
            format!("{U2},1500000900,s1,20170714,x"), // line 11: wrong field count
        ];
        // Mostly good rows, as real files are (a file of mostly bad rows is
        // refused before any work: see `inputs::sniff`).
        let clicks: Vec<String> =
            clicks.into_iter().chain((0..8).map(|i| format!("{U2},{},s1,20170715", 1500001000 + i))).collect();
        let paths = InputPaths {
            clickstream: Some(write(d, "clickstream", &(clicks.join("\n") + "\n"))),
            metadata: Some(write(d, "metadata", "s1,a1\ns2,a1,a2\ns3,a2\ns3,a3\ns3,a3\ns9\n")),
            notification_actor: Some(write(d, "notification_actor", "n1,a1\nn2,a3\nn2,a9\n,a1\n")),
            notification_clicks: Some(write(
                d,
                "notification_clicks",
                format!("n1,{U1},20170715\nn1,{U1},20170716\nn2,{U2},x\n").as_str(),
            )),
        };
        let ing = ingest(&paths, &IngestOptions { partitions: 2, max_examples: 10, ..Default::default() }).unwrap();
        let r = &ing.report;
        let cs = &r.inputs["clickstream"];
        assert_eq!(cs.rows, 19);
        let want: BTreeMap<String, u64> = [
            ("wrong_field_count", 2),
            ("empty_user_id", 1),
            ("bad_timestamp", 1),
            ("empty_song_id", 1),
            ("bad_date", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(cs.rejected, want);
        let lines: Vec<u64> = cs.examples.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![5, 6, 7, 8, 9, 11]);
        assert!(cs.examples[2].to_string().contains("timestamp `notatime` is not Unix seconds from 1970 to 9999"));
        assert!(cs.examples[0].file.ends_with("clickstream/part-00000"));
        assert_eq!(r.plays, 13);
        assert_eq!(r.plays_unknown_song, 1);
        assert_eq!(r.users_without_usable_plays, 1);
        assert_eq!(r.users_seen, 3);
        assert_eq!(r.inputs["metadata"].rejected["wrong_field_count"], 1);
        assert_eq!(r.songs, 3);
        // Play counts: a play of a multi-artist song counts for each artist.
        assert_eq!(ing.users, vec![U1.to_string(), U2.to_string()]);
        assert_eq!(ing.artists, vec!["a1", "a2", "a3"]);
        let row = |u: usize| -> Vec<(u32, f32)> {
            let (i, v) = ing.plays.row(u);
            i.iter().copied().zip(v.iter().copied()).collect()
        };
        assert_eq!(row(0), vec![(0, 2.0), (1, 2.0), (2, 1.0)]);
        assert_eq!(row(1), vec![(0, 8.0), (1, 1.0), (2, 1.0)]);
        // Notifications: n2 names a3 and a9 (nobody plays a9); one row lacks an id.
        assert_eq!(ing.notifications.len(), 2);
        assert_eq!(ing.notifications[1].artists, vec!["a3", "a9"]);
        assert_eq!(r.notification_artists_unplayed, 1);
        assert_eq!(r.inputs["notification_actor"].rejected["empty_notification_id"], 1);
        // Clicks: the same user twice counts once; a bad date is rejected.
        assert_eq!(ing.clicks.as_ref().unwrap(), &vec![("n1".to_string(), U1.to_string())]);
        assert_eq!(r.inputs["notification_clicks"].rejected["bad_date"], 1);
    }

    #[test]
    fn the_cluster_plan_gives_the_embedded_plans_pairs_hours_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Multi-artist songs in both layouts, a user reaching an artist
        // alone and through a shared song, unknown songs, rejects.
        let mut plays = Vec::new();
        for (i, (u, s)) in
            [(U1, "s1"), (U1, "s2"), (U1, "s3"), (U2, "s3"), (U2, "s4"), (U3, "s404"), (U2, "s2"), (U1, "s4")]
                .iter()
                .enumerate()
        {
            for k in 0..=i {
                plays.push(format!("{u},{},{s},20170101", 1_483_228_800 + 3_000 * (i * 3 + k) as i64));
            }
        }
        plays.push(format!("{U1},x,s1,20170101"));
        let paths = InputPaths {
            clickstream: Some(write(d, "clickstream", &(plays.join("\n") + "\n"))),
            metadata: Some(write(d, "metadata", "s1,a1\ns2,a1,a2\ns3,a2\ns3,a3\ns4,a3,a2,a1\n")),
            notification_actor: Some(write(d, "notification_actor", "n1,a2\n")),
            notification_clicks: None,
        };
        let opts = IngestOptions { partitions: 2, utc_offset_minutes: -90, ..Default::default() };
        let rt = tokio::runtime::Runtime::new().unwrap();
        let embedded = rt.block_on(ingest_async(&paths, &opts, false)).unwrap();
        let joined = rt.block_on(ingest_async(&paths, &opts, true)).unwrap();
        assert_eq!(embedded.users, joined.users);
        assert_eq!(embedded.artists, joined.artists);
        for u in 0..embedded.users.len() {
            assert_eq!(embedded.plays.row(u), joined.plays.row(u), "user {u}");
        }
        assert_eq!(embedded.active_hours, joined.active_hours);
        let (mut a, mut b) = (embedded.report.clone(), joined.report.clone());
        a.engine = EngineReport::default();
        b.engine = EngineReport::default();
        assert_eq!(a, b);
        // U1: s1 ×1, s2 ×2 (a1, a2), s3 ×3 (a2, a3), s4 ×8 (a1, a2, a3).
        let u1 = embedded.users.iter().position(|u| u == U1).unwrap();
        let (idx, val) = embedded.plays.row(u1);
        assert_eq!((idx, val), (&[0u32, 1, 2][..], &[11.0f32, 13.0, 11.0][..]));
        assert_eq!(embedded.report.plays_unknown_song, 6);
        assert_eq!(embedded.report.users_without_usable_plays, 1);
        assert_eq!(embedded.report.inputs["clickstream"].rejected["bad_timestamp"], 1);
    }

    #[test]
    fn hours_of_the_day_are_kept_per_user_at_the_offset_asked() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // 2017-01-01T00:00:00Z.
        let t0 = 1_483_228_800i64;
        let at = |h: i64, m: i64| t0 + h * 3_600 + m * 60;
        let mut plays = vec![
            format!("{U1},{},s1,20170101", at(0, 10)),
            format!("{U1},{},s2,20170101", at(5, 50)),
            format!("{U1},{},s1,20170102", at(24, 20)),
            format!("{U2},{},s2,20170101", at(23, 59)),
            // An unknown song's play and a rejected row give no hour.
            format!("{U2},{},s404,20170101", at(12, 0)),
            format!("{U2},{},s1,2017-01-01", at(15, 0)),
        ];
        plays.extend((0..8).map(|i| format!("{U3},{},s1,20170101", at(7, i))));
        let paths = InputPaths {
            clickstream: Some(write(d, "clickstream", &(plays.join("\n") + "\n"))),
            metadata: Some(write(d, "metadata", "s1,a1\ns2,a2\n")),
            notification_actor: Some(write(d, "notification_actor", "n1,a2\n")),
            notification_clicks: None,
        };
        let utc = ingest(&paths, &IngestOptions { partitions: 2, ..Default::default() }).unwrap();
        assert_eq!(utc.users, vec![U3.to_string(), U1.to_string(), U2.to_string()]);
        assert_eq!(utc.active_hours, vec![1 << 7, 1 << 0 | 1 << 5, 1 << 23]);
        assert_eq!(utc.report.utc_offset_minutes, 0);
        // India: 00:10Z is 05:40, 05:50Z is 11:20, 23:59Z is 05:29.
        let ist =
            ingest(&paths, &IngestOptions { partitions: 2, utc_offset_minutes: 330, ..Default::default() }).unwrap();
        assert_eq!(ist.active_hours, vec![1 << 12, 1 << 5 | 1 << 11, 1 << 5]);
        assert_eq!(ist.report.utc_offset_minutes, 330);
        // Kept through the ingest folder.
        let out = d.join("out");
        std::fs::create_dir_all(&out).unwrap();
        crate::stages::save_ingested(&out, &ist).unwrap();
        let back = crate::stages::load_ingested(&out).unwrap();
        assert_eq!(back.active_hours, ist.active_hours);
        assert_eq!(back.report.utc_offset_minutes, 330);
    }

    #[test]
    fn the_user_table_numbers_users_in_order_of_first_sight_through_growth() {
        // 5 000 users seen twice each, in two orders, from a table of
        // 1 024 slots: numbers follow first sight and survive the doublings.
        let key = |i: u128| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) ^ (i << 100);
        let mut t = UserTable::default();
        for i in 0..5000u128 {
            assert_eq!(t.number(key(i)), i as u32);
            t.prefetch(key(i + 1));
        }
        for i in (0..5000u128).rev() {
            assert_eq!(t.number(key(i)), i as u32, "user {i} seen again");
        }
        assert_eq!(key(0), 0, "key 0 is a user like any other");
        assert_eq!(t.number(u128::MAX), 5000);
        assert_eq!(t.len(), 5001);
        assert!(t.slots.len() >= 2 * t.len());
        let keys = t.into_keys();
        assert_eq!(keys.len(), 5001);
        assert!((0..5000u128).all(|i| keys[i as usize] == key(i)) && keys[5000] == u128::MAX);
    }

    #[test]
    fn the_song_table_finds_every_song_and_no_other() {
        // Keys of every kind, 0 and u64::MAX among them, crowded so that
        // probes run on and wrap past the end of the slots.
        let mut map: HashMap<u64, u32, KeyHash> = HashMap::default();
        for i in 0..4000u64 {
            map.insert(saavn::mix64(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)), i as u32);
        }
        map.insert(0, 4000);
        map.insert(u64::MAX, 4001);
        // Three more whose probes start at the last of the 8 192 slots.
        let last: Vec<u64> = (1u64..).filter(|&k| saavn::mix64(k) & 8191 == 8191).take(3).collect();
        for (n, &k) in last.iter().enumerate() {
            map.insert(k, 4002 + n as u32);
        }
        let t = SongTable::new(&map);
        assert_eq!(t.slots.len(), 8192);
        // Some probe runs through the last slot and on from the first.
        let wrapped = map.keys().filter(|&&k| {
            let at = (0..t.slots.len()).find(|&i| t.slots[i].0 == k && t.slots[i].1 != EMPTY_SLOT).unwrap();
            at < t.home(k)
        });
        assert!(wrapped.count() > 0, "the keys should crowd the end of the table");
        for (&k, &code) in &map {
            t.prefetch(k);
            assert_eq!(t.get(k), code, "song key {k:#x}");
        }
        let absent = (1..=3000u64).map(|i| saavn::mix64(i ^ 0x5555)).filter(|k| !map.contains_key(k));
        assert!(absent.map(|k| t.get(k)).all(|c| c == UNKNOWN_SONG));
    }

    #[test]
    fn clicks_come_sorted_as_strings_lowercase_and_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (u1, u2) = (U2.to_string(), U1.to_string());
        // The second user sorts first as a number and as a string; "n10"
        // sorts before "n2" as a string though not as a number.
        assert!(u2 < u1);
        let clicks = [
            format!("n2,{u1},20170102"),
            format!("n10,{},20170102", u1.to_uppercase()),
            format!("n2,{u2},20170103"),
            format!("n10,{u1},20170104"),
            format!("n2,{},20170105", u1.to_uppercase()),
            "n2,not-a-user,20170105".to_string(),
        ];
        let paths = InputPaths {
            clickstream: Some(write(d, "clickstream", &format!("{U1},1500000000,s1,20170101\n"))),
            metadata: Some(write(d, "metadata", "s1,a1\n")),
            notification_actor: Some(write(d, "notification_actor", "n2,a1\nn10,a1\n")),
            notification_clicks: Some(write(d, "notification_clicks", &(clicks.join("\n") + "\n"))),
        };
        let ing = ingest(&paths, &IngestOptions { partitions: 2, ..Default::default() }).unwrap();
        let want = vec![("n10".to_string(), u1.clone()), ("n2".to_string(), u2), ("n2".to_string(), u1)];
        assert_eq!(ing.clicks.unwrap(), want);
        assert_eq!(ing.report.clicks, 3);
        assert_eq!(ing.report.inputs["notification_clicks"].rejected["bad_user_id"], 1);
    }

    #[test]
    fn user_ids_are_keys_whatever_their_case_and_other_ids_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let upper = U1.to_uppercase();
        let mut plays: Vec<String> = (0..10).map(|i| format!("{U1},{},s1,20170101", 1500000000 + i)).collect();
        plays.push(format!("{upper},1500000100,s2,20170101"));
        plays.push("user-1,1500000200,s1,20170101".to_string());
        let paths = InputPaths {
            clickstream: Some(write(d, "clickstream", &(plays.join("\n") + "\n"))),
            metadata: Some(write(d, "metadata", "s1,a1\ns2,a2\n")),
            notification_actor: Some(write(d, "notification_actor", "n1,a2\n")),
            notification_clicks: Some(write(d, "notification_clicks", &format!("n1,{upper},20170102\n"))),
        };
        let ing = ingest(&paths, &IngestOptions { partitions: 2, max_examples: 5, ..Default::default() }).unwrap();
        assert_eq!(ing.users, vec![U1.to_string()]);
        let (cols, vals) = ing.plays.row(0);
        assert_eq!((cols, vals), (&[0u32, 1][..], &[10.0f32, 1.0][..]));
        assert_eq!(ing.report.inputs["clickstream"].rejected["bad_user_id"], 1);
        assert!(ing.report.inputs["clickstream"].examples[0].to_string().contains("user_id `user-1` is not 32"));
        assert_eq!(ing.clicks.unwrap(), vec![("n1".to_string(), U1.to_string())]);
    }

    #[test]
    fn parquet_inputs_read_like_csv() {
        use datafusion::arrow::array::{Int64Array, StringArray};
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, true),
            Field::new("timestamp", DataType::Int64, true),
            Field::new("song_id", DataType::Utf8, true),
            Field::new("date", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some(U1), Some(U2), None])),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec!["s1", "s1", "s1"])),
                Arc::new(StringArray::from(vec!["20170101", "20170101", "20170101"])),
            ],
        )
        .unwrap();
        std::fs::create_dir_all(d.join("plays")).unwrap();
        let f = std::fs::File::create(d.join("plays/part-0.parquet")).unwrap();
        let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(f, schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let paths = InputPaths {
            clickstream: Some(d.join("plays").to_string_lossy().into_owned()),
            metadata: Some(write(d, "metadata", "s1,a1\n")),
            notification_actor: Some(write(d, "notification_actor", "n1,a1\n")),
            notification_clicks: None,
        };
        let ing = ingest(&paths, &IngestOptions::default()).unwrap();
        assert_eq!(ing.users.len(), 2);
        assert_eq!(ing.report.inputs["clickstream"].rejected["empty_user_id"], 1);
        assert!(ing.clicks.is_none());
    }
}
