//! What only PostgreSQL does: its pool, its migrations, and the batch write
//! as one statement.

use std::collections::HashMap;

use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::POOL_TIMEOUT;
use crate::domain::NewMessage;
use crate::error::{Error, Result};

/// PostgreSQL's migrations, compiled into the binary.
const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

pub type PgPool = Pool<AsyncPgConnection>;

pub fn pool(url: &str, max_connections: usize) -> Result<PgPool> {
    // Fast recycling: a checkout costs no round trip. A connection that
    // broke is found on use (the call gets UNAVAILABLE) and dropped.
    let mut config = ManagerConfig::default();
    config.recycling_method = RecyclingMethod::Fast;
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
    super::build_pool(manager, max_connections)
}

/// Runs every pending migration on a connection of its own.
pub async fn migrate(url: &str) -> Result<()> {
    let conn = tokio::time::timeout(POOL_TIMEOUT, AsyncPgConnection::establish(url))
        .await
        .map_err(|_| Error::Config("DATABASE_URL: timed out connecting".into()))?
        .map_err(|e| Error::Config(format!("DATABASE_URL: cannot connect: {e}")))?;
    let mut harness = AsyncMigrationHarness::new(conn);
    harness
        .run_pending_migrations(MIGRATIONS)
        .map_err(|e| Error::Config(format!("database migrations failed: {e}")))?;
    Ok(())
}

/// Bumps each room's counter by its number of new messages and inserts the
/// messages with their seqs, in one statement (atomic on its own, one round
/// trip). Inputs are parallel arrays in batch order; seqs are assigned per
/// room in that order. Returns each touched room's new last seq.
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
), inserted AS (
    INSERT INTO messages
        (room, seq, sender_id, sender_name, content_type, content, client_message_id, sent_at_micros)
    SELECT i.room,
           b.last_seq - c.n + row_number() OVER (PARTITION BY i.room ORDER BY i.ord),
           i.sender_id, i.sender_name, i.content_type, i.content, i.client_message_id, $7
    FROM input i JOIN counts c ON c.room = i.room JOIN bumped b ON b.name = i.room
    RETURNING 1
)
SELECT b.name, b.last_seq, (SELECT count(*) FROM inserted) AS inserted FROM bumped b";

#[derive(diesel::QueryableByName)]
struct Bumped {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    last_seq: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    inserted: i64,
}

/// Stores `fresh` (no duplicates among them) and returns each room's new
/// last seq.
pub async fn append(
    conn: &mut AsyncPgConnection,
    fresh: &[&NewMessage],
    sent_at_micros: i64,
) -> Result<HashMap<String, i64>> {
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
    let bumped: Vec<Bumped> = diesel::sql_query(APPEND_SQL)
        .bind::<Array<Text>, _>(&rooms)
        .bind::<Array<Text>, _>(&sender_ids)
        .bind::<Array<Text>, _>(&sender_names)
        .bind::<Array<SmallInt>, _>(&kinds)
        .bind::<Array<Text>, _>(&contents)
        .bind::<Array<Nullable<Text>>, _>(&ids)
        .bind::<BigInt, _>(sent_at_micros)
        .load(conn)
        .await?;
    let inserted = <[Bumped]>::first(&bumped).map_or(0, |b| b.inserted);
    if inserted != fresh.len() as i64 {
        return Err(Error::Internal(format!(
            "append stored {inserted} of {} messages",
            fresh.len()
        )));
    }
    Ok(bumped.into_iter().map(|b| (b.name, b.last_seq)).collect())
}
