//! Counting 64-bit keys: the table the embedded ingest sums its
//! (user, artist) plays in.
//!
//! [`KeyCounts`] is an open-addressing hash table with linear probing
//! (Knuth, *The Art of Computer Programming* vol. 3, §6.4, Algorithm L) whose
//! slots hold a key and its count side by side (12 bytes), at most 7/10
//! full. Any `u64` is a key, but the table is laid out for (user, artist)
//! pairs, the user in the high 32 bits and a small artist number in the
//! low ones: a key's first slot is its high half hashed plus its low half,
//! so one user's keys lie in one stretch of the table. That stretch is in
//! cache while a session of the user's plays is added, and the counts come
//! out user by user, so the matrix built from them writes one row at a
//! time. (Hashed whole, the counts came out in random order, and building
//! the matrix from the full-scale set's 379 M of them took 20 s instead of
//! 10.)
//!
//! Keys are added a batch at a time and each key's first slot is
//! prefetched a few keys ahead: at millions of distinct keys the table is
//! far larger than the caches, so an insertion costs the wait for its
//! slot, and with the loads started early several of those waits overlap.
//! A general group-by pays that wait more than once a row (the table of
//! group indices, the keys, then each aggregate's own array).
//!
//! ```
//! use cohortcast_core::counts::KeyCounts;
//! let mut counts = KeyCounts::new();
//! counts.add_all(&[7, 3, 7, 7, u64::MAX]);
//! assert_eq!((counts.get(7), counts.get(3), counts.get(u64::MAX), counts.get(4)), (3, 1, 1, 0));
//! let mut all = Vec::new();
//! counts.drain_each(|key, n| all.push((key, n)));
//! all.sort_unstable();
//! assert_eq!(all, vec![(3, 1), (7, 3), (u64::MAX, 1)]);
//! assert!(counts.is_empty());
//! ```

use crate::saavn::mix64;

/// One slot: a key and how many times it was added; a count of 0 marks an
/// empty slot, so every `u64` is a key.
#[derive(Clone, Copy)]
#[repr(C, packed(4))]
struct Slot {
    key: u64,
    count: u32,
}

const EMPTY: Slot = Slot { key: 0, count: 0 };

/// Slots a new table starts with.
const FIRST_SLOTS: usize = 1 << 10;

/// Keys ahead whose home slot is prefetched while one is added (on the
/// medium set's keys, into a table of the final size: 16 took 0.77 s, 8
/// took 0.89 s, 32 no less than 16).
const AHEAD: usize = 16;

/// Counts of 64-bit keys (see the [module docs](self)).
pub struct KeyCounts {
    slots: Vec<Slot>,
    /// Keys held.
    len: usize,
}

impl Default for KeyCounts {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyCounts {
    /// An empty table of 1 024 slots.
    pub fn new() -> KeyCounts {
        KeyCounts { slots: vec![EMPTY; FIRST_SLOTS], len: 0 }
    }

    /// Distinct keys held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes the slots take now.
    pub fn bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot>()
    }

    /// The bytes the slots will take once `more` new keys can be added
    /// without growing: the same as [`bytes`](Self::bytes) when they fit.
    /// While the table grows its old slots are held too, so a caller with
    /// a memory limit checks the sum of both.
    pub fn bytes_for(&self, more: usize) -> usize {
        Self::slots_for(self.slots.len(), self.len + more) * std::mem::size_of::<Slot>()
    }

    /// The bytes the slots take after [`reserve`](Self::reserve)`(keys)`.
    pub fn bytes_reserved(&self, keys: usize) -> usize {
        self.reserved_slots(keys) * std::mem::size_of::<Slot>()
    }

    /// The slots after [`reserve`](Self::reserve)`(keys)`: the fewest that
    /// hold them, and never fewer than now.
    fn reserved_slots(&self, keys: usize) -> usize {
        Self::least_slots(keys).max(self.slots.len())
    }

