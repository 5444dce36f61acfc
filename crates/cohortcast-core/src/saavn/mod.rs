//! The Saavn input layout and its row rules.
//!
//! Four headerless CSV inputs (see the README for the full contract):
//!
//! | input | columns |
//! |---|---|
//! | clickstream | `user_id,timestamp,song_id,date` |
//! | metadata | `song_id,artist_id[,artist_id...]` (or one row per artist) |
//! | notification_actor | `notification_id,artist_id` |
//! | notification_clicks | `notification_id,user_id,date` |
//!
//! A row that breaks a rule is rejected with a [`Reject`] reason; the
//! ingest counts rejects by reason and never stops on them. The same
//! functions decide for the DataFusion plan (as scalar UDFs) and for the
//! scan that finds example lines, so both always agree.

use serde::{Deserialize, Serialize};

mod swar;

use swar::{all_digits, hex32, word};

/// Which input a row came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// Plays: `user_id,timestamp,song_id,date`.
    Clickstream,
    /// Songs: `song_id,artist_id[,artist_id...]`.
    Metadata,
    /// Notifications: `notification_id,artist_id`.
    NotificationActor,
    /// Clicks: `notification_id,user_id,date`.
    NotificationClicks,
}

impl Input {
    /// All four, in the order of the `--data` folder layout.
    pub const ALL: [Input; 4] =
        [Input::Clickstream, Input::Metadata, Input::NotificationActor, Input::NotificationClicks];

    /// The folder name under `--data` and the name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Input::Clickstream => "clickstream",
            Input::Metadata => "metadata",
            Input::NotificationActor => "notification_actor",
            Input::NotificationClicks => "notification_clicks",
        }
    }

    /// The expected columns, for error messages.
    pub fn layout(self) -> &'static str {
        match self {
            Input::Clickstream => "user_id,timestamp,song_id,date",
            Input::Metadata => "song_id,artist_id[,artist_id...]",
            Input::NotificationActor => "notification_id,artist_id",
            Input::NotificationClicks => "notification_id,user_id,date",
        }
    }

    /// Checks one line (without its line terminator) against the layout.
    pub fn check(self, line: &str) -> Result<(), Reject> {
        if let Some(r) = marked_reject(line) {
            return Err(r);
        }
        match self {
            Input::Clickstream => check_play(line),
            Input::Metadata => check_metadata(line),
            Input::NotificationActor => check_actor(line),
            Input::NotificationClicks => check_click(line),
        }
    }
}

/// Why a row was rejected. The `code()` strings are the keys of the reject
/// counts in `summary.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Reject {
    /// Not the number of comma-separated fields the layout has.
    WrongFieldCount,
    /// `user_id` is empty.
    EmptyUserId,
    /// `user_id` is not 32 hexadecimal characters.
    BadUserId,
    /// `song_id` is empty.
    EmptySongId,
    /// An `artist_id` is empty.
    EmptyArtistId,
    /// `notification_id` is empty.
    EmptyNotificationId,
    /// `timestamp` is not a whole number of Unix seconds.
    BadTimestamp,
    /// `date` is not a calendar date written `yyyyMMdd`.
    BadDate,
    /// The line is not UTF-8 text.
    NotUtf8,
    /// A quote that does not close, or a quoted field holding a comma
    /// (ids cannot).
    BadQuoting,
}

impl Reject {
    /// Every reason, in report order.
    pub const ALL: [Reject; 10] = [
        Reject::WrongFieldCount,
        Reject::EmptyUserId,
        Reject::BadUserId,
        Reject::EmptySongId,
        Reject::EmptyArtistId,
        Reject::EmptyNotificationId,
        Reject::BadTimestamp,
        Reject::BadDate,
        Reject::NotUtf8,
        Reject::BadQuoting,
    ];

