//! A DataFusion file format for line-oriented text: every line of the
//! files is one row of a single `line` column (Utf8), its `\n` and any
//! `\r` before it taken off, empty lines skipped. The ingest's parsers
//! take the fields apart themselves, so the scan only has to find the
//! line ends, which `memchr` does many times faster than a CSV reader's
//! state machine. Reading the four inputs through DataFusion's CSV reader
//! with separators that never occur (0x1F, 0x1E) gave the same rows, but
//! its per-byte state machine (`csv_core::Reader::read_record`) was 14%
//! of an ingest's samples on the medium set.
//!
//! Files are split across partitions by byte ranges like DataFusion's own
//! CSV and JSON scans: a partition reads the lines that start in its
//! range ([`AlignedBoundaryStream`]), so local files and `s3://` objects
//! go through the same object-store reads. A file whose name ends in `.gz`
//! is read whole by one partition through a gzip decoder (several gzip
//! members in a row, as `cat a.gz b.gz` makes, are one text). A cluster's
//! plans keep DataFusion's CSV reader, which Ballista knows how to ship.

use std::fmt;
use std::io::Read;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use cohortcast_core::saavn::{self, RawLine};
use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Statistics};
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl, PartitionedFile,
};
use datafusion::datasource::physical_plan::{FileOpenFuture, FileOpener, FileScanConfig, FileSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::projection::ProjectionExprs;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};
use datafusion_datasource::boundary_stream::AlignedBoundaryStream;
use datafusion_datasource::decoder::{deserialize_stream, Decoder, DecoderDeserializer};
use datafusion_datasource::projection::{ProjectionOpener, SplitProjection};
use futures::{StreamExt, TryStreamExt};
use object_store::{GetOptions, GetResultPayload, ObjectMeta, ObjectStore};

/// Whether a file is read as gzip: its name ends in `.gz`.
pub fn is_gzip(path: &str) -> bool {
    path.ends_with(".gz")
}

/// Bytes read at a time from a local file.
const READ_CHUNK: usize = 1 << 20;

/// The one column every lines table has.
pub fn lines_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, false)]))
}

/// A table of the lines of `paths` (files or `s3://` objects, any
/// extension) in [`LinesFormat`].
pub fn lines_table(paths: &[String]) -> datafusion::common::Result<ListingTable> {
    let urls = paths.iter().map(ListingTableUrl::parse).collect::<datafusion::common::Result<Vec<_>>>()?;
    let options = ListingOptions::new(Arc::new(LinesFormat)).with_file_extension("");
    ListingTable::try_new(
        ListingTableConfig::new_with_multi_paths(urls).with_listing_options(options).with_schema(lines_schema()),
    )
}

/// The format: files of lines, any extension, uncompressed.
#[derive(Debug, Default)]
pub struct LinesFormat;

#[async_trait]
impl FileFormat for LinesFormat {
    fn get_ext(&self) -> String {
        String::new()
    }

    fn get_ext_with_compression(&self, _: &FileCompressionType) -> datafusion::common::Result<String> {
        Ok(String::new())
    }

    fn compression_type(&self) -> Option<FileCompressionType> {
        Some(FileCompressionType::UNCOMPRESSED)
    }

    async fn infer_schema(
        &self,
        _: &dyn Session,
        _: &Arc<dyn ObjectStore>,
        _: &[ObjectMeta],
    ) -> datafusion::common::Result<SchemaRef> {
        Ok(lines_schema())
    }

    async fn infer_stats(
        &self,
        _: &dyn Session,
        _: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        _: &ObjectMeta,
    ) -> datafusion::common::Result<Statistics> {
        Ok(Statistics::new_unknown(&table_schema))
    }

    async fn create_physical_plan(
        &self,
        _: &dyn Session,
        conf: FileScanConfig,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        Ok(DataSourceExec::from_data_source(conf))
    }

