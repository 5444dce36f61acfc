//! Seeded random inputs for the fuzz tests of the row rules, the line
//! reader and the API: byte strings drawn from an alphabet rich in what
//! breaks parsers (separators, quotes, line ends, byte-order marks, bytes
//! that are not UTF-8, digits and hex where ids and times go).
//!
//! [`cases`] is the number of cases a fuzz test runs: 20 000, or
//! `COHORTCAST_FUZZ_CASES`, which CI raises.

use crate::rng::Rng;

/// Pieces a fuzzed line is made of.
const PIECES: &[&[u8]] = &[
    b",",
    b",",
    b"\"",
    b"\"\"",
    b"\r",
    b"\xEF\xBB\xBF",
    b"\xFF",
    b"\xC3",
    b"\xC3\xA9",
    b"\xEF\xBF\xBD",
    b"\x1b[31m",
    b"\0",
    b" ",
    b"-",
    b"0",
    b"9",
    b"1483232144",
    b"20170101",
    b"20170230",
    b"0123456789abcdef0123456789abcdef",
    b"0123456789ABCDEF",
    b"S0001372",
    b"A00001",
    b"N0004",
    b"song_id",
    b"artist_id",
    b"user_id",
    b"notification_id",
    b"_id",
    b"x",
];

/// How many cases a fuzz test runs.
pub fn cases() -> usize {
    std::env::var("COHORTCAST_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000)
}

/// A random line of up to `max_pieces` pieces (no `\n`).
pub fn line(rng: &mut Rng, max_pieces: usize) -> Vec<u8> {
    let n = rng.below(max_pieces + 1);
    let mut out = Vec::new();
    for _ in 0..n {
        if rng.below(8) == 0 {
            out.push(rng.below(256) as u8);
            if out.last() == Some(&b'\n') {
                out.pop();
            }
        } else {
            out.extend_from_slice(PIECES[rng.below(PIECES.len())]);
        }
    }
    out
}
