//! Realistic generated data in the Saavn layout, with known ground truth.
//!
//! The world: artists belong to a language/region and a genre; their
//! popularity follows a power law (Zipf, exponent [`SynthParams::zipf`]).
//! Each artist has songs (more for popular artists; popularity within an
//! artist is Zipf too), and a share of songs name several artists. Users
//! speak one or two languages, like one to three genres, have a few
//! favourite artists drawn from their communities by popularity, and play
//! with heavy-tailed (log-normal) activity, in sessions at their own times of
//! day, with repeat plays. Notifications name one to three artists of every
//! popularity level.
//!
//! Ground truth: user `u` clicks notification `n` with probability
//! `p(u, n) = min(0.95, resp_u * (P_BASE + (P_MAX - P_BASE) * max_a aff(u, a)))`
//! over the artists `a` of `n`, where `aff(u, a) = sqrt(share(u, a) /
//! max_b share(u, b))`, `share(u, a)` the exact probability that one of the
//! user's plays goes to `a` (the mixture the clickstream is drawn from:
//! [`FAVOURITE_SHARE`] to favourites, [`GLOBAL_SHARE`] to the catalogue by
//! popularity, the rest to the user's communities by popularity), and
//! `resp_u` a log-normal responsiveness with mean 1: users click new songs
//! of the artists they listen to, with diminishing returns. The
//! click log is drawn from `p` as if every notification had been sent to
//! every user, so any push plan can be evaluated on it, and the oracle (each
//! user their own best notification) is known.
//!
//! Everything derives from [`SynthParams::seed`]; each user has an
//! independent random stream, so output does not depend on threads.

use serde::{Deserialize, Serialize};

use crate::error::{check_range, ParamError};
use crate::rng::{Rng, WeightedIndex};

/// Click probability floor (no affinity at all).
pub const P_BASE: f64 = 0.004;
/// Click probability at full affinity, before responsiveness.
pub const P_MAX: f64 = 0.30;
/// Share of a user's fresh plays that go to their favourite artists.
pub const FAVOURITE_SHARE: f64 = 0.45;
/// Share of fresh plays drawn from the whole catalogue by popularity
/// (trending songs, discovery); the rest follow the user's communities.
pub const GLOBAL_SHARE: f64 = 0.07;

/// The hours (UTC) users' listening centres on: morning, midday, night.
pub const PEAK_HOURS: [f64; 3] = [8.5, 13.0, 21.0];

/// 2017-01-01T00:00:00Z, the default first day.
pub const DEFAULT_START: i64 = 1_483_228_800;

/// What to generate. Defaults make the `demo` dataset (~50k users, ~3M plays).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthParams {
    /// Users. Default 50 000.
    pub users: usize,
    /// Artists. Default 4 000.
    pub artists: usize,
    /// Songs. Default 80 000.
    pub songs: usize,
    /// Notifications. Default 200.
    pub notifications: usize,
    /// Mean plays per user (log-normal, heavy tail). Default 60.
    pub plays_per_user: f64,
    /// Days covered, from `start` (Unix seconds). Default 30.
    pub days: u32,
    /// First second of the period. Default 2017-01-01.
    pub start: i64,
    /// Languages / regions. Default 8.
    pub languages: usize,
    /// Genres. Default 6.
    pub genres: usize,
    /// Zipf exponent of artist popularity. Default 1.0.
    pub zipf: f64,
    /// Share of clickstream lines written malformed. Default 0.002.
    pub malformed_share: f64,
    /// Share of plays of songs missing from the metadata. Default 0.005.
    pub unknown_song_share: f64,
    /// Seed. Default 42.
    pub seed: u64,
}

impl Default for SynthParams {
    fn default() -> Self {
        SynthParams {
            users: 50_000,
            artists: 4_000,
            songs: 80_000,
            notifications: 200,
            plays_per_user: 60.0,
            days: 30,
            start: DEFAULT_START,
            languages: 8,
            genres: 6,
            zipf: 1.0,
            malformed_share: 0.002,
            unknown_song_share: 0.005,
            seed: 42,
        }
    }
}

