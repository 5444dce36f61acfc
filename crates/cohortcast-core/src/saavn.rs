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
    /// `song_id` is empty.
    EmptySongId,
    /// An `artist_id` is empty.
    EmptyArtistId,
    /// `notification_id` is empty.
    EmptyNotificationId,
    /// `timestamp` is not a whole number of Unix seconds.
    BadTimestamp,
    /// `date` is not eight digits `yyyyMMdd`.
    BadDate,
}

impl Reject {
    /// Every reason, in report order.
    pub const ALL: [Reject; 7] = [
        Reject::WrongFieldCount,
        Reject::EmptyUserId,
        Reject::EmptySongId,
        Reject::EmptyArtistId,
        Reject::EmptyNotificationId,
        Reject::BadTimestamp,
        Reject::BadDate,
    ];

    /// Stable snake_case code.
    pub fn code(self) -> &'static str {
        match self {
            Reject::WrongFieldCount => "wrong_field_count",
            Reject::EmptyUserId => "empty_user_id",
            Reject::EmptySongId => "empty_song_id",
            Reject::EmptyArtistId => "empty_artist_id",
            Reject::EmptyNotificationId => "empty_notification_id",
            Reject::BadTimestamp => "bad_timestamp",
            Reject::BadDate => "bad_date",
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
            Reject::BadTimestamp => format!("timestamp `{}` is not a number", fields.get(1).unwrap_or(&"")),
            Reject::BadDate => {
                let d = if input == Input::Clickstream { fields.get(3) } else { fields.get(2) };
                format!("date `{}` is not yyyyMMdd", d.unwrap_or(&""))
            }
            other => other.code().replace('_', " "),
        }
    }
}

fn is_date(s: &str) -> bool {
    s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_timestamp(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.len() <= 18 && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Trims a trailing carriage return (files written on Windows).
pub fn trim_eol(line: &str) -> &str {
    line.strip_suffix('\r').unwrap_or(line)
}

fn check_play(line: &str) -> Result<(), Reject> {
    let mut it = trim_eol(line).split(',');
    let (Some(user), Some(ts), Some(song), Some(date), None) = (it.next(), it.next(), it.next(), it.next(), it.next())
    else {
        return Err(Reject::WrongFieldCount);
    };
    if user.is_empty() {
        return Err(Reject::EmptyUserId);
    }
    if song.is_empty() {
        return Err(Reject::EmptySongId);
    }
    if !is_timestamp(ts) {
        return Err(Reject::BadTimestamp);
    }
    if !is_date(date) {
        return Err(Reject::BadDate);
    }
    Ok(())
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
    if u.is_empty() {
        return Err(Reject::EmptyUserId);
    }
    if !is_date(d) {
        return Err(Reject::BadDate);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_clickstream_reject_kind() {
        let u = "0123456789abcdef0123456789abcdef";
        assert_eq!(Input::Clickstream.check(&format!("{u},1500000000,s1,20170101")), Ok(()));
        assert_eq!(Input::Clickstream.check(&format!("{u},1500000000,s1,20170101\r")), Ok(()));
        assert_eq!(Input::Clickstream.check(&format!("{u},1500000000,s1")), Err(Reject::WrongFieldCount));
        assert_eq!(Input::Clickstream.check(&format!("{u},1,s1,20170101,x")), Err(Reject::WrongFieldCount));
        assert_eq!(Input::Clickstream.check(",1500000000,s1,20170101"), Err(Reject::EmptyUserId));
        assert_eq!(Input::Clickstream.check(&format!("{u},1500000000,,20170101")), Err(Reject::EmptySongId));
        assert_eq!(Input::Clickstream.check(&format!("{u},notatime,s1,20170101")), Err(Reject::BadTimestamp));
        assert_eq!(Input::Clickstream.check(&format!("{u},,s1,20170101")), Err(Reject::BadTimestamp));
        assert_eq!(Input::Clickstream.check(&format!("{u},15,s1,2017-01-01")), Err(Reject::BadDate));
        assert_eq!(Input::Clickstream.check(""), Err(Reject::WrongFieldCount));
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
        assert_eq!(Input::NotificationClicks.check("n1,u1,20170101"), Ok(()));
        assert_eq!(Input::NotificationClicks.check("n1,,20170101"), Err(Reject::EmptyUserId));
        assert_eq!(Input::NotificationClicks.check("n1,u1,x"), Err(Reject::BadDate));
        assert_eq!(Input::NotificationClicks.check("n1,u1"), Err(Reject::WrongFieldCount));
    }

    #[test]
    fn descriptions_name_the_value() {
        assert_eq!(
            Reject::BadTimestamp.describe(Input::Clickstream, "u,notatime,s,20170101"),
            "timestamp `notatime` is not a number"
        );
        assert_eq!(Reject::from_code("bad_date"), Some(Reject::BadDate));
    }
}
