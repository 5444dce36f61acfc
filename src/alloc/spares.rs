//! The bookkeeping of the large blocks' address space: which extents are
//! spare (freed blocks kept mapped, their pages still in memory) and how
//! many bytes are live, with no system calls in it. The allocator asks it
//! what to do under its lock and does the mapping and unmapping after.
//!
//! The rule that bounds the memory it keeps: live and spare bytes together
//! never exceed the most bytes that were ever live at once, so a run maps
//! no more than it would if every freed block were unmapped at once. Spare
//! bytes are cut off (to be unmapped) only when a fresh mapping would
//! break that rule.

/// How many spare extents are kept (adjacent ones are merged; a freed
/// block that finds no slot is unmapped).
pub const SLOTS: usize = 64;

/// A range of mapped address space, `len` bytes from `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub start: usize,
    pub len: usize,
}

impl Extent {
    fn end(self) -> usize {
        self.start + self.len
    }
}

/// Extents cut from the spares, to be unmapped once the lock is let go.
pub struct Cuts {
    pieces: [Extent; SLOTS],
    count: usize,
}

impl Cuts {
    pub const fn new() -> Self {
        Cuts { pieces: [Extent { start: 0, len: 0 }; SLOTS], count: 0 }
    }

    fn push(&mut self, e: Extent) {
        // Every cut but the last empties a slot, so there are never more
        // than SLOTS of them.
        self.pieces[self.count] = e;
        self.count += 1;
    }

    pub fn pieces(&self) -> &[Extent] {
        &self.pieces[..self.count]
    }
}

/// The spare extents and the live byte counts (every length a multiple of
/// the allocator's huge page, so every cut is one too).
pub struct Spares {
    extents: [Extent; SLOTS],
    count: usize,
    /// Bytes in spare extents.
    spare: usize,
    /// Bytes of address space under live blocks.
    live: usize,
    /// The most `live` has been.
    high: usize,
}

impl Spares {
    pub const fn new() -> Self {
        Spares { extents: [Extent { start: 0, len: 0 }; SLOTS], count: 0, spare: 0, live: 0, high: 0 }
    }

    /// Bytes kept spare.
    #[cfg(test)]
    pub fn spare(&self) -> usize {
        self.spare
    }