impl SynthParams {
    /// Validates every field.
    pub fn check(&self) -> Result<(), ParamError> {
        check_range("users", self.users as f64, 1.0, 1e9)?;
        check_range("artists", self.artists as f64, 3.0, 1e8)?;
        check_range("songs", self.songs as f64, self.artists as f64, 1e9)?;
        check_range("notifications", self.notifications as f64, 1.0, self.artists as f64)?;
        check_range("plays-per-user", self.plays_per_user, 1.0, 1e6)?;
        check_range("days", self.days as f64, 1.0, 3650.0)?;
        check_range("languages", self.languages as f64, 1.0, 100.0)?;
        check_range("genres", self.genres as f64, 1.0, 100.0)?;
        check_range("zipf", self.zipf, 0.0, 5.0)?;
        check_range("malformed-share", self.malformed_share, 0.0, 0.5)?;
        check_range("unknown-song-share", self.unknown_song_share, 0.0, 0.5)?;
        Ok(())
    }
}

/// Counts of what the generator wrote on purpose, to check ingest against.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SynthStats {
    /// Clickstream lines written (good and bad).
    pub lines: u64,
    /// Well-formed plays written.
    pub plays: u64,
    /// Malformed lines, by reject code.
    pub malformed: std::collections::BTreeMap<String, u64>,
    /// Well-formed plays of songs missing from the metadata.
    pub unknown_song_plays: u64,
}

impl SynthStats {
    /// Adds another chunk's counts.
    pub fn merge(&mut self, o: SynthStats) {
        self.lines += o.lines;
        self.plays += o.plays;
        self.unknown_song_plays += o.unknown_song_plays;
        for (k, v) in o.malformed {
            *self.malformed.entry(k).or_default() += v;
        }
    }
}

#[derive(Debug, Clone)]
struct Artist {
    language: usize,
    genre: usize,
    /// Popularity weight (Zipf) and its percentile in [0, 1].
    weight: f64,
    #[allow(dead_code)]
    pop: f64,
    songs: Vec<u32>,
    song_pick: Option<WeightedIndex>,
}

/// A user's hidden profile.
#[derive(Debug, Clone)]
pub struct UserProfile {
    /// Index in the world.
    pub index: usize,
    /// 32-hex user id.
    pub id: String,
    /// Taste weight per (language, genre) community, max 1.
    pub taste: Vec<f64>,
    /// Favourite artists.
    pub favourites: Vec<u32>,
    /// Responsiveness to notifications (mean 1).
    pub responsiveness: f64,
    /// Preferred hour of day (UTC): near one of [`PEAK_HOURS`], mostly
    /// the one of the main genre (`genre % 3`).
    pub peak_hour: f64,
    /// Plays this user makes.
    pub plays: usize,
    community_pick: WeightedIndex,
}

/// The generated world: artists, songs, notifications; users are derived on
/// demand from their own seed streams.
#[derive(Debug, Clone)]
pub struct World {
    /// The parameters.
    pub params: SynthParams,
    artists: Vec<Artist>,
    /// Artists of each song (first is primary).
    song_artists: Vec<Vec<u32>>,
    /// Artists of each notification.
    notifications: Vec<Vec<u32>>,
    /// Per community (language * genres + genre): artists and a popularity table.
    communities: Vec<(Vec<u32>, Option<WeightedIndex>)>,
    global_pick: WeightedIndex,
    language_weights: Vec<f64>,
    /// Sum of artist weights per community, and over all artists.
    community_weight: Vec<f64>,
    total_weight: f64,
    /// The most popular artist of each community.
    community_top: Vec<Option<u32>>,
}

/// Relative play weights of a user's favourites, first favourite first.
fn favourite_weights(n: usize) -> Vec<f64> {
    (0..n).map(|i| 1.0 / (i as f64 + 1.0)).collect()
}

fn hex_id(seed: u64, kind: u64, i: u64) -> String {
    let mut r = Rng::stream(seed ^ kind.wrapping_mul(0x9E37_79B9), i);
    format!("{:016x}{:016x}", r.next_u64(), r.next_u64())
}

