//! The embedded engine's aggregation: the parse UDF `cc_pair` numbers
//! users as it meets them and maps songs to artist keys through tables of
//! its own, and the client sums each (user, artist) key in a
//! [`PairSums`].

use std::collections::HashMap;
use std::sync::Arc;

use cohortcast_core::counts::PackedCounts;
use cohortcast_core::hours;
use cohortcast_core::saavn::{self, KeyHash, Reject};
use cohortcast_core::sparse::{Cells, Csr};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, StructArray, UInt32Builder, UInt64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Fields, UInt32Type, UInt64Type};
use datafusion::logical_expr::{create_udf, ColumnarValue, Volatility};
use datafusion::prelude::SessionContext;

use super::plan::{stream_sql, Plan};
use super::udf::{memoized, play_of, reject_number};
use crate::error::{IoError, Result};
use crate::pair_sums::{PairSums, Spilled};

/// What the clickstream aggregation leaves for the client, users by
/// provisional number (renumbered in id order afterwards).
#[derive(Default)]
pub(crate) struct Aggregate {
    /// Every user with a well-formed row, by provisional number.
    pub(crate) users: Vec<u128>,
    /// Whether the user played a song of the metadata.
    pub(crate) usable: Vec<bool>,
    /// Hours of the day with such plays ([`hours`] masks).
    pub(crate) masks: Vec<u32>,
    /// The plays per (provisional user, artist rank).
    pub(crate) pairs: Pairs,
    /// Rows read, good and bad.
    pub(crate) rows_read: u64,
    /// Rejected rows by [`Reject::ALL`] index.
    pub(crate) rejected: [u64; Reject::ALL.len()],
    /// Well-formed plays of songs missing from the metadata.
    pub(crate) unknown_plays: u64,
}

