//! Several chatd processes on one database (issue 8, "Concurrency across
//! processes"): idempotent sends conflict-safe across nodes, migrations
//! serialized, a second single node refused, SQLite never shared.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::helpers::{Backend, TestDb, TestServer, config, send_request, within};
use chatd::proto;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

/// A NATS URL for cluster nodes. Application::build does not connect to
/// it, so these tests need no NATS; nodes that serve connect (when the
/// cluster bus has landed) to the local NATS the test suite assumes.
const NATS: &str = "nats://127.0.0.1:4222";

/// A cluster node's config: the cluster is named after the test's own
/// database, so tests never share NATS subjects.
fn cluster_config(db: &TestDb) -> chatd::config::Config {
    named_cluster_config(db, &cluster_of(db))
}

fn named_cluster_config(db: &TestDb, name: &str) -> chatd::config::Config {
    config(
        &db.url,
        &[
            "--nats-url",
            NATS,
            "--cluster-name",
            name,
            "--cluster-key",
            crate::helpers::cluster::CLUSTER_KEY,
        ],
    )
}

/// The last 64 letters, digits and '_' of the database's URL: unique per
/// test (a PostgreSQL database's name, a SQLite file's directory).
fn cluster_of(db: &TestDb) -> String {
    let name: Vec<char> = db
        .url
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    name[name.len().saturating_sub(64)..].iter().collect()
}

async fn build_err(config: chatd::config::Config) -> String {
    match within(chatd::Application::build(config)).await {
        Ok(_) => panic!("a second node on the database must be refused"),
        Err(e) => e.to_string(),
    }
}

#[derive(diesel::QueryableByName, Debug)]
struct Row {
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Text)]
    sender_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    client_message_id: Option<String>,
}

/// Senders on two nodes store the same keys at the same instant, in
/// batches mixed with fresh messages: every call succeeds, every caller of a
/// key gets the original, and each room's history is 1..N with one row per
/// key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_keys_through_two_nodes_get_the_original() {
    const ROOMS: usize = 3;
    const SENDERS: usize = 4;
    const KEYS: usize = 25;
    let db = TestDb::create(Backend::Postgres).await;
    let a = TestServer::start_with(cluster_config(&db)).await;
    let b = TestServer::start_with(cluster_config(&db)).await;

    let start = Arc::new(tokio::sync::Barrier::new(SENDERS * 2));
    let mut tasks = Vec::new();
    for sender in 0..SENDERS {
        let user = format!("user-{sender}");
        for (node, server) in [(0, &a), (1, &b)] {
            let client = server.client(&user).await;
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                // Each key once through each node, with fresh messages
                // in between, all in flight at once.
                let mut calls = Vec::new();
                for k in 0..KEYS {
                    for fresh in [false, true] {
                        let room = format!("race-{}", (k + sender) % ROOMS);
                        let request = proto::SendMessageRequest {
                            room,
                            content: if fresh {
                                format!("fresh {k} from node {node}")
                            } else {
                                format!("keyed {k}")
                            },
                            client_message_id: if fresh {
                                String::new()
                            } else {
                                format!("key-{k}")
                            },
                            ..Default::default()
                        };
                        let mut client = client.clone();
                        calls.push(tokio::spawn(async move {
                            (request.clone(), send_request(&mut client, request).await)
                        }));
                    }
                }
                let mut out = Vec::new();
                for call in calls {
                    out.push(within(call).await.expect("call task"));
                }
                out
            }));
        }
    }
    // (sender, room, key) -> the seqs its callers got.
    let mut by_key: HashMap<(String, String, String), Vec<u64>> = HashMap::new();
    let mut fresh_seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let sender = format!("user-{}", i / 2);
        for (request, result) in within(task).await.expect("sender task") {
            let stored = result.unwrap_or_else(|s| panic!("a send failed: {s:?}"));
            assert_eq!(stored.content, request.content);
            if request.client_message_id.is_empty() {
                fresh_seqs.entry(request.room).or_default().push(stored.seq);
            } else {
                by_key
                    .entry((sender.clone(), request.room, request.client_message_id))
                    .or_default()
                    .push(stored.seq);
            }
        }
    }
    assert_eq!(by_key.len(), SENDERS * KEYS);
    for (key, seqs) in &by_key {
        assert_eq!(seqs.len(), 2, "{key:?}");
        assert_eq!(seqs[0], seqs[1], "both callers of {key:?} get the original");
    }

    let mut conn = within(AsyncPgConnection::establish(&db.url))
        .await
        .expect("connect");
    for r in 0..ROOMS {
        let room = format!("race-{r}");
        let rows: Vec<Row> = within(
            diesel::sql_query(
                "SELECT seq, sender_id, client_message_id FROM messages WHERE room = $1 ORDER BY seq",
            )
            .bind::<Text, _>(&room)
            .load(&mut conn),
        )
        .await
        .expect("history");
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let expected: Vec<i64> = (1..=rows.len() as i64).collect();
        assert_eq!(seqs, expected, "{room} is gapless from 1");
        let keyed: Vec<&Row> = rows
            .iter()
            .filter(|r| r.client_message_id.is_some())
            .collect();
        let fresh = fresh_seqs.get(&room).map_or(0, Vec::len);
        assert_eq!(rows.len(), keyed.len() + fresh, "{room}: one row per key");
        for row in keyed {
            let key = (
                row.sender_id.clone(),
                room.clone(),
                row.client_message_id.clone().expect("keyed"),
            );
            assert_eq!(by_key[&key][0], row.seq as u64, "{key:?}");
        }
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Three nodes started together on a fresh database all build: their
/// migrations do not race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_started_together_migrate_once() {
    // Several fresh databases: one race is enough to fail before the fix.
    for _ in 0..3 {
        let db = TestDb::create(Backend::Postgres).await;
        let (x, y, z) = within(async {
            tokio::join!(
                chatd::Application::build(cluster_config(&db)),
                chatd::Application::build(cluster_config(&db)),
                chatd::Application::build(cluster_config(&db)),
            )
        })
        .await;
        for built in [x, y, z] {
            if let Err(e) = built {
                panic!("a node failed to start: {e}");
            }
        }
    }
}

