//! The embedded ingest's plays per (user, artist) key, summed within a
//! memory limit.
//!
//! Keys are counted in a [`KeyCounts`] table. When the table would grow past
//! the limit (while it grows, its old and new slots are both held), its
//! counts are spilled: each (key, count) is appended to one of [`BUCKETS`]
//! temporary files chosen by the key's hash, and the table is emptied and
//! filled again. At the end, if anything was spilled, the table is spilled
//! too, and each bucket is summed on its own in a fresh table (one bucket
//! per core at a time), so what is held at once is a few buckets' keys:
//! aggregation by hash partitions, as in the Grace hash join (Kitsuregawa,
//! Tanaka & Moto-oka 1983). No sort and no merge is needed, since a key's
//! counts all land in the same bucket (bucketed by user, so a user's
//! counts also come out together).
//!
//! A table grown by doubling moves each key into new slots about twice
//! over. When the caller tells how much of the input it has read
//! ([`PairSums::set_read`]), a table that must grow is sized at once for
//! the keys so far scaled to the whole input: an upper bound on the
//! input's distinct keys whenever they come no faster later than they did
//! so far (new pairs thin out as the same users replay the same artists).
//! On the medium set `cohortcast ingest` took 5.9–6.6 s against 6.6–7.7 s
//! with the table doubling (alternating; the history of BENCHMARKS.md).

use std::fs::File;
use std::io::{BufReader, BufWriter, Seek, SeekFrom, Write};

use cohortcast_core::counts::KeyCounts;
use cohortcast_core::saavn::mix64;

use crate::error::{IoError, Result};
use crate::files::read_full;

/// Temporary files a spill spreads the keys over.
pub const BUCKETS: usize = 64;

/// Bytes of one spilled (key, count) record.
const RECORD: usize = 12;

/// Records read from a bucket file at a time.
const CHUNK: usize = 1 << 14;

/// The least share of the input read before the keys so far are scaled to
/// the whole input: below it the projection is too unsure (the first
/// plays are nearly all new pairs), and the table doubles as usual.
const MIN_SHARE_READ: f64 = 0.125;

/// The share more keys than projected a table is sized for: the medium
/// set's projection at a fifth of its input was 0.2% under its final
/// 13.64 M keys, and a table that had to grow again at the end would
/// double.
const HEADROOM: f64 = 0.1;

/// Counts of 64-bit keys that spill to temporary files beyond a memory
/// limit (see the [module docs](self)).
pub struct PairSums {
    counts: KeyCounts,
    limit: usize,
    /// The bucket files, created at the first spill.
    buckets: Vec<BufWriter<File>>,
    spills: usize,
    spilled_bytes: u64,
    /// The share of the input read so far, when the caller knows it.
    read: Option<f64>,
}

/// What a [`PairSums`] wrote to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spilled {
    /// Times the table was spilled (the last one at the end included).
    pub spills: usize,
    /// Temporary files written (0 or [`BUCKETS`]).
    pub files: usize,
    /// Bytes written to them.
    pub bytes: u64,
}

fn spill_error(e: std::io::Error) -> IoError {
    IoError::io("<temporary file of the play counts spilled beyond --ingest-memory-mb (TMPDIR)>", e)
}

/// A key's bucket, by its user (high half), so a user's counts are summed
/// and handed out together; the low bits of the hash, since the table's
/// home slot is scaled from the high ones (a bucket's keys must still
/// spread over all of the table it is summed in).
fn bucket(key: u64) -> usize {
    (mix64(key >> 32) & (BUCKETS as u64 - 1)) as usize
}

impl PairSums {
    /// Sums held within about `limit` bytes of table.
    pub fn new(limit: usize) -> PairSums {
        PairSums { counts: KeyCounts::new(), limit, buckets: Vec::new(), spills: 0, spilled_bytes: 0, read: None }
    }

    /// Tells the share of the input (0 to 1) that the keys added so far
    /// came from, from which a table that must grow is sized for the
    /// whole input (see the [module docs](self)).
    pub fn set_read(&mut self, share: f64) {
        self.read = Some(share);
    }

