//! Rows as diesel reads and writes them, and their conversion to domain
//! types.

use diesel::prelude::*;

use super::schema::{message_events, messages};
use crate::domain::{ChangeWhat, ContentKind, RoomName, StoredChange, StoredEvent, StoredMessage};
use crate::error::{Error, Result};

/// A stored message as read back.
#[derive(Debug, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = messages)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct MessageRow {
    pub room: String,
    pub seq: i64,
    pub sender_id: String,
    pub sender_name: String,
    pub content_type: i16,
    pub content: String,
    pub client_message_id: Option<String>,
    pub sent_at_micros: i64,
    pub reply_to_seq: i64,
    pub edited_at_micros: Option<i64>,
    pub deleted: bool,
    /// 0 while no event changed the message.
    pub updated_seq: i64,
}

impl TryFrom<MessageRow> for StoredMessage {
    type Error = Error;

    fn try_from(row: MessageRow) -> Result<Self> {
        let kind = ContentKind::from_code(row.content_type).ok_or_else(|| {
            Error::Internal(format!(
                "stored message {}#{} has content_type {}",
                row.room, row.seq, row.content_type
            ))
        })?;
        let seq = u64::try_from(row.seq)
            .map_err(|_| Error::Internal(format!("stored seq {} is negative", row.seq)))?;
        let seq_of = |value: i64, what: &str| {
            u64::try_from(value).map_err(|_| {
                Error::Internal(format!("message {}#{seq} has {what} {value}", row.room))
            })
        };
        let reply_to_seq = seq_of(row.reply_to_seq, "reply_to_seq")?;
        let updated_seq = match row.updated_seq {
            0 => seq,
            n => seq_of(n, "updated_seq")?,
        };
        Ok(StoredMessage {
            room: RoomName::from_stored(row.room),
            seq,
            sender_id: row.sender_id,
            sender_name: row.sender_name,
            kind,
            content: row.content,
            client_message_id: row.client_message_id,
            sent_at_micros: row.sent_at_micros,
            reply_to_seq,
            edited_at_micros: row.edited_at_micros,
            deleted: row.deleted,
            updated_seq,
        })
    }
}

/// A message to insert, borrowing from the batch that carries it.
#[derive(Debug, Insertable)]
#[diesel(table_name = messages)]
#[diesel(treat_none_as_null = true)]
pub struct NewMessageRow<'a> {
    pub room: &'a str,
    pub seq: i64,
    pub sender_id: &'a str,
    pub sender_name: &'a str,
    pub content_type: i16,
    pub content: &'a str,
    pub client_message_id: Option<&'a str>,
    pub sent_at_micros: i64,
    pub reply_to_seq: i64,
}

/// A change of a message (a row of `message_events`) as read back.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = message_events)]
#[diesel(check_for_backend(diesel::pg::Pg, diesel::sqlite::Sqlite))]
pub struct ChangeRow {
    pub room: String,
    pub seq: i64,
    pub kind: i16,
    pub message_seq: i64,
    pub actor_id: String,
    pub actor_name: String,
    pub content: String,
    pub reaction: String,
    pub added: bool,
    pub count: i32,
    pub at_micros: i64,
}

impl TryFrom<ChangeRow> for StoredChange {
    type Error = Error;

    fn try_from(row: ChangeRow) -> Result<Self> {
        let bad = |what: &str| {
            Error::Internal(format!("stored change {}#{} has {what}", row.room, row.seq))
        };
        let what = match row.kind {
            2 => ChangeWhat::Edited {
                content: row.content.clone(),
            },
            3 => ChangeWhat::Deleted,
            4 => ChangeWhat::Reacted {
                reaction: row.reaction.clone(),
                added: row.added,
                count: u32::try_from(row.count).map_err(|_| bad("a negative count"))?,
            },
            _ => return Err(bad("an unknown kind")),
        };
        Ok(StoredChange {
            seq: u64::try_from(row.seq).map_err(|_| bad("a negative seq"))?,
            message_seq: u64::try_from(row.message_seq)
                .map_err(|_| bad("a negative message_seq"))?,
            room: RoomName::from_stored(row.room),
            actor_id: row.actor_id,
            actor_name: row.actor_name,
            at_micros: row.at_micros,
            what,
        })
    }
}

/// A change to insert, borrowing from the change it stores.
#[derive(Debug, Insertable)]
#[diesel(table_name = message_events)]
pub struct NewChangeRow<'a> {
    pub room: &'a str,
    pub seq: i64,
    pub kind: i16,
    pub message_seq: i64,
    pub actor_id: &'a str,
    pub actor_name: &'a str,
    pub content: &'a str,
    pub reaction: &'a str,
    pub added: bool,
    pub count: i32,
    pub at_micros: i64,
}

impl<'a> NewChangeRow<'a> {
    /// The row of `change` (seqs are at most `SEQ_MAX`, so they fit).
    pub fn of(change: &'a StoredChange) -> Self {
        let (content, reaction, added, count) = match &change.what {
            ChangeWhat::Edited { content } => (content.as_str(), "", false, 0),
            ChangeWhat::Deleted => ("", "", false, 0),
            ChangeWhat::Reacted {
                reaction,
                added,
                count,
            } => (
                "",
                reaction.as_str(),
                *added,
                i32::try_from(*count).unwrap_or(i32::MAX),
            ),
        };
        NewChangeRow {
            room: change.room.as_str(),
            seq: i64::try_from(change.seq).unwrap_or(i64::MAX),
            kind: change.what.code(),
            message_seq: i64::try_from(change.message_seq).unwrap_or(i64::MAX),
            actor_id: &change.actor_id,
            actor_name: &change.actor_name,
            content,
            reaction,
            added,
            count,
            at_micros: change.at_micros,
        }
    }
}

/// Message rows and change rows as events, in seq order.
pub(super) fn stored_events(
    messages: Vec<MessageRow>,
    changes: Vec<ChangeRow>,
) -> Result<Vec<StoredEvent>> {
    let mut events = messages
        .into_iter()
        .map(|row| StoredMessage::try_from(row).map(StoredEvent::Message))
        .chain(
            changes
                .into_iter()
                .map(|row| StoredChange::try_from(row).map(StoredEvent::Change)),
        )
        .collect::<Result<Vec<StoredEvent>>>()?;
    events.sort_unstable_by_key(StoredEvent::seq);
    Ok(events)
}
