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
//!
//! The parts: [`report`] (what an ingest hands on), [`udf`] (the UDFs a
//! cluster runs too), [`embedded`] (the embedded engine's aggregation) and
//! [`cluster`] (Ballista); this file reads the inputs and runs the plan.

pub mod cluster;
mod embedded;
mod plan;
mod report;
mod udf;

use embedded::*;
use plan::{stream_sql, Plan};
pub use report::*;
pub use udf::udfs;

use std::collections::HashMap;
use std::sync::Arc;

use cohortcast_core::saavn::{self, Input, KeyHash, Reject};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, UInt64Type};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionConfig, SessionContext};

use crate::error::{IoError, Result};
use crate::inputs::{resolve, sniff, Encoding, InputFiles, InputPaths};
use crate::pair_sums::Spilled;
use crate::samples::find_examples;
use crate::store::Stores;

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
        .with_object_store_registry(Arc::new(cluster::Registry::new(stores)))
        .build_arc()
        .map_err(|e| IoError::engine("starting the ingest engine", e))?;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    for f in udfs() {
        ctx.register_udf(f);
    }
    Ok(ctx)
}

pub(crate) fn parquet_columns(input: Input) -> &'static [&'static str] {
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
pub(crate) async fn register_lines(ctx: &SessionContext, files: &InputFiles, embedded: bool) -> Result<()> {
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

pub(crate) async fn collect(ctx: &SessionContext, sql: &str, context: &str) -> Result<Vec<RecordBatch>> {
    let df = ctx.sql(sql).await.map_err(|e| IoError::engine(context, e))?;
    df.collect().await.map_err(|e| IoError::engine(context, e))
}

pub(crate) fn strings(col: &ArrayRef) -> Result<StringArray> {
    let c = cast(col, &DataType::Utf8).map_err(|e| IoError::engine("reading a result column", e.into()))?;
    Ok(c.as_string::<i32>().clone())
}

pub(crate) fn ints(col: &ArrayRef) -> Result<Int64Array> {
    let c = cast(col, &DataType::Int64).map_err(|e| IoError::engine("reading a result column", e.into()))?;
    Ok(c.as_primitive::<datafusion::arrow::datatypes::Int64Type>().clone())
}

/// Counts rows by reject code for a small input and hands the good lines'
/// first two fields to `keep`.
pub(crate) async fn small_input(
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
pub(crate) async fn read_clicks(
    ctx: &SessionContext,
    location: &str,
    report: &mut InputReport,
) -> Result<Vec<(String, String)>> {
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
pub(crate) type SideInputs = (InputReport, Vec<(String, String)>, Option<(InputReport, Vec<(String, String)>)>);

/// Reads notification_actor at `actor` and notification_clicks at
/// `clicks` (owned arguments, so it can run as a task of its own).
pub(crate) async fn read_side_inputs(ctx: SessionContext, actor: String, clicks: Option<String>) -> Result<SideInputs> {
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
        Some(url) => cluster::client_session(url, partitions, stores.clone()).await?,
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
    use std::collections::BTreeMap;

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
