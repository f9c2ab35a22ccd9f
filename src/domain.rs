//! Domain types that parse client input once.
//!
//! Every value a client sends is turned into one of these at the service
//! boundary; the rest of the code never sees raw strings or numbers, so a
//! value that got past `parse` is known to be valid.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

mod changes;
mod markers;
mod members;
mod names;
mod sanctions;

pub use changes::{
    ChangeKind, ChangeWhat, Changed, MessageState, NewChange, REACTIONS_PER_MESSAGE_MAX, Reaction,
    ReactionCount, StoredChange, StoredEvent,
};
pub use markers::{MarkersCursor, MarkersQuery, ReadMarkerRow};
pub use members::{MembersCursor, MembersQuery};
pub use names::display_name;
pub use sanctions::{
    Denial, NewSanction, Sanction, SanctionKind, SanctionsCursor, SanctionsQuery, Scope,
    parse_sanctioned_user, parse_scope, scope_key,
};

/// The longest room name, in bytes (all allowed characters are ASCII).
pub const ROOM_NAME_MAX: usize = 64;
/// The longest image or file URL, in bytes.
pub const URL_MAX_BYTES: usize = 2048;
/// What a message encodes to besides its content, at most: room, sender,
/// display name, client_message_id, timestamp, tags and lengths.
pub const MESSAGE_OVERHEAD_BYTES: usize = 1024;
/// The most bytes one ListHistory page may take (4 MiB), counting each
/// message as its stored content plus [`MESSAGE_OVERHEAD_BYTES`]: 500
/// messages of the default 4 KiB limit fit; larger ones make shorter pages
/// (`has_more` says so). At least one message is returned.
pub const HISTORY_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// The most bytes one read of the messages after a seq takes (JoinRoom
/// catch-up pages, the cluster's storage poll and gap fills), counted the
/// same way; at least one message is read.
pub const READ_PAGE_BYTES: usize = 256 * 1024;
/// The longest client_message_id, in characters.
pub const CLIENT_MESSAGE_ID_MAX_CHARS: usize = 64;
/// The default and the largest ListHistory page.
pub const PAGE_SIZE_DEFAULT: u32 = 50;
pub const PAGE_SIZE_MAX: u32 = 500;
/// The largest seq a client may name: seqs are stored as BIGINT.
pub const SEQ_MAX: u64 = i64::MAX as u64;

/// A normalized room name: trimmed, lowercased, matching
/// `^[a-z0-9][a-z0-9._:-]{0,63}$`. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

