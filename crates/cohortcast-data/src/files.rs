//! Output files: written under a temporary name and renamed when complete,
//! so a failed run never leaves a half-written file; plus the `.npy` format
//! for factor matrices.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{IoError, Result};

fn tmp_name(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// A file being written under a hidden temporary name in its folder; it
/// takes its real name only on [`AtomicFile::commit`]. Dropped without a
/// commit (an error, a panic), the temporary file is removed.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    w: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Starts writing `path` (creating its folder).
    pub fn create(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| IoError::io(dir, e))?;
        }
        let tmp = tmp_name(path);
        let f = File::create(&tmp).map_err(|e| IoError::io(path, e))?;
        Ok(AtomicFile { path: path.into(), tmp, w: Some(BufWriter::with_capacity(1 << 20, f)) })
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes, syncs and renames the file to its real name.
    pub fn commit(mut self) -> Result<()> {
        let w = self.w.take().expect("not committed twice");
        let f = w.into_inner().map_err(|e| IoError::io(&self.path, e.into_error()))?;
        f.sync_all().map_err(|e| IoError::io(&self.path, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| IoError::io(&self.path, e))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.w.as_mut().expect("open").write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.w.as_mut().expect("open").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.w.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `path` through `fill` with an [`AtomicFile`]: the file appears
/// only after `fill` and the flush succeed.
pub fn write_atomic(path: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    fill(&mut f).map_err(|e| IoError::io(path, e))?;
    f.commit()
}

/// Builds a folder under a temporary name and swaps it in when `fill`
/// succeeds (an older folder of the same name is replaced).
pub fn write_dir_atomic(path: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = tmp_name(path);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| IoError::io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if path.exists() {
        std::fs::remove_dir_all(path).map_err(|e| IoError::io(path, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| IoError::io(path, e))
}

/// Writes a row-major `rows × cols` f32 matrix as NumPy `.npy` (version 1.0,
/// little-endian `<f4`), readable by `numpy.load`.
pub fn write_npy_f32(path: &Path, data: &[f32], rows: usize, cols: usize) -> Result<()> {
    assert_eq!(data.len(), rows * cols);
    write_npy(path, "<f4", rows, cols, &mut |w| {
        for v in data {
            w.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    })
}

/// Writes a vector of u32 as `.npy` (`<u4`, shape `(n,)`).
pub fn write_npy_u32(path: &Path, data: &[u32]) -> Result<()> {
    write_npy(path, "<u4", data.len(), 0, &mut |w| {
        for v in data {
            w.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    })
}

/// The `.npy` v1.0 preamble for a C-ordered array: `cols == 0` gives the
/// 1-D shape `(rows,)`. Stream the little-endian values after it.
pub fn npy_header(descr: &str, rows: usize, cols: usize) -> Vec<u8> {
    let shape = if cols == 0 { format!("({rows},)") } else { format!("({rows}, {cols})") };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.div_ceil(64) * 64 - total));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

fn write_npy(
    path: &Path,
    descr: &str,
    rows: usize,
    cols: usize,
    body: &mut dyn FnMut(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let header = npy_header(descr, rows, cols);
    write_atomic(path, |w| {
        w.write_all(&header)?;
        body(w)
    })
}

/// A matrix read from `.npy`: shape and raw little-endian values.
struct Npy {
    descr: String,
    shape: Vec<usize>,
    body: Vec<u8>,
}

/// Reads a `.npy` header from the start of `r`: (descr, shape).
fn read_npy_header(path: &Path, r: &mut impl Read) -> Result<(String, Vec<usize>)> {
    let bad = |detail: &str| IoError::Malformed { path: path.into(), line: 0, detail: detail.into() };
    let mut pre = Vec::with_capacity(10);
    r.take(10).read_to_end(&mut pre).map_err(|e| IoError::io(path, e))?;
    if !pre.starts_with(b"\x93NUMPY") {
        return Err(bad("not a .npy file (bad magic)"));
    }
    if pre.len() < 10 {
        return Err(bad("not a .npy file (too short)"));
    }
    let hlen = match pre[6] {
        1 => u16::from_le_bytes([pre[8], pre[9]]) as usize,
        2 | 3 => {
            let mut more = [0u8; 2];
            r.read_exact(&mut more).map_err(|_| bad("truncated header"))?;
            u32::from_le_bytes([pre[8], pre[9], more[0], more[1]]) as usize
        }
        _ => return Err(bad("unsupported .npy version")),
    };
    let mut header = vec![0u8; hlen];
    r.read_exact(&mut header).map_err(|_| bad("truncated header"))?;
    let header = String::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let field = |key: &str| -> Option<String> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest.to_string())
    };
    let descr = field("descr").and_then(|r| r.split('\'').nth(1).map(str::to_string)).ok_or_else(|| bad("no descr"))?;
    if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
        return Err(bad("Fortran-ordered arrays are not supported"));
    }
    let shape_txt = field("shape").ok_or_else(|| bad("no shape"))?;
    let inner = shape_txt.trim_start_matches('(');
    let inner = &inner[..inner.find(')').ok_or_else(|| bad("bad shape"))?];
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad("bad shape")))
        .collect::<Result<_>>()?;
    Ok((descr, shape))
}

fn read_npy(path: &Path) -> Result<Npy> {
    let mut f = std::io::BufReader::new(File::open(path).map_err(|e| IoError::io(path, e))?);
    let (descr, shape) = read_npy_header(path, &mut f)?;
    let mut body = Vec::new();
    f.read_to_end(&mut body).map_err(|e| IoError::io(path, e))?;
    Ok(Npy { descr, shape, body })
}

/// Streams a 2-D `<f4` `.npy` one row at a time (`each(row, values)`),
/// holding two blocks of rows (about 4 MiB each) in memory; returns (rows,
/// cols). For matrices too big to hold twice (the generator's truth at
/// millions of users). A second thread reads and converts the next block
/// while `each` runs on this one (on the medium set's 400 MB truth the
/// reading took 0.42 s of a 0.9 s pass, one after the other).
pub fn read_npy_f32_rows(path: &Path, mut each: impl FnMut(usize, &[f32])) -> Result<(usize, usize)> {
    let mut f = std::io::BufReader::with_capacity(1 << 20, File::open(path).map_err(|e| IoError::io(path, e))?);
    let (descr, shape) = read_npy_header(path, &mut f)?;
    if descr != "<f4" || shape.len() != 2 {
        return Err(IoError::Malformed {
            path: path.into(),
            line: 0,
            detail: format!("expected a 2-D <f4 matrix, found {descr} with shape {shape:?}"),
        });
    }
    let (rows, cols) = (shape[0], shape[1]);
    // Blocks of whole rows, about 4 MiB each: one read and one conversion
    // per block, not per row (a 500 k × 200 matrix took 1.2 s row by row).
    let per = ((4 << 20) / (cols * 4).max(1)).clamp(1, rows.max(1));
    // Filled blocks go to this thread, emptied ones back to the reader.
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Result<(usize, Vec<f32>)>>(1);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<f32>>();
    for _ in 0..2 {
        empty_tx.send(vec![0f32; per * cols]).expect("the receiver is here");
    }
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut raw = vec![0u8; per * cols * 4];
            let mut r = 0;
            while r < rows {
                // No block back: the consumer stopped (and returns its error).
                let Ok(mut block) = empty_rx.recv() else { return };
                let n = per.min(rows - r);
                let bytes = &mut raw[..n * cols * 4];
                let read = match read_full(&mut f, bytes) {
                    Err(e) => Err(IoError::io(path, e)),
                    Ok(got) if got < bytes.len() => Err(IoError::Malformed {
                        path: path.into(),
                        line: 0,
                        detail: format!("ends inside row {} of shape ({rows}, {cols})", r + got / (cols * 4)),
                    }),
                    Ok(_) => {
                        for (v, b) in block.iter_mut().zip(bytes.chunks_exact(4)) {
                            *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                        }
                        Ok((n, block))
                    }
                };
                let failed = read.is_err();
                if full_tx.send(read).is_err() || failed {
                    return;
                }
                r += n;
            }
        });
        // The channels' ends here are dropped when this returns, so a
        // reader still waiting on them stops and the scope can end.
        let (full_rx, empty_tx) = (full_rx, empty_tx);
        let mut r = 0;
        while r < rows {
            let (n, block) = full_rx.recv().expect("the reader sends every block or its error")?;
            if cols > 0 {
                for (q, row) in block[..n * cols].chunks_exact(cols).enumerate() {
                    each(r + q, row);
                }
            } else {
                (0..n).for_each(|q| each(r + q, &[]));
            }
            r += n;
            // The reader may have stopped after its last block.
            let _ = empty_tx.send(block);
        }
        Ok((rows, cols))
    })
}

