//! Messages that live, on both backends: a change (edit, deletion,
//! reaction) is stored as a durable event at the room's next seq, in one
//! transaction with the message's new state; catch-up reads merge messages
//! and changes in seq order.
//!
//! A change takes the room's counter row first (the same row every batch
//! of sends bumps), so changes and sends of a room are numbered one at a
//! time on every node, and the checks below see the message as it is.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::models::{ChangeRow, MessageRow, NewChangeRow, stored_events};
use super::outbox::{NewOutboxRow, enqueue};
use super::schema::{message_events, messages, reactions, rooms};
use super::{Backend, Store, fitting, to_i64};
use crate::domain::{
    ChangeKind, ChangeWhat, Changed, Content, MessageState, NewChange, REACTIONS_PER_MESSAGE_MAX,
    READ_PAGE_BYTES, Reaction, ReactionCount, RoomName, StoredChange, StoredEvent, StoredMessage,
};
use crate::error::{Error, Result};

/// What a change call writes, decided from the message as it is.
enum Plan {
    Edit(String),
    Delete,
    React { reaction: String, add: bool },
}

/// The message `seq` of `room` as NOT_FOUND names it.
fn no_message(room: &RoomName, seq: u64) -> Error {
    Error::NotFound {
        field: "message_seq",
        reason: format!("room {room} has no message {seq}"),
    }
}

/// Checks `change` against the message (`row`, `held`: whether the actor
/// holds the reaction, `distinct`: the message's distinct reactions and
/// whether this one is among them) and says what to write: nothing when
/// the call changes nothing (same content, a tombstone deleted again, a
/// reaction already held or not held).
fn plan(
    change: &NewChange,
    row: &StoredMessage,
    held: bool,
    distinct: (usize, bool),
) -> Result<Option<Plan>> {
    let actor = &*change.actor.user_id;
    match &change.kind {
        ChangeKind::Edit {
            content,
            max_text_bytes,
        } => {
            if row.sender_id != actor {
                return Err(Error::PermissionDenied(format!(
                    "only its sender may edit message {}",
                    row.seq
                )));
            }
            if row.deleted {
                return Err(Error::FailedPrecondition {
                    field: "message_seq",
                    reason: format!("message {} is deleted: it takes no edits", row.seq),
                });
            }
            let parsed =
                Content::parse(i32::from(row.kind.code()), content.clone(), *max_text_bytes)?;
            if parsed.body == row.content {
                return Ok(None);
            }
            Ok(Some(Plan::Edit(parsed.body)))
        }
        ChangeKind::Delete => {
            if row.sender_id != actor && !change.actor.admin {
                return Err(Error::PermissionDenied(format!(
                    "only its sender or an admin token may delete message {}",
                    row.seq
                )));
            }
            Ok((!row.deleted).then_some(Plan::Delete))
        }
        ChangeKind::React { reaction, add } => plan_reaction(row, reaction, *add, held, distinct),
    }
}

/// [`plan`] for a reaction added (`add`) or removed.
fn plan_reaction(
    row: &StoredMessage,
    reaction: &Reaction,
    add: bool,
    held: bool,
    (count, present): (usize, bool),
) -> Result<Option<Plan>> {
    if row.deleted {
        return Err(Error::FailedPrecondition {
            field: "message_seq",
            reason: format!("message {} is deleted: it takes no reactions", row.seq),
        });
    }
    if add == held {
        return Ok(None);
    }
    if add && !present && count >= REACTIONS_PER_MESSAGE_MAX {
        return Err(Error::FailedPrecondition {
            field: "reaction",
            reason: format!(
                "message {} holds {REACTIONS_PER_MESSAGE_MAX} distinct reactions, the most a message may hold",
                row.seq
            ),
        });
    }
    Ok(Some(Plan::React {
        reaction: reaction.as_str().to_owned(),
        add,
    }))
}

/// A message's reactions as `viewer` sees them, from its rows
/// `(message_seq, reaction, user_id, added_seq)`: by message, each reaction
/// once with its count, in the order each was first added.
fn group_reactions(
    rows: Vec<(i64, String, String, i64)>,
    viewer: &str,
) -> HashMap<u64, Vec<ReactionCount>> {
    // (message, reaction) -> (first added, count, mine)
    let mut tally: HashMap<(i64, String), (i64, u32, bool)> = HashMap::new();
    for (message, reaction, user, added) in rows {
        let entry = tally
            .entry((message, reaction))
            .or_insert((added, 0, false));
        entry.0 = entry.0.min(added);
        entry.1 = entry.1.saturating_add(1);
        entry.2 |= user == viewer;
    }
    let mut sorted: Vec<_> = tally.into_iter().collect();
    sorted.sort_by_key(|((message, _), (first, _, _))| (*message, *first));
    let mut out: HashMap<u64, Vec<ReactionCount>> = HashMap::new();
    for ((message, reaction), (_, count, mine)) in sorted {
        out.entry(u64::try_from(message).unwrap_or(0))
            .or_default()
            .push(ReactionCount {
                reaction,
                count,
                mine,
            });
    }
    out
}

