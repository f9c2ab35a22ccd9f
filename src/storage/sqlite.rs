//! What only SQLite does: connections with WAL and a busy timeout, its
//! migrations, and the batch write (the lookup of its idempotency keys
//! included) as one immediate transaction.
//!
//! Deadlines: a connection waits for another's write lock for 3/4 of the
//! call deadline (`busy_timeout`), then fails with "database is locked"
//! (UNAVAILABLE); the call as a whole is bounded by the deadline around it
//! in `storage/mod.rs`.
//!
//! SQLite is bundled into the binary (no system library). diesel-async's
//! `SyncConnectionWrapper` runs each query on tokio's blocking pool, so the
//! reads share the query-builder code with PostgreSQL; the write takes the
//! connection for one blocking transaction.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use diesel::upsert::excluded;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures_util::FutureExt;

use super::Appended;
use super::batch::{AppendBatch, assemble, fresh_of, keys_of, lookup_keys, plan};
use super::models::{MessageRow, NewMessageRow};
use super::outbox::NewOutboxRow;
use super::schema::{messages, room_users, rooms, webhook_outbox};
use crate::domain::NewMessage;
use crate::error::{Error, Result};

/// SQLite's migrations, compiled into the binary.
const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// How long a connection waits for another one's write lock: 3/4 of the
/// call deadline, so that the wait ends with SQLite's own clean error first.
fn busy_timeout_ms(timeout: Duration) -> u128 {
    (timeout.as_millis() * 3 / 4).max(50)
}

pub type SqliteConn = SyncConnectionWrapper<SqliteConnection>;
pub type SqlitePool = Pool<SqliteConn>;

/// SQLite's `synchronous` setting: what survives a power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Synchronous {
    /// Every commit is fsynced before it is acknowledged: acknowledged
    /// messages survive power loss.
    #[default]
    Full,
    /// Commits reach the OS before they are acknowledged and are fsynced at
    /// WAL checkpoints: acknowledged messages survive a crash of chatd, but
    /// the last ones may be lost on power loss. Faster.
    Normal,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().ok_or_else(|| {
        Error::Config(format!(
            "DATABASE_URL: {} is not valid UTF-8",
            path.display()
        ))
    })
}

pub fn pool(
    path: &Path,
    max_connections: usize,
    synchronous: Synchronous,
    timeout: Duration,
) -> Result<SqlitePool> {
    let setup = format!(
        "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; PRAGMA synchronous = {};",
        busy_timeout_ms(timeout),
        synchronous.pragma()
    );
    let mut config = ManagerConfig::<SqliteConn>::default();
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(move |url| {
        let setup = setup.clone();
        async move {
            let mut conn = SqliteConn::establish(url).await?;
            conn.batch_execute(&setup)
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        }
        .boxed()
    });
    let manager =
        AsyncDieselConnectionManager::<SqliteConn>::new_with_config(path_str(path)?, config);
    super::build_pool(manager, max_connections, timeout)
}

/// Creates the file (and its directory) if needed and runs every pending
/// migration, waiting at most `timeout` for another process's lock.
pub async fn migrate(path: &Path, timeout: Duration) -> Result<()> {
    create_private(path)?;
    let url = path_str(path)?.to_owned();
    tokio::task::spawn_blocking(move || {
        use diesel::connection::SimpleConnection;
        let mut conn = SqliteConnection::establish(&url)
            .map_err(|e| Error::Config(format!("DATABASE_URL: cannot open {url}: {e}")))?;
        conn.batch_execute(&format!(
            "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL;",
            busy_timeout_ms(timeout)
        ))
        .map_err(|e| Error::Config(format!("DATABASE_URL: cannot enable WAL on {url}: {e}")))?;
        conn.run_pending_migrations(MIGRATIONS)
            .map_err(|e| Error::Config(format!("database migrations failed: {e}")))?;
        Ok(())
    })
    .await
    .map_err(|e| Error::Internal(format!("migration task: {e}")))?
}

/// Creates the database file with mode 0600 (and its missing directories
/// with mode 0700) before SQLite opens it: SQLite would create it 0644, and
/// it gives its `-wal` and `-shm` files the database file's mode. Existing
/// files and directories are left as they are. In-memory databases and
/// `file:` URIs are SQLite's to open.
fn create_private(path: &Path) -> Result<()> {
    let name = path.as_os_str();
    if name == ":memory:" || name.to_string_lossy().starts_with("file:") {
        return Ok(());
    }
    let config_err = |what: &str, shown: &Path, e: std::io::Error| {
        Error::Config(format!(
            "DATABASE_URL: cannot {what} {}: {e}",
            shown.display()
        ))
    };
    if let Some(dir) = path.parent() {
        crate::files::create_private_dir(dir).map_err(|e| config_err("create", dir, e))?;
    }
    crate::files::create_private_file(path).map_err(|e| config_err("create", path, e))?;
    Ok(())
}

impl AppendBatch for SqliteConn {
    /// Looks up the batch's keys, bumps each room's counter, gives the new
    /// messages the seqs after its old value in batch order and inserts
    /// them, in one immediate transaction: it holds the file's write lock
    /// from its start, so no other connection (or process) can store a key
    /// between the lookup and the write. It rolls back unless every row
    /// went in.
    async fn append_batch(
        &mut self,
        batch: &[NewMessage],
        sent_at_micros: i64,
        outbox: bool,
    ) -> Result<Vec<Appended>> {
        // The blocking pool needs the batch owned.
        let batch = batch.to_vec();
        // The closure's own error type is diesel's; the batch's errors
        // (ours) travel inside its value.
        self.spawn_blocking(move |conn| {
            Ok(
                conn.immediate_transaction(|conn| {
                    write_batch(conn, &batch, sent_at_micros, outbox)
                }),
            )
        })
        .await?
    }
}

