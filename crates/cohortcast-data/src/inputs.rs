//! Finding the files of each input, and refusing the wrong file early.

use std::path::{Path, PathBuf};

use cohortcast_core::saavn::Input;

use crate::error::{IoError, Result};
use crate::store::{is_s3, S3Url, Stores};

/// The four inputs, each a file, a folder of `part-*` files, or a glob.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InputPaths {
    /// Plays.
    pub clickstream: Option<String>,
    /// Song → artists.
    pub metadata: Option<String>,
    /// Notification → artists.
    pub notification_actor: Option<String>,
    /// Who clicked (optional: needed only to measure CTR).
    pub notification_clicks: Option<String>,
}

impl InputPaths {
    /// The `--data DIR` layout: one sub-folder per input. Clicks are taken
    /// only when the folder exists.
    pub fn from_data_dir(dir: &Path) -> Self {
        let sub = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let clicks = dir.join(Input::NotificationClicks.name());
        InputPaths {
            clickstream: Some(sub(Input::Clickstream.name())),
            metadata: Some(sub(Input::Metadata.name())),
            notification_actor: Some(sub(Input::NotificationActor.name())),
            notification_clicks: clicks.exists().then(|| clicks.to_string_lossy().into_owned()),
        }
    }

    /// The path given for `input`.
    pub fn get(&self, input: Input) -> Option<&str> {
        match input {
            Input::Clickstream => self.clickstream.as_deref(),
            Input::Metadata => self.metadata.as_deref(),
            Input::NotificationActor => self.notification_actor.as_deref(),
            Input::NotificationClicks => self.notification_clicks.as_deref(),
        }
    }
}

/// How an input's files are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Headerless CSV text.
    Csv,
    /// Parquet with the layout's column names.
    Parquet,
}

/// The resolved files of one input.
#[derive(Debug, Clone, PartialEq)]
pub struct InputFiles {
    /// Which input.
    pub input: Input,
    /// Files (local paths or `s3://` URLs), sorted.
    pub files: Vec<String>,
    /// Their sizes in bytes.
    pub sizes: Vec<u64>,
    /// Their encoding (by extension: `.parquet` or anything else as CSV).
    pub encoding: Encoding,
}

fn is_data_file(p: &Path) -> bool {
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    p.is_file() && !name.starts_with('.') && !name.starts_with('_') && !name.ends_with(".crc")
}

/// Resolves a file, folder (its data files, recursively) or glob (`*`, `?`
/// in the last component) to a sorted list of files; `s3://` URLs the
/// same way, a key prefix standing for a folder.
pub async fn resolve(input: Input, spec: &str, stores: &Stores) -> Result<InputFiles> {
    let mut files = if is_s3(spec) { resolve_s3(input, spec, stores).await? } else { resolve_local(input, spec)? };
    files.sort();
    if files.is_empty() {
        return Err(IoError::NoFiles { input: input.name().into(), path: spec.into() });
    }
    let parquet = files.iter().filter(|(f, _)| f.ends_with(".parquet")).count();
    let encoding = if parquet == files.len() {
        Encoding::Parquet
    } else if parquet == 0 {
        Encoding::Csv
    } else {
        return Err(IoError::NotTheLayout {
            input: input.name().into(),
            path: PathBuf::from(spec),
            layout: input.layout().into(),
            detail: format!(
                "mixes {parquet} Parquet files with {} other files; keep one format per input",
                files.len() - parquet
            ),
        });
    };
    let (files, sizes) = files.into_iter().unzip();
    Ok(InputFiles { input, files, sizes, encoding })
}

fn resolve_local(input: Input, spec: &str) -> Result<Vec<(String, u64)>> {
    let path = Path::new(spec);
    let mut files = Vec::new();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.contains('*') || name.contains('?') {
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let entries = std::fs::read_dir(dir)
            .map_err(|_| IoError::Missing { input: input.name().into(), path: dir.display().to_string() })?;
        for e in entries.flatten() {
            let fname = e.file_name().to_string_lossy().into_owned();
            if glob_match(&name, &fname) && is_data_file(&e.path()) {
                files.push(e.path());
            }
        }
    } else if path.is_dir() {
        collect_dir(path, &mut files).map_err(|e| IoError::io(path, e))?;
    } else if path.is_file() {
        files.push(path.to_path_buf());
    } else {
        return Err(IoError::Missing { input: input.name().into(), path: spec.into() });
    }
    files
        .into_iter()
        .map(|f| {
            let size = f.metadata().map_err(|e| IoError::io(&f, e))?.len();
            Ok((f.to_string_lossy().into_owned(), size))
        })
        .collect()
}