    /// Stable snake_case code.
    pub fn code(self) -> &'static str {
        match self {
            Reject::WrongFieldCount => "wrong_field_count",
            Reject::EmptyUserId => "empty_user_id",
            Reject::BadUserId => "bad_user_id",
            Reject::EmptySongId => "empty_song_id",
            Reject::EmptyArtistId => "empty_artist_id",
            Reject::EmptyNotificationId => "empty_notification_id",
            Reject::BadTimestamp => "bad_timestamp",
            Reject::BadDate => "bad_date",
            Reject::NotUtf8 => "not_utf8",
            Reject::BadQuoting => "bad_quoting",
        }
    }

    /// Parses a code back.
    pub fn from_code(s: &str) -> Option<Reject> {
        Reject::ALL.into_iter().find(|r| r.code() == s)
    }

    /// A sentence for a person, naming the offending value where there is one.
    pub fn describe(self, input: Input, line: &str) -> String {
        let fields: Vec<&str> = line.split(',').collect();
        match self {
            Reject::WrongFieldCount => {
                format!("{} fields where {} expects {}", fields.len(), input.name(), input.layout())
            }
            Reject::BadTimestamp => {
                format!("timestamp `{}` is not Unix seconds from 1970 to 9999", fields.get(1).unwrap_or(&""))
            }
            Reject::BadUserId => {
                let u = if input == Input::Clickstream { fields.first() } else { fields.get(1) };
                format!("user_id `{}` is not 32 hexadecimal characters", u.unwrap_or(&""))
            }
            Reject::BadDate => {
                let d = if input == Input::Clickstream { fields.get(3) } else { fields.get(2) };
                format!("date `{}` is not a calendar date yyyyMMdd", d.unwrap_or(&""))
            }
            Reject::NotUtf8 => "the line is not UTF-8 text".into(),
            Reject::BadQuoting => "a quote does not close, or a quoted field holds a comma".into(),
            other => other.code().replace('_', " "),
        }
    }
}

fn is_date(s: &str) -> bool {
    s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()) && is_calendar_date(s.as_bytes())
}

/// Whether eight ASCII digits `yyyyMMdd` name a day of the Gregorian
/// calendar (year 1000 to 9999).
fn is_calendar_date(b: &[u8]) -> bool {
    let num = |r: std::ops::Range<usize>| b[r].iter().fold(0u32, |n, &d| n * 10 + (d - b'0') as u32);
    let (y, m, d) = (num(0..4), num(4..6), num(6..8));
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    y >= 1000 && (1..=days).contains(&d)
}

/// The last second of year 9999, the latest time a `yyyyMMdd` date can
/// name.
pub const MAX_TIMESTAMP: i64 = 253_402_300_799;

/// Whether `t` is a Unix time the inputs and the API accept: from 1970 to
/// the end of year 9999.
pub fn is_timestamp(t: i64) -> bool {
    (0..=MAX_TIMESTAMP).contains(&t)
}

/// What a raw line of an input is, before the rules: data (a UTF-8
/// byte-order mark, a trailing `\r` and RFC 4180 quotes taken off), a
/// header naming the layout's columns (skipped, not counted), or a line
/// that cannot be text of the layout at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawLine<'a> {
    /// The line's text.
    Data(std::borrow::Cow<'a, str>),
    /// A header line: `user_id,timestamp,song_id,date` and the like.
    Header,
    /// Rejected before the rules: [`Reject::NotUtf8`] or [`Reject::BadQuoting`].
    Bad(Reject),
}

/// The column names a header line may use, in any case.
const HEADER_WORDS: [&str; 6] = ["user_id", "timestamp", "song_id", "date", "artist_id", "notification_id"];

/// Reads one raw line (without its `\n`); see [`RawLine`].
pub fn raw_line(bytes: &[u8]) -> RawLine<'_> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let Ok(text) = std::str::from_utf8(bytes) else { return RawLine::Bad(Reject::NotUtf8) };
    let text = if text.contains('"') {
        match unquote(text) {
            Some(t) => std::borrow::Cow::Owned(t),
            None => return RawLine::Bad(Reject::BadQuoting),
        }
    } else {
        std::borrow::Cow::Borrowed(text)
    };
    if is_header(&text) {
        return RawLine::Header;
    }
    RawLine::Data(text)
}

/// Whether a line is a header: two or more fields, each a column name.
pub fn is_header(text: &str) -> bool {
    let b = text.as_bytes();
    // Most lines fail here: a header starts with `u`, `s` or `n`.
    if b.len() > 80 || !matches!(b.first(), Some(b'u' | b'U' | b's' | b'S' | b'n' | b'N')) || !text.contains(',') {
        return false;
    }
    text.split(',').all(|f| HEADER_WORDS.iter().any(|w| f.trim().eq_ignore_ascii_case(w)))
}