/// Fills `buf` from `r` until it is full or the input ends; the bytes read.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads a 2-D `<f4` `.npy`; returns values, rows, cols.
pub fn read_npy_f32(path: &Path) -> Result<(Vec<f32>, usize, usize)> {
    let npy = read_npy(path)?;
    let bad = |detail: String| IoError::Malformed { path: path.into(), line: 0, detail };
    if npy.descr != "<f4" || npy.shape.len() != 2 {
        return Err(bad(format!("expected a 2-D <f4 matrix, found {} with shape {:?}", npy.descr, npy.shape)));
    }
    let (r, c) = (npy.shape[0], npy.shape[1]);
    if npy.body.len() != r * c * 4 {
        return Err(bad(format!("holds {} bytes of data, shape ({r}, {c}) needs {}", npy.body.len(), r * c * 4)));
    }
    Ok((npy.body.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(), r, c))
}

/// Reads a 1-D `<u4` `.npy`.
pub fn read_npy_u32(path: &Path) -> Result<Vec<u32>> {
    let npy = read_npy(path)?;
    if npy.descr != "<u4" || npy.shape.len() != 1 || npy.body.len() != npy.shape[0] * 4 {
        return Err(IoError::Malformed {
            path: path.into(),
            line: 0,
            detail: format!("expected a 1-D <u4 vector, found {} {:?}", npy.descr, npy.shape),
        });
    }
    Ok(npy.body.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// Writes one value per line.
pub fn write_lines(path: &Path, header: Option<&str>, lines: impl IntoIterator<Item = impl AsRef<str>>) -> Result<()> {
    write_atomic(path, |w| {
        if let Some(h) = header {
            writeln!(w, "{h}")?;
        }
        for l in lines {
            writeln!(w, "{}", l.as_ref())?;
        }
        Ok(())
    })
}

/// Reads lines of a file of ours, skipping `header` if given (and checking it).
pub fn read_lines(path: &Path, header: Option<&str>) -> Result<Vec<String>> {
    let f = File::open(path).map_err(|e| IoError::io(path, e))?;
    let mut out = Vec::new();
    for (i, l) in BufReader::new(f).lines().enumerate() {
        let l = l.map_err(|e| IoError::io(path, e))?;
        if i == 0 {
            if let Some(h) = header {
                if l != h {
                    return Err(IoError::Malformed {
                        path: path.into(),
                        line: 1,
                        detail: format!("expected header `{h}`, found `{l}`"),
                    });
                }
                continue;
            }
        }
        out.push(l);
    }
    Ok(out)
}

/// Writes JSON, pretty-printed.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    write_atomic(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value).map_err(std::io::Error::other)?;
        writeln!(w)
    })
}