/// Whether a key below a prefix names a data file: no part of it hidden
/// (`.x`, `_x`: Spark's `_SUCCESS`, `_temporary/`), no `.crc` checksum.
fn is_data_key(relative: &str) -> bool {
    !relative.is_empty() && !relative.split('/').any(|part| part.starts_with(['.', '_'])) && !relative.ends_with(".crc")
}

async fn resolve_s3(input: Input, spec: &str, stores: &Stores) -> Result<Vec<(String, u64)>> {
    let url = S3Url::parse(spec)?;
    let (parent, name) = match url.key.rsplit_once('/') {
        Some((p, n)) => (p.to_string(), n.to_string()),
        None => (String::new(), url.key.clone()),
    };
    let glob = name.contains('*') || name.contains('?');
    let listed_under = if glob { S3Url { bucket: url.bucket.clone(), key: parent } } else { url.clone() };
    let objects = stores.list(&listed_under).await?;
    let strip = |key: &str| -> String {
        let rest = key.strip_prefix(listed_under.key.as_str()).unwrap_or(key);
        rest.trim_start_matches('/').to_string()
    };
    let files: Vec<(String, u64)> = objects
        .into_iter()
        .filter(|o| {
            let rel = strip(&o.url.key);
            if glob {
                !rel.contains('/') && glob_match(&name, &rel) && is_data_key(&rel)
            } else {
                // The URL itself is an object, or a data file below it.
                rel.is_empty() || is_data_key(&rel)
            }
        })
        .map(|o| (o.url.url(), o.size))
        .collect();
    if files.is_empty() && !glob {
        return Err(IoError::Missing { input: input.name().into(), path: spec.into() });
    }
    Ok(files)
}

/// The data files below `dir`, each once: a folder or file reached twice
/// through symbolic links (a link to a parent folder loops) is read once.
fn collect_dir(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut seen = std::collections::HashSet::new();
    seen.insert(std::fs::canonicalize(dir)?);
    walk_dir(dir, out, &mut seen)
}

fn walk_dir(dir: &Path, out: &mut Vec<PathBuf>, seen: &mut std::collections::HashSet<PathBuf>) -> std::io::Result<()> {
    let mut entries = std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<std::io::Result<Vec<_>>>()?;
    entries.sort();
    for p in entries {
        let hidden = p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(['.', '_']));
        let real = match std::fs::canonicalize(&p) {
            Ok(r) => r,
            // A dangling link is no data.
            Err(_) => continue,
        };
        if p.is_dir() && !hidden {
            if seen.insert(real) {
                walk_dir(&p, out, seen)?;
            }
        } else if is_data_file(&p) && seen.insert(real) {
            out.push(p);
        }
    }
    Ok(())
}

/// `*` matches any run, `?` one character.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            pi += 1;
            mark = ni;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Lines checked at the head of the first file before any work starts.
pub const SNIFF_LINES: usize = 20;