    /// Bytes under live blocks.
    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.live
    }

    /// The most bytes ever live at once.
    #[cfg(test)]
    pub fn high(&self) -> usize {
        self.high
    }

    fn remove(&mut self, i: usize) -> Extent {
        let e = self.extents[i];
        self.count -= 1;
        self.extents[i] = self.extents[self.count];
        self.spare -= e.len;
        e
    }

    /// A live block of `len` bytes made of spare pages: the start of the
    /// smallest spare extent that holds it (the rest of the extent stays
    /// spare).
    pub fn reuse(&mut self, len: usize) -> Option<usize> {
        let i = (0..self.count).filter(|&i| self.extents[i].len >= len).min_by_key(|&i| self.extents[i].len)?;
        let start = self.extents[i].start;
        self.take_head(i, len);
        Some(start)
    }

    /// Grows the live block that ends at `end` by `len` bytes in place,
    /// when a spare extent starts there and holds them.
    pub fn extend(&mut self, end: usize, len: usize) -> bool {
        let Some(i) = (0..self.count).find(|&i| self.extents[i].start == end && self.extents[i].len >= len) else {
            return false;
        };
        self.take_head(i, len);
        true
    }

    /// Counts the first `len` bytes of spare extent `i` as live.
    fn take_head(&mut self, i: usize, len: usize) {
        if self.extents[i].len == len {
            self.remove(i);
        } else {
            self.extents[i].start += len;
            self.extents[i].len -= len;
            self.spare -= len;
        }
        self.live += len;
    }

    /// Takes the largest spare extent out, for its pages to be moved into
    /// a fresh mapping (which [`Spares::mapped`] then counts).
    pub fn largest(&mut self) -> Option<Extent> {
        let i = self.largest_index()?;
        Some(self.remove(i))
    }

    fn largest_index(&self) -> Option<usize> {
        (0..self.count).max_by_key(|&i| self.extents[i].len)
    }

    /// Counts a fresh mapping of `len` bytes as live in place of a live
    /// block of `replaces` bytes (0 for a new block), and cuts spare bytes
    /// off the ends of the largest extents into `cuts` until live and
    /// spare bytes together are within the most ever live.
    pub fn mapped(&mut self, len: usize, replaces: usize, cuts: &mut Cuts) {
        self.live = self.live + len - replaces;
        self.high = self.high.max(self.live);
        while self.spare > self.high - self.live {
            let excess = self.spare - (self.high - self.live);
            let i = self.largest_index().expect("spare bytes lie in extents");
            if self.extents[i].len <= excess {
                cuts.push(self.remove(i));
            } else {
                let e = &mut self.extents[i];
                e.len -= excess;
                cuts.push(Extent { start: e.end(), len: excess });
                self.spare -= excess;
            }
        }
    }

    /// A live block of `len` bytes is gone (freed, or its pages moved
    /// away); what it covered is then given to [`Spares::keep`] or
    /// unmapped.
    pub fn retire(&mut self, len: usize) {
        self.live -= len;
    }

    /// A live block's extent (or the tail a shrink cuts off) freed:
    /// [`Spares::retire`] then [`Spares::keep`].
    pub fn free(&mut self, e: Extent) -> Option<Extent> {
        self.retire(e.len);
        self.keep(e)
    }

    /// Keeps a mapped extent that no live block covers as spare, merged
    /// with the spare extents beside it; hands it back, to be unmapped,
    /// when there is no slot for it.
    pub fn keep(&mut self, e: Extent) -> Option<Extent> {
        let before = (0..self.count).find(|&i| self.extents[i].end() == e.start);
        let after = (0..self.count).find(|&i| self.extents[i].start == e.end());
        match (before, after) {
            (Some(b), Some(a)) => {
                let next = self.remove(a);
                // `remove` moved the last extent into slot `a`; `b` may
                // have been that one.
                let b = if b == self.count { a } else { b };
                self.extents[b].len += e.len + next.len;
                self.spare += next.len;
            }
            (Some(b), None) => self.extents[b].len += e.len,
            (None, Some(a)) => {
                self.extents[a].start = e.start;
                self.extents[a].len += e.len;
            }
            (None, None) if self.count < SLOTS => {
                self.extents[self.count] = e;
                self.count += 1;
            }
            (None, None) => return Some(e),
        }
        self.spare += e.len;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: usize = 2 << 20;

    fn ext(start: usize, pages: usize) -> Extent {
        Extent { start: start * P, len: pages * P }
    }

    /// A fresh mapping, as the allocator counts it (no spare to grow).
    fn map(s: &mut Spares, pages: usize) {
        let mut cuts = Cuts::new();
        s.mapped(pages * P, 0, &mut cuts);
        assert!(cuts.pieces().is_empty());
    }

    fn bounded(s: &Spares) -> bool {
        s.live() + s.spare() <= s.high()
    }

    #[test]
    fn a_freed_block_is_reused_best_fit_and_its_rest_stays_spare() {
        let mut s = Spares::new();
        for _ in 0..3 {
            map(&mut s, 10);
        }
        assert_eq!(s.free(ext(0, 4)), None);
        assert_eq!(s.free(ext(100, 2)), None);
        assert_eq!(s.spare(), 6 * P);
        // The 2-page extent is the best fit for one page; the rest of it
        // stays spare and serves the next page.
        assert_eq!(s.reuse(P), Some(100 * P));
        assert_eq!(s.reuse(P), Some(101 * P));
        assert_eq!(s.reuse(5 * P), None, "no extent holds 5 pages");
        assert_eq!(s.reuse(4 * P), Some(0));
        assert_eq!((s.spare(), s.live()), (0, 30 * P));
        assert!(bounded(&s));
    }

    #[test]
    fn neighbours_merge_whatever_order_they_come_back_in() {
        for order in [[0, 1, 2], [2, 1, 0], [0, 2, 1], [1, 0, 2], [2, 0, 1], [1, 2, 0]] {
            let mut s = Spares::new();
            map(&mut s, 9);
            for i in order {
                assert_eq!(s.free(ext(3 * i, 3)), None);
            }
            assert_eq!(s.count, 1, "order {order:?}");
            assert_eq!(s.extents[0], ext(0, 9), "order {order:?}");
            assert_eq!(s.reuse(9 * P), Some(0));
        }
    }

    #[test]
    fn a_live_block_grows_in_place_into_the_spare_after_it() {
        let mut s = Spares::new();
        map(&mut s, 8);
        s.free(ext(4, 4));
        assert!(!s.extend(3 * P, P), "the spare does not start at the block's end");
        assert!(s.extend(4 * P, 3 * P));
        assert_eq!(s.extents[0], ext(7, 1));
        assert!(!s.extend(7 * P, 2 * P), "one page left, two asked");
        assert_eq!((s.live(), s.spare()), (7 * P, P));
    }

    #[test]
    fn fresh_mappings_cut_the_spares_to_the_most_ever_live() {
        let mut s = Spares::new();
        map(&mut s, 6);
        map(&mut s, 4);
        s.free(ext(0, 6));
        s.free(ext(50, 4));
        assert_eq!((s.live(), s.spare(), s.high()), (0, 10 * P, 10 * P));
        // Taking the largest spare (6 pages) to grow into a fresh 8-page
        // block: live 8 + spare 4 > 10, so 2 pages are cut off the end of
        // the largest spare left.
        assert_eq!(s.largest(), Some(ext(0, 6)));
        let mut cuts = Cuts::new();
        s.mapped(8 * P, 0, &mut cuts);
        assert_eq!(cuts.pieces(), &[ext(52, 2)]);
        assert_eq!((s.live(), s.spare(), s.high()), (8 * P, 2 * P, 10 * P));
        // Past the most ever live, every spare byte goes.
        let mut cuts = Cuts::new();
        s.mapped(5 * P, 0, &mut cuts);
        assert_eq!(cuts.pieces(), &[ext(50, 2)]);
        assert_eq!((s.live(), s.spare(), s.high()), (13 * P, 0, 13 * P));
        // A block replaced by a larger fresh one counts only the difference.
        s.free(ext(200, 3));
        let mut cuts = Cuts::new();
        s.mapped(7 * P, 5 * P, &mut cuts);
        assert_eq!(cuts.pieces(), &[ext(201, 2)]);
        assert!(bounded(&s));
    }

    #[test]
    fn a_block_with_no_slot_is_handed_back() {
        let mut s = Spares::new();
        map(&mut s, 2 * SLOTS + 2);
        for i in 0..SLOTS {
            assert_eq!(s.free(ext(2 * i, 1)), None);
        }
        assert_eq!(s.free(ext(500, 1)), Some(ext(500, 1)));
        // A neighbour still merges with no slot free.
        assert_eq!(s.free(ext(1, 1)), None);
        assert_eq!(s.spare(), (SLOTS + 1) * P);
        assert!(bounded(&s));
    }

    #[test]
    fn the_bound_holds_through_a_long_mix_of_calls() {
        // A seeded walk of allocations, frees, growths and shrinks over
        // page-numbered blocks, checking that live and spare bytes always
        // add up and stay within the most ever live.
        let mut s = Spares::new();
        let mut blocks: Vec<Extent> = Vec::new();
        let mut next = 0usize;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let pages = 1 + (x >> 40) as usize % 16;
            match x % 4 {
                0 | 1 => {
                    let start = match s.reuse(pages * P) {
                        Some(p) => p,
                        None => {
                            let mut cuts = Cuts::new();
                            if let Some(e) = s.largest() {
                                cuts.push(e);
                            }
                            s.mapped(pages * P, 0, &mut cuts);
                            next += pages + 1;
                            (next - pages - 1) * P + (1 << 40)
                        }
                    };
                    blocks.push(Extent { start, len: pages * P });
                }
                2 if !blocks.is_empty() => {
                    let b = blocks.swap_remove((x >> 20) as usize % blocks.len());
                    s.free(b);
                }
                _ if !blocks.is_empty() => {
                    let i = (x >> 20) as usize % blocks.len();
                    let b = blocks[i];
                    if b.len > P {
                        s.free(Extent { start: b.end() - P, len: P });
                        blocks[i].len -= P;
                    } else if s.extend(b.end(), P) {
                        blocks[i].len += P;
                    }
                }
                _ => {}
            }
            assert_eq!(s.live(), blocks.iter().map(|b| b.len).sum::<usize>());
            assert_eq!(s.spare(), s.extents[..s.count].iter().map(|e| e.len).sum::<usize>());
            assert!(bounded(&s));
            for (i, a) in s.extents[..s.count].iter().enumerate() {
                for b in &s.extents[i + 1..s.count] {
                    assert!(a.end() < b.start || b.end() < a.start, "spares {a:?} and {b:?} touch or overlap");
                }
                assert!(blocks.iter().all(|b| a.end() <= b.start || b.end() <= a.start), "a spare under a live block");
            }
        }
    }
}
