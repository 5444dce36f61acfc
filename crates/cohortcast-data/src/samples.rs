//! Finding the first rejected rows with their file and line, for messages.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{IoError, Result};
use crate::inputs::{Encoding, InputFiles};

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

/// Scans the CSV files in order, stopping at the `max`-th rejected row; the
/// rules are the same functions the ingest plan runs.
pub fn find_examples(files: &InputFiles, max: usize) -> Result<Vec<RejectExample>> {
    let mut out = Vec::new();
    if files.encoding != Encoding::Csv {
        return Ok(out);
    }
    for path in &files.files {
        let f = std::fs::File::open(path).map_err(|e| IoError::io(path, e))?;
        let mut reader = BufReader::with_capacity(1 << 20, f);
        let mut buf = Vec::new();
        let mut line_no = 0u64;
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf).map_err(|e| IoError::io(path, e))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let text = String::from_utf8_lossy(&buf);
            let text = text.trim_end_matches('\n');
            if text.trim_end_matches('\r').is_empty() {
                continue;
            }
            if let Err(r) = files.input.check(text) {
                out.push(RejectExample {
                    file: path.clone(),
                    line: line_no,
                    reason: r.code().into(),
                    detail: r.describe(files.input, text),
                    text: text.chars().take(120).collect(),
                });
                if out.len() >= max {
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}