    fn file_source(&self, table_schema: TableSchema) -> Arc<dyn FileSource> {
        Arc::new(LinesSource {
            projection: SplitProjection::unprojected(&table_schema),
            table_schema,
            batch_size: None,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

#[derive(Clone)]
struct LinesSource {
    table_schema: TableSchema,
    /// What the plan asked of the `line` column (all of it, or only the
    /// row count), applied by DataFusion's `ProjectionOpener`.
    projection: SplitProjection,
    batch_size: Option<usize>,
    metrics: ExecutionPlanMetricsSet,
}

impl FileSource for LinesSource {
    fn create_file_opener(
        &self,
        store: Arc<dyn ObjectStore>,
        _: &FileScanConfig,
        _: usize,
    ) -> datafusion::common::Result<Arc<dyn FileOpener>> {
        let batch_size = self.batch_size.unwrap_or(8192).max(1);
        let columns = self.projection.file_indices.clone();
        let opener = Arc::new(LinesOpener { store, batch_size, columns });
        ProjectionOpener::try_new(self.projection.clone(), opener, self.table_schema.file_schema())
    }

    fn try_pushdown_projection(
        &self,
        projection: &ProjectionExprs,
    ) -> datafusion::common::Result<Option<Arc<dyn FileSource>>> {
        let merged = self.projection.source.try_merge(projection)?;
        let projection = SplitProjection::new(self.table_schema.file_schema(), &merged);
        Ok(Some(Arc::new(LinesSource { projection, ..self.clone() })))
    }

    fn projection(&self) -> Option<&ProjectionExprs> {
        Some(&self.projection.source)
    }

    fn table_schema(&self) -> &TableSchema {
        &self.table_schema
    }

    fn with_batch_size(&self, batch_size: usize) -> Arc<dyn FileSource> {
        Arc::new(LinesSource { batch_size: Some(batch_size), ..self.clone() })
    }

    fn metrics(&self) -> &ExecutionPlanMetricsSet {
        &self.metrics
    }

    fn file_type(&self) -> &str {
        "lines"
    }

    /// The projection's expressions (the scan applies no filter).
    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::common::Result<TreeNodeRecursion>,
    ) -> datafusion::common::Result<TreeNodeRecursion> {
        datafusion::physical_plan::apply_expression_roots(self.projection.source.iter(), f)
    }
}

struct LinesOpener {
    store: Arc<dyn ObjectStore>,
    batch_size: usize,
    /// The file columns the plan reads (none when it only counts rows).
    columns: Vec<usize>,
}

impl FileOpener for LinesOpener {
    /// A partition's lines: with a byte range, those that start inside it
    /// (the range's first partial line belongs to the partition before;
    /// its last line is read to its end); else the whole file.
    fn open(&self, file: PartitionedFile) -> datafusion::common::Result<FileOpenFuture> {
        let (store, batch_size, columns) = (self.store.clone(), self.batch_size, self.columns.clone());
        Ok(Box::pin(async move {
            let (size, location) = (file.object_meta.size, file.object_meta.location.clone());
            let bytes = if is_gzip(location.as_ref()) {
                // A compressed file cannot be cut: the partition whose
                // range starts it reads it all, the others nothing.
                if file.range.as_ref().is_some_and(|r| r.start != 0) {
                    futures::stream::empty().boxed()
                } else {
                    let raw = store.get_opts(&location, GetOptions::default()).await?.into_stream();
                    let reader = tokio_util::io::StreamReader::new(raw.map_err(std::io::Error::other));
                    let mut gz = async_compression::tokio::bufread::GzipDecoder::new(reader);
                    gz.multiple_members(true);
                    let name = location.to_string();
                    tokio_util::io::ReaderStream::with_capacity(gz, READ_CHUNK)
                        .map_err(move |e| DataFusionError::External(format!("reading {name} as gzip: {e}").into()))
                        .boxed()
                }
            } else if let Some(range) = &file.range {
                let bad = |v: i64| DataFusionError::Execution(format!("byte range bound {v} is negative"));
                let start = u64::try_from(range.start).map_err(|_| bad(range.start))?;
                let end = u64::try_from(range.end).map_err(|_| bad(range.end))?;
                AlignedBoundaryStream::new(store, location, start, end, size, b'\n')
                    .await?
                    .map_err(DataFusionError::from)
                    .boxed()
            } else {
                match store.get_opts(&location, GetOptions::default()).await?.payload {
                    // Large reads straight from the file, instead of the
                    // store's 8 KiB chunks.
                    GetResultPayload::File(mut f, path) => futures::stream::iter(std::iter::from_fn(move || {
                        let mut chunk = vec![0u8; READ_CHUNK];
                        match f.read(&mut chunk) {
                            Ok(0) => None,
                            Ok(n) => {
                                chunk.truncate(n);
                                Some(Ok(Bytes::from(chunk)))
                            }
                            Err(e) => {
                                Some(Err(DataFusionError::External(format!("reading {}: {e}", path.display()).into())))
                            }
                        }
                    }))
                    .boxed(),
                    GetResultPayload::Stream(s) => s.map_err(DataFusionError::from).boxed(),
                }
            };
            let decoder = DecoderDeserializer::new(LinesDecoder::new(batch_size));
            Ok(deserialize_stream(bytes.fuse(), decoder).map(move |b| Ok(b?.project(&columns)?)).boxed())
        }))
    }
}

/// Cuts bytes into lines, `batch_size` to a batch. `values` holds the
/// batch's lines end to end (`offsets` marks them), then the start of a
/// line whose end has not come yet.
struct LinesDecoder {
    batch_size: usize,
    values: Vec<u8>,
    offsets: Vec<i32>,
}

impl fmt::Debug for LinesDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinesDecoder").field("lines", &self.lines()).field("bytes", &self.values.len()).finish()
    }
}

impl LinesDecoder {
    fn new(batch_size: usize) -> Self {
        LinesDecoder { batch_size, values: Vec::new(), offsets: vec![0] }
    }