    /// Counts each of `keys` once more. When the table must grow, it grows
    /// to the keys projected for the whole input (and [`HEADROOM`] more),
    /// sized to them rather than to a power of two, if that fits within
    /// the limit beside its current slots; otherwise it doubles, spilling
    /// first if even that would pass the limit.
    pub fn add_all(&mut self, keys: &[u64]) -> Result<()> {
        let (now, then) = (self.counts.bytes(), self.counts.bytes_for(keys.len()));
        if then != now {
            let held = self.counts.len();
            let projected = match self.read {
                Some(share) if share >= MIN_SHARE_READ => {
                    Some(((held as f64 / share.min(1.0)) * (1.0 + HEADROOM)) as usize)
                }
                _ => None,
            };
            // At least half as many keys again, so that a projection that
            // falls short again and again still grows the table
            // geometrically (each growth moves every key).
            let wanted = projected
                .map(|p| p.max(held + keys.len()).max(held + held / 2))
                .filter(|&w| now + self.counts.bytes_reserved(w) <= self.limit);
            if let Some(wanted) = wanted {
                self.counts.reserve(wanted);
            } else if now + then > self.limit && !self.counts.is_empty() {
                self.spill()?;
            }
        }
        self.counts.add_all(keys);
        Ok(())
    }

    fn spill(&mut self) -> Result<()> {
        if self.buckets.is_empty() {
            for _ in 0..BUCKETS {
                self.buckets.push(BufWriter::with_capacity(64 << 10, tempfile::tempfile().map_err(spill_error)?));
            }
        }
        // Written straight from the slots; the first failed write is kept
        // (and the rest skipped) since the table is emptied either way.
        let (keys, buckets) = (self.counts.len(), &mut self.buckets);
        let mut failed: Option<std::io::Error> = None;
        self.counts.drain_each(|key, count| {
            if failed.is_none() {
                let mut record = [0u8; RECORD];
                record[..8].copy_from_slice(&key.to_le_bytes());
                record[8..].copy_from_slice(&count.to_le_bytes());
                failed = buckets[bucket(key)].write_all(&record).err();
            }
        });
        if let Some(e) = failed {
            return Err(spill_error(e));
        }
        self.spills += 1;
        self.spilled_bytes += (keys * RECORD) as u64;
        tracing::info!(keys, spills = self.spills, "ingest: play counts spilled to disk");
        Ok(())
    }

    /// The table itself when nothing was spilled (every sum is in it, to
    /// be read with [`KeyCounts::expand`]); else `self` back, for
    /// [`finish`](Self::finish) to sum the spilled files.
    pub fn into_memory(self) -> std::result::Result<KeyCounts, Self> {
        if self.buckets.is_empty() {
            Ok(self.counts)
        } else {
            Err(self)
        }
    }

    /// Hands every key and its total count to `each`, in no particular
    /// order, and says what was spilled. Spilled files are summed as many
    /// at a time as the machine has cores, then handed out in file order.
    pub fn finish(mut self, mut each: impl FnMut(u64, u32)) -> Result<Spilled> {
        if self.buckets.is_empty() {
            self.counts.into_each(each);
            return Ok(Spilled::default());
        }
        self.spill()?;
        drop(std::mem::take(&mut self.counts));
        let mut files = Vec::with_capacity(BUCKETS);
        for w in std::mem::take(&mut self.buckets) {
            let mut file = w.into_inner().map_err(|e| spill_error(e.into_error()))?;
            file.seek(SeekFrom::Start(0)).map_err(spill_error)?;
            files.push(file);
        }
        let at_once = std::thread::available_parallelism().map_or(2, |n| n.get());
        while !files.is_empty() {
            let rest = files.split_off(at_once.min(files.len()));
            let sums: Vec<std::io::Result<KeyCounts>> = std::thread::scope(|s| {
                let running: Vec<_> = files.drain(..).map(|f| s.spawn(move || sum_file(f))).collect();
                running.into_iter().map(|h| h.join().expect("summing a spill file does not panic")).collect()
            });
            for sum in sums {
                sum.map_err(spill_error)?.into_each(&mut each);
            }
            files = rest;
        }
        Ok(Spilled { spills: self.spills, files: BUCKETS, bytes: self.spilled_bytes })
    }
}

