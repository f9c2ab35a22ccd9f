//! The database failing under chatd, with real faults: a proxy that hangs
//! or cuts PostgreSQL, a terminated backend, a row lock held by another
//! session, SQLite locked by another connection, a full filesystem. chatd
//! answers UNAVAILABLE within its deadline, says NOT_SERVING, logs a failure
//! once, and recovers by itself.

use std::time::{Duration, Instant};

use crate::helpers::database::{FaultProxy, Mode, Process};
use crate::helpers::*;
use chatd::proto;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The bound on how long a call may take to fail when the
/// database hangs, with the default settings.
const FAIL_WITHIN: Duration = Duration::from_secs(10);

type HealthWatch = tonic::Streaming<HealthCheckResponse>;

/// For the tests that watch health: the watch has a connection of its own,
/// which makes no authenticated call, and must outlive the first-call
/// deadline (CHAT_FIRST_CALL_TIMEOUT, 10 s by default) while the test runs.
const WATCHER: [&str; 2] = ["--first-call-timeout", "10m"];

async fn watch_health(channel: tonic::transport::Channel) -> HealthWatch {
    let mut health = HealthClient::new(channel);
    within(health.watch(HealthCheckRequest {
        service: "chat.v1.ChatService".into(),
    }))
    .await
    .expect("health watch")
    .into_inner()
}

/// Waits for health to report `want` (skipping other statuses).
async fn health_becomes(watch: &mut HealthWatch, want: ServingStatus) {
    loop {
        let status = within(watch.next())
            .await
            .expect("health stream open")
            .expect("health status")
            .status;
        if status == want as i32 {
            return;
        }
    }
}

fn text(room: &str, content: &str) -> proto::SendMessageRequest {
    proto::SendMessageRequest {
        room: room.into(),
        content: content.into(),
        ..Default::default()
    }
}

