//! Rows as diesel reads and writes them, and their conversion to domain
//! types.

use diesel::prelude::*;

use super::schema::messages;
use crate::domain::{ContentKind, RoomName, StoredMessage};
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
        Ok(StoredMessage {
            room: RoomName::from_stored(row.room),
            seq,
            sender_id: row.sender_id,
            sender_name: row.sender_name,
            kind,
            content: row.content,
            client_message_id: row.client_message_id,
            sent_at_micros: row.sent_at_micros,
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
}