/// A line with RFC 4180 quoting taken off (`"a""b"` is `a"b`), or `None`
/// where a quote does not close or a quoted field holds a comma.
fn unquote(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    for (i, field) in split_quoted(text)?.into_iter().enumerate() {
        if field.contains(',') {
            return None;
        }
        if i > 0 {
            out.push(',');
        }
        out.push_str(&field);
    }
    Some(out)
}

/// The fields of a line with RFC 4180 quoting, or `None` where a quote
/// does not close or text follows a closing quote.
fn split_quoted(text: &str) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    '"' => break,
                    c => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Some(fields);
                }
                Some(',') => {}
                Some(_) => return None,
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Some(fields);
                    }
                    Some(',') => break,
                    Some('"') => return None,
                    Some(c) => field.push(c),
                }
            }
        }
        fields.push(field);
    }
}

/// The text a line rejected before the rules stands for in a table of
/// lines: it starts with U+FFFD, which no rule accepts in that place.
pub fn marked(r: Reject) -> String {
    format!("\u{FFFD}{}", r.code())
}

/// The reject a [`marked`] line stands for.
fn marked_reject(line: &str) -> Option<Reject> {
    line.strip_prefix('\u{FFFD}').map(|code| Reject::from_code(code).unwrap_or(Reject::NotUtf8))
}

/// Trims a trailing carriage return (files written on Windows).
pub fn trim_eol(line: &str) -> &str {
    line.strip_suffix('\r').unwrap_or(line)
}

/// A well-formed play, borrowed from its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Play<'a> {
    /// The user id as a 128-bit number (see [`user_key`]).
    pub user: u128,
    /// Unix seconds.
    pub timestamp: i64,
    /// `song_id`.
    pub song: &'a str,
}

/// A user id (32 hexadecimal characters, either case) as the 128-bit number
/// it spells. Ingest groups plays by this number instead of by the string:
/// 16 bytes, hashed and compared as two integers. [`user_id`] writes it back
/// in lowercase.
pub fn user_key(id: &str) -> Option<u128> {
    hex32(id.as_bytes())
}

/// A `timestamp` field: an optional `-` and 1 to 18 digits.
fn parse_timestamp(s: &str) -> Option<i64> {
    let (neg, digits) = match s.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        all => (false, all),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut v = 0i64;
    for &c in digits {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + d as i64;
    }
    Some(if neg { -v } else { v }).filter(|&t| is_timestamp(t))
}

/// A 64-bit hash of a song id, the same on every machine and in every
/// process (ingest joins plays to the metadata on it, on a Ballista
/// executor as on the client). Multiply-xor-rotate over 8-byte words with
/// MurmurHash3's 64-bit finaliser (Appleby 2011). With a million songs the
/// chance that two metadata songs share a key is about 3 in 10^8, and
/// ingest checks it; an id missing from the metadata takes a known song's
/// key with odds near 5 in 10^14.
pub fn song_key(song: &str) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes = song.as_bytes();
    let mut h = 0x2545_f491_4f6c_dd1d ^ (bytes.len() as u64).wrapping_mul(K);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ w.wrapping_mul(K)).rotate_left(29).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(w).wrapping_mul(K)).rotate_left(29).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }
    mix64(h)
}

/// MurmurHash3's 64-bit finaliser (Appleby 2011): every input bit flips
/// each output bit with probability about one half.
pub fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Hashes a 128-bit user key (or a 64-bit song key) for hash maps: the
/// two halves mixed by one multiply and [`mix64`] (keys are ids, not
/// attacker input, and SipHash was a visible share of the ingest's time).
#[derive(Default)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        mix64(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, k: u64) {
        self.0 = k;
    }
    fn write_u128(&mut self, k: u128) {
        self.0 =
            ((k >> 64) as u64 ^ (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    }
}

/// [`KeyHasher`] as a map's hasher builder.
pub type KeyHash = std::hash::BuildHasherDefault<KeyHasher>;

/// Row numbers of user ids, found by their [`user_key`]: a hash and one
/// comparison of two integers a lookup, where a map of the strings hashed
/// and compared 32 bytes (0.5 s of the medium set's evaluation).
#[derive(Debug, Default, Clone)]
pub struct UserIndex(std::collections::HashMap<u128, u32, KeyHash>);

impl UserIndex {
    /// Numbers the ids in order; an id that is not a user key (32 hex
    /// digits) is left out, and of ids with one key the first is kept.
    pub fn new<'a>(ids: impl IntoIterator<Item = &'a str>) -> Self {
        let mut map = std::collections::HashMap::default();
        for (i, id) in ids.into_iter().enumerate() {
            if let Some(k) = user_key(id) {
                map.entry(k).or_insert(i as u32);
            }
        }
        UserIndex(map)
    }

    /// The number of `id`, in either case.
    pub fn get(&self, id: &str) -> Option<u32> {
        self.0.get(&user_key(id)?).copied()
    }
}