/// Without CHAT_NATS_URL, a second node on the same PostgreSQL database is
/// refused with the setting that makes a cluster, and may start once the
/// first has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_single_node_on_postgres_is_refused() {
    let db = TestDb::create(Backend::Postgres).await;
    let first = TestServer::start(&db).await;
    let e = build_err(config(&db.url, &[])).await;
    assert!(
        e.contains("CHAT_NATS_URL") && e.contains("CHAT_CLUSTER_NAME"),
        "{e}"
    );
    first.shutdown().await.unwrap();
    let again = TestServer::start(&db).await;
    again.shutdown().await.unwrap();
}

/// A cluster node beside a single node is refused, and the other way round;
/// cluster nodes share the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_and_cluster_nodes_do_not_mix() {
    let db = TestDb::create(Backend::Postgres).await;
    let single = TestServer::start(&db).await;
    let e = build_err(cluster_config(&db)).await;
    assert!(e.contains("CHAT_NATS_URL"), "{e}");
    single.shutdown().await.unwrap();

    let one = within(chatd::Application::build(cluster_config(&db)))
        .await
        .expect("a cluster node starts");
    let two = within(chatd::Application::build(cluster_config(&db)))
        .await
        .expect("a second cluster node starts");
    let e = build_err(config(&db.url, &[])).await;
    assert!(e.contains("CHAT_NATS_URL"), "{e}");
    drop((one, two));
}