/// Refuses an input whose first file is plainly not the layout: more than
/// half of its first [`SNIFF_LINES`] lines break the row rules. A file of
/// occasional bad rows passes (those are counted later, not fatal).
pub async fn sniff(files: &InputFiles, stores: &Stores) -> Result<()> {
    const HEAD: u64 = 64 * 1024;
    if files.encoding != Encoding::Csv {
        return Ok(());
    }
    let Some((first, size)) = files.files.iter().zip(&files.sizes).find(|(_, s)| **s > 0) else {
        return Ok(());
    };
    let head = stores.read_head(first, *size, HEAD).await?;
    let gzip = crate::lines::is_gzip(first);
    if head.starts_with(&[0x1f, 0x8b]) != gzip {
        let detail = if gzip {
            "its name ends in .gz but it is not gzip-compressed; rename it"
        } else {
            "it is gzip-compressed; name it *.gz to have it read as gzip"
        };
        return Err(IoError::NotTheLayout {
            input: files.input.name().into(),
            path: PathBuf::from(first),
            layout: files.input.layout().into(),
            detail: detail.into(),
        });
    }
    let (buf, cut) = if gzip {
        // As much text as the head's compressed bytes give.
        use std::io::Read;
        let mut text = Vec::new();
        let ended = flate2::read::MultiGzDecoder::new(&head[..]).take(HEAD).read_to_end(&mut text).is_ok();
        let cut = !ended || text.len() as u64 == HEAD;
        (text, cut)
    } else {
        let cut = head.len() as u64 == HEAD;
        (head.to_vec(), cut)
    };
    let mut lines: Vec<&[u8]> = buf.split(|&b| b == b'\n').collect();
    if cut {
        lines.pop(); // the last line may be cut
    }
    let lines: Vec<(usize, &[u8])> =
        lines.into_iter().enumerate().filter(|(_, l)| !l.trim_ascii().is_empty()).take(SNIFF_LINES).collect();
    let bad: Vec<(usize, String, cohortcast_core::saavn::Reject)> = lines
        .iter()
        .filter_map(|&(i, l)| crate::samples::check_raw(files.input, l).map(|(r, text)| (i + 1, text, r)))
        .collect();
    if !lines.is_empty() && bad.len() * 2 > lines.len() {
        let (line, text, reason) = &bad[0];
        let text = text.as_str();
        return Err(IoError::NotTheLayout {
            input: files.input.name().into(),
            path: PathBuf::from(first),
            layout: files.input.layout().into(),
            detail: format!(
                "{} of the first {} lines are malformed; line {line}: {} (`{}`)",
                bad.len(),
                lines.len(),
                crate::samples::printable(&reason.describe(files.input, text), 200),
                crate::samples::printable(text, 80)
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("part-*", "part-00000-abc.csv"));
        assert!(glob_match("*.csv", "x.csv"));
        assert!(!glob_match("*.csv", "x.csv.crc"));
        assert!(glob_match("p?rt*", "part"));
        assert!(!glob_match("part-*", "_SUCCESS"));
        assert!(is_data_key("day=1/part-0.csv") && !is_data_key("_temporary/0/part-0") && !is_data_key("_SUCCESS"));
        assert!(!is_data_key("part-0.csv.crc") && !is_data_key(".part-0.crc") && !is_data_key(""));
    }

    #[cfg(unix)]
    #[test]
    fn links_that_loop_or_repeat_are_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("part-00000.csv"), "x\n").unwrap();
        std::os::unix::fs::symlink(".", d.join("loop")).unwrap();
        std::os::unix::fs::symlink("../d", d.join("part-loop")).unwrap();
        std::os::unix::fs::symlink("part-00000.csv", d.join("part-again.csv")).unwrap();
        std::os::unix::fs::symlink("nowhere", d.join("part-dangling.csv")).unwrap();
        let files = resolve_local(Input::Clickstream, d.to_str().unwrap()).unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
    }

    #[test]
    fn folders_skip_markers_and_the_wrong_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("part-00000"), "n1,a1\n").unwrap();
        std::fs::write(d.join("part-00001.csv"), "n2,a2\n").unwrap();
        std::fs::write(d.join("_SUCCESS"), "").unwrap();
        std::fs::write(d.join(".part-00000.crc"), "xx").unwrap();
        let stores = Stores::default();
        let resolve = |input, p: &Path| crate::store::block_on(resolve(input, p.to_str().unwrap(), &stores)).unwrap();
        let sniff = |f| crate::store::block_on(sniff(f, &stores)).unwrap();
        let f = resolve(Input::NotificationActor, d).unwrap();
        assert_eq!(f.files.len(), 2);
        assert_eq!(f.sizes, vec![6, 6]);
        assert_eq!(f.encoding, Encoding::Csv);
        sniff(&f).unwrap();
        // The same files passed as the clickstream: every line has 2 fields.
        let wrong = InputFiles { input: Input::Clickstream, ..f.clone() };
        let err = sniff(&wrong).unwrap_err().to_string();
        assert!(err.contains("clickstream") && err.contains("part-00000") && err.contains("line 1"), "{err}");
        let missing = resolve(Input::Metadata, &d.join("nope")).unwrap_err().to_string();
        assert!(missing.contains("metadata") && missing.contains("does not exist"), "{missing}");
        let none = resolve(Input::Metadata, &d.join("*.parquet")).unwrap_err().to_string();
        assert!(none.contains("no data files"), "{none}");
    }
}
