//! One chatd per database unless they form a cluster: a lock held for the process lifetime.
//!
//! Two single nodes on one database would each deliver only what they
//! stored themselves: two silent half-services. So a node holds, for as long
//! as it serves:
//!
//! - PostgreSQL: a session advisory lock on [`SERVE_LOCK`], on a connection
//!   of its own. A single node (no `CHAT_NATS_URL`) takes it exclusive, a
//!   cluster node shared: single + single and single + cluster refuse,
//!   cluster + cluster share. A cluster node also holds, shared, a lock
//!   named after its `CHAT_CLUSTER_NAME` ([`CLUSTER_LOCKS`], hash of the
//!   name) and refuses to start while a node of another cluster holds one:
//!   two clusters on one database would each deliver the other's messages
//!   only through the poll. When that connection dies (a database
//!   restart), a task owned by the [`ServeLock`] takes the locks again.
//! - SQLite: an exclusive `flock` on `<database file>.lock`, released by
//!   the kernel when the process ends, however it ends.

use std::path::{Path, PathBuf};
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::Location;
use super::postgres::{session_setup, with_params};
use crate::error::{Error, Result};

/// The advisory lock key (per database) every serving chatd holds.
const SERVE_LOCK: i64 = 0x6368_6174_645f_7331; // "chatd_s1"

/// The first key of every cluster-name lock (two-key advisory locks show
/// in `pg_locks` with this as `classid` and the name's hash as `objid`).
const CLUSTER_LOCKS: i32 = 0x6368_6174; // "chat"

/// How long start-up keeps trying a lock that is taken: a chatd that is
/// stopping (a restart) releases it within this.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// How often start-up retries a taken lock within [`RELEASE_WAIT`].
const RETRY: Duration = Duration::from_millis(100);

/// How often the task checks that the lock's connection is alive, and
/// retries taking the lock again after it died.
const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Server-side TCP keepalive of the lock's connection: when this node
/// vanishes without closing it (a network cut, a dead host), PostgreSQL
/// drops the session, and the lock, after about 10 + 3 × 5 = 25 s.
const SERVER_KEEPALIVE: &str =
    "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3;";

/// What a refused start-up says, naming the settings that make a cluster.
fn refusal(what: &str) -> String {
    format!(
        "another chatd serves this {what} without CHAT_NATS_URL (or this one has none and a \
         cluster serves it); to run several, give every node the same DATABASE_URL \
         (PostgreSQL), CHAT_NATS_URL and CHAT_CLUSTER_NAME"
    )
}

/// Held while this chatd serves; dropping it releases the lock (and ends
/// the task that keeps a PostgreSQL lock).
pub struct ServeLock {
    _held: Held,
}

enum Held {
    Postgres {
        /// Ends the task (which holds the lock's connection) when dropped.
        _stop: DropGuard,
        _task: JoinHandle<()>,
    },
    Sqlite {
        /// The open `.lock` file: closing it releases the lock.
        _file: std::fs::File,
    },
    /// An in-memory SQLite database or a `file:` URI: nothing to share.
    Nothing,
}

impl std::fmt::Debug for ServeLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServeLock")
    }
}

impl ServeLock {
    /// Takes the lock for `location`: exclusive for a single node, shared
    /// for a node of a `cluster`. Refuses (an [`Error::Config`] naming the
    /// settings) when another chatd holds it in a way that excludes this
    /// one, after waiting [`RELEASE_WAIT`] for one that is stopping.
    /// `timeout` bounds each database call.
    pub async fn take(
        location: &Location,
        cluster: Option<&str>,
        timeout: Duration,
    ) -> Result<ServeLock> {
        let held = match location {
            Location::Postgres(url) => hold_postgres(url, cluster, timeout).await?,
            Location::Sqlite(path) => hold_file(path)?,
        };
        Ok(ServeLock { _held: held })
    }
}