/// Two clusters (different CHAT_CLUSTER_NAME) on one database would each
/// see the other's messages only through the poll: the second is refused
/// with a message naming the setting, and a node of the first still starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_cluster_on_one_database_is_refused() {
    let db = TestDb::create(Backend::Postgres).await;
    let one = within(chatd::Application::build(cluster_config(&db)))
        .await
        .expect("a cluster node starts");
    let other = format!("other-{}", cluster_of(&db));
    let other = &other[..other.len().min(64)];
    let e = build_err(named_cluster_config(&db, other)).await;
    assert!(e.contains("CHAT_CLUSTER_NAME"), "{e}");
    let two = within(chatd::Application::build(cluster_config(&db)))
        .await
        .expect("a second node of the same cluster starts");
    drop((one, two));
    // Once the first cluster is gone, the other may serve the database.
    let three = within(async {
        loop {
            match chatd::Application::build(named_cluster_config(&db, other)).await {
                Ok(app) => return app,
                // The dropped nodes' lock sessions end asynchronously.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    drop(three);
}

/// When the lock's connection dies (a database restart), the node takes
/// the lock again, so a second single node is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_is_taken_again_after_its_connection_dies() {
    let db = TestDb::create(Backend::Postgres).await;
    let first = TestServer::start(&db).await;
    let mut admin = within(AsyncPgConnection::establish(&db.url))
        .await
        .expect("connect");
    let holder = serve_lock_holder(&mut admin)
        .await
        .expect("the lock is held");
    within(diesel::sql_query(format!("SELECT pg_terminate_backend({holder})")).execute(&mut admin))
        .await
        .expect("terminate the lock's session");
    // Wait (no event to wait for: poll, with a deadline) until another
    // session holds it: the node's task took it again.
    let retaken = within(async {
        loop {
            if let Some(pid) = serve_lock_holder(&mut admin).await
                && pid != holder
            {
                return pid;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await;
    assert_ne!(retaken, holder);
    let e = build_err(config(&db.url, &[])).await;
    assert!(e.contains("CHAT_NATS_URL"), "{e}");
    first.shutdown().await.unwrap();
}

#[derive(diesel::QueryableByName)]
struct Pid {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}

/// The backend holding chatd's serve lock on this database, if any. The
/// lock's bigint key shows as classid (high half) and objid (low half).
async fn serve_lock_holder(conn: &mut AsyncPgConnection) -> Option<i32> {
    let rows: Vec<Pid> = within(
        diesel::sql_query(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND classid = x'63686174'::int::oid AND objid = x'645f7331'::int::oid \
             AND objsubid = 1 \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .load(conn),
    )
    .await
    .expect("pg_locks");
    rows.into_iter().next().map(|r| r.pid)
}

/// Two nodes on one SQLite file: the second is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_node_on_sqlite_is_refused() {
    let db = TestDb::create(Backend::Sqlite).await;
    let first = TestServer::start(&db).await;
    let e = build_err(config(&db.url, &[])).await;
    assert!(e.contains("cannot be shared"), "{e}");
    first.shutdown().await.unwrap();
    let again = TestServer::start(&db).await;
    again.shutdown().await.unwrap();
}

/// SQLite with CHAT_NATS_URL stops start-up, naming both settings, in
/// process and from the real binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_with_nats_url_is_refused() {
    let db = TestDb::create(Backend::Sqlite).await;
    let e = build_err(cluster_config(&db)).await;
    for needle in ["DATABASE_URL", "CHAT_NATS_URL", "cannot be shared"] {
        assert!(e.contains(needle), "{needle} in {e}");
    }

    let dir = std::env::temp_dir().join(format!("chatd_nats_sqlite_{}", std::process::id()));
    let url = db.url.clone();
    let output = within(tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_chatd"))
            .arg("serve")
            .args(crate::helpers::server_args(&url))
            .env("CHAT_NATS_URL", NATS)
            .env("CHAT_CLUSTER_KEY", crate::helpers::cluster::CLUSTER_KEY)
            .env("CHAT_DATA_DIR", &dir)
            .output()
    }))
    .await
    .expect("task")
    .expect("run chatd");
    assert!(!output.status.success(), "chatd must not start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in ["DATABASE_URL", "CHAT_NATS_URL"] {
        assert!(stderr.contains(needle), "{needle} in {stderr}");
    }
}