/// The body of the batch transaction; see [`AppendBatch::append_batch`].
fn write_batch(
    conn: &mut SqliteConnection,
    batch: &[NewMessage],
    sent_at_micros: i64,
    outbox: bool,
) -> Result<Vec<Appended>> {
    let stored = stored_keys(conn, batch)?;
    let plans = plan(batch, &keys_of(stored)?);
    let fresh = fresh_of(batch, &plans);
    let mut next_seq = reserve_seqs(conn, &fresh)?;
    let mut rows = Vec::with_capacity(fresh.len());
    for m in &fresh {
        let slot = next_seq
            .get_mut(m.room.as_str())
            .ok_or(diesel::result::Error::NotFound)?;
        rows.push(NewMessageRow {
            room: m.room.as_str(),
            seq: *slot,
            sender_id: &m.sender.user_id,
            sender_name: &m.sender.display_name,
            content_type: m.content.kind.code(),
            content: &m.content.body,
            client_message_id: m.client_message_id.as_ref().map(|id| id.as_str()),
            sent_at_micros,
            reply_to_seq: super::to_i64(m.reply_to_seq)?,
        });
        *slot += 1;
    }
    if !rows.is_empty() {
        let inserted = diesel::insert_into(messages::table)
            .values(&rows)
            .execute(conn)?;
        if inserted != rows.len() {
            // Inside the transaction: the error rolls it back, counters too.
            return Err(Error::Internal(format!(
                "stored {inserted} of {} messages",
                rows.len()
            )));
        }
    }
    mark_senders(conn, &rows, sent_at_micros)?;
    if outbox && !rows.is_empty() {
        let waiting: Vec<NewOutboxRow<'_>> = rows
            .iter()
            .map(|r| NewOutboxRow::room_event(r.room, r.seq, sent_at_micros))
            .collect();
        diesel::insert_into(webhook_outbox::table)
            .values(&waiting)
            .execute(conn)?;
    }
    let seqs = rows.iter().map(|r| r.seq).collect();
    assemble(batch, plans, seqs, sent_at_micros)
}

/// The stored messages that repeat an idempotency key of `batch`.
fn stored_keys(conn: &mut SqliteConnection, batch: &[NewMessage]) -> Result<Vec<MessageRow>> {
    // One probe of the key index per key (a statement prepared once): the
    // cost does not grow with the rooms' history.
    let (rooms, senders, ids) = lookup_keys(batch);
    let mut stored = Vec::new();
    for ((room, sender), id) in rooms.into_iter().zip(senders).zip(ids) {
        stored.extend(
            messages::table
                .filter(messages::room.eq(room))
                .filter(messages::sender_id.eq(sender))
                .filter(messages::client_message_id.eq(id))
                .select(MessageRow::as_select())
                .first(conn)
                .optional()?,
        );
    }
    Ok(stored)
}

/// Bumps each touched room's counter once; the first seq of each room's
/// share of `fresh`, by room.
fn reserve_seqs<'a>(
    conn: &mut SqliteConnection,
    fresh: &[&'a NewMessage],
) -> Result<HashMap<&'a str, i64>> {
    // Messages per room, rooms in a fixed order.
    let mut counts: std::collections::BTreeMap<&str, i64> = Default::default();
    for m in fresh {
        *counts.entry(m.room.as_str()).or_default() += 1;
    }
    let mut next_seq: HashMap<&str, i64> = HashMap::new();
    for (room, n) in &counts {
        let top: i64 = diesel::insert_into(rooms::table)
            .values((rooms::name.eq(room), rooms::last_seq.eq(n)))
            .on_conflict(rooms::name)
            .do_update()
            .set(rooms::last_seq.eq(rooms::last_seq + excluded(rooms::last_seq)))
            .returning(rooms::last_seq)
            .get_result(conn)?;
        next_seq.insert(room, top - n + 1);
    }
    Ok(next_seq)
}

/// Moves each sender's read marker to their last new message of each room
/// (making the room theirs), inside the batch transaction.
fn mark_senders(
    conn: &mut SqliteConnection,
    rows: &[NewMessageRow<'_>],
    now_micros: i64,
) -> Result<()> {
    // (user, room) -> (newest seq, the name it was sent under)
    let mut newest: std::collections::BTreeMap<(&str, &str), (i64, &str)> = Default::default();
    for r in rows {
        let entry = newest.entry((r.sender_id, r.room)).or_default();
        if r.seq > entry.0 {
            *entry = (r.seq, r.sender_name);
        }
    }
    for ((user, room), (seq, name)) in newest {
        diesel::insert_into(room_users::table)
            .values((
                room_users::user_id.eq(user),
                room_users::room.eq(room),
                room_users::read_seq.eq(seq),
                room_users::since_micros.eq(now_micros),
                room_users::display_name.eq(name),
            ))
            .on_conflict((room_users::user_id, room_users::room))
            .do_update()
            .set((
                room_users::read_seq.eq(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                    "MAX(room_users.read_seq, excluded.read_seq)",
                )),
                room_users::display_name.eq(name),
            ))
            .execute(conn)?;
    }
    Ok(())
}
