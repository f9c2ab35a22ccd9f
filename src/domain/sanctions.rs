//! Bans and mutes (AdminService.BanUser, MuteUser, ...): what a request
//! names, parsed once, the sanction as stored, its refusal, and the pages
//! of ListSanctions behind an opaque token.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use super::{RoomName, bad_page_token, from_hex, to_hex, user_id_problem};
use crate::error::{Error, Result};

/// The longest reason, in characters (not bytes).
pub const SANCTION_REASON_MAX_CHARS: usize = 256;
/// The longest duration a sanction may be imposed for: 366 days.
pub const SANCTION_DURATION_MAX_SECS: i64 = 366 * 24 * 3600;
/// Sanctions per ListSanctions page when the client asks for none.
pub const SANCTIONS_PAGE_DEFAULT: u32 = 50;
/// The most sanctions per ListSanctions page.
pub const SANCTIONS_PAGE_MAX: u32 = 200;

/// What a sanction forbids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SanctionKind {
    /// Every ChatService call in the room (or in every room).
    Ban,
    /// Sending, editing, reacting and typing.
    Mute,
}

impl SanctionKind {
    /// The stored code: 1 ban, 2 mute.
    pub fn code(self) -> i16 {
        match self {
            SanctionKind::Ban => 1,
            SanctionKind::Mute => 2,
        }
    }

    pub fn from_code(code: i16) -> Option<Self> {
        match code {
            1 => Some(SanctionKind::Ban),
            2 => Some(SanctionKind::Mute),
            _ => None,
        }
    }
}

/// Where a sanction applies: one room, or every room (`None`, stored as
/// room "").
pub type Scope = Option<RoomName>;

/// The room of a sanction request: "" is every room, anything else must be
/// a room name ([`RoomName::parse`]).
pub fn parse_scope(raw: &str) -> Result<Scope> {
    if raw.is_empty() {
        return Ok(None);
    }
    RoomName::parse(raw).map(Some)
}

/// The stored form of a scope: the room name, or "" for every room.
pub fn scope_key(scope: &Scope) -> &str {
    scope.as_ref().map_or("", RoomName::as_str)
}

/// The user a sanction request names ([`user_id_problem`]'s rules),
/// INVALID_ARGUMENT naming `user_id` otherwise.
pub fn parse_sanctioned_user(raw: String) -> Result<Arc<str>> {
    match user_id_problem(&raw) {
        Some(problem) => Err(Error::invalid("user_id", problem)),
        None => Ok(Arc::from(raw)),
    }
}

/// A validated BanUser or MuteUser request.
#[derive(Clone, Debug)]
pub struct NewSanction {
    pub scope: Scope,
    pub user_id: Arc<str>,
    pub kind: SanctionKind,
    /// How long, in microseconds; `None`: until lifted.
    pub duration_micros: Option<i64>,
    pub reason: String,
}

impl NewSanction {
    /// `duration` is a protobuf Duration's (seconds, nanos), `None` when
    /// unset.
    pub fn parse(
        kind: SanctionKind,
        room: &str,
        user_id: String,
        duration: Option<(i64, i32)>,
        reason: String,
    ) -> Result<Self> {
        let scope = parse_scope(room)?;
        let user_id = parse_sanctioned_user(user_id)?;
        let duration_micros = match duration {
            None => None,
            Some((seconds, nanos)) => parse_duration(seconds, nanos)?,
        };
        let chars = reason.chars().count();
        if chars > SANCTION_REASON_MAX_CHARS {
            return Err(Error::invalid(
                "reason",
                format!("must be at most {SANCTION_REASON_MAX_CHARS} characters, got {chars}"),
            ));
        }
        Ok(NewSanction {
            scope,
            user_id,
            kind,
            duration_micros,
            reason,
        })
    }
}