async fn hold_postgres(url: &str, cluster: Option<&str>, timeout: Duration) -> Result<Held> {
    let cluster = cluster.map(name_key);
    let give_up = tokio::time::Instant::now() + RELEASE_WAIT;
    let mut conn = connect(url, timeout).await?;
    loop {
        if try_lock(&mut conn, cluster, timeout).await? {
            break;
        }
        if tokio::time::Instant::now() + RETRY > give_up {
            return Err(Error::Config(refusal("database")));
        }
        tokio::time::sleep(RETRY).await;
    }
    let stop = CancellationToken::new();
    let task = tokio::spawn(keep(url.to_owned(), cluster, timeout, conn, stop.clone()));
    Ok(Held::Postgres {
        _stop: stop.drop_guard(),
        _task: task,
    })
}

/// A connection for the lock, with the pool's client-side timeouts and
/// keepalive, and the server-side keepalive above.
async fn connect(url: &str, timeout: Duration) -> Result<AsyncPgConnection> {
    let url = with_params(url, timeout);
    let setup = format!("{} {SERVER_KEEPALIVE}", session_setup(timeout));
    let connect = async {
        let mut conn = AsyncPgConnection::establish(&url).await?;
        conn.batch_execute(&setup).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(conn)
    };
    tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| Error::Config("DATABASE_URL: timed out connecting".into()))?
        .map_err(|e| Error::Config(format!("DATABASE_URL: cannot connect: {e}")))
}

#[derive(diesel::QueryableByName)]
struct Locked {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    locked: bool,
}

/// Runs `sql`, a query answering one boolean column `locked`.
async fn ask(conn: &mut AsyncPgConnection, sql: String, timeout: Duration) -> Result<bool> {
    let row: Locked = tokio::time::timeout(timeout, diesel::sql_query(sql).get_result(conn))
        .await
        .map_err(|_| Error::TimedOut("taking the serve lock"))??;
    Ok(row.locked)
}

/// The second key of a cluster's name lock: a stable 31-bit hash (FNV-1a)
/// of the name. Two names with one hash would not be told apart: one
/// chance in two billion.
fn name_key(name: &str) -> i32 {
    let hash = name.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    (hash & 0x7fff_ffff) as i32
}

/// Whether the lock was taken on `conn` (false: another session holds it).
/// `cluster` is the key of the node's cluster name, for a cluster node: it
/// takes its name lock too, then fails with an [`Error::Config`] if a node
/// of another cluster holds one (taking before looking: of two clusters
/// starting at once, at least the later one sees the other).
async fn try_lock(
    conn: &mut AsyncPgConnection,
    cluster: Option<i32>,
    timeout: Duration,
) -> Result<bool> {
    let sql = match cluster {
        Some(name) => format!(
            "SELECT pg_try_advisory_lock_shared({SERVE_LOCK}) \
             AND pg_try_advisory_lock_shared({CLUSTER_LOCKS}, {name}) AS locked"
        ),
        None => format!("SELECT pg_try_advisory_lock({SERVE_LOCK}) AS locked"),
    };
    let locked = ask(conn, sql, timeout).await?;
    if let (true, Some(name)) = (locked, cluster) {
        let others = format!(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_locks \
               WHERE locktype = 'advisory' AND granted AND objsubid = 2 \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 AND classid = {CLUSTER_LOCKS} AND objid <> {name}) AS locked"
        );
        if !ask(conn, others, timeout).await? {
            // Let go at once, so that this refused node does not in turn
            // refuse a node of the other cluster starting meanwhile.
            let release = diesel::sql_query("SELECT pg_advisory_unlock_all()").execute(conn);
            let _ = tokio::time::timeout(timeout, release).await;
            return Err(Error::Config(
                "nodes of another cluster (a different CHAT_CLUSTER_NAME) serve this database; \
                 give every node of one service the same DATABASE_URL, CHAT_NATS_URL and \
                 CHAT_CLUSTER_NAME, and each service a database of its own"
                    .into(),
            ));
        }
    }
    Ok(locked)
}