/// The user id of a [`user_key`], as 32 lowercase hexadecimal characters.
/// Lowercase ids sort in the same order as their keys.
pub fn user_id(key: u128) -> String {
    format!("{key:032x}")
}

fn check_user(user: &str) -> Result<u128, Reject> {
    if user.is_empty() {
        return Err(Reject::EmptyUserId);
    }
    user_key(user).ok_or(Reject::BadUserId)
}

/// Parses one clickstream line (a trailing `\r` is ignored). This runs
/// once per play: the usual line (a 32-character user id, a timestamp of
/// digits, a date of 8) is read by `parse_usual` at the fields' places,
/// eight bytes at a time; any other line, and every rejected one, by one
/// pass over the bytes that finds the commas (avoiding the general
/// `split`). Both give the same result for every line (a test compares
/// them).
pub fn parse_play(line: &str) -> Result<Play<'_>, Reject> {
    let line = trim_eol(line);
    match parse_usual(line.as_bytes()) {
        Some((user, timestamp, song)) => Ok(Play { user, timestamp, song: &line[song] }),
        None => parse_play_fields(line),
    }
}

/// The usual clickstream line, `<32 hex>,<1 to 18 digits>,<song>,<8
/// digits>`, as (user key, timestamp, the song's byte range), or `None`
/// for any other line (which may still be good: a negative timestamp, say).
fn parse_usual(b: &[u8]) -> Option<(u128, i64, std::ops::Range<usize>)> {
    let n = b.len();
    // 32 + 1 + 1 + 1 + 1 + 1 + 8: the shortest such line.
    if n < 45 || b[32] != b',' || b[n - 9] != b',' || !all_digits(word(b, n - 8)) || !is_calendar_date(&b[n - 8..]) {
        return None;
    }
    let user = hex32(&b[..32])?;
    // At most 18 digits, which cannot overflow; a 19th is not a comma.
    let (mut timestamp, mut at) = (0i64, 33);
    while at < 33 + 18 && b[at].is_ascii_digit() {
        timestamp = timestamp * 10 + (b[at] - b'0') as i64;
        at += 1;
    }
    if b[at] != b',' || at == 33 || timestamp > MAX_TIMESTAMP {
        return None;
    }
    let song = at + 1..n - 9;
    if song.is_empty() || b[song.clone()].contains(&b',') {
        return None;
    }
    Some((user, timestamp, song))
}

/// [`parse_play`] by finding the commas first, for any line.
fn parse_play_fields(line: &str) -> Result<Play<'_>, Reject> {
    if let Some(r) = marked_reject(line) {
        return Err(r);
    }
    let bytes = line.as_bytes();
    let mut commas = [0usize; 3];
    let mut found = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b',' {
            if found == 3 {
                return Err(Reject::WrongFieldCount);
            }
            commas[found] = i;
            found += 1;
        }
    }
    if found != 3 {
        return Err(Reject::WrongFieldCount);
    }
    let user = &line[..commas[0]];
    let ts = &line[commas[0] + 1..commas[1]];
    let song = &line[commas[1] + 1..commas[2]];
    let date = &line[commas[2] + 1..];
    let user = check_user(user)?;
    if song.is_empty() {
        return Err(Reject::EmptySongId);
    }
    let timestamp = parse_timestamp(ts).ok_or(Reject::BadTimestamp)?;
    if !is_date(date) {
        return Err(Reject::BadDate);
    }
    Ok(Play { user, timestamp, song })
}

fn check_play(line: &str) -> Result<(), Reject> {
    parse_play(line).map(|_| ())
}