/// The summed plays per (provisional user, artist rank), as the
/// aggregation left them.
pub(crate) enum Pairs {
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
    pub(crate) fn artists_played(&self, artists: usize) -> Vec<bool> {
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
    pub(crate) fn into_matrix(
        self,
        users: usize,
        artists: usize,
        user_remap: &[u32],
        artist_remap: &[u32],
    ) -> Result<Csr> {
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
pub(crate) struct TableCells<'a> {
    pub(crate) counts: PackedCounts,
    pub(crate) coder: Arc<PairCoder>,
    pub(crate) user_remap: &'a [u32],
    pub(crate) artist_remap: &'a [u32],
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
    pub(crate) fn usable_at(&mut self, u: u32, mask: u32) {
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
pub(crate) struct SongTable {
    pub(crate) slots: Vec<(u64, u32)>,
    pub(crate) mask: usize,
}

/// The code of an empty [`SongTable`] slot (also what a missing song gets).
pub(crate) const EMPTY_SLOT: u32 = UNKNOWN_SONG;

impl SongTable {
    pub(crate) fn new(entries: &HashMap<u64, u32, KeyHash>) -> SongTable {
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

    pub(crate) fn home(&self, key: u64) -> usize {
        saavn::mix64(key) as usize & self.mask
    }

    /// The artist key of a song, or [`UNKNOWN_SONG`].
    pub(crate) fn get(&self, key: u64) -> u32 {
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
    pub(crate) fn prefetch(&self, key: u64) {
        cohortcast_core::kernels::prefetch(&self.slots[self.home(key)]);
    }
}

/// User key → number, numbered in order of first sight, by open
/// addressing with linear probing in one array of (key, number) slots at
/// most half full, so that a batch's lookups can be prefetched. With plays
/// in time order (as real exports are) the last user's number is rarely
/// the next row's, and the general map's cache miss per play, taken under
/// the lock that serialises the partitions, put the parse UDF at 16% of
/// the ingest's samples (4% with plays in user order).
pub(crate) struct UserTable {
    pub(crate) slots: Vec<(u128, u32)>,
    pub(crate) len: usize,
}

/// The number of an empty [`UserTable`] slot (never a user's: see
/// [`REJECTED`]).
pub(crate) const NO_USER: u32 = u32::MAX;

impl Default for UserTable {
    fn default() -> Self {
        UserTable { slots: vec![(0, NO_USER); 1024], len: 0 }
    }
}

impl UserTable {
    /// The first slot of `key`, by the client's [`KeyHash`] (as its maps).
    pub(crate) fn home(&self, key: u128) -> usize {
        use std::hash::BuildHasher;
        KeyHash::default().hash_one(key) as usize & (self.slots.len() - 1)
    }

    /// Users numbered so far.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Starts loading the slot where a lookup of `key` begins.
    pub(crate) fn prefetch(&self, key: u128) {
        cohortcast_core::kernels::prefetch(&self.slots[self.home(key)]);
    }

    /// The number of `key`, the next one if it is new.
    pub(crate) fn number(&mut self, key: u128) -> u32 {
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
    pub(crate) fn into_keys(self) -> Vec<u128> {
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
pub(crate) struct PairCoder {
    /// Song key → artist key.
    pub(crate) songs: SongTable,
    /// Artist sets of the keys from `artists` on.
    pub(crate) groups: Vec<Vec<u32>>,
    /// Artist ranks.
    pub(crate) artists: u32,
    /// User key → number, in order of first sight.
    pub(crate) users: std::sync::Mutex<UserTable>,
    /// Minutes east of UTC of the hours.
    pub(crate) offset_minutes: i32,
    /// Bytes of the lines parsed so far (each line's newline counted).
    pub(crate) bytes_parsed: std::sync::atomic::AtomicU64,
}

/// The user number of a rejected row; its artist key is the reject number.
pub(crate) const REJECTED: u32 = u32::MAX;
/// The artist key of a song missing from the metadata.
pub(crate) const UNKNOWN_SONG: u32 = u32::MAX;

impl PairCoder {
    /// The artist ranks of a pair key's code: an artist, or a group of a
    /// song's artists.
    pub(crate) fn artists_of<'a>(&'a self, code: &'a u32) -> &'a [u32] {
        if *code < self.artists {
            std::slice::from_ref(code)
        } else {
            &self.groups[(*code - self.artists) as usize]
        }
    }

    /// From the songs table's (song key, artist rank) rows and the number
    /// of artists.
    pub(crate) fn new(song_ranks: &[(u64, u32)], artists: usize, offset_minutes: i32) -> Arc<PairCoder> {
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
pub(crate) fn pair_fields() -> Fields {
    Fields::from(vec![Field::new("pair", DataType::UInt64, false), Field::new("hour_bit", DataType::UInt32, true)])
}

/// Parses a batch of clickstream lines into [`pair_fields`]. Lines are
/// parsed outside the lock; only the numbering of users holds it.
pub(crate) fn parse_pairs(coder: &PairCoder, lines: &ArrayRef) -> datafusion::error::Result<ArrayRef> {
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
        // Plays come in listening sessions, a user's rows one after another: the last
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
pub(crate) fn pair_udf(coder: Arc<PairCoder>) -> datafusion::logical_expr::ScalarUDF {
    let fun = move |args: &[ColumnarValue]| -> datafusion::error::Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(args)?;
        Ok(ColumnarValue::Array(memoized(&LAST_PAIRS, &arrays[0], |input| parse_pairs(&coder, input))?))
    };
    create_udf("cc_pair", vec![DataType::Utf8], DataType::Struct(pair_fields()), Volatility::Immutable, Arc::new(fun))
}

/// The embedded plan: DataFusion scans and parses (`cc_pair`), and the
/// client sums the plays per pair key in a [`PairSums`] within
/// `memory_limit` bytes; also what it spilled. With the clickstream's
/// `text_bytes` (CSV files), the sums are told the share of them parsed,
/// so their table grows once to the size the whole input needs instead
/// of doubling step by step.
pub(crate) async fn aggregate_embedded(
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