/// Runs `call`, which must fail with UNAVAILABLE within [`FAIL_WITHIN`].
async fn unavailable_within<T: std::fmt::Debug>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) {
    let started = Instant::now();
    let status = within(call).await.expect_err(what);
    let took = started.elapsed();
    assert_eq!(status.code(), Code::Unavailable, "{what}: {status:?}");
    assert!(took < FAIL_WITHIN, "{what} took {took:?}");
    assert!(
        !status.message().to_lowercase().contains("sql"),
        "{status:?}"
    );
    eprintln!("{what}: UNAVAILABLE after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_postgres_is_unavailable_within_10s_then_recovers() {
    let db = TestDb::postgres().await;
    let proxy = FaultProxy::start().await;
    let server = TestServer::start_with(config(&proxy.url_for(&db), &WATCHER)).await;
    let mut c = server.client("alice").await;
    assert_eq!(send(&mut c, "h", "before").await.seq, 1);
    let mut watch = watch_health(server.channel().await).await;
    health_becomes(&mut watch, ServingStatus::Serving).await;

    proxy.set(Mode::Hang);
    unavailable_within("send", c.send_message(text("h", "during"))).await;
    unavailable_within(
        "list history",
        c.list_history(proto::ListHistoryRequest {
            room: "h".into(),
            ..Default::default()
        }),
    )
    .await;
    // A room nobody streams: joining reads its last seq from storage.
    unavailable_within(
        "join",
        c.join_room(proto::JoinRoomRequest {
            room: "quiet".into(),
            resume_after_seq: None,
        }),
    )
    .await;
    health_becomes(&mut watch, ServingStatus::NotServing).await;

    proxy.set(Mode::Forward);
    health_becomes(&mut watch, ServingStatus::Serving).await;
    // The send that got UNAVAILABLE may still commit once its bytes reach
    // the database (its outcome is unknown to the client, which is why
    // retries carry client_message_id): history holds it at most once,
    // between the others, and stays gapless.
    let after = eventually_sent(&mut c, "h", "after").await.seq;
    let page = newest_page(&mut c, "h").await.messages;
    let contents: Vec<&str> = page.iter().map(|m| m.content.as_str()).collect();
    assert!(
        contents == ["before", "after"] || contents == ["before", "during", "after"],
        "{contents:?}"
    );
    assert_eq!(seqs(&page), (1..=after).collect::<Vec<_>>());
    let (_stream, joined) = join(&mut c, "quiet", None).await;
    assert_eq!(joined.last_seq, 0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_postgres_is_unavailable_then_recovers() {
    let db = TestDb::postgres().await;
    let proxy = FaultProxy::start().await;
    let server = TestServer::start_with(config(&proxy.url_for(&db), &[])).await;
    let mut c = server.client("alice").await;
    assert_eq!(send(&mut c, "k", "before").await.seq, 1);
    proxy.set(Mode::Cut);
    unavailable_within("send", c.send_message(text("k", "during"))).await;
    proxy.set(Mode::Forward);
    let sent = eventually_sent(&mut c, "k", "after").await;
    assert_eq!(sent.seq, 2);
    server.shutdown().await.unwrap();
}

/// Sends with an idempotency key until it succeeds (UNAVAILABLE is worth a
/// retry), for at most [`STEP`].
async fn eventually_sent(c: &mut Client, room: &str, content: &str) -> proto::Message {
    let deadline = Instant::now() + STEP;
    loop {
        let mut request = text(room, content);
        request.client_message_id = format!("{room}-{content}");
        match within(c.send_message(request)).await {
            Ok(r) => return r.into_inner().message.expect("message"),
            Err(s) if s.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("send failed: {s:?}"),
        }
    }
}

/// chatd's sessions waiting for a lock.
async fn waiting_on_locks(admin: &mut AsyncPgConnection, db: &str) -> i64 {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let count: Count = within(
        diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE datname = $1 AND wait_event_type = 'Lock'",
        )
        .bind::<diesel::sql_types::Text, _>(db)
        .get_result(admin),
    )
    .await
    .unwrap();
    count.n
}

/// A restart or failover terminates every session, including one in the
/// middle of a statement (an idle pooled connection that died is found
/// and replaced at checkout; one busy in a query gets the server's 57P01
/// "terminating connection due to administrator command").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backend_is_unavailable_then_recovers() {
    let db = TestDb::postgres().await;
    let server = TestServer::start(&db).await;
    let mut c = server.client("alice").await;
    assert_eq!(send(&mut c, "t", "before").await.seq, 1);

    // Keep chatd's write busy in its statement: another session holds the
    // room's counter row.
    let mut holder = within(AsyncPgConnection::establish(&db.url)).await.unwrap();
    within(holder.batch_execute("BEGIN; SELECT last_seq FROM rooms WHERE name = 't' FOR UPDATE;"))
        .await
        .unwrap();
    let mut blocked = c.clone();
    let during =
        tokio::spawn(async move { within(blocked.send_message(text("t", "during"))).await });
    let mut admin = within(AsyncPgConnection::establish(&admin_url()))
        .await
        .unwrap();
    let deadline = Instant::now() + STEP;
    while waiting_on_locks(&mut admin, db.pg_name()).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the send never waited on the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What a restart or failover does to chatd's sessions.
    within(admin.batch_execute(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{}' AND wait_event_type = 'Lock'",
        db.pg_name()
    )))
    .await
    .unwrap();
    let status = within(during)
        .await
        .unwrap()
        .expect_err("its session was terminated");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // Dead connections are dropped, new ones made: it recovers by itself.
    within(holder.batch_execute("ROLLBACK;")).await.unwrap();
    let sent = eventually_sent(&mut c, "t", "after").await;
    assert_eq!(sent.seq, 2);
    assert_eq!(seqs(&newest_page(&mut c, "t").await.messages), [1, 2]);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_room_does_not_stall_other_rooms() {
    let db = TestDb::postgres().await;
    let server = TestServer::start(&db).await;
    let mut c = server.client("alice").await;
    assert_eq!(send(&mut c, "slow", "1").await.seq, 1);
    assert_eq!(send(&mut c, "fast", "1").await.seq, 1);

    // Another session holds the slow room's counter row.
    let mut holder = within(AsyncPgConnection::establish(&db.url)).await.unwrap();
    within(
        holder.batch_execute("BEGIN; SELECT last_seq FROM rooms WHERE name = 'slow' FOR UPDATE;"),
    )
    .await
    .unwrap();

    let mut slow_client = c.clone();
    let started = Instant::now();
    let slow =
        tokio::spawn(async move { within(slow_client.send_message(text("slow", "2"))).await });
    // Give the slow send time to reach the writer and block on the lock.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fast_started = Instant::now();
    assert_eq!(send(&mut c, "fast", "2").await.seq, 2);
    let fast_took = fast_started.elapsed();
    assert!(
        fast_took < Duration::from_secs(2),
        "a send to another room took {fast_took:?} behind the locked one"
    );
    assert!(
        !slow.is_finished(),
        "the slow room's send should still wait"
    );

    // The blocked send fails by the deadline, is not stored...
    let status = within(slow)
        .await
        .unwrap()
        .expect_err("blocked by the lock");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < FAIL_WITHIN, "{:?}", started.elapsed());
    eprintln!(
        "fast room answered in {fast_took:?}; locked room UNAVAILABLE after {:?}",
        started.elapsed()
    );
    // ...and the room works once the lock is gone.
    within(holder.batch_execute("ROLLBACK;")).await.unwrap();
    assert_eq!(send(&mut c, "slow", "2").await.seq, 2);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_by_another_connection_is_unavailable() {
    use diesel::Connection;
    use diesel::connection::SimpleConnection;
    let db = TestDb::create(Backend::Sqlite).await;
    let server = TestServer::start_with(config(&db.url, &WATCHER)).await;
    let mut c = server.client("alice").await;
    assert_eq!(send(&mut c, "l", "before").await.seq, 1);
    let mut watch = watch_health(server.channel().await).await;
    health_becomes(&mut watch, ServingStatus::Serving).await;

    let path = db.url.strip_prefix("sqlite://").unwrap().to_owned();
    let mut other = diesel::sqlite::SqliteConnection::establish(&path).unwrap();
    other.batch_execute("BEGIN IMMEDIATE;").unwrap();
    unavailable_within("send", c.send_message(text("l", "during"))).await;
    health_becomes(&mut watch, ServingStatus::NotServing).await;

    other.batch_execute("ROLLBACK;").unwrap();
    health_becomes(&mut watch, ServingStatus::Serving).await;
    assert_eq!(eventually_sent(&mut c, "l", "after").await.seq, 2);
    server.shutdown().await.unwrap();
}

/// A tmpfs of `size` mounted on a new directory, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = std::env::temp_dir().join(format!(
            "chatd-full-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).ok()?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        Some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Appends zeros to `path` until the filesystem is full.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_is_unavailable_not_serving_and_logged_once_per_batch() {
    let Some(fs) = Tmpfs::mount("2m") else {
        // CI runs as root and must run it; elsewhere (no root) it is skipped.
        assert!(
            !in_ci(),
            "CI is set, yet a tmpfs cannot be mounted (needs root): the full-disk test cannot run"
        );
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); full-disk test not run");
        return;
    };
    let data = fs.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let url = format!("sqlite://{}", data.join("chat.db").display());
    let chatd = Process::spawn(&url, &WATCHER, Some(&data)).await;
    let mut c = chatd.client("alice").await;
    assert_eq!(send(&mut c, "f", "before").await.seq, 1);
    let mut watch = watch_health(chatd.channel().await).await;
    health_becomes(&mut watch, ServingStatus::Serving).await;

    // The rooms exist before the disk fills: a send's first to a room
    // creates its row before the writer (a write that fails on its own),
    // and this test is about the writer's batches.
    for i in 0..7 {
        send(&mut c, &format!("f{i}"), "room").await;
    }
    // A connection of the test's own, open while the disk is full: when
    // chatd closed its last connection, SQLite would checkpoint and delete
    // the write-ahead log, free its space, and the disk would not stay full.
    let held = hold_sqlite(&data.join("chat.db"));
    let filler = fs.0.join("filler");
    fill(&filler);
    // Many concurrent sends of 4 KB: the writer batches them.
    let body = "x".repeat(4000);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..200 {
        let mut c = c.clone();
        let body = body.clone();
        calls.spawn(
            async move { within(c.send_message(text(&format!("f{}", i % 7), &body))).await },
        );
    }
    let mut failed = 0;
    while let Some(result) = within(calls.join_next()).await {
        match result.unwrap() {
            Ok(_) => {}
            Err(s) => {
                assert!(
                    matches!(s.code(), Code::Unavailable | Code::ResourceExhausted),
                    "{s:?}"
                );
                failed += 1;
            }
        }
    }
    assert!(
        failed >= 100,
        "only {failed} of 200 sends failed on a full disk"
    );
    health_becomes(&mut watch, ServingStatus::NotServing).await;
    // Whatever the failed batches left free (a partial page) is taken too.
    fill(&filler);
    // It stays so while the disk is full, though SELECT 1 still works:
    // health re-checks every second (no event to wait for here), so after
    // 2.5 s at least two probe writes have failed.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let now = within(
        HealthClient::new(chatd.channel().await).check(HealthCheckRequest {
            service: "chat.v1.ChatService".into(),
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(now.status, ServingStatus::NotServing as i32);

    // Logged once per failing batch, not once per request (before: one
    // line per failing batch plus one per request).
    let batch_lines = chatd.count("storing a batch failed");
    let request_lines = chatd.count("storage unavailable");
    eprintln!(
        "{failed} failed sends; {batch_lines} batch lines, {request_lines} per-request lines"
    );
    assert!(batch_lines >= 1);
    assert!(
        batch_lines + request_lines <= failed / 2,
        "{batch_lines} + {request_lines} log lines for {failed} failures"
    );

    // Space is freed: it recovers by itself, and nothing acknowledged is lost.
    std::fs::remove_file(&filler).unwrap();
    health_becomes(&mut watch, ServingStatus::Serving).await;
    assert_eq!(eventually_sent(&mut c, "f", "after").await.seq, 2);
    assert_eq!(seqs(&newest_page(&mut c, "f").await.messages), [1, 2]);
    drop(c);
    drop(chatd);
    drop(held);
}

/// An open SQLite connection to `path` that has read from it, so SQLite
/// counts it among the database's connections.
fn hold_sqlite(path: &std::path::Path) -> diesel::SqliteConnection {
    use diesel::Connection;
    use diesel::connection::SimpleConnection;
    let mut conn = diesel::SqliteConnection::establish(&path.display().to_string())
        .expect("open the test's SQLite connection");
    conn.batch_execute("PRAGMA busy_timeout = 5000; SELECT count(*) FROM messages;")
        .expect("read through the test's SQLite connection");
    conn
}

/// PostgreSQL only: the fault proxy in front of it cuts it, as an outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_is_unavailable_then_recovers() {
    use tokio_stream::StreamExt;
    use tonic_health::pb::health_check_response::ServingStatus;
    let db = TestDb::postgres().await;
    let proxy = FaultProxy::start().await;
    // The health watch below has a connection of its own, which makes no
    // authenticated call: it must outlive CHAT_FIRST_CALL_TIMEOUT.
    let flags = ["--first-call-timeout", "10m"];
    let server = TestServer::start_with(config(&proxy.url_for(&db), &flags)).await;
    let mut c = server.client("alice").await;
    assert_eq!(send(&mut c, "o", "before").await.seq, 1);
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let mut watch = within(health.watch(tonic_health::pb::HealthCheckRequest {
        service: "chat.v1.ChatService".into(),
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        within(watch.next()).await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    proxy.set(Mode::Cut);
    let status = send_request(
        &mut c,
        proto::SendMessageRequest {
            room: "o".into(),
            content: "during".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        !status.message().to_lowercase().contains("sql"),
        "{status:?}"
    );
    let status = within(c.list_history(proto::ListHistoryRequest {
        room: "o".into(),
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        within(watch.next()).await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );

    proxy.set(Mode::Forward);
    assert_eq!(
        within(watch.next()).await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    // Health saw the database answer again; calls work again too.
    assert_eq!(send(&mut c, "o", "after").await.seq, 2);
    let page = newest_page(&mut c, "o").await;
    assert_eq!(seqs(&page.messages), [1, 2]);
    server.shutdown().await.unwrap();
}
