//! Webhooks (issue 19): every event type, signed as Standard Webhooks says
//! and verified by the `standardwebhooks` library in a receiver of the
//! test's own (`receiver.py`); retries; kill -9 with the receiver down; a
//! three-node cluster delivering each event once; a node dying
//! mid-delivery; memory while a backlog waits.

mod cluster;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::helpers::access::{admin, create, grant, revoke};
use crate::helpers::cluster::free_port;
use crate::helpers::database::Process;
use crate::helpers::metrics::{sample, wait_for};
use crate::helpers::sanctions::{ban, mute, sanction, unban, unmute};
use crate::helpers::webhooks::{Hook, Receiver, webhook_args};
use crate::helpers::*;
use chatd::proto::{self, RoomVisibility, event::Event as E};

on_both_backends! {
    every_event_type_arrives_signed_once_with_its_data:
        crate::webhooks::every_event_type_arrives_signed_once_with_its_data,
    a_kill_after_acknowledged_sends_loses_no_webhook:
        crate::webhooks::a_kill_after_acknowledged_sends_loses_no_webhook,
    events_past_the_maximum_age_are_dropped_and_counted:
        crate::webhooks::events_past_the_maximum_age_are_dropped_and_counted,
}

/// A server on `db` sending webhooks to `url`, with `extra` flags.
async fn hooked_server(
    db: &TestDb,
    url: &str,
    timeout: &'static str,
    extra: &[&str],
) -> TestServer {
    let hooks = webhook_args(url, timeout);
    let mut args: Vec<&str> = hooks.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    TestServer::start_with(config(&db.url, &args)).await
}

/// The events of `hooks` by type.
fn by_type(hooks: &[Hook]) -> HashMap<String, Vec<proto::Event>> {
    let mut out: HashMap<String, Vec<proto::Event>> = HashMap::new();
    for hook in hooks {
        out.entry(hook.kind().to_owned())
            .or_default()
            .push(hook.event());
    }
    out
}