/// Song id for index `i` (8 characters).
pub fn song_id(i: usize) -> String {
    format!("S{:07}", i)
}

/// Artist id for index `i`.
pub fn artist_id(i: usize) -> String {
    format!("A{:05}", i)
}

/// Notification id for index `i`.
pub fn notification_id(i: usize) -> String {
    format!("N{:04}", i)
}

/// `yyyyMMdd` of a Unix timestamp (UTC), by Howard Hinnant's civil-from-days.
pub fn date_of(ts: i64) -> u32 {
    let z = ts.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y * 10_000 + m * 100 + d) as u32
}

impl World {
    /// Builds the catalogue and notifications. Fails on invalid parameters.
    pub fn new(params: SynthParams) -> Result<Self, ParamError> {
        params.check()?;
        let p = &params;
        let mut rng = Rng::new(p.seed);
        // Language sizes are uneven (one dominant language), genres mildly so.
        let language_weights: Vec<f64> = (0..p.languages).map(|l| 1.0 / (l as f64 + 1.0).powf(0.8)).collect();
        let genre_weights: Vec<f64> = (0..p.genres).map(|g| 1.0 / (g as f64 + 1.0).powf(0.5)).collect();
        let lang_pick = WeightedIndex::new(&language_weights).expect("positive weights");
        let genre_pick = WeightedIndex::new(&genre_weights).expect("positive weights");
        let mut ranks: Vec<usize> = (0..p.artists).collect();
        rng.shuffle(&mut ranks);
        let mut artists: Vec<Artist> = ranks
            .iter()
            .map(|&rank| Artist {
                language: lang_pick.sample(&mut rng),
                genre: genre_pick.sample(&mut rng),
                weight: 1.0 / (rank as f64 + 1.0).powf(p.zipf),
                pop: 1.0 - rank as f64 / p.artists as f64,
                songs: Vec::new(),
                song_pick: None,
            })
            .collect();
        let ncomm = p.languages * p.genres;
        let mut communities: Vec<(Vec<u32>, Option<WeightedIndex>)> = vec![(Vec::new(), None); ncomm];
        for (a, art) in artists.iter().enumerate() {
            communities[art.language * p.genres + art.genre].0.push(a as u32);
        }
        for c in &mut communities {
            let w: Vec<f64> = c.0.iter().map(|&a| artists[a as usize].weight).collect();
            c.1 = WeightedIndex::new(&w);
        }
        let by_language: Vec<(Vec<u32>, WeightedIndex)> = (0..p.languages)
            .filter_map(|l| {
                let ids: Vec<u32> = (0..p.artists as u32).filter(|&a| artists[a as usize].language == l).collect();
                let w: Vec<f64> = ids.iter().map(|&a| artists[a as usize].weight).collect();
                WeightedIndex::new(&w).map(|t| (ids, t))
            })
            .collect();
        // Songs: every artist gets one, the rest go by popularity^0.6.
        let song_weights: Vec<f64> = artists.iter().map(|a| a.weight.powf(0.6)).collect();
        let song_owner = WeightedIndex::new(&song_weights).expect("positive weights");
        let mut song_artists: Vec<Vec<u32>> = Vec::with_capacity(p.songs);
        for s in 0..p.songs {
            let primary = if s < p.artists { s } else { song_owner.sample(&mut rng) } as u32;
            let mut list = vec![primary];
            if rng.chance(0.12) {
                // A collaboration with one or two artists of the same language.
                let lang = artists[primary as usize].language;
                if let Some((ids, table)) =
                    by_language.iter().find(|(ids, _)| artists[ids[0] as usize].language == lang)
                {
                    for _ in 0..1 + rng.below(2) {
                        let other = ids[table.sample(&mut rng)];
                        if !list.contains(&other) {
                            list.push(other);
                        }
                    }
                }
            }
            for &a in &list {
                artists[a as usize].songs.push(s as u32);
            }
            song_artists.push(list);
        }
        for a in &mut artists {
            let w: Vec<f64> = (0..a.songs.len()).map(|j| 1.0 / (j as f64 + 1.0)).collect();
            a.song_pick = WeightedIndex::new(&w);
        }
        // Notifications: artists of every popularity level (weight ∝ rank^-0.5,
        // so the head is over-represented but the tail is present), without
        // replacement; some name a collaborator too.
        let note_w: Vec<f64> = artists.iter().map(|a| a.weight.powf(0.5 / p.zipf.max(1e-9))).collect();
        let mut taken = vec![false; p.artists];
        let mut notifications = Vec::with_capacity(p.notifications);
        while notifications.len() < p.notifications {
            let table = WeightedIndex::new(
                &note_w.iter().zip(&taken).map(|(w, t)| if *t { 0.0 } else { *w }).collect::<Vec<_>>(),
            )
            .expect("fewer notifications than artists");
            let a = table.sample(&mut rng);
            taken[a] = true;
            let mut list = vec![a as u32];
            let extra = if rng.chance(0.15) { 1 } else { 0 } + if rng.chance(0.05) { 1 } else { 0 };
            for _ in 0..extra {
                let lang = artists[a].language;
                if let Some((ids, t)) = by_language.iter().find(|(ids, _)| artists[ids[0] as usize].language == lang) {
                    let o = ids[t.sample(&mut rng)];
                    if !list.contains(&o) {
                        list.push(o);
                    }
                }
            }
            notifications.push(list);
        }
        let global_pick = WeightedIndex::new(&artists.iter().map(|a| a.weight).collect::<Vec<_>>()).expect("positive");
        let community_weight =
            communities.iter().map(|(ids, _)| ids.iter().map(|&a| artists[a as usize].weight).sum()).collect();
        let total_weight = artists.iter().map(|a| a.weight).sum();
        let community_top = communities
            .iter()
            .map(|(ids, _)| {
                ids.iter().copied().max_by(|&x, &y| artists[x as usize].weight.total_cmp(&artists[y as usize].weight))
            })
            .collect();
        Ok(World {
            params,
            artists,
            song_artists,
            notifications,
            communities,
            global_pick,
            language_weights,
            community_weight,
            total_weight,
            community_top,
        })
    }