    /// The slot count, doubling from `slots`, that holds `keys` at most
    /// 7/10 full.
    fn slots_for(mut slots: usize, keys: usize) -> usize {
        while keys.saturating_mul(10) > slots * 7 {
            slots *= 2;
        }
        slots
    }

    /// The fewest slots that hold `keys` at most 7/10 full.
    fn least_slots(keys: usize) -> usize {
        keys.saturating_mul(10).div_ceil(7).max(FIRST_SLOTS)
    }

    /// A key's first slot among `slots`: its high half hashed and scaled
    /// to the slots (the high half of the product, as Lemire's "fast
    /// alternative to the modulo reduction", 2019, so the table can have
    /// any size, not only a power of two), plus its low half (see the
    /// module docs).
    fn home(key: u64, slots: usize) -> usize {
        let base = ((mix64(key >> 32) as u128 * slots as u128) >> 64) as usize;
        let at = base + key as u32 as usize;
        if at < slots {
            at
        } else {
            at % slots
        }
    }

    /// The slot after `at`, wrapping past the last.
    fn next(at: usize, slots: usize) -> usize {
        if at + 1 == slots {
            0
        } else {
            at + 1
        }
    }

    /// Grows the table at once to the fewest slots that hold `keys`
    /// distinct keys in all, so that adding up to that many needs no
    /// further growth; nothing when it already holds them. Each growth
    /// moves every key into new slots, and growing by doubling moves each
    /// key about twice over: for a caller that can foresee the count (on
    /// the medium set's 29.8 M plays and 13.6 M keys, adding to a table of
    /// the final size took 0.77 s against 1.63 s grown by doubling from
    /// the first slots). Sized to the keys rather than to the next power
    /// of two, that table takes 234 MB instead of 403 MB.
    pub fn reserve(&mut self, keys: usize) {
        let want = self.reserved_slots(keys);
        if want != self.slots.len() {
            self.grow(want);
        }
    }

    /// How many times `key` was added (0: never).
    pub fn get(&self, key: u64) -> u32 {
        let slots = self.slots.len();
        let mut at = Self::home(key, slots);
        loop {
            let s = self.slots[at];
            if s.count == 0 || s.key == key {
                return s.count;
            }
            at = Self::next(at, slots);
        }
    }

    /// Adds each of `keys` once (a key repeated in `keys` counts each
    /// time), growing the table first if they could overfill it. A count
    /// stops at `u32::MAX`.
    pub fn add_all(&mut self, keys: &[u64]) {
        self.add_batch(keys.len(), |j| (keys[j], 1));
    }

    /// Adds each (key, count) of `entries`, as [`add_all`](Self::add_all)
    /// would add the key `count` times.
    pub fn add_counted(&mut self, entries: &[(u64, u32)]) {
        self.add_batch(entries.len(), |j| entries[j]);
    }

    /// Adds the `n` entries `entry(0..n)`, each home slot prefetched
    /// [`AHEAD`] entries before.
    fn add_batch(&mut self, n: usize, entry: impl Fn(usize) -> (u64, u32)) {
        let want = Self::slots_for(self.slots.len(), self.len + n);
        if want != self.slots.len() {
            self.grow(want);
        }
        let slots = self.slots.len();
        for j in 0..n.min(AHEAD) {
            crate::kernels::prefetch(&self.slots[Self::home(entry(j).0, slots)]);
        }
        for j in 0..n {
            if j + AHEAD < n {
                crate::kernels::prefetch(&self.slots[Self::home(entry(j + AHEAD).0, slots)]);
            }
            let (key, count) = entry(j);
            if count > 0 {
                self.add(key, count, slots);
            }
        }
    }

    /// Adds `count` to `key`; the table has room for it.
    fn add(&mut self, key: u64, count: u32, slots: usize) {
        let mut at = Self::home(key, slots);
        loop {
            let s = &mut self.slots[at];
            if s.count == 0 {
                *s = Slot { key, count };
                self.len += 1;
                return;
            }
            if s.key == key {
                s.count = s.count.saturating_add(count);
                return;
            }
            at = Self::next(at, slots);
        }
    }