/// Reads JSON written by [`write_json`].
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let f = File::open(path).map_err(|e| IoError::io(path, e))?;
    serde_json::from_reader(BufReader::new(f)).map_err(|e| IoError::Malformed {
        path: path.into(),
        line: e.line(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip_and_header_alignment() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.npy");
        let data: Vec<f32> = (0..12).map(|v| v as f32 * 0.5).collect();
        write_npy_f32(&p, &data, 3, 4).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!((bytes.len() - 48) % 64, 0, "header padded to a multiple of 64 bytes");
        assert_eq!(read_npy_f32(&p).unwrap(), (data.clone(), 3, 4));
        let mut rows = Vec::new();
        assert_eq!(read_npy_f32_rows(&p, |r, v| rows.push((r, v.to_vec()))).unwrap(), (3, 4));
        assert_eq!(rows, (0..3).map(|r| (r, data[r * 4..r * 4 + 4].to_vec())).collect::<Vec<_>>());
        std::fs::write(&p, &bytes[..bytes.len() - 2]).unwrap();
        assert!(read_npy_f32_rows(&p, |_, _| {}).unwrap_err().to_string().contains("ends inside row 2"));
        // Rows over several blocks (about 4 MiB each, 3 rows of 1.2 MB here),
        // and a file cut short in the sixth row.
        let (r, c) = (7, 300_000);
        let big: Vec<f32> = (0..r * c).map(|v| (v % 1000) as f32 + (v / c) as f32 * 1e4).collect();
        write_npy_f32(&p, &big, r, c).unwrap();
        let mut seen = Vec::new();
        assert_eq!(read_npy_f32_rows(&p, |i, v| seen.push((i, v == &big[i * c..(i + 1) * c]))).unwrap(), (r, c));
        assert_eq!(seen, (0..r).map(|i| (i, true)).collect::<Vec<_>>());
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 4 * c - 8]).unwrap();
        assert!(read_npy_f32_rows(&p, |_, _| {}).unwrap_err().to_string().contains("ends inside row 5"));
        let q = dir.path().join("l.npy");
        write_npy_u32(&q, &[3, 1, 4]).unwrap();
        assert_eq!(read_npy_u32(&q).unwrap(), vec![3, 1, 4]);
        assert!(read_npy_f32(&q).is_err());
        std::fs::write(&q, b"hello").unwrap();
        assert!(read_npy_u32(&q).unwrap_err().to_string().contains("bad magic"));
    }

    #[test]
    fn failed_write_leaves_nothing_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.csv");
        std::fs::write(&p, "old\n").unwrap();
        let err = write_atomic(&p, |w| {
            w.write_all(b"half")?;
            Err(std::io::Error::other("disk on fire"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
        let d = dir.path().join("lists");
        let err = write_dir_atomic(&d, |tmp| {
            write_lines(&tmp.join("a.csv"), None, ["x"])?;
            Err(IoError::Malformed { path: tmp.into(), line: 0, detail: "stop".into() })
        });
        assert!(err.is_err());
        assert!(!d.exists());
        write_dir_atomic(&d, |tmp| write_lines(&tmp.join("a.csv"), None, ["x"])).unwrap();
        assert_eq!(read_lines(&d.join("a.csv"), None).unwrap(), vec!["x"]);
    }
}