/// Sums one spilled file's records in a fresh table.
fn sum_file(file: File) -> std::io::Result<KeyCounts> {
    let mut file = BufReader::new(file);
    let mut sums = KeyCounts::new();
    let mut entries: Vec<(u64, u32)> = Vec::with_capacity(CHUNK);
    let mut buf = vec![0u8; CHUNK * RECORD];
    loop {
        let n = read_full(&mut file, &mut buf)?;
        if n % RECORD != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the file ends inside a record ({n} bytes read)"),
            ));
        }
        entries.clear();
        entries.extend(
            buf[..n].chunks_exact(RECORD).map(|r| {
                (u64::from_le_bytes(r[..8].try_into().unwrap()), u32::from_le_bytes(r[8..].try_into().unwrap()))
            }),
        );
        sums.add_counted(&entries);
        if n < buf.len() {
            return Ok(sums);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Keys of a few thousand (user, artist) pairs, each repeated.
    fn plays(n: usize) -> Vec<u64> {
        (0..n as u64).map(|i| ((i * 7919 % 3001) << 32) | (i * 31 % 17)).collect()
    }

    fn sums(limit: usize, keys: &[u64]) -> (HashMap<u64, u32>, Spilled) {
        let mut s = PairSums::new(limit);
        for batch in keys.chunks(1000) {
            s.add_all(batch).unwrap();
        }
        let mut out = HashMap::new();
        let spilled = s
            .finish(|k, n| {
                assert!(out.insert(k, n).is_none(), "key {k} handed out twice");
            })
            .unwrap();
        (out, spilled)
    }

    #[test]
    fn spilled_sums_equal_those_held_in_memory() {
        let keys = plays(200_000);
        let mut want: HashMap<u64, u32> = HashMap::new();
        for &k in &keys {
            *want.entry(k).or_default() += 1;
        }
        let (held, none) = sums(1 << 30, &keys);
        assert_eq!(none, Spilled::default());
        assert_eq!(held, want);
        // 64 KiB holds about 3 800 keys at most: the 51 k keys spill
        // many times, and the sums must not change.
        let (spilled, stats) = sums(64 << 10, &keys);
        assert!(stats.spills > 5, "{stats:?}");
        assert_eq!(stats.files, BUCKETS);
        assert!(stats.bytes >= (want.len() * RECORD) as u64, "{stats:?}");
        assert_eq!(spilled, want);
    }

    #[test]
    fn a_table_told_the_share_read_grows_once_to_the_whole_inputs_keys_within_the_limit() {
        // 40 000 distinct keys, each played 5 times in a row: new keys
        // come as fast in every part of the input.
        let distinct: Vec<u64> = (0..40_000u64).map(|i| ((i / 7) << 32) | (i % 7)).collect();
        let input: Vec<u64> = distinct.iter().flat_map(|&k| [k; 5]).collect();
        let whole = KeyCounts::new().bytes_for(distinct.len());
        // The table's sizes as it grows, and what it spilled.
        let grow = |limit: usize, told: bool| {
            let mut s = PairSums::new(limit);
            let mut sizes = vec![s.counts.bytes()];
            for (b, batch) in input.chunks(1000).enumerate() {
                if told {
                    s.set_read((b * 1000) as f64 / input.len() as f64);
                }
                s.add_all(batch).unwrap();
                if sizes.last() != Some(&s.counts.bytes()) {
                    sizes.push(s.counts.bytes());
                }
            }
            let mut total = 0u64;
            let spilled = s.finish(|_, n| total += n as u64).unwrap();
            assert_eq!(total, input.len() as u64, "every play counted");
            (sizes, spilled)
        };
        let (doubled, none) = grow(1 << 30, false);
        assert_eq!(none, Spilled::default());
        assert_eq!(doubled.last(), Some(&whole), "doubling ends at the size the keys need");
        // Told, it doubles until an eighth of the input is read, then
        // takes one step to the whole input's keys and a tenth more,
        // smaller than the power of two that doubling reaches.
        let (told, none) = grow(1 << 30, true);
        assert_eq!(none, Spilled::default());
        let (last, early) = told.split_last().unwrap();
        let fits = |keys: usize| KeyCounts::new().bytes_reserved(keys);
        assert!(*last >= fits(distinct.len() * 11 / 10) && *last <= fits(distinct.len() * 11 / 10 + 1), "{told:?}");
        assert!(*last < whole, "{told:?}: {whole}");
        assert_eq!(early, &doubled[..early.len()], "{told:?} against {doubled:?}");
        assert!(early.last().unwrap() * 2 < whole, "it skipped a doubling: {told:?}");
        // Within a limit the projected table would pass, it doubles, and
        // spills where even that would pass it.
        let (capped, spilled) = grow(whole, true);
        assert!(capped.iter().all(|&b| b < whole), "{capped:?}");
        assert!(spilled.spills >= 2, "{spilled:?}");
    }

    #[test]
    fn a_limit_below_one_batch_still_counts_every_key() {
        // The table cannot be spilled while empty: it grows past the limit
        // for one batch rather than fail.
        let keys = plays(5000);
        let (got, stats) = sums(1, &keys);
        assert!(stats.spills >= 4, "{stats:?}");
        assert_eq!(got.values().map(|&n| n as usize).sum::<usize>(), keys.len());
    }
}
