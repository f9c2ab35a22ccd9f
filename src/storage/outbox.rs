//! The webhook outbox, on both backends: events written in the transactions
//! that commit them, claimed by one node at a time for delivery, deleted
//! once delivered.
//!
//! A room event (a message or a change of one) is a row naming its room and
//! seq: the event itself is in the room's history and is read back when it
//! is delivered (so a message edited or deleted before its delivery is
//! sent as it is then). An access or moderation event has no seq and
//! carries its encoded `chat.v1.Event` in the row.
//!
//! Claims are leases: [`Store::claim_outbox`] moves the rows' due time to
//! the end of the lease and stamps them with the claim, atomically
//! (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so nodes claiming at once never
//! share a row; SQLite: one writer). Only the claim deletes
//! ([`Store::outbox_delivered`]) or reschedules ([`Store::outbox_retry`]) a
//! row; a node that dies leaves its rows to whoever claims them once the
//! lease is over.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary, Integer, Nullable, Text};
use diesel_async::RunQueryDsl;

use super::models::{ChangeRow, MessageRow, stored_events};
use super::schema::{message_events, messages, webhook_outbox};
use super::{Backend, Store};
use crate::domain::{RoomName, StoredEvent, now_micros};
use crate::error::{Error, Result};

/// A row to insert (see the migration for the columns).
#[derive(Clone, Copy, Insertable)]
#[diesel(table_name = webhook_outbox)]
pub(super) struct NewOutboxRow<'a> {
    pub room: &'a str,
    pub seq: i64,
    pub payload: Option<&'a [u8]>,
    pub created_micros: i64,
    pub due_micros: i64,
}

impl<'a> NewOutboxRow<'a> {
    /// A room event at `seq`, due at once (due 0: whatever the clocks of
    /// the nodes say).
    pub fn room_event(room: &'a str, seq: i64, at_micros: i64) -> Self {
        NewOutboxRow {
            room,
            seq,
            payload: None,
            created_micros: at_micros,
            due_micros: 0,
        }
    }

    /// An access or moderation event carried whole, due at once.
    pub fn carried(room: &'a str, payload: &'a [u8], at_micros: i64) -> Self {
        NewOutboxRow {
            room,
            seq: 0,
            payload: Some(payload),
            created_micros: at_micros,
            due_micros: 0,
        }
    }
}

/// Inserts `$rows` (an iterator of [`NewOutboxRow`]) into the outbox on
/// `$conn`, inside the caller's transaction, when the store has webhooks
/// on (an async block).
macro_rules! enqueue {
    ($store:expr, $conn:ident, $rows:expr) => {
        async {
            if $store.outbox_on() {
                // A row per statement: the few rows of a change or an
                // admin call (SQLite's async connection has no batch insert).
                for row in $rows {
                    let row: $crate::storage::outbox::NewOutboxRow<'_> = row;
                    diesel::insert_into($crate::storage::schema::webhook_outbox::table)
                        .values(&row)
                        .execute($conn)
                        .await?;
                }
            }
            Ok::<_, diesel::result::Error>(())
        }
    };
}
pub(super) use enqueue;

/// One claimed event.
#[derive(Debug, Clone, QueryableByName)]
pub struct OutboxRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// The room ('' for a sanction on every room).
    #[diesel(sql_type = Text)]
    pub room: String,
    /// A room event's seq; 0 for a carried event.
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    /// A carried event's encoded `chat.v1.Event`.
    #[diesel(sql_type = Nullable<Binary>)]
    pub payload: Option<Vec<u8>>,
    #[diesel(sql_type = BigInt)]
    pub created_micros: i64,
    /// Failed tries before this one.
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
}

/// Claims the due rows on PostgreSQL, by the database's clock (so that
/// nodes whose clocks differ agree on when a lease ends): `$1` the lease
/// in microseconds, `$2` the claim, `$3` how many at most. New events
/// (due 0) first, then the longest due.
const PG_CLAIM_SQL: &str = "\
WITH clock AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS now)
UPDATE webhook_outbox SET due_micros = (SELECT now FROM clock) + $1, lease = $2
WHERE id IN (
    SELECT id FROM webhook_outbox WHERE due_micros <= (SELECT now FROM clock)
    ORDER BY due_micros, id LIMIT $3 FOR UPDATE SKIP LOCKED
)
RETURNING id, room, seq, payload, created_micros, attempts";

/// [`PG_CLAIM_SQL`] for SQLite (one process: its own clock): `?1` the
/// end of the lease, `?2` the claim, `?3` how many at most, `?4` now.
const SQLITE_CLAIM_SQL: &str = "\
UPDATE webhook_outbox SET due_micros = ?1, lease = ?2
WHERE id IN (
    SELECT id FROM webhook_outbox WHERE due_micros <= ?4
    ORDER BY due_micros, id LIMIT ?3
)
RETURNING id, room, seq, payload, created_micros, attempts";

impl Store {
    /// Whether events are written to the outbox (webhooks are on).
    pub fn outbox_on(&self) -> bool {
        AtomicBool::load(&self.state.outbox, Ordering::Relaxed)
    }

    /// Turns writing to the outbox on (at start-up, with webhooks).
    pub fn enable_outbox(&self) {
        self.state.outbox.store(true, Ordering::Relaxed);
    }