/// A protobuf Duration as microseconds (rounded up: a positive duration
/// never becomes "until lifted"); zero is `None`. Negative, invalid nanos
/// or more than 366 days is INVALID_ARGUMENT naming `duration`.
fn parse_duration(seconds: i64, nanos: i32) -> Result<Option<i64>> {
    if !(-999_999_999..=999_999_999).contains(&nanos)
        || (seconds > 0 && nanos < 0)
        || (seconds < 0 && nanos > 0)
    {
        return Err(Error::invalid(
            "duration",
            "nanos must be within ±999,999,999 with the sign of seconds",
        ));
    }
    if seconds < 0 || nanos < 0 {
        return Err(Error::invalid("duration", "must not be negative"));
    }
    if seconds > SANCTION_DURATION_MAX_SECS || (seconds == SANCTION_DURATION_MAX_SECS && nanos > 0)
    {
        return Err(Error::invalid("duration", "must be at most 366 days"));
    }
    let micros = seconds * 1_000_000 + (i64::from(nanos) + 999) / 1_000;
    Ok((micros > 0).then_some(micros))
}

/// A ban or a mute as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sanction {
    pub scope: Scope,
    pub user_id: Arc<str>,
    pub kind: SanctionKind,
    /// When it stops applying (microseconds since the Unix epoch); `None`:
    /// until lifted.
    pub until_micros: Option<i64>,
    pub reason: String,
    pub created_micros: i64,
}

impl Sanction {
    /// Whether it still applies at `now_micros`.
    pub fn in_force(&self, now_micros: i64) -> bool {
        self.until_micros.is_none_or(|until| until > now_micros)
    }

    /// Whether it lasts longer than `other` (until lifted outlasts any
    /// time): of two of the same kind that apply, the one to show.
    pub fn outlasts(&self, other: &Sanction) -> bool {
        let end = |s: &Sanction| (s.until_micros.is_none(), s.until_micros.unwrap_or(0));
        end(self) > end(other)
    }

    /// What the sanctioned user is told (PERMISSION_DENIED): the room,
    /// until when, and the reason, e.g. "you are banned from room lobby
    /// until 2026-12-07T10:00:00Z: spam".
    pub fn refusal(&self) -> String {
        let what = match (self.kind, &self.scope) {
            (SanctionKind::Ban, Some(room)) => format!("you are banned from room {room}"),
            (SanctionKind::Ban, None) => "you are banned from every room".to_owned(),
            (SanctionKind::Mute, Some(room)) => format!("you are muted in room {room}"),
            (SanctionKind::Mute, None) => "you are muted in every room".to_owned(),
        };
        let until = match self.until_micros {
            None => "until lifted".to_owned(),
            Some(micros) => {
                let at = UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0));
                format!("until {}", humantime::format_rfc3339_seconds(at))
            }
        };
        if self.reason.is_empty() {
            format!("{what} {until}")
        } else {
            format!("{what} {until}: {}", self.reason)
        }
    }
}

/// Why storage finds a (room, user) pair may no longer use its room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// A private room, and the user holds no grant.
    NoGrant,
    /// A ban in force, in the room or in every room.
    Banned(Sanction),
}

/// Where a ListSanctions page starts: after this sanction, in the
/// listing's order (created descending, then room, user and kind
/// ascending).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SanctionsCursor {
    pub created_micros: i64,
    /// "" for every room.
    pub room: String,
    pub user_id: String,
    pub kind: SanctionKind,
}

impl SanctionsCursor {
    const PREFIX: &'static str = "s1:";

    /// The opaque token: hex of `s1:<created>:<kind>:<room length>:<room><user>`
    /// (room names may hold ':', user ids anything).
    pub fn token(&self) -> String {
        to_hex(&format!(
            "{}{}:{}:{}:{}{}",
            Self::PREFIX,
            self.created_micros,
            self.kind.code(),
            self.room.len(),
            self.room,
            self.user_id
        ))
    }

    /// Reads a token made by [`Self::token`]; anything else is
    /// INVALID_ARGUMENT naming page_token.
    pub fn parse(token: &str) -> Result<Self> {
        let bad = bad_page_token;
        let plain = from_hex(token).ok_or_else(bad)?;
        let rest = plain.strip_prefix(Self::PREFIX).ok_or_else(bad)?;
        let mut parts = rest.splitn(4, ':');
        let mut next = || parts.next().ok_or_else(bad);
        let created_micros = next()?.parse::<i64>().map_err(|_| bad())?;
        let kind = next()?
            .parse::<i16>()
            .ok()
            .and_then(SanctionKind::from_code);
        let kind = kind.ok_or_else(bad)?;
        let room_len = next()?.parse::<usize>().map_err(|_| bad())?;
        let tail = next()?;
        let room = tail.get(..room_len).ok_or_else(bad)?;
        let user_id = tail.get(room_len..).ok_or_else(bad)?;
        let normalized =
            room.is_empty() || RoomName::parse(room).is_ok_and(|parsed| parsed.as_str() == room);
        if !normalized || user_id_problem(user_id).is_some() {
            return Err(bad());
        }
        Ok(SanctionsCursor {
            created_micros,
            room: room.to_owned(),
            user_id: user_id.to_owned(),
            kind,
        })
    }
}

