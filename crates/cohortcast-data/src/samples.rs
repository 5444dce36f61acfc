//! Finding the first rejected rows with their file and line, for messages.

use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use cohortcast_core::saavn::{self, Input, RawLine, Reject};

use crate::error::Result;
use crate::inputs::{Encoding, InputFiles};
use crate::store::Stores;

/// One rejected row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectExample {
    /// The file.
    pub file: PathBuf,
    /// 1-based line number (row number for Parquet).
    pub line: u64,
    /// Reject code.
    pub reason: String,
    /// A sentence naming the offending value.
    pub detail: String,
    /// The row, cut at 120 characters.
    pub text: String,
}

impl std::fmt::Display for RejectExample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {} (`{}`)", self.file.display(), self.line, self.detail, self.text)
    }
}

/// Why a raw line (without its `\n`) is rejected, with its text, or
/// `None` for a good line, an empty one or a header.
pub fn check_raw(input: Input, bytes: &[u8]) -> Option<(Reject, String)> {
    match saavn::raw_line(bytes) {
        RawLine::Header => None,
        RawLine::Data(text) if text.is_empty() => None,
        RawLine::Data(text) => input.check(&text).err().map(|r| (r, text.into_owned())),
        RawLine::Bad(r) => Some((r, String::from_utf8_lossy(bytes).into_owned())),
    }
}

/// `text` cut at `max` characters, with control characters (a terminal's
/// escape sequences) written as escapes, for messages.
pub fn printable(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] })
        .collect()
}

/// Lines of one file, fed in chunks, checked against the input's rules.
struct Scanner<'a> {
    files: &'a InputFiles,
    file: &'a str,
    line_no: u64,
    carry: Vec<u8>,
    max: usize,
    out: &'a mut Vec<RejectExample>,
}

impl Scanner<'_> {
    /// Checks one line (without its `\n`); false once `max` are found.
    fn line(&mut self, bytes: &[u8]) -> bool {
        self.line_no += 1;
        if let Some((r, text)) = check_raw(self.files.input, bytes) {
            self.out.push(RejectExample {
                file: PathBuf::from(self.file),
                line: self.line_no,
                reason: r.code().into(),
                detail: printable(&r.describe(self.files.input, &text), 200),
                text: printable(&text, 120),
            });
        }
        self.out.len() < self.max
    }

    /// Feeds a chunk; false once `max` are found.
    fn chunk(&mut self, mut bytes: &[u8]) -> bool {
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            let go = if self.carry.is_empty() {
                self.line(&bytes[..nl])
            } else {
                let mut line = std::mem::take(&mut self.carry);
                line.extend_from_slice(&bytes[..nl]);
                self.line(&line)
            };
            if !go {
                return false;
            }
            bytes = &bytes[nl + 1..];
        }
        self.carry.extend_from_slice(bytes);
        true
    }

    /// The last line, when the file does not end with `\n`.
    fn finish(&mut self) -> bool {
        let rest = std::mem::take(&mut self.carry);
        rest.is_empty() || self.line(&rest)
    }
}

/// A writer that hands what it is given to a function, which answers
/// whether to go on.
struct Sink<F: FnMut(&[u8]) -> bool>(F);

impl<F: FnMut(&[u8]) -> bool> std::io::Write for Sink<F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if (self.0)(buf) {
            Ok(buf.len())
        } else {
            Err(std::io::Error::other("enough examples"))
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Scans the CSV files in order (local or `s3://`, streamed), stopping at
/// the `max`-th rejected row; the rules are the same functions the ingest
/// plan runs.
pub async fn find_examples(files: &InputFiles, max: usize, stores: &Stores) -> Result<Vec<RejectExample>> {
    let mut out = Vec::new();
    if files.encoding != Encoding::Csv || max == 0 {
        return Ok(out);
    }
    for path in &files.files {
        let mut sc = Scanner { files, file: path, line_no: 0, carry: Vec::new(), max, out: &mut out };
        let whole = if crate::lines::is_gzip(path) {
            // Decompressed as the chunks come; a stop is a `false` from the
            // sink, told apart from a broken file by `stopped`.
            let mut stopped = false;
            let mut gz = flate2::write::MultiGzDecoder::new(Sink(|c: &[u8]| {
                // Once stopped, nothing more (the decoder flushes on drop).
                stopped = stopped || !sc.chunk(c);
                !stopped
            }));
            let read = stores.read_chunks(path, |c| gz.write_all(c).is_ok()).await?;
            let ended = read && gz.try_finish().is_ok();
            drop(gz);
            if !ended && !stopped {
                return Err(crate::error::IoError::Malformed {
                    path: path.into(),
                    line: 0,
                    detail: "is not valid gzip (the name ends in .gz)".into(),
                });
            }
            ended
        } else {
            stores.read_chunks(path, |c| sc.chunk(c)).await?
        };
        let go = whole && sc.finish();
        if !go {
            break;
        }
    }
    Ok(out)
}