    /// Wakes this node's delivery after a commit that wrote to the outbox.
    pub(super) fn outbox_written(&self) {
        if self.outbox_on() {
            self.state.outbox_written.notify_one();
        }
    }

    /// Returns when this node committed events to the outbox since the
    /// last call (at once if it did meanwhile).
    pub async fn outbox_changed(&self) {
        self.state.outbox_written.notified().await;
    }

    /// Claims at most `limit` due events for `claim`, for `lease_micros`.
    pub async fn claim_outbox(
        &self,
        lease_micros: i64,
        claim: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRow>> {
        Ok(match self.backend {
            Backend::Postgres(_) => with_conn!(self, |conn| {
                diesel::sql_query(PG_CLAIM_SQL)
                    .bind::<BigInt, _>(lease_micros)
                    .bind::<BigInt, _>(claim)
                    .bind::<BigInt, _>(limit)
                    .load(conn)
                    .await?
            }),
            Backend::Sqlite(_) => {
                let now = now_micros();
                with_conn!(self, |conn| {
                    diesel::sql_query(SQLITE_CLAIM_SQL)
                        .bind::<BigInt, _>(now.saturating_add(lease_micros))
                        .bind::<BigInt, _>(claim)
                        .bind::<BigInt, _>(limit)
                        .bind::<BigInt, _>(now)
                        .load(conn)
                        .await?
                })
            }
        })
    }

    /// Gives the claim of `ids` up: they are due again at once (for a
    /// delivery that could no longer finish within its lease).
    pub async fn outbox_release(&self, ids: &[i64], claim: i64) -> Result<()> {
        with_conn!(self, |conn| {
            diesel::update(
                webhook_outbox::table
                    .filter(webhook_outbox::id.eq_any(ids))
                    .filter(webhook_outbox::lease.eq(claim)),
            )
            .set((
                webhook_outbox::due_micros.eq(0i64),
                webhook_outbox::lease.eq(0i64),
            ))
            .execute(conn)
            .await?
        });
        Ok(())
    }

    /// The events `ids` were delivered (or dropped): they leave the
    /// outbox, unless another claim took them meanwhile.
    pub async fn outbox_delivered(&self, ids: &[i64], claim: i64) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        with_conn!(self, |conn| {
            diesel::delete(
                webhook_outbox::table
                    .filter(webhook_outbox::id.eq_any(ids))
                    .filter(webhook_outbox::lease.eq(claim)),
            )
            .execute(conn)
            .await?
        });
        Ok(())
    }

    /// The event `id` failed: tried again at `due_micros`, one more
    /// attempt counted.
    pub async fn outbox_retry(&self, id: i64, claim: i64, due_micros: i64) -> Result<()> {
        with_conn!(self, |conn| {
            diesel::update(
                webhook_outbox::table
                    .filter(webhook_outbox::id.eq(id))
                    .filter(webhook_outbox::lease.eq(claim)),
            )
            .set((
                webhook_outbox::due_micros.eq(due_micros),
                webhook_outbox::attempts.eq(webhook_outbox::attempts + 1),
                webhook_outbox::lease.eq(0i64),
            ))
            .execute(conn)
            .await?
        });
        Ok(())
    }

    /// Events waiting, and the oldest one's commit time (ids rise with
    /// commits: the first row is the oldest, read through the key).
    pub async fn outbox_backlog(&self) -> Result<(u64, Option<i64>)> {
        let (waiting, oldest): (i64, Option<i64>) = with_conn!(self, |conn| {
            let waiting = webhook_outbox::table.count().get_result(conn).await?;
            let oldest = webhook_outbox::table
                .order(webhook_outbox::id.asc())
                .select(webhook_outbox::created_micros)
                .first(conn)
                .await
                .optional()?;
            (waiting, oldest)
        });
        Ok((u64::try_from(waiting).unwrap_or(0), oldest))
    }

    /// The room events of `wanted` (room, seq): messages and changes, in
    /// two queries whatever the rooms (a superset is read, by room and by
    /// seq, and cut to the pairs asked for).
    pub async fn events_at(&self, wanted: &[(RoomName, i64)]) -> Result<Vec<StoredEvent>> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let rooms: Vec<&str> = wanted.iter().map(|(r, _)| r.as_str()).collect();
        let seqs: Vec<i64> = wanted.iter().map(|(_, s)| *s).collect();
        let (rooms, seqs) = (&rooms, &seqs);
        let (messages, changes): (Vec<MessageRow>, Vec<ChangeRow>) = with_conn!(self, |conn| {
            let m = messages::table
                .filter(messages::room.eq_any(rooms))
                .filter(messages::seq.eq_any(seqs))
                .select(MessageRow::as_select())
                .load(conn)
                .await?;
            let c = message_events::table
                .filter(message_events::room.eq_any(rooms))
                .filter(message_events::seq.eq_any(seqs))
                .select(ChangeRow::as_select())
                .load(conn)
                .await?;
            (m, c)
        });
        let wanted: HashSet<(&str, i64)> = wanted.iter().map(|(r, s)| (r.as_str(), *s)).collect();
        let (messages, changes) = (
            messages
                .into_iter()
                .filter(|m| wanted.contains(&(m.room.as_str(), m.seq)))
                .collect(),
            changes
                .into_iter()
                .filter(|c| wanted.contains(&(c.room.as_str(), c.seq)))
                .collect(),
        );
        stored_events(messages, changes)
    }
}