/// A validated ListSanctions request.
#[derive(Clone, Debug)]
pub struct SanctionsQuery {
    /// Only this room's sanctions (not those on every room); `None`: any,
    /// those on every room included.
    pub room: Option<RoomName>,
    /// Only this user's; `None`: any.
    pub user_id: Option<Arc<str>>,
    /// 1 to [`SANCTIONS_PAGE_MAX`].
    pub limit: u32,
    pub after: Option<SanctionsCursor>,
}

impl SanctionsQuery {
    pub fn parse(room: &str, user_id: String, page_size: u32, page_token: &str) -> Result<Self> {
        let room = parse_scope(room)?;
        let user_id = if user_id.is_empty() {
            None
        } else {
            Some(parse_sanctioned_user(user_id)?)
        };
        let limit = match page_size {
            0 => SANCTIONS_PAGE_DEFAULT,
            n => n.min(SANCTIONS_PAGE_MAX),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(SanctionsCursor::parse(page_token)?)
        };
        Ok(SanctionsQuery {
            room,
            user_id,
            limit,
            after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sanction(kind: SanctionKind, room: Option<&str>, until: Option<i64>) -> Sanction {
        Sanction {
            scope: room.map(|r| RoomName::parse(r).unwrap()),
            user_id: "mallory".into(),
            kind,
            until_micros: until,
            reason: String::new(),
            created_micros: 0,
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration(0, 0).unwrap(), None);
        assert_eq!(parse_duration(1, 0).unwrap(), Some(1_000_000));
        assert_eq!(parse_duration(0, 1).unwrap(), Some(1));
        assert!(parse_duration(SANCTION_DURATION_MAX_SECS, 0).is_ok());
        for (s, n) in [
            (SANCTION_DURATION_MAX_SECS + 1, 0),
            (SANCTION_DURATION_MAX_SECS, 1),
            (-1, 0),
            (0, -1),
            (1, -1),
            (0, 1_000_000_000),
        ] {
            let err = parse_duration(s, n).unwrap_err().to_string();
            assert!(err.starts_with("duration"), "{s} {n}: {err}");
        }
    }

    #[test]
    fn reasons_count_characters() {
        let parse =
            |reason: String| NewSanction::parse(SanctionKind::Ban, "", "u".into(), None, reason);
        assert!(parse("é".repeat(256)).is_ok());
        let err = parse("a".repeat(257)).unwrap_err().to_string();
        assert!(err.starts_with("reason") && err.contains("256"), "{err}");
    }

    #[test]
    fn refusals_say_what_where_and_until_when() {
        let ban = sanction(
            SanctionKind::Ban,
            Some("lobby"),
            Some(1_796_637_600_000_000),
        );
        assert_eq!(
            ban.refusal(),
            "you are banned from room lobby until 2026-12-07T10:00:00Z"
        );
        let mut mute = sanction(SanctionKind::Mute, None, None);
        mute.reason = "spam".into();
        assert_eq!(
            mute.refusal(),
            "you are muted in every room until lifted: spam"
        );
        assert!(ban.in_force(0) && !ban.in_force(1_796_637_600_000_000));
    }

    #[test]
    fn tokens_round_trip_and_refuse_anything_else() {
        for room in ["", "a:b", "lobby"] {
            let cursor = SanctionsCursor {
                created_micros: 42,
                room: room.into(),
                user_id: "us:er".into(),
                kind: SanctionKind::Mute,
            };
            assert_eq!(SanctionsCursor::parse(&cursor.token()).unwrap(), cursor);
        }
        let bad = [
            String::new(),
            "zz".into(),
            "7331".into(),
            to_hex("s1:1:3:0:u"),
            to_hex("s1:1:1:9:ab"),
            to_hex("s1:1:1:2:Abu"),
        ];
        for bad in &bad {
            let err = SanctionsCursor::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("page_token"), "{bad}: {err}");
        }
    }
}
