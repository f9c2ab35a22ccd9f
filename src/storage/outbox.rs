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

use std::sync::atomic::{AtomicBool, Ordering};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary, Integer, Nullable, Text};
use diesel_async::RunQueryDsl;

use super::schema::webhook_outbox;
use super::{Backend, Store};
use crate::domain::{RoomName, StoredEvent};
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
    /// A room event at `seq`, due at once.
    pub fn room_event(room: &'a str, seq: i64, at_micros: i64) -> Self {
        NewOutboxRow {
            room,
            seq,
            payload: None,
            created_micros: at_micros,
            due_micros: at_micros,
        }
    }

    /// An access or moderation event carried whole, due at once.
    pub fn carried(room: &'a str, payload: &'a [u8], at_micros: i64) -> Self {
        NewOutboxRow {
            room,
            seq: 0,
            payload: Some(payload),
            created_micros: at_micros,
            due_micros: at_micros,
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

/// Claims the due rows (PostgreSQL's placeholders; SQLite's are the same
/// with `?`): `$1` the end of the lease (their new due time), `$2` the
/// claim, `$3` now, `$4` how many at most. Oldest due first.
const CLAIM_SQL: &str = "\
UPDATE webhook_outbox SET due_micros = $1, lease = $2
WHERE id IN (
    SELECT id FROM webhook_outbox WHERE due_micros <= $3
    ORDER BY due_micros LIMIT $4 FOR UPDATE SKIP LOCKED
)
RETURNING id, room, seq, payload, created_micros, attempts";

/// The backlog: events waiting and the oldest one's commit time.
#[derive(Debug, QueryableByName)]
struct BacklogRow {
    #[diesel(sql_type = BigInt)]
    waiting: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    oldest: Option<i64>,
}

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

    /// Claims at most `limit` due events for `claim` until `lease_until`.
    pub async fn claim_outbox(
        &self,
        now_micros: i64,
        lease_until: i64,
        claim: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRow>> {
        let sql = match self.backend {
            Backend::Postgres(_) => std::borrow::Cow::Borrowed(CLAIM_SQL),
            Backend::Sqlite(_) => std::borrow::Cow::Owned(
                CLAIM_SQL
                    .replace(" FOR UPDATE SKIP LOCKED", "")
                    .replace('$', "?"),
            ),
        };
        let sql = &*sql;
        Ok(with_conn!(self, |conn| {
            diesel::sql_query(sql)
                .bind::<BigInt, _>(lease_until)
                .bind::<BigInt, _>(claim)
                .bind::<BigInt, _>(now_micros)
                .bind::<BigInt, _>(limit)
                .load(conn)
                .await?
        }))
    }

    /// The event `id` was delivered (or dropped): it leaves the outbox,
    /// unless another claim took it meanwhile.
    pub async fn outbox_delivered(&self, id: i64, claim: i64) -> Result<()> {
        with_conn!(self, |conn| {
            diesel::delete(
                webhook_outbox::table
                    .filter(webhook_outbox::id.eq(id))
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

    /// Events waiting, and the oldest one's commit time.
    pub async fn outbox_backlog(&self) -> Result<(u64, Option<i64>)> {
        let row: BacklogRow = with_conn!(self, |conn| {
            diesel::sql_query(
                "SELECT count(*) AS waiting, min(created_micros) AS oldest FROM webhook_outbox",
            )
            .get_result(conn)
            .await?
        });
        Ok((u64::try_from(row.waiting).unwrap_or(0), row.oldest))
    }

    /// The room event at `seq` (a message or a change), `None` when the
    /// room has no event there.
    pub async fn event_at(&self, room: &RoomName, seq: i64) -> Result<Option<StoredEvent>> {
        if seq < 1 {
            return Err(Error::Internal(format!("no event has seq {seq}")));
        }
        let events = self.events_between(room.as_str(), seq - 1, seq).await?;
        Ok(events.into_iter().find(|e| e.seq() == seq as u64))
    }
}
