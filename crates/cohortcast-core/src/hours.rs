//! Hours of the day a user listens at, and when a cohort is active.
//!
//! Ingest keeps, for every user, a 24-bit mask: bit `h` is set when the user
//! played anything during hour `h` of the day (local to a fixed UTC offset,
//! on any day). It costs four bytes a user and one `bit_or` per
//! (user, artist) group of the aggregation that already runs, where a
//! histogram of plays per hour would need a second grouping of every play
//! (measured: +25% ingest time, +31% peak memory; see the history of BENCHMARKS.md).
//!
//! A cohort's activity at hour `h` is then the number of its members who
//! listen at that hour, on some day: what a push scheduler needs to know
//! ("62% of this cohort plays music between 20:00 and 21:00").

use crate::error::ParamError;

/// Hours in a day.
pub const HOURS: usize = 24;

/// All 24 hour bits.
pub const ALL_HOURS: u32 = (1 << HOURS) - 1;

/// The hour of the day (0–23) of Unix time `ts`, at `offset_minutes` east
/// of UTC (330 for India).
pub fn hour_of_day(ts: i64, offset_minutes: i32) -> u8 {
    ((ts + offset_minutes as i64 * 60).rem_euclid(86_400) / 3_600) as u8
}

/// The mask bit of the hour of Unix time `ts`.
pub fn hour_bit(ts: i64, offset_minutes: i32) -> u32 {
    1 << hour_of_day(ts, offset_minutes)
}

/// The hours set in `mask`, in order.
pub fn hours_in(mask: u32) -> Vec<u8> {
    (0..HOURS as u8).filter(|&h| mask & (1 << h) != 0).collect()
}

/// Parses a UTC offset such as `+05:30`, `-08:00`, `+0530`, `Z` or `0` into
/// minutes east of UTC (at most 14 hours either way).
pub fn parse_utc_offset(s: &str) -> Result<i32, String> {
    let bad = || format!("UTC offset `{s}` is not of the form +HH:MM (e.g. +05:30 for India, -08:00, Z)");
    let t = s.trim();
    if t == "Z" || t == "z" || t == "0" {
        return Ok(0);
    }
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'+') => (1, &t[1..]),
        Some(b'-') => (-1, &t[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = match rest.split_once(':') {
        Some((h, m)) => (h, m),
        None if rest.len() == 4 => rest.split_at(2),
        None if rest.len() <= 2 => (rest, "0"),
        None => return Err(bad()),
    };
    let digits = |x: &str| !x.is_empty() && x.len() <= 2 && x.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || !digits(m) {
        return Err(bad());
    }
    let (h, m): (i32, i32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h * 60 + m > 14 * 60 {
        return Err(format!("UTC offset `{s}` is out of range: offsets run from -14:00 to +14:00"));
    }
    Ok(sign * (h * 60 + m))
}

/// Writes minutes east of UTC as `+HH:MM`.
pub fn format_utc_offset(minutes: i32) -> String {
    let sign = if minutes < 0 { '-' } else { '+' };
    let m = minutes.unsigned_abs();
    format!("{sign}{:02}:{:02}", m / 60, m % 60)
}

/// Checks an offset in minutes (as [`parse_utc_offset`] would return).
pub fn check_offset(minutes: i32) -> Result<(), ParamError> {
    crate::error::check_range("utc-offset minutes", minutes as f64, -840.0, 840.0)
}

/// For each of `k` cohorts, the number of members active at each hour:
/// `labels[u]` is user `u`'s cohort and `masks[u]` their hour mask.
pub fn cohort_hours(labels: &[u32], masks: &[u32], k: usize) -> Vec<[u64; HOURS]> {
    assert_eq!(labels.len(), masks.len(), "one mask per user");
    let mut out = vec![[0u64; HOURS]; k];
    for (&c, &m) in labels.iter().zip(masks) {
        let row = &mut out[c as usize];
        let mut bits = m & ALL_HOURS;
        while bits != 0 {
            row[bits.trailing_zeros() as usize] += 1;
            bits &= bits - 1;
        }
    }
    out
}

/// The `n` hours with the most active members, most first (an earlier hour
/// first on a tie); hours nobody is active at are left out.
pub fn peak_hours(active: &[u64; HOURS], n: usize) -> Vec<u8> {
    let mut h: Vec<u8> = (0..HOURS as u8).filter(|&h| active[h as usize] > 0).collect();
    h.sort_by(|&a, &b| active[b as usize].cmp(&active[a as usize]).then(a.cmp(&b)));
    h.truncate(n);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_follow_the_offset() {
        // 2017-01-01T00:00:00Z.
        let t = 1_483_228_800;
        assert_eq!(hour_of_day(t, 0), 0);
        assert_eq!(hour_of_day(t + 3_599, 0), 0);
        assert_eq!(hour_of_day(t + 3_600, 0), 1);
        // 00:00 UTC is 05:30 in India and 16:00 the day before at -08:00.
        assert_eq!(hour_of_day(t, 330), 5);
        assert_eq!(hour_of_day(t + 1_800, 330), 6);
        assert_eq!(hour_of_day(t, -480), 16);
        // Before 1970 too.
        assert_eq!(hour_of_day(-1, 0), 23);
        assert_eq!(hour_bit(t + 23 * 3_600, 0), 1 << 23);
    }

    #[test]
    fn offsets_parse_and_print() {
        assert_eq!(parse_utc_offset("+05:30"), Ok(330));
        assert_eq!(parse_utc_offset("+0530"), Ok(330));
        assert_eq!(parse_utc_offset("-08:00"), Ok(-480));
        assert_eq!(parse_utc_offset("-8"), Ok(-480));
        assert_eq!(parse_utc_offset("Z"), Ok(0));
        assert_eq!(parse_utc_offset("+14:00"), Ok(840));
        for bad in ["05:30", "+5:3x", "+14:01", "+05:60", "", "+", "+123:00", "IST"] {
            let e = parse_utc_offset(bad).unwrap_err();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
        for m in [0, 330, -480, 345, -30, 840] {
            assert_eq!(parse_utc_offset(&format_utc_offset(m)), Ok(m));
        }
        assert_eq!(format_utc_offset(-30), "-00:30");
        assert!(check_offset(841).is_err() && check_offset(-840).is_ok());
    }

    #[test]
    fn cohorts_count_members_per_hour() {
        let labels = [0, 1, 0, 1, 1];
        let masks = [1 << 8 | 1 << 21, 1 << 21, 1 << 21, 0, ALL_HOURS];
        let c = cohort_hours(&labels, &masks, 3);
        assert_eq!(c[0][8], 1);
        assert_eq!(c[0][21], 2);
        assert_eq!(c[0].iter().sum::<u64>(), 3);
        assert_eq!(c[1][21], 2);
        assert_eq!(c[1][0], 1);
        assert_eq!(c[1].iter().sum::<u64>(), 25);
        assert_eq!(c[2], [0; HOURS]);
        assert_eq!(peak_hours(&c[0], 3), vec![21, 8]);
        assert_eq!(peak_hours(&c[1], 2), vec![21, 0]);
        assert!(peak_hours(&c[2], 3).is_empty());
        assert_eq!(hours_in(masks[0]), vec![8, 21]);
    }
}
