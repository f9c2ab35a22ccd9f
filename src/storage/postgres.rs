//! What only PostgreSQL does: its pool (with server-side timeouts and TCP
//! keepalive on every connection), its migrations (serialized between
//! processes by an advisory lock), and the batch write: one statement, and
//! a transaction with the rooms locked when another process stored one of
//! the batch's idempotency keys at the same instant.

use std::time::Duration;

use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl,
    SimpleAsyncConnection, TransactionManager,
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures_util::FutureExt;

use super::Appended;
use super::batch::{AppendBatch, Key, assemble, fresh_of, keys_of, lookup_keys, plan};
use super::models::MessageRow;
use super::prepared::{Bind, Cached};
use crate::domain::{NewMessage, StoredMessage};
use crate::error::{Error, Result};

/// PostgreSQL's migrations, compiled into the binary.
const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// How long start-up waits for the migrations (on a connection of their
/// own, without the statement timeout: a migration may rewrite a table).
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Connection parameters added to `DATABASE_URL` unless it sets them: TCP
/// keepalive finds a peer that vanished without a RST in about 25 s on an
/// idle connection, and `tcp_user_timeout` drops one whose sent data stays
/// unacknowledged for 30 s. (`connect_timeout` is added from the deadline.)
const TCP_PARAMS: &[(&str, &str)] = &[
    ("keepalives", "1"),
    ("keepalives_idle", "10"),
    ("keepalives_interval", "5"),
    ("keepalives_retries", "3"),
    ("tcp_user_timeout", "30"),
];

pub type PgPool = Pool<AsyncPgConnection>;

/// `url` with the TCP parameters and a `connect_timeout` of `timeout`
/// (whole seconds, at least 1) added where it does not set them.
pub(super) fn with_params(url: &str, timeout: Duration) -> String {
    let connect = timeout.as_secs().max(1).to_string();
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let set = |name: &str| {
        query
            .split('&')
            .any(|kv| kv.split('=').next() == Some(name))
    };
    let mut out = url.to_owned();
    let mut sep = if url.contains('?') { '&' } else { '?' };
    for (name, value) in TCP_PARAMS
        .iter()
        .copied()
        .chain([("connect_timeout", connect.as_str())])
    {
        if !set(name) {
            out.push(sep);
            out.push_str(name);
            out.push('=');
            out.push_str(value);
            sep = '&';
        }
    }
    out
}

/// `SET`s every pooled connection runs once: the server itself cancels a
/// statement or a lock wait a little before chatd's own deadline would drop
/// the connection, so the error is clean and the connection reusable.
pub(super) fn session_setup(timeout: Duration) -> String {
    let ms = (timeout.as_millis() * 3 / 4).max(50);
    format!("SET statement_timeout = {ms}; SET lock_timeout = {ms};")
}