    /// The artists of each notification.
    pub fn notification_artists(&self) -> &[Vec<u32>] {
        &self.notifications
    }

    /// The artists of each song.
    pub fn song_artists(&self) -> &[Vec<u32>] {
        &self.song_artists
    }

    /// `metadata` CSV. Songs with several artists are written half as one row
    /// per artist and half as one row with several artist columns.
    pub fn metadata_csv(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.song_artists.len() * 20);
        for (s, list) in self.song_artists.iter().enumerate() {
            if list.len() > 1 && s % 2 == 0 {
                out.extend_from_slice(song_id(s).as_bytes());
                for &a in list {
                    out.push(b',');
                    out.extend_from_slice(artist_id(a as usize).as_bytes());
                }
                out.push(b'\n');
            } else {
                for &a in list {
                    out.extend_from_slice(format!("{},{}\n", song_id(s), artist_id(a as usize)).as_bytes());
                }
            }
        }
        out
    }

    /// `notification_actor` CSV.
    pub fn notification_actor_csv(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, list) in self.notifications.iter().enumerate() {
            for &a in list {
                out.extend_from_slice(format!("{},{}\n", notification_id(n), artist_id(a as usize)).as_bytes());
            }
        }
        out
    }

    /// The hidden profile of user `u`.
    pub fn user(&self, u: usize) -> UserProfile {
        let p = &self.params;
        let mut rng = Rng::stream(p.seed ^ 0x5EED_0005, u as u64);
        let lang_pick = WeightedIndex::new(&self.language_weights).expect("positive");
        let l1 = lang_pick.sample(&mut rng);
        let mut lang_w = vec![0.0; p.languages];
        lang_w[l1] = 1.0;
        if rng.chance(0.3) {
            lang_w[lang_pick.sample(&mut rng)] += 0.4 + 0.4 * rng.f64();
        }
        let mut genre_w = vec![0.0; p.genres];
        let mut main_genre = 0;
        for k in 0..1 + rng.below(3) {
            // The weight is drawn before the genre: the order of the
            // draws (and so every seed's data) is that of earlier versions.
            let w = if k == 0 { 1.0 } else { 0.3 + 0.5 * rng.f64() };
            let g = rng.below(p.genres);
            if k == 0 {
                main_genre = g;
            }
            genre_w[g] += w;
        }
        let mut taste: Vec<f64> =
            (0..p.languages * p.genres).map(|c| lang_w[c / p.genres] * genre_w[c % p.genres]).collect();
        // Communities without artists cannot be liked.
        for (c, t) in taste.iter_mut().enumerate() {
            if self.communities[c].1.is_none() {
                *t = 0.0;
            }
        }
        let max = taste.iter().cloned().fold(0.0, f64::max);
        let community_pick = match WeightedIndex::new(&taste) {
            Some(t) => {
                taste.iter_mut().for_each(|t| *t /= max);
                t
            }
            None => {
                // Nobody to like in the chosen communities: fall back to all.
                taste = self.communities.iter().map(|c| if c.1.is_some() { 1.0 } else { 0.0 }).collect();
                WeightedIndex::new(&taste).expect("some community has artists")
            }
        };
        let mut favourites = Vec::new();
        for _ in 0..1 + rng.poisson(1.5) {
            let c = community_pick.sample(&mut rng);
            let (ids, table) = &self.communities[c];
            let a = ids[table.as_ref().expect("non-empty").sample(&mut rng)];
            if !favourites.contains(&a) {
                favourites.push(a);
            }
        }
        let sigma: f64 = 1.1;
        let mu = p.plays_per_user.ln() - sigma * sigma / 2.0;
        let plays = ((mu + sigma * rng.normal()).exp().round() as usize).max(1);
        let responsiveness = (-0.125 + 0.5 * rng.normal()).exp();
        // Listening time follows taste, loosely: three users in four keep
        // the hours of their main genre (morning, midday or night), so
        // cohorts of taste differ in when they listen.
        let slot = if rng.below(4) < 3 { main_genre % 3 } else { rng.below(3) };
        let peak_hour = PEAK_HOURS[slot] + rng.normal() * 1.5;
        UserProfile {
            index: u,
            id: hex_id(p.seed, 1, u as u64),
            taste,
            favourites,
            responsiveness,
            peak_hour,
            plays,
            community_pick,
        }
    }

    /// The probability that one of `user`'s fresh plays goes to artist `a`:
    /// the exact mixture the clickstream is drawn from (favourites, the
    /// user's communities by popularity, the catalogue by popularity).
    pub fn play_share(&self, user: &UserProfile, a: u32) -> f64 {
        let art = &self.artists[a as usize];
        let fav_w = favourite_weights(user.favourites.len());
        let fav_total: f64 = fav_w.iter().sum();
        let fav = user.favourites.iter().position(|&f| f == a).map(|i| fav_w[i] / fav_total).unwrap_or(0.0);
        let c = art.language * self.params.genres + art.genre;
        let taste_total: f64 = user.taste.iter().sum();
        let community = user.taste[c] / taste_total * art.weight / self.community_weight[c];
        FAVOURITE_SHARE * fav
            + (1.0 - FAVOURITE_SHARE - GLOBAL_SHARE) * community
            + GLOBAL_SHARE * art.weight / self.total_weight
    }

    /// User `u`'s affinity to artist `a`, in [0, 1]: the square root of the
    /// artist's share of the user's listening relative to the user's most
    /// played artist. Clicks on "new song by X" follow how much the user
    /// listens to X, with diminishing returns.
    pub fn affinity(&self, user: &UserProfile, a: u32) -> f64 {
        self.affinity_given_top(user, a, self.top_share(user))
    }

    /// [`World::affinity`] with the user's top share already known.
    fn affinity_given_top(&self, user: &UserProfile, a: u32, top: f64) -> f64 {
        (self.play_share(user, a) / top).sqrt().min(1.0)
    }

    /// The largest play share of any artist for `user` (a favourite or the
    /// most popular artist of one of the user's communities).
    fn top_share(&self, user: &UserProfile) -> f64 {
        let favs = user.favourites.iter().map(|&a| self.play_share(user, a));
        let tops = self.community_top.iter().flatten().map(|&a| self.play_share(user, a));
        favs.chain(tops).fold(f64::MIN_POSITIVE, f64::max)
    }

    /// True click probability of `user` for every notification.
    pub fn click_probabilities(&self, user: &UserProfile) -> Vec<f32> {
        let top = self.top_share(user);
        self.notifications
            .iter()
            .map(|list| {
                let aff = list.iter().map(|&a| self.affinity_given_top(user, a, top)).fold(0.0, f64::max);
                (user.responsiveness * (P_BASE + (P_MAX - P_BASE) * aff)).min(0.95) as f32
            })
            .collect()
    }

    /// Appends `user`'s clickstream lines to `out`.
    pub fn write_plays(&self, user: &UserProfile, out: &mut Vec<u8>, stats: &mut SynthStats) {
        let p = &self.params;
        let mut rng = Rng::stream(p.seed ^ 0x0BAD_CAFE, user.index as u64);
        let mut left = user.plays;
        let mut last_song: Option<u32> = None;
        let fav_pick = WeightedIndex::new(&favourite_weights(user.favourites.len()));
        while left > 0 {
            let len = (1 + rng.geometric(1.0 / 8.0) as usize).min(left);
            left -= len;
            let day = rng.below(p.days as usize) as i64;
            let hour = (user.peak_hour + rng.normal() * 2.0).rem_euclid(24.0);
            let mut ts = p.start + day * 86_400 + (hour * 3600.0) as i64;
            for _ in 0..len {
                let song = match last_song {
                    Some(s) if rng.chance(0.15) => s,
                    _ => {
                        let r = rng.f64();
                        let artist = if let Some(fp) = fav_pick.as_ref().filter(|_| r < FAVOURITE_SHARE) {
                            user.favourites[fp.sample(&mut rng)]
                        } else if r < 1.0 - GLOBAL_SHARE {
                            let (ids, t) = &self.communities[user.community_pick.sample(&mut rng)];
                            ids[t.as_ref().expect("liked communities have artists").sample(&mut rng)]
                        } else {
                            self.global_pick.sample(&mut rng) as u32
                        };
                        let art = &self.artists[artist as usize];
                        art.songs[art.song_pick.as_ref().expect("every artist has a song").sample(&mut rng)]
                    }
                };
                last_song = Some(song);
                ts += 150 + rng.below(120) as i64;
                stats.lines += 1;
                let unknown = rng.chance(p.unknown_song_share);
                let song_str = if unknown { format!("X{:07}", rng.below(1_000_000)) } else { song_id(song as usize) };
                let date = date_of(ts);
                if rng.chance(p.malformed_share) {
                    let (code, line) = match rng.below(5) {
                        0 => ("wrong_field_count", format!("{},{},{}\n", user.id, ts, song_str)),
                        1 => ("bad_timestamp", format!("{},notatime,{},{}\n", user.id, song_str, date)),
                        2 => ("empty_user_id", format!(",{},{},{}\n", ts, song_str, date)),
                        3 => {
                            ("bad_date", format!("{},{},{},{}-{:02}\n", user.id, ts, song_str, date / 100, date % 100))
                        }
                        _ => ("wrong_field_count", format!("{},{},{},{},extra\n", user.id, ts, song_str, date)),
                    };
                    *stats.malformed.entry(code.to_string()).or_default() += 1;
                    out.extend_from_slice(line.as_bytes());
                    continue;
                }
                stats.plays += 1;
                if unknown {
                    stats.unknown_song_plays += 1;
                }
                out.extend_from_slice(format!("{},{},{},{}\n", user.id, ts, song_str, date).as_bytes());
            }
        }
    }

    /// Appends `user`'s clicks, drawn from `probs`, to `out`.
    pub fn write_clicks(&self, user: &UserProfile, probs: &[f32], out: &mut Vec<u8>) -> u64 {
        let p = &self.params;
        let mut rng = Rng::stream(p.seed ^ 0x00C1_1CC5, user.index as u64);
        let mut n_clicks = 0;
        for (n, &pr) in probs.iter().enumerate() {
            if rng.chance(pr as f64) {
                let ts = p.start + rng.below(p.days as usize * 86_400) as i64;
                out.extend_from_slice(format!("{},{},{}\n", notification_id(n), user.id, date_of(ts)).as_bytes());
                n_clicks += 1;
            }
        }
        n_clicks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saavn::Input;

    fn small() -> World {
        World::new(SynthParams {
            users: 300,
            artists: 120,
            songs: 900,
            notifications: 20,
            malformed_share: 0.02,
            ..SynthParams::default()
        })
        .unwrap()
    }

    #[test]
    fn dates_convert() {
        assert_eq!(date_of(DEFAULT_START), 20170101);
        assert_eq!(date_of(DEFAULT_START + 59 * 86_400), 20170301);
        assert_eq!(date_of(951_782_400), 20000229);
    }

    #[test]
    fn lines_follow_the_layout_except_the_counted_malformed_ones() {
        let w = small();
        let mut out = Vec::new();
        let mut stats = SynthStats::default();
        for u in 0..300 {
            w.write_plays(&w.user(u), &mut out, &mut stats);
        }
        let text = String::from_utf8(out).unwrap();
        let bad = text.lines().filter(|l| Input::Clickstream.check(l).is_err()).count() as u64;
        assert_eq!(bad, stats.malformed.values().sum::<u64>());
        assert!(bad > 0);
        assert_eq!(text.lines().count() as u64, stats.lines);
        for l in String::from_utf8(w.metadata_csv()).unwrap().lines() {
            assert_eq!(Input::Metadata.check(l), Ok(()), "{l}");
        }
        let meta = String::from_utf8(w.metadata_csv()).unwrap();
        assert!(meta.lines().any(|l| l.split(',').count() > 2), "some multi-column rows");
        for l in String::from_utf8(w.notification_actor_csv()).unwrap().lines() {
            assert_eq!(Input::NotificationActor.check(l), Ok(()), "{l}");
        }
    }

    #[test]
    fn activity_is_heavy_tailed_and_popularity_skewed() {
        let w = World::new(SynthParams { users: 4000, ..SynthParams::default() }).unwrap();
        let mut plays: Vec<usize> = (0..4000).map(|u| w.user(u).plays).collect();
        plays.sort_unstable();
        let median = plays[2000] as f64;
        let p99 = plays[3960] as f64;
        assert!(p99 > 6.0 * median, "median {median} p99 {p99}");
        let mean = plays.iter().sum::<usize>() as f64 / 4000.0;
        assert!((mean - 60.0).abs() < 8.0, "{mean}");
    }

    #[test]
    fn truth_follows_listening_and_same_seed_repeats() {
        let w = small();
        let u = w.user(7);
        // Shares are a distribution over the artists.
        let total: f64 = (0..120).map(|a| w.play_share(&u, a)).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        // The first favourite is listened to more than an unrelated artist.
        let stranger = (0..120u32)
            .find(|&a| u.taste[w.artists[a as usize].language * w.params.genres + w.artists[a as usize].genre] == 0.0);
        if let Some(s) = stranger {
            assert!(w.affinity(&u, u.favourites[0]) > w.affinity(&u, s));
        }
        let probs = w.click_probabilities(&u);
        assert_eq!(probs.len(), 20);
        assert!(probs.iter().all(|&p| (0.0..=0.95).contains(&p)));
        for (n, list) in w.notification_artists().iter().enumerate() {
            // The user's own most played artist gives the full probability.
            if list.contains(&u.favourites[0]) && w.affinity(&u, u.favourites[0]) >= 1.0 {
                let want = (u.responsiveness * P_MAX).min(0.95) as f32;
                assert!((probs[n] - want).abs() < 1e-6);
            }
            for &a in list {
                assert!(w.affinity(&u, a) <= 1.0);
            }
        }
        let again = small();
        assert_eq!(again.user(7).id, u.id);
        assert_eq!(again.metadata_csv(), w.metadata_csv());
        assert_eq!(u.id.len(), 32);
    }
}
