//! Messages that live: edits, deletions and reactions. Each is a durable
//! event of its room at the room's next seq, like a message.

use crate::error::{Error, Result};

use super::{Identity, RoomName, StoredMessage};

/// The longest reaction, in bytes.
pub const REACTION_MAX_BYTES: usize = 64;
/// The most distinct reactions one message holds.
pub const REACTIONS_PER_MESSAGE_MAX: usize = 20;

/// A reaction: 1 to [`REACTION_MAX_BYTES`] bytes of UTF-8 without
/// whitespace or control characters (an emoji with modifiers and joiners,
/// or a short name like `:thumbsup:`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reaction(String);

impl Reaction {
    pub fn parse(raw: String) -> Result<Self> {
        if raw.is_empty() {
            return Err(Error::invalid("reaction", "is required"));
        }
        if raw.len() > REACTION_MAX_BYTES {
            return Err(Error::invalid(
                "reaction",
                format!(
                    "is {} bytes, the maximum is {REACTION_MAX_BYTES}",
                    raw.len()
                ),
            ));
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::invalid(
                "reaction",
                "must not contain whitespace or control characters",
            ));
        }
        Ok(Reaction(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a change does to its message.
#[derive(Clone, Debug)]
pub enum ChangeKind {
    /// New content, checked against the message's own content type (text
    /// at most `max_text_bytes`) once the message is found.
    Edit {
        content: String,
        max_text_bytes: usize,
    },
    Delete,
    React {
        reaction: Reaction,
        add: bool,
    },
}

/// A change of a message, as accepted from a client (access checked).
#[derive(Clone, Debug)]
pub struct NewChange {
    pub room: RoomName,
    pub message_seq: u64,
    pub actor: Identity,
    pub kind: ChangeKind,
}

/// What a stored change did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeWhat {
    /// The message's new content (empty once the message is deleted).
    Edited {
        content: String,
    },
    Deleted,
    /// A user's reaction added or removed; `count` users hold it after.
    Reacted {
        reaction: String,
        added: bool,
        count: u32,
    },
}

impl ChangeWhat {
    /// The stored `kind` (1 is a message).
    pub fn code(&self) -> i16 {
        match self {
            ChangeWhat::Edited { .. } => 2,
            ChangeWhat::Deleted => 3,
            ChangeWhat::Reacted { .. } => 4,
        }
    }
}

/// A stored change: a durable event of its room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredChange {
    pub room: RoomName,
    pub seq: u64,
    pub message_seq: u64,
    /// The editor, the deleter, or the user whose reaction changed.
    pub actor_id: String,
    pub actor_name: String,
    /// Microseconds since the Unix epoch.
    pub at_micros: i64,
    pub what: ChangeWhat,
}

/// A room's durable event, in seq order with the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredEvent {
    Message(StoredMessage),
    Change(StoredChange),
}

impl StoredEvent {
    pub fn seq(&self) -> u64 {
        match self {
            StoredEvent::Message(m) => m.seq,
            StoredEvent::Change(c) => c.seq,
        }
    }

    pub fn room(&self) -> &RoomName {
        match self {
            StoredEvent::Message(m) => &m.room,
            StoredEvent::Change(c) => &c.room,
        }
    }
}

/// One reaction of a message as one user sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReactionCount {
    pub reaction: String,
    pub count: u32,
    /// Whether the user who asked holds it.
    pub mine: bool,
}

/// A message's current state with its reactions as one user sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageState {
    pub message: StoredMessage,
    pub reactions: Vec<ReactionCount>,
}

/// What a change call did: the message after it, and the event stored
/// (`None` when the call changed nothing: an edit to the same content, a
/// deletion of a tombstone, a reaction already held or not held).
#[derive(Clone, Debug)]
pub struct Changed {
    pub state: MessageState,
    pub event: Option<StoredChange>,
}