/// The reactions of `room`'s messages `seqs` as `viewer` sees them
/// (an async block on `$conn`, either backend).
macro_rules! reactions_of {
    ($conn:ident, $room:expr, $seqs:expr, $viewer:expr) => {
        async {
            let rows: Vec<(i64, String, String, i64)> = reactions::table
                .filter(reactions::room.eq($room))
                .filter(reactions::message_seq.eq_any($seqs))
                .select((
                    reactions::message_seq,
                    reactions::reaction,
                    reactions::user_id,
                    reactions::added_seq,
                ))
                .load($conn)
                .await?;
            Ok::<_, Error>(group_reactions(rows, $viewer))
        }
    };
}

/// Numbers the change at the room's next seq and writes it: the event,
/// the message's new state, the reactions, and (webhooks on) its outbox
/// row (an async block on `$conn`, inside the change's transaction).
macro_rules! write_change {
    ($store:expr, $conn:ident, $change:expr, $plan:expr, $at:expr) => {
        async {
            let change: &NewChange = $change;
            let at: i64 = $at;
            let room = change.room.as_str();
            let message_seq = to_i64(change.message_seq)?;
            let actor = &*change.actor.user_id;
            let message = messages::table.find((room, message_seq));
            let last: i64 = rooms::table
                .find(room)
                .select(rooms::last_seq)
                .first($conn)
                .await?;
            let seq = last + 1;
            diesel::update(rooms::table.find(room))
                .set(rooms::last_seq.eq(seq))
                .execute($conn)
                .await?;
            let what = match $plan {
                Plan::Edit(content) => {
                    diesel::update(message)
                        .set((
                            messages::content.eq(&content),
                            messages::edited_at_micros.eq(Some(at)),
                            messages::updated_seq.eq(seq),
                        ))
                        .execute($conn)
                        .await?;
                    ChangeWhat::Edited { content }
                }
                Plan::Delete => {
                    diesel::update(message)
                        .set((
                            messages::content.eq(""),
                            messages::deleted.eq(true),
                            messages::updated_seq.eq(seq),
                        ))
                        .execute($conn)
                        .await?;
                    // The content goes from the message's edits too.
                    diesel::update(
                        message_events::table
                            .filter(message_events::room.eq(room))
                            .filter(message_events::message_seq.eq(message_seq))
                            .filter(message_events::kind.eq(EDITED)),
                    )
                    .set(message_events::content.eq(""))
                    .execute($conn)
                    .await?;
                    diesel::delete(
                        reactions::table
                            .filter(reactions::room.eq(room))
                            .filter(reactions::message_seq.eq(message_seq)),
                    )
                    .execute($conn)
                    .await?;
                    ChangeWhat::Deleted
                }
                Plan::React { reaction, add } => {
                    if add {
                        diesel::insert_into(reactions::table)
                            .values((
                                reactions::room.eq(room),
                                reactions::message_seq.eq(message_seq),
                                reactions::reaction.eq(&reaction),
                                reactions::user_id.eq(actor),
                                reactions::added_seq.eq(seq),
                            ))
                            .execute($conn)
                            .await?;
                    } else {
                        diesel::delete(reactions::table.find((
                            room,
                            message_seq,
                            reaction.as_str(),
                            actor,
                        )))
                        .execute($conn)
                        .await?;
                    }
                    let count: i64 = reactions::table
                        .filter(reactions::room.eq(room))
                        .filter(reactions::message_seq.eq(message_seq))
                        .filter(reactions::reaction.eq(&reaction))
                        .count()
                        .get_result($conn)
                        .await?;
                    diesel::update(message)
                        .set(messages::updated_seq.eq(seq))
                        .execute($conn)
                        .await?;
                    ChangeWhat::Reacted {
                        reaction,
                        added: add,
                        count: u32::try_from(count).unwrap_or(u32::MAX),
                    }
                }
            };
            let stored = StoredChange {
                room: change.room.clone(),
                seq: u64::try_from(seq)
                    .map_err(|_| Error::Internal(format!("room {room} has seq {seq}")))?,
                message_seq: change.message_seq,
                actor_id: actor.to_owned(),
                actor_name: change.actor.display_name.to_string(),
                at_micros: at,
                what,
            };
            diesel::insert_into(message_events::table)
                .values(NewChangeRow::of(&stored))
                .execute($conn)
                .await?;
            enqueue!($store, $conn, [NewOutboxRow::room_event(room, seq, at)]).await?;
            Ok::<_, Error>(stored)
        }
    };
}