/// A pool whose connections carry the timeouts and keepalive above.
pub fn pool(url: &str, max_connections: usize, timeout: Duration) -> Result<PgPool> {
    let setup = session_setup(timeout);
    // Fast recycling: a checkout costs no round trip. A connection that
    // broke is found on use (the call gets UNAVAILABLE) and dropped, with
    // every idle one when the server ended the session.
    let mut config = ManagerConfig::<AsyncPgConnection>::default();
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(move |url| {
        let setup = setup.clone();
        async move {
            let mut conn = AsyncPgConnection::establish(url).await?;
            conn.batch_execute(&setup)
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        }
        .boxed()
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        with_params(url, timeout),
        config,
    );
    super::build_pool(manager, max_connections, timeout)
}

/// The advisory lock (per database) that serializes migrations between
/// processes: two nodes started together on a fresh database would
/// otherwise both create the tables, and one fail.
const MIGRATION_LOCK: i64 = 0x6368_6174_645f_6d31; // "chatd_m1"

/// Runs every pending migration on a connection of its own, holding
/// [`MIGRATION_LOCK`]: a process that finds another one migrating waits for
/// it, then finds nothing left to do. The wait and the migrations share
/// one deadline, [`MIGRATION_TIMEOUT`].
pub async fn migrate(url: &str, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + MIGRATION_TIMEOUT;
    let url = with_params(url, timeout);
    let mut conn = tokio::time::timeout(timeout, AsyncPgConnection::establish(&url))
        .await
        .map_err(|_| Error::Config("DATABASE_URL: timed out connecting".into()))?
        .map_err(|e| Error::Config(format!("DATABASE_URL: cannot connect: {e}")))?;
    // The server gives up waiting a little before the deadline, so the
    // error is its own; the lock is the session's until the connection
    // closes, after the migrations.
    let wait_ms = MIGRATION_TIMEOUT.as_millis() * 9 / 10;
    let lock = format!(
        "SET lock_timeout = {wait_ms}; SELECT pg_advisory_lock({MIGRATION_LOCK}); SET lock_timeout = 0;"
    );
    tokio::time::timeout_at(deadline, conn.batch_execute(&lock))
        .await
        .map_err(|_| Error::Config(migrations_late()))?
        .map_err(|e| {
            Error::Config(format!(
                "database migrations: waiting for another chatd's migrations failed: {e}"
            ))
        })?;
    // The harness blocks its thread: run it where blocking is allowed, so
    // that the deadline below can fire.
    let run = tokio::task::spawn_blocking(move || {
        let mut harness = AsyncMigrationHarness::new(conn);
        harness
            .run_pending_migrations(MIGRATIONS)
            .map(|_| ())
            .map_err(|e| Error::Config(format!("database migrations failed: {e}")))
    });
    tokio::time::timeout_at(deadline, run)
        .await
        .map_err(|_| Error::Config(migrations_late()))?
        .map_err(|e| Error::Internal(format!("migration task: {e}")))?
}

fn migrations_late() -> String {
    format!("database migrations did not finish within {MIGRATION_TIMEOUT:?}")
}

/// Bumps each room's counter by its number of new messages, inserts the
/// messages with their seqs and moves each sender's read marker to their
/// last message of the room (making the room theirs), and, with `$9 = 1`
/// (webhooks on), puts every new message in the webhook outbox, in one statement
/// (atomic on its own, one round trip). Inputs are parallel arrays in batch order; seqs are assigned per
/// room in that order. Returns the position (1-based `ord`) and seq of every
/// row the INSERT stored: the seqs acknowledged are exactly the ones
/// written, computed once, here.
const APPEND_SQL: &str = "\
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int2[], $5::text[], $6::text[], $8::int8[])
        WITH ORDINALITY AS t(room, sender_id, sender_name, content_type, content, client_message_id, reply_to_seq, ord)
), counts AS (
    SELECT room, count(*) AS n FROM input GROUP BY room
), bumped AS (
    INSERT INTO rooms (name, last_seq)
    SELECT room, n FROM counts ORDER BY room
    ON CONFLICT (name) DO UPDATE SET last_seq = rooms.last_seq + EXCLUDED.last_seq
    RETURNING name, last_seq
), numbered AS (
    SELECT i.*, b.last_seq - c.n + row_number() OVER (PARTITION BY i.room ORDER BY i.ord) AS seq
    FROM input i JOIN counts c ON c.room = i.room JOIN bumped b ON b.name = i.room
), inserted AS (
    INSERT INTO messages
        (room, seq, sender_id, sender_name, content_type, content, client_message_id, sent_at_micros, reply_to_seq)
    SELECT room, seq, sender_id, sender_name, content_type, content, client_message_id, $7, reply_to_seq
    FROM numbered
    RETURNING room, seq
), marked AS (
    INSERT INTO room_users (user_id, room, read_seq, since_micros, display_name)
    SELECT sender_id, room, max(seq), $7, max(sender_name) FROM numbered
    GROUP BY sender_id, room ORDER BY sender_id, room
    ON CONFLICT (user_id, room)
    DO UPDATE SET read_seq = GREATEST(room_users.read_seq, EXCLUDED.read_seq),
        display_name = EXCLUDED.display_name
), outboxed AS (
    INSERT INTO webhook_outbox (room, seq, created_micros, due_micros)
    SELECT room, seq, $7, 0 FROM numbered WHERE $9 = 1
)
SELECT n.ord, n.seq FROM numbered n JOIN inserted s ON s.room = n.room AND s.seq = n.seq
ORDER BY n.ord";