/// Keeps the lock until `stop`: checks its connection every
/// [`CHECK_INTERVAL`]; when the connection died (the session, and the lock
/// with it, are gone), connects and takes the lock again, logging each
/// change of state once.
async fn keep(
    url: String,
    cluster: Option<i32>,
    timeout: Duration,
    conn: AsyncPgConnection,
    stop: CancellationToken,
) {
    let mut conn = Some(conn);
    // Whether the last attempt found the lock taken (logged once).
    let mut taken = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(CHECK_INTERVAL) => {}
        }
        let was_held = conn.is_some();
        let check = async {
            match conn.as_mut() {
                Some(c) => ping(c, timeout).await.map(|()| true),
                None => {
                    let mut c = connect(&url, timeout).await?;
                    let locked = try_lock(&mut c, cluster, timeout).await?;
                    if locked {
                        conn = Some(c);
                    }
                    Ok(locked)
                }
            }
        };
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = check => outcome,
        };
        match (was_held, outcome) {
            (true, Ok(_)) => {}
            (true, Err(e)) => {
                conn = None;
                tracing::warn!(error = %e, "lost the database connection holding the serve lock; taking it again");
            }
            (false, Ok(true)) => {
                taken = false;
                tracing::info!("holding the serve lock again");
            }
            (false, Ok(false)) => {
                if !taken {
                    taken = true;
                    tracing::error!(
                        "another chatd took the serve lock while this one's database connection \
                         was down: two services now share this database; give every node the same \
                         CHAT_NATS_URL and CHAT_CLUSTER_NAME, or stop one (retrying every {CHECK_INTERVAL:?})"
                    );
                }
            }
            (false, Err(e)) => {
                tracing::debug!(error = %e, "cannot take the serve lock again yet");
            }
        }
    }
}

async fn ping(conn: &mut AsyncPgConnection, timeout: Duration) -> Result<()> {
    tokio::time::timeout(timeout, conn.batch_execute("SELECT 1"))
        .await
        .map_err(|_| Error::TimedOut("checking the serve lock's connection"))??;
    Ok(())
}

/// `<path>.lock`, created 0600 if needed and locked exclusively.
fn hold_file(db: &Path) -> Result<Held> {
    let name = db.as_os_str();
    if name == ":memory:" || name.to_string_lossy().starts_with("file:") {
        return Ok(Held::Nothing);
    }
    let mut lock_name = name.to_owned();
    lock_name.push(".lock");
    let path = PathBuf::from(lock_name);
    let fail = |e: std::io::Error| {
        Error::Config(format!("DATABASE_URL: cannot lock {}: {e}", path.display()))
    };
    if let Some(dir) = path.parent() {
        crate::files::create_private_dir(dir).map_err(fail)?;
    }
    crate::files::create_private_file(&path).map_err(fail)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(fail)?;
    if try_flock(&file).map_err(fail)? {
        Ok(Held::Sqlite { _file: file })
    } else {
        Err(Error::Config(format!(
            "another chatd serves the SQLite database {} (DATABASE_URL / CHAT_DATA_DIR): \
             an embedded file cannot be shared; to run several nodes, use PostgreSQL \
             (DATABASE_URL=postgres://…) and give every node the same CHAT_NATS_URL and \
             CHAT_CLUSTER_NAME",
            db.display()
        )))
    }
}

/// An exclusive, non-blocking `flock` on `file`: false when another open
/// file (in any process) holds it. Released when `file` closes.
#[cfg(unix)]
fn try_flock(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock takes a file descriptor that `file` keeps open for the
    // duration of the call, and an operation flag; it touches no memory.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

#[cfg(not(unix))]
fn try_flock(_file: &std::fs::File) -> std::io::Result<bool> {
    Ok(true)
}