/// Every event type a room and the backend make arrives once, verified
/// by the Standard Webhooks library, with `data` a `chat.v1.Event` a
/// protobuf library parses and the fields each type promises. A grant
/// repeated announces nothing; a revocation names only who held a grant.
pub async fn every_event_type_arrives_signed_once_with_its_data(backend: Backend) {
    let db = TestDb::create(backend).await;
    let mut receiver = Receiver::start(0).await;
    let server = hooked_server(&db, &receiver.url(), "5s", &[]).await;
    let mut admin = admin(&server).await;
    let mut alice = server.client("alice").await;

    assert!(
        create(&mut admin, "vip", RoomVisibility::Private)
            .await
            .unwrap()
    );
    grant(&mut admin, "vip", &["alice", "bob"]).await.unwrap();
    grant(&mut admin, "vip", &["alice"]).await.unwrap();
    revoke(&mut admin, "vip", &["bob", "carol"]).await.unwrap();
    let first = send(&mut alice, "vip", "hello").await;
    let reply = within(alice.send_message(proto::SendMessageRequest {
        room: "vip".into(),
        content: "a reply".into(),
        reply_to_seq: first.seq,
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner()
    .message
    .unwrap();
    within(alice.edit_message(proto::EditMessageRequest {
        room: "vip".into(),
        message_seq: first.seq,
        content: "hello, edited".into(),
    }))
    .await
    .unwrap();
    within(alice.react(proto::ReactRequest {
        room: "vip".into(),
        message_seq: first.seq,
        reaction: "👍".into(),
        add: true,
    }))
    .await
    .unwrap();
    within(alice.delete_message(proto::DeleteMessageRequest {
        room: "vip".into(),
        message_seq: reply.seq,
    }))
    .await
    .unwrap();
    // A user's first send brings a public room into existence.
    send(&mut alice, "lobby", "hi all").await;
    // Moderation: a ban in a room, lifted; a mute on every room, lifted;
    // lifting what does not exist announces nothing.
    let banned = ban(&mut admin, sanction("lobby", "mallory", 3600, "spam"))
        .await
        .unwrap();
    unban(&mut admin, "lobby", "mallory").await.unwrap();
    unban(&mut admin, "lobby", "mallory").await.unwrap();
    mute(&mut admin, sanction("", "mallory", 0, "cool down"))
        .await
        .unwrap();
    unmute(&mut admin, "", "mallory").await.unwrap();

    // room.created ×2, access.granted, access.revoked, message.created ×3,
    // message.edited, reaction.changed, message.deleted, user.banned,
    // user.unbanned, user.muted, user.unmuted.
    let hooks = receiver.delivered(14).await;
    let ids: HashSet<&str> = hooks.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids.len(), 14, "a webhook-id per event");
    for hook in &hooks {
        let at = hook.body["timestamp"].as_str().expect("a timestamp");
        humantime::parse_rfc3339(at).unwrap_or_else(|e| panic!("RFC 3339: {at}: {e}"));
    }
    let mut events = by_type(&hooks);
    let mut take = |kind: &str, count: usize| {
        let got = events.remove(kind).unwrap_or_default();
        assert_eq!(got.len(), count, "{kind}: {got:?}");
        got
    };

    let created = take("room.created", 2);
    let rooms: HashSet<(String, i32)> = created
        .iter()
        .map(|e| match &e.event {
            Some(E::RoomCreated(r)) => {
                assert!(r.created);
                assert_eq!(r.room, e.room);
                (r.room.clone(), r.visibility)
            }
            other => panic!("room.created carries {other:?}"),
        })
        .collect();
    assert_eq!(
        rooms,
        HashSet::from([
            ("vip".to_owned(), RoomVisibility::Private as i32),
            ("lobby".to_owned(), RoomVisibility::Public as i32),
        ])
    );
    let granted = take("access.granted", 1);
    assert!(
        matches!(&granted[0].event, Some(E::AccessGranted(a)) if a.user_ids == ["alice", "bob"])
    );
    assert_eq!((granted[0].room.as_str(), granted[0].seq), ("vip", 0));
    let revoked = take("access.revoked", 1);
    assert!(matches!(&revoked[0].event, Some(E::AccessRevoked(a)) if a.user_ids == ["bob"]));

    let mut messages = take("message.created", 3);
    messages.sort_by_key(|e| (e.room.clone(), e.seq));
    let [lobby, hello, replied] = &messages[..] else {
        unreachable!()
    };
    assert_eq!((lobby.room.as_str(), lobby.seq), ("lobby", 1));
    assert!(
        matches!(&lobby.event, Some(E::MessageCreated(m)) if m.content == "hi all" && m.sender.as_ref().is_some_and(|s| s.user_id == "alice"))
    );
    assert_eq!((hello.room.as_str(), hello.seq), ("vip", 1));
    assert_eq!((replied.room.as_str(), replied.seq), ("vip", 2));
    // A message is sent as it is when delivered: this one may have been
    // deleted by then (a tombstone), but it always names what it replies to.
    assert!(
        matches!(&replied.event, Some(E::MessageCreated(m)) if m.reply_to_seq == 1 && m.seq == 2)
    );

    let edited = take("message.edited", 1);
    assert_eq!(edited[0].seq, 3);
    assert!(
        matches!(&edited[0].event, Some(E::MessageEdited(m)) if m.message_seq == 1 && m.content == "hello, edited" && m.editor.as_ref().is_some_and(|e| e.user_id == "alice"))
    );
    let reacted = take("reaction.changed", 1);
    assert_eq!(reacted[0].seq, 4);
    assert!(
        matches!(&reacted[0].event, Some(E::ReactionChanged(r)) if r.message_seq == 1 && r.reaction == "👍" && r.added && r.count == 1)
    );
    let deleted = take("message.deleted", 1);
    assert_eq!(deleted[0].seq, 5);
    assert!(matches!(&deleted[0].event, Some(E::MessageDeleted(d)) if d.message_seq == 2));

    let ban_event = take("user.banned", 1).remove(0);
    assert_eq!((ban_event.room.as_str(), ban_event.seq), ("lobby", 0));
    assert_eq!(ban_event.event, Some(E::UserBanned(banned.clone())));
    let unban_event = take("user.unbanned", 1).remove(0);
    assert_eq!(unban_event.event, Some(E::UserUnbanned(banned)));
    let mute_event = take("user.muted", 1).remove(0);
    assert_eq!(mute_event.room, "", "a sanction on every room");
    assert!(
        matches!(&mute_event.event, Some(E::UserMuted(s)) if s.user_id == "mallory" && s.room.is_empty() && s.until.is_none() && s.reason == "cool down" && s.kind == proto::SanctionKind::Mute as i32)
    );
    let unmute_event = take("user.unmuted", 1).remove(0);
    assert!(matches!(&unmute_event.event, Some(E::UserUnmuted(s)) if s.user_id == "mallory"));
    assert!(events.is_empty(), "no other event: {events:?}");
    // Nothing more: each was sent once.
    assert!(
        receiver
            .quiet_for(Duration::from_millis(1500))
            .await
            .is_none()
    );
    server.shutdown().await.unwrap();
}

/// A receiver answering 503, then not at all (longer than the timeout),
/// then refusing connections: the event is tried again with the same
/// webhook-id until it is answered 2xx, and the metrics count it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tries_are_retried_with_the_same_id_until_answered() {
    let db = TestDb::postgres().await;
    let mut receiver = Receiver::start(0).await;
    let server = hooked_server(
        &db,
        &receiver.url(),
        "1s",
        &["--metrics-addr", "127.0.0.1:0"],
    )
    .await;
    let mut alice = server.client("alice").await;

    // The room's first send: room.created and message.created.
    send(&mut alice, "r", "zero").await;
    receiver.delivered(2).await;

    // 503 twice, then 200.
    receiver.answer("fail").await;
    send(&mut alice, "r", "one").await;
    let first = receiver.next().await;
    assert_eq!((first.answer.as_str(), first.verified), ("fail", true));
    let again = receiver.next().await;
    assert_eq!(again.id, first.id, "the same webhook-id on every try");
    receiver.answer("ok").await;
    let done = receiver.next().await;
    assert_eq!(
        (done.id.as_str(), done.answer.as_str()),
        (first.id.as_str(), "ok")
    );
    assert_eq!(done.event().seq, 2);

    // No answer within the timeout (1 s): tried again.
    receiver.answer("hang").await;
    send(&mut alice, "r", "two").await;
    let hung = receiver.next().await;
    assert_eq!(hung.answer, "hang");
    receiver.answer("ok").await;
    let done = receiver.next().await;
    assert_eq!(
        (done.id.as_str(), done.answer.as_str()),
        (hung.id.as_str(), "ok")
    );
    assert_eq!(done.event().seq, 3);

    let metrics = server.metrics_addr.expect("metrics on");
    let delivered = &[("result", "delivered")];
    let text = wait_for(metrics, "chatd_webhook_events_total", delivered, |n| {
        n == Some(4.0)
    })
    .await;
    let retried = sample(
        &text,
        "chatd_webhook_events_total",
        &[("result", "retried")],
    );
    assert!(retried.is_some_and(|n| n >= 3.0), "retried: {retried:?}");
    let text = wait_for(metrics, "chatd_webhook_backlog", &[], |n| n == Some(0.0)).await;
    assert_eq!(
        sample(&text, "chatd_webhook_oldest_seconds", &[]),
        Some(0.0)
    );
    server.shutdown().await.unwrap();
}

/// chatd killed with SIGKILL right after acknowledging sends while the
/// receiver refuses connections; started again with the receiver up:
/// every acknowledged send's webhook arrives.
pub async fn a_kill_after_acknowledged_sends_loses_no_webhook(backend: Backend) {
    let db = TestDb::create(backend).await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hooks");
    let hooks = webhook_args(&url, "2s");
    let args: Vec<&str> = hooks.iter().map(String::as_str).collect();
    let dir = db.dir();
    let mut chatd = Process::spawn(&db.url, &args, dir.as_deref()).await;
    let mut alice = chatd.client("alice").await;
    let mut acked = Vec::new();
    for i in 0..40 {
        acked.push(send(&mut alice, "k", &format!("m{i}")).await.seq);
    }
    chatd.kill9();
    drop(chatd);

    let mut receiver = Receiver::start(port).await;
    let _chatd = Process::spawn(&db.url, &args, dir.as_deref()).await;
    let mut seen = HashSet::new();
    while seen.len() < acked.len() {
        let hook = receiver.delivered(1).await.remove(0);
        match hook.kind() {
            "message.created" => {
                seen.insert(hook.event().seq);
            }
            other => assert_eq!(other, "room.created"),
        }
    }
    assert_eq!(seen, acked.into_iter().collect::<HashSet<u64>>());
}

/// Runs `sql` on the test's PostgreSQL database.
async fn run_sql(db: &TestDb, sql: &str) {
    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
    let mut conn = within(AsyncPgConnection::establish(&db.url))
        .await
        .expect("connects");
    within(conn.batch_execute(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Outbox rows that were tried at least once, and all of them.
async fn outbox_tries(db: &TestDb) -> (i64, i64) {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Counts {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        tried: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        total: i64,
    }
    let mut conn = within(AsyncPgConnection::establish(&db.url))
        .await
        .expect("connects");
    let counts: Counts = within(
        diesel::sql_query(
            "SELECT count(*) FILTER (WHERE attempts > 0) AS tried, count(*) AS total FROM webhook_outbox",
        )
        .get_result(&mut conn),
    )
    .await
    .expect("counts");
    (counts.tried, counts.total)
}

/// 100,000 events waiting while the receiver refuses connections, each
/// tried and rescheduled again and again: the backlog stays in the
/// database and chatd's memory stays flat. (The events are written with SQL, as the batch
/// write stores them: the test is about what waits, not about sending.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_100_000_events_costs_disk_not_memory() {
    use crate::helpers::memory::{Chatd, mib};
    const EVENTS: i64 = 100_000;
    let _heavy = heavy().await;
    let db = TestDb::postgres().await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hooks");
    let env = [
        ("CHAT_WEBHOOK_URL", url.as_str()),
        (
            "CHAT_WEBHOOK_SECRET",
            crate::helpers::webhooks::WEBHOOK_SECRET,
        ),
        ("CHAT_WEBHOOK_TIMEOUT", "1s"),
    ];
    let chatd = Chatd::start(&db.url, &env).await;
    run_sql(
        &db,
        &format!(
            "BEGIN; \
             INSERT INTO rooms (name, last_seq) VALUES ('backlog', {EVENTS}); \
             INSERT INTO messages (room, seq, sender_id, sender_name, content_type, content, sent_at_micros) \
             SELECT 'backlog', g, 'alice', 'Alice', 1, 'message number ' || g, \
                 (extract(epoch FROM now()) * 1000000)::bigint FROM generate_series(1, {EVENTS}) g; \
             INSERT INTO webhook_outbox (room, seq, created_micros, due_micros) \
             SELECT 'backlog', g, (extract(epoch FROM now()) * 1000000)::bigint, 0 \
             FROM generate_series(1, {EVENTS}) g; \
             COMMIT;"
        ),
    )
    .await;
    // Tried once each (refused, rescheduled) and cycling on: the first
    // pass warms up every allocation the cycle needs.
    let wait_tried = async |at_least: i64| {
        let deadline = Instant::now() + Duration::from_secs(400);
        loop {
            let (tried, total) = outbox_tries(&db).await;
            assert_eq!(
                total, EVENTS,
                "nothing is dropped or lost while the receiver is down"
            );
            if tried >= at_least {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {tried} of {EVENTS} events tried in 400 s"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    wait_tried(EVENTS / 2).await;
    let before = chatd.rss();
    wait_tried(EVENTS).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = chatd.rss();
    eprintln!(
        "RSS with {EVENTS} events waiting: {:.1} MiB after half were tried, {:.1} MiB after all",
        mib(before),
        mib(after)
    );
    assert!(
        after < before + 16 * 1024 * 1024,
        "memory grew with the backlog: {:.1} MiB -> {:.1} MiB",
        mib(before),
        mib(after)
    );
    drop(chatd);
}

/// An event still undelivered after CHAT_WEBHOOK_MAX_AGE (1 s here) is
/// dropped at its next try: counted, the outbox empty. A server without
/// CHAT_WEBHOOK_URL writes nothing to the outbox.
pub async fn events_past_the_maximum_age_are_dropped_and_counted(backend: Backend) {
    let db = TestDb::create(backend).await;
    let closed = format!("http://127.0.0.1:{}/hooks", free_port());
    let server = hooked_server(
        &db,
        &closed,
        "1s",
        &["--webhook-max-age", "1s", "--metrics-addr", "127.0.0.1:0"],
    )
    .await;
    let mut alice = server.client("alice").await;
    send(&mut alice, "old", "nobody hears this").await;
    let metrics = server.metrics_addr.expect("metrics on");
    // room.created and message.created: refused, then too old.
    let dropped = &[("result", "dropped")];
    wait_for(metrics, "chatd_webhook_events_total", dropped, |n| {
        n == Some(2.0)
    })
    .await;
    let text = wait_for(metrics, "chatd_webhook_backlog", &[], |n| n == Some(0.0)).await;
    let retried = sample(
        &text,
        "chatd_webhook_events_total",
        &[("result", "retried")],
    );
    assert!(retried.is_some_and(|n| n >= 2.0), "retried: {retried:?}");
    assert_eq!(
        sample(
            &text,
            "chatd_webhook_events_total",
            &[("result", "delivered")]
        ),
        Some(0.0)
    );
    server.shutdown().await.unwrap();

    // Webhooks off: the same calls leave the outbox empty.
    let plain = TestServer::start(&db).await;
    let mut bob = plain.client("bob").await;
    send(&mut bob, "quiet", "no webhook").await;
    send(&mut bob, "old", "none either").await;
    assert_eq!(outbox_rows(&db).await, 0);
    plain.shutdown().await.unwrap();
}

/// Rows in the test database's outbox, on either backend.
async fn outbox_rows(db: &TestDb) -> i64 {
    use diesel::dsl::count_star;
    use diesel::{Connection, QueryDsl};
    diesel::table! { webhook_outbox (id) { id -> Int8, } }
    match db.dir() {
        None => {
            use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
            let mut conn = within(AsyncPgConnection::establish(&db.url))
                .await
                .expect("connects");
            within(
                webhook_outbox::table
                    .select(count_star())
                    .get_result(&mut conn),
            )
            .await
            .expect("counts")
        }
        Some(_) => {
            let path = db.url.trim_start_matches("sqlite://").to_owned();
            tokio::task::spawn_blocking(move || {
                let mut conn = diesel::SqliteConnection::establish(&path).expect("opens");
                diesel::RunQueryDsl::get_result(
                    webhook_outbox::table.select(count_star()),
                    &mut conn,
                )
                .expect("counts")
            })
            .await
            .expect("counted")
        }
    }
}