    /// Moves every key into `slots` new slots, each new slot prefetched
    /// [`AHEAD`] old slots before.
    fn grow(&mut self, slots: usize) {
        // The new slots are written on every thread first (see
        // `linalg::par_filled`): the medium set's table grew to 400 MB here,
        // and faulting it in on the adding thread alone stalled the scan
        // for a second.
        let old = std::mem::replace(&mut self.slots, crate::linalg::par_filled(slots, EMPTY));
        self.len = 0;
        for (j, s) in old.iter().enumerate() {
            if let Some(next) = old.get(j + AHEAD) {
                crate::kernels::prefetch(&self.slots[Self::home(next.key, slots)]);
            }
            if s.count != 0 {
                self.add(s.key, s.count, slots);
            }
        }
    }

    /// Calls `each(key, count)` for every key, in no particular order,
    /// leaving the table empty with the slots it had (nothing is gathered
    /// first: a full-scale spill hands out 188 M keys).
    pub fn drain_each(&mut self, mut each: impl FnMut(u64, u32)) {
        for s in self.slots.iter_mut() {
            if s.count != 0 {
                each(s.key, s.count);
                *s = EMPTY;
            }
        }
        self.len = 0;
    }

    /// The keys and their counts packed to the front of the slots, in the
    /// table's order (so a user's keys stay together), and the empty slots
    /// freed: the table shrinks in place where the allocator can (the
    /// binary's does). The medium set's 13.6 M keys take 164 MB of its
    /// 257 MB table, and what is freed serves the next large block.
    pub fn into_packed(mut self) -> PackedCounts {
        let mut kept = 0;
        for at in 0..self.slots.len() {
            if self.slots[at].count != 0 {
                self.slots[kept] = self.slots[at];
                kept += 1;
            }
        }
        self.slots.truncate(kept);
        self.slots.shrink_to_fit();
        PackedCounts { slots: self.slots }
    }

    /// Calls `each(key, count)` for every key, in no particular order,
    /// and frees the table.
    pub fn into_each(self, mut each: impl FnMut(u64, u32)) {
        for s in self.slots {
            if s.count != 0 {
                each(s.key, s.count);
            }
        }
    }
}

/// A table's keys and counts with no empty slots, in the table's order
/// ([`KeyCounts::into_packed`]), for reading in parallel parts.
pub struct PackedCounts {
    slots: Vec<Slot>,
}

