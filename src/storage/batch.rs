//! A batch of sends as storage plans it: which messages are new, which repeat an idempotency key, and the answers in batch order.

use std::collections::HashMap;

use super::Appended;
use super::models::MessageRow;
use crate::domain::{NewMessage, StoredMessage};
use crate::error::{Error, Result};

/// The batch write, which differs per backend: stores `batch` atomically
/// and returns, in its order, each message as stored (see
/// [`Store::append`]). The lookup of the batch's idempotency keys and the
/// write are race-free against other processes writing the same keys.
/// With `outbox`, every new message goes to the webhook outbox in the
/// same transaction.
pub(super) trait AppendBatch {
    async fn append_batch(
        &mut self,
        batch: &[NewMessage],
        sent_at_micros: i64,
        outbox: bool,
    ) -> Result<Vec<Appended>>;
}

/// Stored messages by their idempotency key.
pub(super) fn keys_of(rows: Vec<MessageRow>) -> Result<HashMap<Key, StoredMessage>> {
    let mut stored = HashMap::new();
    for row in rows {
        let message = StoredMessage::try_from(row)?;
        if let Some(id) = message.client_message_id.clone() {
            let key = (
                message.room.as_str().to_owned(),
                message.sender_id.clone(),
                id,
            );
            stored.insert(key, message);
        }
    }
    Ok(stored)
}

/// (room, sender id, client_message_id).
pub(super) type Key = (String, String, String);

pub(super) fn key_of(m: &NewMessage) -> Option<Key> {
    m.client_message_id.as_ref().map(|id| {
        (
            m.room.as_str().to_owned(),
            m.sender.user_id.to_string(),
            id.as_str().to_owned(),
        )
    })
}

/// What to do with one message of a batch.
pub(super) enum Plan {
    /// Store it.
    New,
    /// It repeats a message stored earlier.
    Existing(StoredMessage),
    /// It repeats the message at this index of the batch.
    SameAs(usize),
}

/// The messages of `batch` that `plans` store, in batch order.
pub(super) fn fresh_of<'a>(batch: &'a [NewMessage], plans: &[Plan]) -> Vec<&'a NewMessage> {
    batch
        .iter()
        .zip(plans)
        .filter(|(_, p)| matches!(p, Plan::New))
        .map(|(m, _)| m)
        .collect()
}

/// The (room, sender id, key) triples of the messages of `batch` that
/// carry an idempotency key, as three parallel arrays, for an exact lookup.
pub(super) fn lookup_keys(batch: &[NewMessage]) -> (Vec<&str>, Vec<&str>, Vec<&str>) {
    let mut rooms = Vec::new();
    let mut senders = Vec::new();
    let mut ids = Vec::new();
    for m in batch {
        if let Some(id) = &m.client_message_id {
            rooms.push(m.room.as_str());
            senders.push(&*m.sender.user_id);
            ids.push(id.as_str());
        }
    }
    (rooms, senders, ids)
}

pub(super) fn plan(batch: &[NewMessage], stored: &HashMap<Key, StoredMessage>) -> Vec<Plan> {
    let mut first_in_batch: HashMap<Key, usize> = HashMap::new();
    batch
        .iter()
        .enumerate()
        .map(|(i, m)| match key_of(m) {
            Some(key) => {
                if let Some(original) = stored.get(&key) {
                    Plan::Existing(original.clone())
                } else if let Some(&j) = first_in_batch.get(&key) {
                    Plan::SameAs(j)
                } else {
                    first_in_batch.insert(key, i);
                    Plan::New
                }
            }
            None => Plan::New,
        })
        .collect()
}

/// The batch as stored: fresh messages take, in order, the seqs the write
/// gave them (`seqs`, one per [`Plan::New`]); repeats take their original.
pub(super) fn assemble(
    batch: &[NewMessage],
    plans: Vec<Plan>,
    seqs: Vec<i64>,
    sent_at_micros: i64,
) -> Result<Vec<Appended>> {
    let fresh_count = plans.iter().filter(|p| matches!(p, Plan::New)).count();
    if seqs.len() != fresh_count {
        return Err(Error::Internal(format!(
            "the write returned {} seqs for {fresh_count} messages",
            seqs.len()
        )));
    }
    let mut seqs = seqs.into_iter();
    let mut out: Vec<Appended> = Vec::with_capacity(batch.len());
    for (m, plan) in batch.iter().zip(plans) {
        let appended = match plan {
            Plan::New => {
                let stored = seqs
                    .next()
                    .ok_or_else(|| Error::Internal("fewer seqs than messages".into()))?;
                let seq = u64::try_from(stored)
                    .map_err(|_| Error::Internal(format!("the write gave seq {stored}")))?;
                Appended {
                    message: StoredMessage {
                        room: m.room.clone(),
                        seq,
                        sender_id: m.sender.user_id.to_string(),
                        sender_name: m.sender.display_name.to_string(),
                        kind: m.content.kind,
                        content: m.content.body.clone(),
                        client_message_id: m
                            .client_message_id
                            .as_ref()
                            .map(|id| id.as_str().to_owned()),
                        sent_at_micros,
                        reply_to_seq: m.reply_to_seq,
                        edited_at_micros: None,
                        deleted: false,
                        updated_seq: seq,
                    },
                    fresh: true,
                }
            }
            Plan::Existing(original) => Appended {
                message: original,
                fresh: false,
            },
            Plan::SameAs(j) => Appended {
                message: out[j].message.clone(),
                fresh: false,
            },
        };
        out.push(appended);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_come_from_the_write_only() {
        // assemble takes the seqs as given and refuses a count that does
        // not match the fresh messages.
        let plans = vec![Plan::New, Plan::New];
        assert!(assemble(&[], plans, vec![7], 0).is_err());
        assert!(assemble(&[], Vec::new(), Vec::new(), 0).unwrap().is_empty());
    }
}