impl RoomName {
    pub fn parse(raw: &str) -> Result<Self> {
        const RULE: &str = "must match ^[a-z0-9][a-z0-9._:-]{0,63}$ after trimming and lowercasing";
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(Error::invalid("room", "is required"));
        }
        // Every allowed character is one ASCII byte, so a longer input can
        // be refused before lowercasing it.
        if trimmed.len() > ROOM_NAME_MAX {
            return Err(Error::invalid("room", RULE));
        }
        let name = trimmed.to_ascii_lowercase();
        let mut bytes = name.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let rest_ok = bytes.all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b':' | b'-')
        });
        if !(first_ok && rest_ok) {
            return Err(Error::invalid("room", RULE));
        }
        Ok(RoomName(name.into()))
    }

    /// A name read back from our own storage, already normalized.
    pub(crate) fn from_stored(name: String) -> Self {
        RoomName(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who is calling, taken from a verified token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The token's `sub`.
    pub user_id: Arc<str>,
    /// The token's `name`, or `sub` when it has none.
    pub display_name: Arc<str>,
    /// The token's claims include `"admin": true`: the caller may use
    /// AdminService and passes every room check.
    pub admin: bool,
}

/// The longest user id (a token's `sub`), in bytes.
pub const USER_ID_MAX_BYTES: usize = 128;
/// The most user ids one GrantAccess or RevokeAccess may name.
pub const USER_IDS_MAX: usize = 1000;

/// Why `raw` cannot be a user id, if it cannot: 1 to [`USER_ID_MAX_BYTES`]
/// bytes, not blank, no control or Unicode format characters (category Cf:
/// bidi overrides, zero-width characters). The one rule for a token's `sub`
/// and for the user ids AdminService is given.
pub fn user_id_problem(raw: &str) -> Option<String> {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    if raw.trim().is_empty() {
        return Some("is empty".into());
    }
    if raw.len() > USER_ID_MAX_BYTES {
        return Some(format!("must be at most {USER_ID_MAX_BYTES} bytes"));
    }
    raw.chars()
        .find(|&c| c.is_control() || c.general_category() == GeneralCategory::Format)
        .map(|c| {
            format!(
                "must not contain control or format characters (found U+{:04X})",
                u32::from(c)
            )
        })
}

/// The user ids of a GrantAccess or RevokeAccess: 1 to [`USER_IDS_MAX`],
/// each valid ([`user_id_problem`]), repeats dropped, sorted.
pub fn parse_user_ids(raw: Vec<String>) -> Result<Vec<Arc<str>>> {
    if raw.is_empty() {
        return Err(Error::invalid("user_ids", "name at least one user"));
    }
    if raw.len() > USER_IDS_MAX {
        return Err(Error::invalid(
            "user_ids",
            format!("at most {USER_IDS_MAX} per call, got {}", raw.len()),
        ));
    }
    let mut ids = Vec::with_capacity(raw.len());
    for (i, id) in raw.into_iter().enumerate() {
        if let Some(problem) = user_id_problem(&id) {
            return Err(Error::invalid(
                "user_ids",
                format!("user_ids[{i}] {problem}"),
            ));
        }
        ids.push(Arc::<str>::from(id));
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Who may use a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i16)]
pub enum Visibility {
    /// Anyone with a valid token.
    Public = 1,
    /// Users with a grant, and admin tokens.
    Private = 2,
}

impl Visibility {
    /// The stored code, equal to the chat.v1.RoomVisibility number.
    pub fn code(self) -> i16 {
        self as i16
    }

    pub fn from_code(code: i16) -> Option<Self> {
        match code {
            1 => Some(Visibility::Public),
            2 => Some(Visibility::Private),
            _ => None,
        }
    }

    /// A CreateRoom visibility: unspecified means public.
    pub fn parse(raw: i32) -> Result<Self> {
        match raw {
            0 | 1 => Ok(Visibility::Public),
            2 => Ok(Visibility::Private),
            other => Err(Error::invalid(
                "visibility",
                format!("unknown visibility {other}"),
            )),
        }
    }
}

/// The default and the largest ListRooms page.
pub const ROOMS_PAGE_DEFAULT: u32 = 50;
pub const ROOMS_PAGE_MAX: u32 = 200;
/// The most bytes of last messages one ListRooms page carries (4 MiB, as
/// a ListHistory page), counted as [`HISTORY_PAGE_BYTES`] counts them.
pub const ROOMS_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Where unread counting stops: a count below it is exact, a count of it
/// means that many or more.
pub const UNREAD_CAP: u64 = 1000;

/// Where a ListRooms page starts: after the room with this activity and
/// name, in the listing's order (activity descending, then name
/// descending).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomsCursor {
    /// Microseconds since the Unix epoch.
    pub activity_micros: i64,
    pub room: RoomName,
}

impl RoomsCursor {
    const PREFIX: &'static str = "r1:";

    /// The opaque token: hex of `r1:<activity>:<room>`.
    pub fn token(&self) -> String {
        to_hex(&format!(
            "{}{}:{}",
            Self::PREFIX,
            self.activity_micros,
            self.room
        ))
    }

    /// Reads a token made by [`Self::token`]; anything else is
    /// INVALID_ARGUMENT naming page_token.
    pub fn parse(token: &str) -> Result<Self> {
        let bad = bad_page_token;
        let plain = from_hex(token).ok_or_else(bad)?;
        let rest = plain.strip_prefix(Self::PREFIX).ok_or_else(bad)?;
        let (activity, room) = rest.split_once(':').ok_or_else(bad)?;
        let activity_micros = activity.parse::<i64>().map_err(|_| bad())?;
        let parsed = RoomName::parse(room).map_err(|_| bad())?;
        if parsed.as_str() != room {
            return Err(bad());
        }
        Ok(RoomsCursor {
            activity_micros,
            room: parsed,
        })
    }
}