#[derive(diesel::QueryableByName)]
struct Assigned {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    ord: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    seq: i64,
}

/// Creates the rows of the batch's rooms that do not exist yet (last_seq
/// 0) and locks every one, in name order (as every writer does, so two
/// cannot deadlock). Until the transaction ends, no other writer can store
/// a message in these rooms: each must bump their counter first.
const LOCK_ROOMS_SQL: &str = "\
INSERT INTO rooms (name, last_seq)
SELECT name, 0 FROM unnest($1::text[]) AS t(name) ORDER BY name
ON CONFLICT (name) DO UPDATE SET last_seq = rooms.last_seq";

/// The unique index an idempotency key lives in.
const KEY_INDEX: &str = "messages_idempotency_key";

impl AppendBatch for AsyncPgConnection {
    /// The fast path is the lookup of the batch's keys, then one statement
    /// that stores the new messages (as before: no extra round trip). That
    /// statement fails as a whole, changing nothing and using no seq, when
    /// another process committed one of the keys after the lookup. Then
    /// the batch runs again in a transaction that first locks its rooms:
    /// from then on no other writer can store into them, and the lookup,
    /// a new statement, sees every key committed before, so the write
    /// cannot conflict and the repeats come back as their originals.
    async fn append_batch(
        &mut self,
        batch: &[NewMessage],
        sent_at_micros: i64,
        outbox: bool,
    ) -> Result<Vec<Appended>> {
        if let Some(done) = try_append(self, batch, sent_at_micros, outbox).await? {
            return Ok(done);
        }
        tracing::debug!(
            "an idempotency key was stored meanwhile; writing again with the rooms locked"
        );
        // Through diesel's transaction manager, so that a connection left
        // inside the transaction (a cancelled call) is never pooled again.
        AnsiTransactionManager::begin_transaction(self).await?;
        let locked = async {
            let mut rooms: Vec<&str> = batch.iter().map(|m| m.room.as_str()).collect();
            rooms.sort_unstable();
            rooms.dedup();
            diesel::sql_query(LOCK_ROOMS_SQL)
                .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&rooms)
                .execute(&mut *self)
                .await?;
            try_append(&mut *self, batch, sent_at_micros, outbox).await
        }
        .await;
        match locked {
            Ok(Some(done)) => {
                AnsiTransactionManager::commit_transaction(self).await?;
                Ok(done)
            }
            Ok(None) => {
                AnsiTransactionManager::rollback_transaction(self).await?;
                Err(Error::Internal(
                    "an idempotency key conflicted with its room locked".into(),
                ))
            }
            Err(e) => {
                // A connection in an unknown state is dropped by the caller
                // (timeouts, lost connections); otherwise this ends the
                // transaction before the connection goes back to the pool
                // (a failed rollback marks it broken: it is not pooled).
                if !e.loses_connection() {
                    let _ = AnsiTransactionManager::rollback_transaction(self).await;
                }
                Err(e)
            }
        }
    }
}

/// Looks up the batch's keys and stores its new messages in one statement.
/// `None` when another writer committed one of the keys after the lookup:
/// the statement then changed nothing.
async fn try_append(
    conn: &mut AsyncPgConnection,
    batch: &[NewMessage],
    sent_at_micros: i64,
    outbox: bool,
) -> Result<Option<Vec<Appended>>> {
    let keys = stored_keys(conn, batch).await?;
    let plans = plan(batch, &keys);
    let fresh = fresh_of(batch, &plans);
    let seqs = if fresh.is_empty() {
        Vec::new()
    } else {
        match append_fresh(conn, &fresh, sent_at_micros, outbox).await? {
            Some(seqs) => seqs,
            None => return Ok(None),
        }
    };
    assemble(batch, plans, seqs, sent_at_micros).map(Some)
}

