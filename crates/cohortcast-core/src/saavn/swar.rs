//! Eight bytes at a time: the bit tricks the clickstream's fast parse
//! uses to check digits and read hex user ids without a loop per byte
//! (Warren, *Hacker's Delight*, 2nd ed., chapter 6).

/// 32 hex digits (either case) as the number they spell, eight at a time
/// ([`hex8`]); `None` for any other bytes.
pub(super) fn hex32(b: &[u8]) -> Option<u128> {
    if b.len() != 32 {
        return None;
    }
    let mut v = 0u128;
    for at in [0, 8, 16, 24] {
        v = (v << 32) | hex8(word(b, at))? as u128;
    }
    Some(v)
}

/// `0x01` in every byte of a word.
const ONES: u64 = 0x0101_0101_0101_0101;
/// The top bit of every byte of a word.
const TOPS: u64 = 0x8080_8080_8080_8080;

/// Eight bytes from `b[at..]` as a little-endian word (the first byte
/// lowest); `b` holds them.
pub(super) fn word(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("eight bytes"))
}

/// The top bit of each byte of `x` (all below `0x80`) that lies in
/// `lo..=hi` (Warren, *Hacker's Delight*, 2nd ed., §6-1: `b + 0x80 − lo`
/// reaches the top bit iff `b ≥ lo`, `b + 0x7F − hi` iff `b > hi`, and
/// neither carries into the next byte).
pub(super) fn bytes_in(x: u64, lo: u8, hi: u8) -> u64 {
    let at_least = x.wrapping_add((0x80 - lo as u64) * ONES);
    let above = x.wrapping_add((0x7F - hi as u64) * ONES);
    at_least & !above & TOPS
}

/// Whether the 8 bytes of `x` are all ASCII digits.
pub(super) fn all_digits(x: u64) -> bool {
    x & TOPS == 0 && bytes_in(x, b'0', b'9') == TOPS
}

/// Eight hex digits (either case; the first lowest in `x`) as the number
/// they spell, or `None` if one is not a hex digit.
pub(super) fn hex8(x: u64) -> Option<u32> {
    let letters = bytes_in(x | (0x20 * ONES), b'a', b'f');
    if x & TOPS != 0 || (bytes_in(x, b'0', b'9') | letters) != TOPS {
        return None;
    }
    // Each byte's value: its low four bits, plus 9 for a letter (`A`–`F`
    // and `a`–`f` have bit 6 set, the digits do not).
    let nibbles = (x & (0x0F * ONES)) + ((x >> 6) & ONES) * 9;
    // First digit highest; then pairs of digits to bytes, bytes to 16-bit
    // halves, halves to the word.
    let mut y = nibbles.swap_bytes();
    y = (y | (y >> 4)) & 0x00FF_00FF_00FF_00FF;
    y = (y | (y >> 8)) & 0x0000_FFFF_0000_FFFF;
    y = (y | (y >> 16)) & 0x0000_0000_FFFF_FFFF;
    Some(y as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex8_reads_either_case_and_refuses_the_bytes_around_the_ranges() {
        assert_eq!(hex8(u64::from_le_bytes(*b"89abCDEF")), Some(0x89abcdef));
        for bad in [b"89abCDEG", b"89ab/DEF", b"89ab:DEF", b"89ab@DEF", b"89ab`DEF", b"89abgDEF", b"\x19\x1089abcd"] {
            assert_eq!(hex8(u64::from_le_bytes(*bad)), None, "{bad:?}");
        }
    }
}