/// A page token's text as hex: opaque to clients.
fn to_hex(plain: &str) -> String {
    plain.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The text of a hex page token of at most 512 characters.
fn from_hex(token: &str) -> Option<String> {
    if !token.len().is_multiple_of(2) || token.len() > 512 {
        return None;
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

fn bad_page_token() -> Error {
    Error::invalid("page_token", "is not a token this server gave out")
}

/// A validated ListRooms request.
#[derive(Clone, Debug)]
pub struct RoomsQuery {
    /// 1 to [`ROOMS_PAGE_MAX`].
    pub limit: u32,
    pub after: Option<RoomsCursor>,
}

impl RoomsQuery {
    pub fn parse(page_size: u32, page_token: &str) -> Result<Self> {
        let limit = match page_size {
            0 => ROOMS_PAGE_DEFAULT,
            n => n.min(ROOMS_PAGE_MAX),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(RoomsCursor::parse(page_token)?)
        };
        Ok(RoomsQuery { limit, after })
    }
}

/// One of a user's rooms, as ListRooms shows it.
#[derive(Clone, Debug)]
pub struct RoomSummary {
    pub room: RoomName,
    pub visibility: Visibility,
    pub last_seq: u64,
    pub last_message: Option<StoredMessage>,
    pub read_seq: u64,
    /// At most [`UNREAD_CAP`].
    pub unread_count: u64,
    /// The last message's time, else when the room became the user's
    /// (microseconds since the Unix epoch): the listing's order.
    pub activity_micros: i64,
}

/// One page of a user's rooms.
#[derive(Clone, Debug, Default)]
pub struct RoomsPage {
    pub rooms: Vec<RoomSummary>,
    /// Where the next page starts, when there is one.
    pub next: Option<RoomsCursor>,
}

/// What a message's content is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i16)]
pub enum ContentKind {
    Text = 1,
    Image = 2,
    File = 3,
}

impl ContentKind {
    /// The stored code, equal to the chat.v1.ContentType number.
    pub fn code(self) -> i16 {
        self as i16
    }

    pub fn from_code(code: i16) -> Option<Self> {
        match code {
            1 => Some(ContentKind::Text),
            2 => Some(ContentKind::Image),
            3 => Some(ContentKind::File),
            _ => None,
        }
    }
}

/// A validated message body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Content {
    pub kind: ContentKind,
    pub body: String,
}

impl Content {
    /// Validates `body` for the wire content type `content_type`
    /// (0 = unspecified = text). Text is at most `max_text_bytes`.
    pub fn parse(content_type: i32, body: String, max_text_bytes: usize) -> Result<Self> {
        let kind = match content_type {
            0 | 1 => ContentKind::Text,
            2 => ContentKind::Image,
            3 => ContentKind::File,
            other => {
                return Err(Error::invalid(
                    "content_type",
                    format!("unknown content type {other}"),
                ));
            }
        };
        if body.contains('\0') {
            return Err(Error::invalid("content", "must not contain NUL characters"));
        }
        match kind {
            ContentKind::Text => {
                if body.trim().is_empty() {
                    return Err(Error::invalid("content", "text must not be blank"));
                }
                if body.len() > max_text_bytes {
                    return Err(Error::invalid(
                        "content",
                        format!(
                            "text is {} bytes, the maximum is {max_text_bytes}",
                            body.len()
                        ),
                    ));
                }
            }
            ContentKind::Image | ContentKind::File => check_url(&body)?,
        }
        Ok(Content { kind, body })
    }
}

/// An image or file URL: `http://` or `https://`, a host, no whitespace or
/// control characters, at most [`URL_MAX_BYTES`].
fn check_url(url: &str) -> Result<()> {
    if url.len() > URL_MAX_BYTES {
        return Err(Error::invalid(
            "content",
            format!("URL is {} bytes, the maximum is {URL_MAX_BYTES}", url.len()),
        ));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return Err(Error::invalid(
            "content",
            "images and files must be an http:// or https:// URL",
        ));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() {
        return Err(Error::invalid("content", "URL has no host"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid(
            "content",
            "URL must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

/// A sender's idempotency key: 1 to 64 characters, no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientMessageId(String);

impl ClientMessageId {
    /// An empty string means "no key".
    pub fn parse(raw: String) -> Result<Option<Self>> {
        if raw.is_empty() {
            return Ok(None);
        }
        if raw.chars().count() > CLIENT_MESSAGE_ID_MAX_CHARS {
            return Err(Error::invalid(
                "client_message_id",
                format!("must be at most {CLIENT_MESSAGE_ID_MAX_CHARS} characters"),
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err(Error::invalid(
                "client_message_id",
                "must not contain control characters",
            ));
        }
        Ok(Some(ClientMessageId(raw)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A message to store, as accepted from a client.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub room: RoomName,
    pub sender: Identity,
    pub content: Content,
    pub client_message_id: Option<ClientMessageId>,
    /// The message this one answers (a message of the same room, checked
    /// before it is stored); 0: not a reply.
    pub reply_to_seq: u64,
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub room: RoomName,
    pub seq: u64,
    pub sender_id: String,
    pub sender_name: String,
    pub kind: ContentKind,
    pub content: String,
    pub client_message_id: Option<String>,
    /// Microseconds since the Unix epoch.
    pub sent_at_micros: i64,
    /// The message it answers; 0: not a reply.
    pub reply_to_seq: u64,
    /// When it was last edited (microseconds since the Unix epoch).
    pub edited_at_micros: Option<i64>,
    /// A tombstone: content erased.
    pub deleted: bool,
    /// The seq of the newest event that changed it; its own seq when none.
    pub updated_seq: u64,
}

/// A seq named by a client, checked to fit storage.
pub fn parse_seq(field: &'static str, value: u64) -> Result<u64> {
    if value > SEQ_MAX {
        return Err(Error::invalid(field, format!("must be at most {SEQ_MAX}")));
    }
    Ok(value)
}

/// Which page of history to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryCursor {
    /// The newest page.
    Newest,
    /// The page of seqs just below this one.
    Before(u64),
    /// The page starting right after this seq.
    After(u64),
}

/// A validated ListHistory request.
#[derive(Clone, Debug)]
pub struct HistoryQuery {
    pub room: RoomName,
    /// 1 to [`PAGE_SIZE_MAX`].
    pub limit: u32,
    pub cursor: HistoryCursor,
}

impl HistoryQuery {
    pub fn parse(
        room: &str,
        page_size: u32,
        before_seq: Option<u64>,
        after_seq: Option<u64>,
    ) -> Result<Self> {
        let room = RoomName::parse(room)?;
        let limit = match page_size {
            0 => PAGE_SIZE_DEFAULT,
            n => n.min(PAGE_SIZE_MAX),
        };
        let cursor = match (before_seq, after_seq) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "before_seq",
                    "before_seq and after_seq cannot both be set",
                ));
            }
            (Some(0), None) => {
                return Err(Error::invalid("before_seq", "must be at least 1"));
            }
            (Some(b), None) => HistoryCursor::Before(parse_seq("before_seq", b)?),
            (None, Some(a)) => HistoryCursor::After(parse_seq("after_seq", a)?),
            (None, None) => HistoryCursor::Newest,
        };
        Ok(HistoryQuery {
            room,
            limit,
            cursor,
        })
    }
}

/// One page of history, ascending.
#[derive(Clone, Debug, Default)]
pub struct HistoryPage {
    pub messages: Vec<StoredMessage>,
    pub has_more: bool,
    /// The room's newest seq, read before the page: a stream resuming
    /// after it misses nothing that changed after the page was read.
    pub last_seq: u64,
}

/// Now, in microseconds since the Unix epoch: the precision storage keeps.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;