impl PackedCounts {
    /// Keys held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Calls `each(key, count)` for every key in part `part` of `parts`
    /// equal stretches of the keys, in order: parts `0..parts` together
    /// hand out every key once, in the table's order, so callers can read
    /// the parts in parallel.
    pub fn each_in_part(&self, part: usize, parts: usize, mut each: impl FnMut(u64, u32)) {
        let per = self.slots.len().div_ceil(parts.max(1)).max(1);
        for s in self.slots.chunks(per).nth(part).unwrap_or(&[]) {
            each(s.key, s.count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use std::collections::HashMap;

    #[test]
    fn counts_agree_with_a_hash_map_through_growth_and_repeats() {
        let mut rng = Rng::new(5);
        let mut counts = KeyCounts::new();
        let mut reference: HashMap<u64, u32> = HashMap::new();
        // Batches of keys drawn from a pool, so most repeat, plus 0 and
        // u64::MAX (a count, not a key, marks an empty slot).
        let pool: Vec<u64> = (0..20_000).map(|_| rng.next_u64()).chain([0, u64::MAX]).collect();
        for round in 0..40 {
            let batch: Vec<u64> = (0..(round * 97) % 3000).map(|_| pool[rng.below(pool.len())]).collect();
            counts.add_all(&batch);
            for k in batch {
                *reference.entry(k).or_default() += 1;
            }
            assert_eq!(counts.len(), reference.len());
        }
        assert!(counts.bytes() > FIRST_SLOTS * 12, "the table grew");
        assert!(counts.len() * 10 <= counts.slots.len() * 7);
        for (&k, &n) in &reference {
            assert_eq!(counts.get(k), n, "key {k}");
        }
        assert_eq!(counts.get(pool[0] ^ 1), 0);
        let mut all = Vec::new();
        counts.drain_each(|k, n| all.push((k, n)));
        all.sort_unstable();
        let mut want: Vec<(u64, u32)> = reference.into_iter().collect();
        want.sort_unstable();
        assert_eq!(all, want);
        assert!(counts.is_empty() && counts.get(want[0].0) == 0, "drained");
        counts.add_all(&[want[0].0]);
        let mut seen = Vec::new();
        counts.into_each(|k, n| seen.push((k, n)));
        assert_eq!(seen, vec![(want[0].0, 1)]);
    }

    #[test]
    fn one_users_keys_lie_together_and_a_dense_run_is_probed_through() {
        // User 7 played artists 0..3000: their first slots are consecutive,
        // one run of 3 000 filled slots. Other users' keys that start inside
        // the run must probe past it and still be found.
        let mut counts = KeyCounts::new();
        let dense: Vec<u64> = (0..3000).map(|a| (7 << 32) | a).collect();
        counts.add_all(&dense);
        let slots = counts.slots.len();
        let base = KeyCounts::home(7 << 32, slots);
        for a in [0usize, 1, 1500, 2999] {
            assert_eq!({ counts.slots[(base + a) % slots].key }, (7 << 32) | a as u64, "artist {a}");
        }
        let others: Vec<u64> = (0..20_000u64).map(|i| ((i % 5000 + 100) << 32) | (i * 13 % 40)).collect();
        counts.add_all(&others);
        counts.add_all(&dense[..10]);
        let mut want: HashMap<u64, u32> = HashMap::new();
        for &k in dense.iter().chain(&others).chain(&dense[..10]) {
            *want.entry(k).or_default() += 1;
        }
        assert_eq!(counts.len(), want.len());
        for (&k, &n) in &want {
            assert_eq!(counts.get(k), n, "key {k:#x}");
        }
    }

    #[test]
    fn probes_wrap_past_the_last_slot_and_growth_keeps_them() {
        // Keys whose home is the last slot of a new table: the later ones
        // must wrap to slot 0, 1, ... and still be found.
        let last: Vec<u64> = (0u64..).filter(|&k| KeyCounts::home(k, FIRST_SLOTS) == FIRST_SLOTS - 1).take(5).collect();
        let mut counts = KeyCounts::new();
        counts.add_all(&last);
        counts.add_all(&last[2..]);
        assert_eq!(counts.slots.len(), FIRST_SLOTS);
        assert_eq!({ counts.slots[1].key }, last[2], "the third key wrapped to slot 1");
        for (i, &k) in last.iter().enumerate() {
            assert_eq!(counts.get(k), if i < 2 { 1 } else { 2 });
        }
        // Growing rehashes the wrapped keys too.
        let more: Vec<u64> = (1_000_000..1_001_000).collect();
        assert!(counts.bytes_for(more.len()) > counts.bytes());
        counts.add_all(&more);
        assert!(counts.slots.len() > FIRST_SLOTS);
        assert_eq!((counts.get(last[4]), counts.get(last[0]), counts.get(1_000_999)), (2, 1, 1));
        assert_eq!(counts.len(), 1005);
    }

    #[test]
    fn counted_entries_add_as_their_keys_repeated() {
        let (mut one_by_one, mut counted) = (KeyCounts::new(), KeyCounts::new());
        one_by_one.add_all(&[4, 4, 4, 8, 4, 8, 4]);
        // The second count of 4 adds to the first.
        counted.add_counted(&[(4, 3), (8, 2), (15, 0), (4, 2)]);
        for k in [4, 8, 15] {
            assert_eq!(counted.get(k), one_by_one.get(k), "key {k}");
        }
        assert_eq!(counted.len(), 2, "a count of 0 adds no key");
    }

    #[test]
    fn packed_keys_come_in_parts_each_once_in_table_order() {
        let mut rng = Rng::new(8);
        let mut counts = KeyCounts::new();
        let keys: Vec<u64> = (0..50_000).map(|_| rng.next_u64() % 30_000).collect();
        counts.add_all(&keys);
        let mut want = Vec::new();
        counts.drain_each(|k, n| want.push((k, n)));
        counts.add_all(&keys);
        let slots = counts.slots.len();
        let packed = counts.into_packed();
        assert_eq!(packed.len(), want.len());
        assert!(packed.len() < slots && packed.slots.capacity() == packed.len(), "the empty slots are freed");
        // More parts than keys too: the last parts are empty.
        for parts in [1, 2, 3, 7, 64, want.len() + 5] {
            let mut got = Vec::new();
            for part in 0..parts {
                packed.each_in_part(part, parts, |k, n| got.push((k, n)));
            }
            assert!(got == want, "{parts} parts: another order or other keys");
        }
        let none = KeyCounts::new().into_packed();
        let mut seen = 0;
        none.each_in_part(0, 2, |_, _| seen += 1);
        assert!(none.is_empty() && seen == 0);
    }

    #[test]
    fn a_reserved_table_holds_that_many_keys_without_growing_and_keeps_its_keys() {
        let mut counts = KeyCounts::new();
        counts.add_all(&[1, 2, 2, u64::MAX]);
        assert_eq!(counts.bytes_reserved(10_000), 14_286 * 12);
        counts.reserve(10_000);
        let slots = counts.slots.len();
        assert_eq!(slots, 14_286, "the fewest slots that hold them 7/10 full, not a power of two");
        assert_eq!((counts.get(1), counts.get(2), counts.get(u64::MAX), counts.len()), (1, 2, 1, 3));
        let more: Vec<u64> = (100..100 + 10_000 - 3).collect();
        assert_eq!(counts.bytes_for(more.len()), counts.bytes(), "room for them");
        counts.add_all(&more);
        assert_eq!((counts.slots.len(), counts.len(), counts.get(5000)), (slots, 10_000, 1));
        counts.reserve(100);
        assert_eq!(counts.slots.len(), slots, "a table never shrinks");
        assert_eq!(counts.bytes_reserved(100), counts.bytes());
        // Keys whose low half is past the last slot, and more than fit:
        // the table doubles from its odd size and keeps every count.
        let far: Vec<u64> = (0..20_000u64).map(|i| (i % 500) << 32 | (100_000 + i)).collect();
        counts.add_all(&far);
        counts.add_all(&far[..7]);
        assert_eq!(counts.slots.len(), slots * 4);
        assert_eq!((counts.len(), counts.get(far[3]), counts.get(far[19_999]), counts.get(5000)), (30_000, 2, 1, 1));
    }

    #[test]
    fn a_count_stops_at_its_largest_value() {
        let mut counts = KeyCounts::new();
        counts.add_all(&[9]);
        counts.slots.iter_mut().filter(|s| s.count != 0).for_each(|s| s.count = u32::MAX - 1);
        counts.add_all(&[9, 9, 9]);
        assert_eq!(counts.get(9), u32::MAX);
    }

    #[test]
    fn room_is_reported_before_the_table_grows() {
        let counts = KeyCounts::new();
        // 716 keys fit 1 024 slots at 7/10; one more doubles them.
        assert_eq!(counts.bytes_for(716), FIRST_SLOTS * 12);
        assert_eq!(counts.bytes_for(717), 2 * FIRST_SLOTS * 12);
        assert_eq!(counts.bytes_for(3000), 8 * FIRST_SLOTS * 12);
    }
}