fn check_metadata(line: &str) -> Result<(), Reject> {
    let mut it = trim_eol(line).split(',');
    let song = it.next().unwrap_or("");
    let artists: Vec<&str> = it.collect();
    if artists.is_empty() {
        return Err(Reject::WrongFieldCount);
    }
    if song.is_empty() {
        return Err(Reject::EmptySongId);
    }
    if artists.iter().all(|a| a.is_empty()) {
        return Err(Reject::EmptyArtistId);
    }
    Ok(())
}

fn check_actor(line: &str) -> Result<(), Reject> {
    let mut it = trim_eol(line).split(',');
    let (Some(n), Some(a), None) = (it.next(), it.next(), it.next()) else {
        return Err(Reject::WrongFieldCount);
    };
    if n.is_empty() {
        return Err(Reject::EmptyNotificationId);
    }
    if a.is_empty() {
        return Err(Reject::EmptyArtistId);
    }
    Ok(())
}

fn check_click(line: &str) -> Result<(), Reject> {
    let mut it = trim_eol(line).split(',');
    let (Some(n), Some(u), Some(d), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(Reject::WrongFieldCount);
    };
    if n.is_empty() {
        return Err(Reject::EmptyNotificationId);
    }
    check_user(u)?;
    if !is_date(d) {
        return Err(Reject::BadDate);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_index_finds_ids_in_either_case_and_nothing_else() {
        let a = "0123456789abcdef0123456789abcdef";
        let b = "ffffffffffffffffffffffffffffffff";
        let ids = [a.to_string(), "not-a-user".to_string(), b.to_string(), a.to_uppercase()];
        let index = UserIndex::new(ids.iter().map(String::as_str));
        assert_eq!(index.get(a), Some(0));
        assert_eq!(index.get(&a.to_uppercase()), Some(0), "the first of one key is kept");
        assert_eq!(index.get(&b.to_uppercase()), Some(2));
        assert_eq!(index.get("not-a-user"), None);
        assert_eq!(index.get("0123456789abcdef0123456789abcdee"), None);
        assert_eq!(index.get(&a[..31]), None);
    }

    #[test]
    fn raw_lines_lose_marks_quotes_and_headers_and_bad_text_is_named() {
        let data = |t: &str| RawLine::Data(std::borrow::Cow::Owned(t.to_string()));
        assert_eq!(raw_line(b"\xEF\xBB\xBFN0000,A1"), data("N0000,A1"));
        assert_eq!(raw_line(b"S1,A1\r"), data("S1,A1"));
        assert_eq!(raw_line(b"\"S1\",\"A1\""), data("S1,A1"));
        assert_eq!(raw_line(b"\"S \"\"1\"\"\",A1"), data("S \"1\",A1"));
        assert_eq!(raw_line(b"\"S1,x\",A1"), RawLine::Bad(Reject::BadQuoting));
        assert_eq!(raw_line(b"\"S1,A1"), RawLine::Bad(Reject::BadQuoting));
        assert_eq!(raw_line(b"\"S1\"x,A1"), RawLine::Bad(Reject::BadQuoting));
        assert_eq!(raw_line(b"S\"1,A1"), RawLine::Bad(Reject::BadQuoting));
        assert_eq!(raw_line(b"S1,A\xff1"), RawLine::Bad(Reject::NotUtf8));
        for h in [
            "user_id,timestamp,song_id,date",
            "\u{FEFF}song_id,artist_id",
            "SONG_ID,ARTIST_ID,ARTIST_ID",
            "\"notification_id\",\"artist_id\"",
            "notification_id,user_id,date",
        ] {
            assert_eq!(raw_line(h.as_bytes()), RawLine::Header, "{h}");
        }
        assert_eq!(raw_line(b"song_id,A1"), data("song_id,A1"), "a song may be called song_id");
        // A marked line is rejected for its reason by every input.
        for input in Input::ALL {
            assert_eq!(input.check(&marked(Reject::BadQuoting)), Err(Reject::BadQuoting));
            assert_eq!(input.check(&marked(Reject::NotUtf8)), Err(Reject::NotUtf8));
        }
    }

    /// Fuzz: any bytes are read without a panic into data that the rules
    /// take apart the same way on the fast and the general path; quoting
    /// plain fields and reading them back gives the fields.
    #[test]
    fn fuzzed_lines_never_panic_and_quotes_round_trip() {
        let mut rng = crate::rng::Rng::new(2026);
        for _ in 0..crate::fuzz::cases() {
            let bytes = crate::fuzz::line(&mut rng, 12);
            match raw_line(&bytes) {
                RawLine::Data(text) => {
                    // A quote left in the text was written doubled.
                    assert!(!text.contains('"') || bytes.windows(2).any(|w| w == b"\"\""), "{text:?} from {bytes:?}");
                    for input in Input::ALL {
                        let _ = input.check(&text);
                    }
                    let trimmed = trim_eol(&text);
                    assert_eq!(parse_play(&text), parse_play_fields(trimmed), "{text:?}");
                }
                RawLine::Header => assert!(bytes.len() < 200),
                RawLine::Bad(r) => assert!(matches!(r, Reject::NotUtf8 | Reject::BadQuoting)),
            }
            // Fields of the line without quotes or commas, quoted back.
            let text = String::from_utf8_lossy(&bytes).replace(['"', ',', '\r'], "");
            let fields: Vec<&str> = text.split(' ').collect();
            if fields.len() < 2 || fields.iter().all(|f| f.is_empty()) {
                continue;
            }
            let quoted: Vec<String> = fields
                .iter()
                .enumerate()
                .map(|(i, f)| if i % 2 == 0 { format!("\"{f}\"") } else { f.to_string() })
                .collect();
            // The first field is quoted, so a byte-order mark in it stays.
            let want = fields.join(",");
            match raw_line(quoted.join(",").as_bytes()) {
                RawLine::Data(t) => assert_eq!(t, want, "{quoted:?}"),
                RawLine::Header => assert!(is_header(&want), "{quoted:?}"),
                RawLine::Bad(r) => panic!("{quoted:?}: {r:?}"),
            }
        }
    }

    #[test]
    fn dates_are_days_of_the_calendar() {
        let u = "0123456789abcdef0123456789abcdef";
        for good in ["20170101", "20160229", "20001231", "20000229"] {
            assert_eq!(Input::Clickstream.check(&format!("{u},1500000000,s1,{good}")), Ok(()), "{good}");
            assert_eq!(Input::NotificationClicks.check(&format!("n,{u},{good}")), Ok(()), "{good}");
        }
        for bad in ["20171301", "20170230", "00000000", "20170100", "19000229", "20170431", "20170001"] {
            assert_eq!(Input::Clickstream.check(&format!("{u},1500000000,s1,{bad}")), Err(Reject::BadDate), "{bad}");
            assert_eq!(Input::NotificationClicks.check(&format!("n,{u},{bad}")), Err(Reject::BadDate), "{bad}");
        }
    }

    #[test]
    fn every_clickstream_reject_kind() {
        let u = "0123456789abcdef0123456789abcdef";
        assert_eq!(Input::Clickstream.check(&format!("{u},1500000000,s1,20170101")), Ok(()));
        assert_eq!(Input::Clickstream.check(&format!("{u},1500000000,s1,20170101\r")), Ok(()));
        assert_eq!(Input::Clickstream.check(&format!("{u},1500000000,s1")), Err(Reject::WrongFieldCount));
        assert_eq!(Input::Clickstream.check(&format!("{u},1,s1,20170101,x")), Err(Reject::WrongFieldCount));
        assert_eq!(Input::Clickstream.check(",1500000000,s1,20170101"), Err(Reject::EmptyUserId));
        assert_eq!(Input::Clickstream.check("u1,1500000000,s1,20170101"), Err(Reject::BadUserId));
        assert_eq!(Input::Clickstream.check(&format!("{u}0,1500000000,s1,20170101")), Err(Reject::BadUserId));
        let line = format!("{u},1500000000,s1,20170101");
        let p = parse_play(&line).unwrap();
        assert_eq!((p.user, p.timestamp, p.song), (0x0123456789abcdef0123456789abcdef, 1500000000, "s1"));
        assert_eq!(Input::Clickstream.check(&format!("{u},1500000000,,20170101")), Err(Reject::EmptySongId));
        assert_eq!(Input::Clickstream.check(&format!("{u},notatime,s1,20170101")), Err(Reject::BadTimestamp));
        assert_eq!(Input::Clickstream.check(&format!("{u},,s1,20170101")), Err(Reject::BadTimestamp));
        assert_eq!(Input::Clickstream.check(&format!("{u},-,s1,20170101")), Err(Reject::BadTimestamp));
        assert_eq!(Input::Clickstream.check(&format!("{u},12a,s1,20170101")), Err(Reject::BadTimestamp));
        assert_eq!(
            Input::Clickstream.check(&format!("{u},1234567890123456789,s1,20170101")),
            Err(Reject::BadTimestamp)
        );
        // Times from 1970 to the end of year 9999, as the API.
        assert_eq!(parse_play(&format!("{u},-5,s1,20170101")).map(|p| p.timestamp), Err(Reject::BadTimestamp));
        assert_eq!(parse_play(&format!("{u},0,s1,20170101")).map(|p| p.timestamp), Ok(0));
        assert_eq!(parse_play(&format!("{u},{MAX_TIMESTAMP},s1,20170101")).map(|p| p.timestamp), Ok(MAX_TIMESTAMP));
        assert_eq!(
            parse_play(&format!("{u},{},s1,20170101", MAX_TIMESTAMP + 1)).map(|p| p.timestamp),
            Err(Reject::BadTimestamp)
        );
        assert_eq!(
            parse_play(&format!("{u},123456789012345678,s1,20170101")).map(|p| p.timestamp),
            Err(Reject::BadTimestamp)
        );
        assert_eq!(Input::Clickstream.check(&format!("{u},1,s1,2017010a")), Err(Reject::BadDate));
        assert_eq!(Input::Clickstream.check(&format!("{u},15,s1,2017-01-01")), Err(Reject::BadDate));
        assert_eq!(Input::Clickstream.check(""), Err(Reject::WrongFieldCount));
    }

    #[test]
    fn the_usual_lines_fast_read_agrees_with_the_field_by_field_one_on_every_line() {
        // Good lines in the usual layout, each then damaged at random:
        // a byte replaced (by a comma, a hex digit of either case, a
        // letter, a digit, a space, a byte above ASCII), removed or doubled.
        let mut rng = crate::rng::Rng::new(11);
        let alphabet = b",0123456789abcdefABCDEFgGxz -\r/:\x7f";
        let (mut fast, mut checked) = (0, 0);
        for case in 0..200_000 {
            let user: String = (0..32).map(|_| b"0123456789abcdefABCDEF"[rng.below(22)] as char).collect();
            let digits = 1 + rng.below(19);
            let ts: String = (0..digits).map(|_| (b'0' + rng.below(10) as u8) as char).collect();
            let song = format!("S{:0w$}", rng.below(100_000), w = rng.below(9));
            // Mostly days of the calendar; one in ten any four digits.
            let date = if rng.below(10) == 0 {
                format!("2017{:04}", rng.below(10_000))
            } else {
                format!("2017{:02}{:02}", 1 + rng.below(12), 1 + rng.below(28))
            };
            let eol = if rng.below(10) == 0 { "\r" } else { "" };
            let mut line = format!("{user},{ts},{song},{date}{eol}").into_bytes();
            if case % 4 != 0 {
                let at = rng.below(line.len());
                match rng.below(3) {
                    0 => line[at] = alphabet[rng.below(alphabet.len())],
                    1 => {
                        line.remove(at);
                    }
                    _ => line.insert(at, line[at]),
                }
            }
            if case % 97 == 0 {
                line.push(0xC3);
                line.push(0xA9);
            }
            let line = String::from_utf8(line).expect("ASCII and whole characters");
            let trimmed = trim_eol(&line);
            let want = parse_play_fields(trimmed);
            assert_eq!(parse_play(&line), want, "line {line:?}");
            if let Some((user, timestamp, song)) = parse_usual(trimmed.as_bytes()) {
                assert_eq!(Ok(Play { user, timestamp, song: &trimmed[song] }), want, "line {line:?}");
                fast += 1;
            }
            checked += 1;
        }
        // Most good lines (a 19-digit timestamp is bad) take the fast read.
        assert!(fast > checked / 4, "{fast} of {checked}");
        let u = "0123456789abcdef0123456789ABCDEF";
        for hex in [u, "ffffffffffffffffffffffffffffffff", "00000000000000000000000000000000"] {
            let line = format!("{hex},1,s,20170101");
            assert_eq!(parse_usual(line.as_bytes()).map(|p| p.0), user_key(hex), "{hex}");
        }
    }

    #[test]
    fn metadata_both_layouts_and_rejects() {
        assert_eq!(Input::Metadata.check("s1,a1"), Ok(()));
        assert_eq!(Input::Metadata.check("s1,a1,a2,a3"), Ok(()));
        assert_eq!(Input::Metadata.check("s1"), Err(Reject::WrongFieldCount));
        assert_eq!(Input::Metadata.check(",a1"), Err(Reject::EmptySongId));
        assert_eq!(Input::Metadata.check("s1,,"), Err(Reject::EmptyArtistId));
        assert_eq!(Input::Metadata.check("s1,,a2"), Ok(()), "an empty extra artist column is skipped");
    }

    #[test]
    fn notification_rejects() {
        assert_eq!(Input::NotificationActor.check("n1,a1"), Ok(()));
        assert_eq!(Input::NotificationActor.check("n1,a1,a2"), Err(Reject::WrongFieldCount));
        assert_eq!(Input::NotificationActor.check(",a1"), Err(Reject::EmptyNotificationId));
        assert_eq!(Input::NotificationActor.check("n1,"), Err(Reject::EmptyArtistId));
        let u = "0123456789ABCDEF0123456789abcdef";
        assert_eq!(Input::NotificationClicks.check(&format!("n1,{u},20170101")), Ok(()));
        assert_eq!(Input::NotificationClicks.check("n1,,20170101"), Err(Reject::EmptyUserId));
        assert_eq!(Input::NotificationClicks.check("n1,u1,20170101"), Err(Reject::BadUserId));
        assert_eq!(Input::NotificationClicks.check(&format!("n1,{u},x")), Err(Reject::BadDate));
        assert_eq!(Input::NotificationClicks.check("n1,u1"), Err(Reject::WrongFieldCount));
    }

    #[test]
    fn descriptions_name_the_value() {
        assert_eq!(
            Reject::BadTimestamp.describe(Input::Clickstream, "u,notatime,s,20170101"),
            "timestamp `notatime` is not Unix seconds from 1970 to 9999"
        );
        assert_eq!(Reject::from_code("bad_date"), Some(Reject::BadDate));
        assert_eq!(
            Reject::BadUserId.describe(Input::NotificationClicks, "n1,u1,20170101"),
            "user_id `u1` is not 32 hexadecimal characters"
        );
    }

    #[test]
    fn user_keys_round_trip_in_lowercase_and_sort_like_the_ids() {
        let ids = [
            "00000000000000000000000000000000",
            "0123456789abcdef0123456789abcdef",
            "ffffffffffffffffffffffffffffffff",
        ];
        for w in ids.windows(2) {
            assert!(user_key(w[0]).unwrap() < user_key(w[1]).unwrap());
        }
        for id in ids {
            assert_eq!(user_id(user_key(id).unwrap()), id);
        }
        assert_eq!(user_key("0123456789ABCDEF0123456789ABCDEF"), user_key("0123456789abcdef0123456789abcdef"));
        assert_eq!(user_key("0123456789abcdef0123456789abcdeg"), None);
        assert_eq!(user_key("+123456789abcdef0123456789abcdef"), None);
    }

    #[test]
    fn song_keys_are_fixed_and_spread() {
        // Fixed across runs and machines: a change here breaks joins with
        // data keyed by an older build, so it must be deliberate.
        assert_eq!(song_key("s1"), song_key("s1"));
        let keys: std::collections::HashSet<u64> = (0..200_000).map(|i| song_key(&format!("s{i}"))).collect();
        assert_eq!(keys.len(), 200_000);
        // Ids that differ only past the first word, or by a trailing zero byte, differ.
        assert_ne!(song_key("abcdefgh1"), song_key("abcdefgh2"));
        assert_ne!(song_key("abc"), song_key("abc\0"));
        // Each bit of the key is set about half the time.
        for bit in [0, 31, 63] {
            let ones = (0..10_000).filter(|i| song_key(&format!("song{i}")) >> bit & 1 == 1).count();
            assert!((4_500..5_500).contains(&ones), "bit {bit}: {ones}");
        }
    }
}