/// The messages stored under the batch's idempotency keys: one probe of
/// the key index per (room, sender, key) triple, whatever the rooms hold.
const STORED_KEYS_SQL: &str = "\
SELECT m.room, m.seq, m.sender_id, m.sender_name, m.content_type, m.content,
    m.client_message_id, m.sent_at_micros, m.reply_to_seq, m.edited_at_micros, m.deleted,
    m.updated_seq
FROM unnest($1::text[], $2::text[], $3::text[]) AS k(room, sender_id, client_message_id)
JOIN messages m ON m.room = k.room AND m.sender_id = k.sender_id
    AND m.client_message_id = k.client_message_id
WHERE m.client_message_id IS NOT NULL";

/// The messages already stored under the batch's idempotency keys.
async fn stored_keys(
    conn: &mut AsyncPgConnection,
    batch: &[NewMessage],
) -> Result<std::collections::HashMap<Key, StoredMessage>> {
    let (rooms, senders, ids) = lookup_keys(batch);
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<MessageRow> = Cached::new(
        STORED_KEYS_SQL,
        vec![
            Bind::Texts(&rooms),
            Bind::Texts(&senders),
            Bind::Texts(&ids),
        ],
    )
    .load(conn)
    .await?;
    keys_of(rows)
}

/// Stores `fresh` (no duplicates among them) with [`APPEND_SQL`] and
/// returns the seq the write gave each of them, in their order.
async fn append_fresh(
    conn: &mut AsyncPgConnection,
    fresh: &[&NewMessage],
    sent_at_micros: i64,
    outbox: bool,
) -> Result<Option<Vec<i64>>> {
    let rooms: Vec<&str> = fresh.iter().map(|m| m.room.as_str()).collect();
    let sender_ids: Vec<&str> = fresh.iter().map(|m| &*m.sender.user_id).collect();
    let sender_names: Vec<&str> = fresh.iter().map(|m| &*m.sender.display_name).collect();
    let kinds: Vec<i16> = fresh.iter().map(|m| m.content.kind.code()).collect();
    let contents: Vec<&str> = fresh.iter().map(|m| m.content.body.as_str()).collect();
    let ids: Vec<Option<&str>> = fresh
        .iter()
        .map(|m| m.client_message_id.as_ref().map(|id| id.as_str()))
        .collect();
    let replies = fresh
        .iter()
        .map(|m| super::to_i64(m.reply_to_seq))
        .collect::<Result<Vec<i64>>>()?;
    let loaded: diesel::QueryResult<Vec<Assigned>> = Cached::new(
        APPEND_SQL,
        vec![
            Bind::Texts(&rooms),
            Bind::Texts(&sender_ids),
            Bind::Texts(&sender_names),
            Bind::SmallInts(&kinds),
            Bind::Texts(&contents),
            Bind::NullableTexts(&ids),
            Bind::BigInt(sent_at_micros),
            Bind::BigInts(&replies),
            Bind::BigInt(i64::from(outbox)),
        ],
    )
    .load(conn)
    .await;
    let assigned = match loaded {
        Ok(assigned) => assigned,
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            info,
        )) if info.constraint_name() == Some(KEY_INDEX) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // An INSERT without ON CONFLICT stores every row or fails as a whole,
    // so this holds; it checks that the rows map back 1:1.
    let in_order = assigned
        .iter()
        .enumerate()
        .all(|(i, a)| a.ord == i as i64 + 1);
    if assigned.len() != fresh.len() || !in_order {
        return Err(Error::Internal(format!(
            "the write returned {} seqs for {} messages",
            assigned.len(),
            fresh.len()
        )));
    }
    Ok(Some(assigned.into_iter().map(|a| a.seq).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_added_unless_set() {
        let url = with_params("postgres://u@h/db", Duration::from_millis(4500));
        assert!(url.starts_with("postgres://u@h/db?keepalives=1&"), "{url}");
        assert!(url.ends_with("&connect_timeout=4"), "{url}");
        let url = with_params(
            "postgres://u@h/db?keepalives_idle=60&sslmode=disable",
            Duration::from_secs(4),
        );
        assert!(url.contains("keepalives_idle=60&"), "{url}");
        assert_eq!(url.matches("keepalives_idle").count(), 1, "{url}");
    }
}