    fn lines(&self) -> usize {
        self.offsets.len() - 1
    }

    fn last_end(&self) -> usize {
        self.offsets[self.offsets.len() - 1] as usize
    }

    /// Ends the line that `values` holds after the last one; an empty
    /// line is dropped.
    fn end_line(&mut self) -> Result<(), ArrowError> {
        let start = self.last_end();
        if self.values.len() > start && self.values[self.values.len() - 1] == b'\r' {
            self.values.pop();
        }
        if self.values.len() == start {
            return Ok(());
        }
        let end = i32::try_from(self.values.len())
            .map_err(|_| ArrowError::ParseError("a batch of lines holds more than 2 GiB of text".into()))?;
        self.offsets.push(end);
        Ok(())
    }
}

impl Decoder for LinesDecoder {
    /// Takes lines from `buf` until the batch is full; an empty `buf` is
    /// the end of the input, which ends the last line.
    fn decode(&mut self, buf: &[u8]) -> Result<usize, ArrowError> {
        if buf.is_empty() {
            self.end_line()?;
            return Ok(0);
        }
        let mut used = 0;
        while self.lines() < self.batch_size {
            match memchr::memchr(b'\n', &buf[used..]) {
                Some(i) => {
                    self.values.extend_from_slice(&buf[used..used + i]);
                    used += i + 1;
                    self.end_line()?;
                }
                None => {
                    self.values.extend_from_slice(&buf[used..]);
                    return Ok(buf.len());
                }
            }
        }
        Ok(used)
    }

    /// The whole lines so far as a batch; the start of an unfinished line
    /// stays for the next.
    fn flush(&mut self) -> Result<Option<RecordBatch>, ArrowError> {
        if self.lines() == 0 {
            return Ok(None);
        }
        let end = self.last_end();
        let rest = self.values[end..].to_vec();
        let mut values = std::mem::replace(&mut self.values, rest);
        values.truncate(end);
        let offsets = std::mem::replace(&mut self.offsets, vec![0]);
        // The usual batch has no quote, no second `\r`, no byte-order mark, no header and
        // only UTF-8; any other is read line by line (`saavn::raw_line`).
        let unusual = memchr::memchr2(b'"', b'\r', &values).is_some()
            || memchr::memmem::find(&values, b"\xEF\xBB\xBF").is_some()
            // Every header word but `timestamp` and `date` ends in `_id`,
            // in any case (`saavn::is_header` compares ignoring case).
            || memchr::memchr_iter(b'_', &values)
                .any(|i| values.get(i + 1..i + 3).is_some_and(|w| w.eq_ignore_ascii_case(b"id")));
        // Lines are stored without their `\n`, so text valid as a whole
        // can still cut a character between two lines: each line must
        // start on a character boundary too.
        let utf8 = std::str::from_utf8(&values).is_ok()
            && offsets.iter().all(|&o| values.get(o as usize).is_none_or(|&b| (b as i8) >= -0x40));
        let (offsets, values) = if unusual || !utf8 { raw_lines(&offsets, &values)? } else { (offsets, values) };
        let lines =
            StringArray::try_new(OffsetBuffer::new(ScalarBuffer::from(offsets)), Buffer::from_vec(values), None)?;
        RecordBatch::try_new(lines_schema(), vec![Arc::new(lines)]).map(Some)
    }