/// The stored kind of an edit (see [`ChangeWhat::code`]).
const EDITED: i16 = 2;

impl Store {
    /// Applies `change` at `at_micros`: the message after it (its
    /// reactions as the actor sees them) and the event stored, none when
    /// the call changed nothing. NOT_FOUND when `message_seq` is not a
    /// message of the room; PERMISSION_DENIED, FAILED_PRECONDITION and
    /// INVALID_ARGUMENT as [`plan`] says.
    pub async fn change(&self, change: &NewChange, at_micros: i64) -> Result<Changed> {
        let room = change.room.as_str();
        let message_seq = to_i64(change.message_seq)?;
        let actor = &*change.actor.user_id;
        let reaction = match &change.kind {
            ChangeKind::React { reaction, .. } => Some(reaction.as_str()),
            _ => None,
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let result = try_with_conn!(self, deadline, false, |conn| {
            conn.transaction(async |conn| {
                // The room's counter row, locked until the end: no send or
                // change of this room is numbered meanwhile, on any node.
                let locked = diesel::update(rooms::table.find(room))
                    .set(rooms::last_seq.eq(rooms::last_seq))
                    .execute(conn)
                    .await?;
                if locked == 0 {
                    return Err(no_message(&change.room, change.message_seq));
                }
                let row: Option<MessageRow> = messages::table
                    .find((room, message_seq))
                    .select(MessageRow::as_select())
                    .first(conn)
                    .await
                    .optional()?;
                let Some(row) = row else {
                    return Err(no_message(&change.room, change.message_seq));
                };
                let message = StoredMessage::try_from(row)?;
                let mut seen = reactions_of!(conn, room, [message_seq], actor).await?;
                let held_now = seen.remove(&change.message_seq).unwrap_or_default();
                let held =
                    reaction.is_some_and(|r| held_now.iter().any(|c| c.reaction == r && c.mine));
                let present = reaction.is_some_and(|r| held_now.iter().any(|c| c.reaction == r));
                let event = match plan(change, &message, held, (held_now.len(), present))? {
                    None => None,
                    Some(plan) => Some(write_change!(self, conn, change, plan, at_micros).await?),
                };
                let row: MessageRow = messages::table
                    .find((room, message_seq))
                    .select(MessageRow::as_select())
                    .first(conn)
                    .await?;
                let mut after = reactions_of!(conn, room, [message_seq], actor).await?;
                let state = MessageState {
                    message: StoredMessage::try_from(row)?,
                    reactions: after.remove(&change.message_seq).unwrap_or_default(),
                };
                Ok::<_, Error>(Changed { state, event })
            })
            .await?
        });
        self.note_write_failure(&result);
        if let Ok(Changed { event: Some(_), .. }) = &result {
            self.outbox_written();
        }
        result
    }

    /// Whether `seq` is a message of `room` (a tombstone counts; another
    /// event's seq does not).
    pub async fn has_message(&self, room: &RoomName, seq: u64) -> Result<bool> {
        let seq = to_i64(seq)?;
        let found: i64 = with_conn!(self, |conn| {
            messages::table
                .filter(messages::room.eq(room.as_str()))
                .filter(messages::seq.eq(seq))
                .count()
                .get_result(conn)
                .await?
        });
        Ok(found > 0)
    }

    /// The reactions of `room`'s messages `seqs`, as `viewer` sees them.
    pub async fn reactions(
        &self,
        room: &RoomName,
        seqs: &[u64],
        viewer: &str,
    ) -> Result<HashMap<u64, Vec<ReactionCount>>> {
        if seqs.is_empty() {
            return Ok(HashMap::new());
        }
        let seqs = seqs
            .iter()
            .map(|s| to_i64(*s))
            .collect::<Result<Vec<i64>>>()?;
        Ok(with_conn!(self, |conn| {
            reactions_of!(conn, room.as_str(), &seqs, viewer).await?
        }))
    }

    /// The reactions of one message in each of several rooms (`messages`:
    /// room and message seq), as `viewer` sees them, by (room, seq).
    pub async fn reactions_of_each(
        &self,
        messages: &[(&RoomName, u64)],
        viewer: &str,
    ) -> Result<HashMap<(String, u64), Vec<ReactionCount>>> {
        if messages.is_empty() {
            return Ok(HashMap::new());
        }
        let rooms: Vec<&str> = messages.iter().map(|(r, _)| r.as_str()).collect();
        let seqs = messages
            .iter()
            .map(|(_, s)| to_i64(*s))
            .collect::<Result<Vec<i64>>>()?;
        let rows: Vec<(String, i64, String, String, i64)> = with_conn!(self, |conn| {
            reactions::table
                .filter(reactions::room.eq_any(&rooms))
                .filter(reactions::message_seq.eq_any(&seqs))
                .select((
                    reactions::room,
                    reactions::message_seq,
                    reactions::reaction,
                    reactions::user_id,
                    reactions::added_seq,
                ))
                .load(conn)
                .await?
        });
        // The query takes every room's seqs; keep each room's own message.
        let wanted: std::collections::HashSet<(&str, i64)> =
            rooms.iter().copied().zip(seqs.iter().copied()).collect();
        let mut by_room: HashMap<String, Vec<(i64, String, String, i64)>> = HashMap::new();
        for (room, seq, reaction, user, added) in rows {
            if wanted.contains(&(room.as_str(), seq)) {
                by_room
                    .entry(room)
                    .or_default()
                    .push((seq, reaction, user, added));
            }
        }
        let mut out = HashMap::new();
        for (room, rows) in by_room {
            for (seq, counts) in group_reactions(rows, viewer) {
                out.insert((room.clone(), seq), counts);
            }
        }
        Ok(out)
    }

    /// Up to `limit` durable events of `room` (messages and changes) with
    /// seq > `after`, ascending, and at most [`READ_PAGE_BYTES`] (each
    /// counted by its stored content, as [`Store::history`] does; at least
    /// one); and whether more followed when it was read. Messages come in
    /// their current state (edited content, tombstones), without reactions.
    pub async fn read_events(
        &self,
        room: &RoomName,
        after: u64,
        limit: u32,
    ) -> Result<(Vec<StoredEvent>, bool)> {
        let after = to_i64(after)?;
        let take = i64::from(limit) + 1;
        let sizes = self.event_sizes(room.as_str(), after, take).await?;
        let fit = fitting(sizes.iter().map(|s| s.1), limit as usize, READ_PAGE_BYTES);
        let more = sizes.len() > fit;
        let Some(&(last, _)) = sizes[..fit].last() else {
            return Ok((Vec::new(), false));
        };
        let events = self.events_between(room.as_str(), after, last).await?;
        Ok((events, more))
    }

    /// The seqs and stored bytes of `room`'s first `take` events after
    /// `after`, messages and changes together, ascending.
    async fn event_sizes(&self, room: &str, after: i64, take: i64) -> Result<Vec<(i64, i64)>> {
        type Sizes = Vec<(i64, i64)>;
        let (from_messages, from_changes): (Sizes, Sizes) = with_conn!(self, |conn| {
            let m = messages::table
                .filter(messages::room.eq(room))
                .filter(messages::seq.gt(after))
                .order(messages::seq.asc())
                .limit(take)
                .select((messages::seq, super::content_bytes()))
                .load(conn)
                .await?;
            let c = message_events::table
                .filter(message_events::room.eq(room))
                .filter(message_events::seq.gt(after))
                .order(message_events::seq.asc())
                .limit(take)
                .select((message_events::seq, super::content_bytes()))
                .load(conn)
                .await?;
            (m, c)
        });
        let mut sizes: Sizes = from_messages.into_iter().chain(from_changes).collect();
        sizes.sort_unstable();
        sizes.truncate(usize::try_from(take).unwrap_or(usize::MAX));
        Ok(sizes)
    }

    /// `room`'s events with seqs in `after + 1 ..= last`, ascending.
    async fn events_between(&self, room: &str, after: i64, last: i64) -> Result<Vec<StoredEvent>> {
        let (messages, changes): (Vec<MessageRow>, Vec<ChangeRow>) = with_conn!(self, |conn| {
            let m = messages::table
                .filter(messages::room.eq(room))
                .filter(messages::seq.gt(after))
                .filter(messages::seq.le(last))
                .select(MessageRow::as_select())
                .load(conn)
                .await?;
            let c = message_events::table
                .filter(message_events::room.eq(room))
                .filter(message_events::seq.gt(after))
                .filter(message_events::seq.le(last))
                .select(ChangeRow::as_select())
                .load(conn)
                .await?;
            (m, c)
        });
        stored_events(messages, changes)
    }
}
