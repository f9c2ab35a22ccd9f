//! What only PostgreSQL does: its pool (with server-side timeouts and TCP
//! keepalive on every connection), its migrations, and the batch write as
//! one statement.

use std::time::Duration;

use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{
    AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection,
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures_util::FutureExt;

use super::AppendFresh;
use crate::domain::NewMessage;
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
fn with_params(url: &str, timeout: Duration) -> String {
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
fn session_setup(timeout: Duration) -> String {
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

/// Runs every pending migration on a connection of its own.
pub async fn migrate(url: &str, timeout: Duration) -> Result<()> {
    let url = with_params(url, timeout);
    let conn = tokio::time::timeout(timeout, AsyncPgConnection::establish(&url))
        .await
        .map_err(|_| Error::Config("DATABASE_URL: timed out connecting".into()))?
        .map_err(|e| Error::Config(format!("DATABASE_URL: cannot connect: {e}")))?;
    // The harness blocks its thread: run it where blocking is allowed, so
    // that the deadline below can fire.
    let run = tokio::task::spawn_blocking(move || {
        let mut harness = AsyncMigrationHarness::new(conn);
        harness
            .run_pending_migrations(MIGRATIONS)
            .map(|_| ())
            .map_err(|e| Error::Config(format!("database migrations failed: {e}")))
    });
    tokio::time::timeout(MIGRATION_TIMEOUT, run)
        .await
        .map_err(|_| {
            Error::Config(format!(
                "database migrations did not finish within {MIGRATION_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| Error::Internal(format!("migration task: {e}")))?
}

/// Bumps each room's counter by its number of new messages and inserts the
/// messages with their seqs, in one statement (atomic on its own, one round
/// trip). Inputs are parallel arrays in batch order; seqs are assigned per
/// room in that order. Returns the position (1-based `ord`) and seq of every
/// row the INSERT stored: the seqs acknowledged are exactly the ones
/// written, computed once, here.
const APPEND_SQL: &str = "\
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int2[], $5::text[], $6::text[])
        WITH ORDINALITY AS t(room, sender_id, sender_name, content_type, content, client_message_id, ord)
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
        (room, seq, sender_id, sender_name, content_type, content, client_message_id, sent_at_micros)
    SELECT room, seq, sender_id, sender_name, content_type, content, client_message_id, $7
    FROM numbered
    RETURNING room, seq
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

impl AppendFresh for AsyncPgConnection {
    async fn append_fresh(
        &mut self,
        fresh: &[&NewMessage],
        sent_at_micros: i64,
    ) -> Result<Vec<i64>> {
        use diesel::sql_types::{Array, BigInt, Nullable, SmallInt, Text};

        let rooms: Vec<&str> = fresh.iter().map(|m| m.room.as_str()).collect();
        let sender_ids: Vec<&str> = fresh.iter().map(|m| &*m.sender.user_id).collect();
        let sender_names: Vec<&str> = fresh.iter().map(|m| &*m.sender.display_name).collect();
        let kinds: Vec<i16> = fresh.iter().map(|m| m.content.kind.code()).collect();
        let contents: Vec<&str> = fresh.iter().map(|m| m.content.body.as_str()).collect();
        let ids: Vec<Option<&str>> = fresh
            .iter()
            .map(|m| m.client_message_id.as_ref().map(|id| id.as_str()))
            .collect();
        let assigned: Vec<Assigned> = diesel::sql_query(APPEND_SQL)
            .bind::<Array<Text>, _>(&rooms)
            .bind::<Array<Text>, _>(&sender_ids)
            .bind::<Array<Text>, _>(&sender_names)
            .bind::<Array<SmallInt>, _>(&kinds)
            .bind::<Array<Text>, _>(&contents)
            .bind::<Array<Nullable<Text>>, _>(&ids)
            .bind::<BigInt, _>(sent_at_micros)
            .load(self)
            .await?;
        // An INSERT without ON CONFLICT stores every row or fails as a
        // whole, so this holds; it checks that the rows map back 1:1.
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
        Ok(assigned.into_iter().map(|a| a.seq).collect())
    }
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