    fn can_flush_early(&self) -> bool {
        self.lines() >= self.batch_size
    }
}

/// The lines of a batch as the rules read them: headers dropped, marks
/// and quotes taken off, and a line that cannot be read replaced by
/// [`saavn::marked`] text, which every rule rejects for its reason.
fn raw_lines(offsets: &[i32], values: &[u8]) -> Result<(Vec<i32>, Vec<u8>), ArrowError> {
    let mut out_offsets = Vec::with_capacity(offsets.len());
    out_offsets.push(0i32);
    let mut out = Vec::with_capacity(values.len());
    for w in offsets.windows(2) {
        match saavn::raw_line(&values[w[0] as usize..w[1] as usize]) {
            RawLine::Header => continue,
            RawLine::Data(text) if text.is_empty() => continue,
            RawLine::Data(text) => out.extend_from_slice(text.as_bytes()),
            RawLine::Bad(r) => out.extend_from_slice(saavn::marked(r).as_bytes()),
        }
        out_offsets.push(
            i32::try_from(out.len())
                .map_err(|_| ArrowError::ParseError("a batch of lines holds more than 2 GiB of text".into()))?,
        );
    }
    Ok((out_offsets, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::AsArray;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// Every line `decode` and `flush` give for `text` fed in pieces of
    /// `piece` bytes, then the end.
    fn decoded(text: &[u8], piece: usize, batch: usize) -> Vec<Vec<String>> {
        let mut d = LinesDecoder::new(batch);
        let mut batches = Vec::new();
        let mut take = |d: &mut LinesDecoder| {
            if let Some(b) = d.flush().unwrap() {
                batches.push(b.column(0).as_string::<i32>().iter().map(|s| s.unwrap().to_string()).collect());
            }
        };
        for mut chunk in text.chunks(piece) {
            while !chunk.is_empty() {
                let used = d.decode(chunk).unwrap();
                chunk = &chunk[used..];
                if used == 0 || d.can_flush_early() {
                    take(&mut d);
                }
            }
        }
        assert_eq!(d.decode(&[]).unwrap(), 0);
        take(&mut d);
        batches
    }

    #[test]
    fn lines_split_at_every_piece_size_and_batch_size() {
        let text = b"a,1\r\nbb,2\n\nccc,3\n\r\nd\xc3\xa9,4\ne,5";
        let want = ["a,1", "bb,2", "ccc,3", "d\u{e9},4", "e,5"];
        for piece in 1..=text.len() {
            for batch in 1..=6 {
                let got = decoded(text, piece, batch);
                assert!(got.iter().all(|b| !b.is_empty() && b.len() <= batch), "piece {piece}, batch {batch}");
                assert_eq!(got.concat(), want, "piece {piece}, batch {batch}");
            }
        }
        assert_eq!(decoded(b"x\n", 1, 4).concat(), ["x"], "a final newline adds no line");
        assert!(decoded(b"", 1, 4).is_empty());
    }

    /// Fuzz: any bytes, cut into any pieces and batches, give the lines
    /// that reading each line on its own gives.
    #[test]
    fn fuzzed_text_reads_the_same_however_it_is_cut() {
        let mut rng = cohortcast_core::rng::Rng::new(7);
        for _ in 0..cohortcast_core::fuzz::cases() / 20 {
            let lines: Vec<Vec<u8>> = (0..1 + rng.below(8)).map(|_| cohortcast_core::fuzz::line(&mut rng, 6)).collect();
            let text = lines.join(&b'\n');
            let want: Vec<String> = text
                .split(|&b| b == b'\n')
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                .filter(|l| !l.is_empty())
                .filter_map(|l| match saavn::raw_line(l) {
                    RawLine::Header => None,
                    RawLine::Data(t) if t.is_empty() => None,
                    RawLine::Data(t) => Some(t.into_owned()),
                    RawLine::Bad(r) => Some(saavn::marked(r)),
                })
                .collect();
            let (piece, batch) = (1 + rng.below(40), 1 + rng.below(5));
            let mut d = LinesDecoder::new(batch);
            let mut got: Vec<String> = Vec::new();
            let mut drain = |d: &mut LinesDecoder| {
                while let Some(b) = d.flush().unwrap() {
                    got.extend(b.column(0).as_string::<i32>().iter().map(|s| s.unwrap().to_string()));
                }
            };
            for chunk in text.chunks(piece) {
                let mut rest = chunk;
                while !rest.is_empty() {
                    let used = d.decode(rest).unwrap();
                    rest = &rest[used..];
                    if used == 0 || d.can_flush_early() {
                        drain(&mut d);
                    }
                }
            }
            d.decode(b"").unwrap();
            drain(&mut d);
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&text));
        }
    }

    #[test]
    fn lines_that_are_not_utf8_are_marked_and_headers_marks_and_quotes_go() {
        let mut d = LinesDecoder::new(8);
        d.decode(b"\xEF\xBB\xBFsong_id,artist_id\nok\n\xff\xfe\n\"S1\",\"A1\"\n\"S1,x\",A1\n").unwrap();
        d.decode(b"").unwrap();
        let batch = d.flush().unwrap().unwrap();
        let got: Vec<&str> = batch.column(0).as_string::<i32>().iter().map(Option::unwrap).collect();
        let (utf8, quoting) = (saavn::marked(saavn::Reject::NotUtf8), saavn::marked(saavn::Reject::BadQuoting));
        assert_eq!(got, ["ok", utf8.as_str(), "S1,A1", quoting.as_str()]);
        // A header in mixed case goes too, in a batch with nothing else unusual.
        let mut d = LinesDecoder::new(8);
        d.decode(b"Song_Id,Artist_Id\nS1,A1\n").unwrap();
        let batch = d.flush().unwrap().unwrap();
        let got: Vec<&str> = batch.column(0).as_string::<i32>().iter().map(Option::unwrap).collect();
        assert_eq!(got, ["S1,A1"]);
        // Valid as a whole once the line end is gone, but a character cut
        // between two lines: neither line is text.
        let mut d = LinesDecoder::new(8);
        d.decode(b"\xC3\n\xA9\n").unwrap();
        let batch = d.flush().unwrap().unwrap();
        let got: Vec<&str> = batch.column(0).as_string::<i32>().iter().map(Option::unwrap).collect();
        assert_eq!(got, [utf8.as_str(), utf8.as_str()]);
    }

    async fn query(ctx: &SessionContext, files: &[String], sql: &str) -> Vec<RecordBatch> {
        ctx.register_table("t", Arc::new(lines_table(files).unwrap())).unwrap();
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        ctx.deregister_table("t").unwrap();
        batches
    }

    async fn count_of(ctx: &SessionContext, files: &[String]) -> i64 {
        let batches = query(ctx, files, "SELECT count(*) FROM t").await;
        batches[0].column(0).as_primitive::<datafusion::arrow::datatypes::Int64Type>().value(0)
    }

    async fn lines_of(ctx: &SessionContext, files: &[String]) -> Vec<String> {
        let batches = query(ctx, files, "SELECT line FROM t").await;
        let mut out: Vec<String> = batches
            .iter()
            .flat_map(|b| b.column(0).as_string::<i32>().iter().map(|s| s.unwrap().to_string()))
            .collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn files_split_into_byte_ranges_give_each_line_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut want = Vec::new();
        let mut files = Vec::new();
        for f in 0..3 {
            let text: String = (0..2000)
                .map(|i| {
                    let line = format!("{f:02}-{i:05},{}", "x".repeat(i % 37));
                    want.push(line.clone());
                    // Some lines end in CRLF, one file lacks the last newline.
                    if i % 5 == 0 {
                        line + "\r\n"
                    } else {
                        line + "\n"
                    }
                })
                .collect();
            let text = if f == 1 { text.trim_end().to_string() } else { text };
            let path = dir.path().join(format!("part-{f:05}"));
            std::fs::write(&path, text).unwrap();
            files.push(path.to_string_lossy().into_owned());
        }
        want.sort();
        for partitions in [1, 2, 3, 7, 16] {
            // Small files are split too, and batches are small, so lines
            // fall across range and batch ends.
            let config = SessionConfig::new()
                .with_target_partitions(partitions)
                .with_batch_size(100)
                .with_repartition_file_min_size(1);
            let ctx = SessionContext::new_with_config(config);
            assert_eq!(lines_of(&ctx, &files).await, want, "{partitions} partitions");
            assert_eq!(count_of(&ctx, &files).await, want.len() as i64, "{partitions} partitions, rows counted");
        }
    }
}
