//! Memory bounded in bytes whatever one client does (issue 7), and the
//! presence and last-seq details found with it.
//!
//! The RSS tests run the real chatd binary with default settings and read
//! its VmRSS. They run on PostgreSQL only: what they measure (rings,
//! streams, unread responses, idle connections) does not depend on the
//! backend, and a PostgreSQL server answers the many concurrent reads
//! faster than one SQLite file.

on_both_backends! {
    a_failed_join_is_never_announced: crate::memory::a_failed_join_is_never_announced,
    a_user_may_hold_at_most_100_streams: crate::memory::a_user_may_hold_at_most_100_streams,
}

use std::time::{Duration, Instant};

use crate::helpers::memory::{Chatd, grpc_request, header_status, mib};
use crate::helpers::*;
use chatd::proto::{self, join_room_response::Event};
use futures_util::StreamExt;
use tonic::Code;

const MIB: u64 = 1024 * 1024;

async fn a_failed_join_is_never_announced(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut bob = server.client("bob").await;
    let mut alice = server.client("alice").await;
    let (mut watcher, _) = join(&mut bob, "p", None).await;
    send(&mut bob, "p", "one").await;
    assert_eq!(next_message(&mut watcher).await.seq, 1);

    // Resuming past the room's last seq fails...
    let status = within(alice.join_room(proto::JoinRoomRequest {
        room: "p".into(),
        resume_after_seq: Some(5),
    }))
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // ...and the room never saw alice: the next event is the marker.
    let marker = send(&mut bob, "p", "marker").await;
    match next_event(&mut watcher).await {
        Event::Message(m) => assert_eq!(m, marker),
        other => panic!("a failed join was announced: {other:?}"),
    }
    assert_eq!(user_ids(&list_members(&mut bob, "p").await), ["bob"]);

    // A join that succeeds is still announced, once.
    let (_stream, joined) = join(&mut alice, "p", Some(2)).await;
    assert_eq!(user_ids(&joined.members), ["alice", "bob"]);
    match next_event(&mut watcher).await {
        Event::MemberJoined(e) => assert_eq!(e.member.unwrap().user_id, "alice"),
        other => panic!("expected member_joined, got {other:?}"),
    }
    server.shutdown().await.unwrap();
}

async fn a_user_may_hold_at_most_100_streams(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut alice = server.client("alice").await;
    let mut streams = Vec::new();
    for i in 0..100 {
        streams.push(join(&mut alice, &format!("r{i}"), None).await.0);
    }
    let request = || proto::JoinRoomRequest {
        room: "one-more".into(),
        resume_after_seq: None,
    };
    let status = within(alice.join_room(request())).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("CHAT_USER_MAX_STREAMS"),
        "{status:?}"
    );
    // Nothing changes for another user, nor for alice's open streams.
    let mut bob = server.client("bob").await;
    let (_bob_stream, joined) = join(&mut bob, "r0", None).await;
    assert_eq!(user_ids(&joined.members), ["bob", "alice"]);
    match next_event(&mut streams[0]).await {
        Event::MemberJoined(e) => assert_eq!(e.member.unwrap().user_id, "bob"),
        other => panic!("expected member_joined, got {other:?}"),
    }
    let sent = send(&mut alice, "r0", "still live").await;
    assert_eq!(next_message(&mut streams[0]).await, sent);

    // Closing one frees its slot (once the server has seen the stream go).
    streams.pop();
    let deadline = Instant::now() + STEP;
    loop {
        match within(alice.join_room(request())).await {
            Ok(_) => break,
            Err(s) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("the slot was not freed: {s:?}"),
        }
    }
    server.shutdown().await.unwrap();
}

/// Stores `n` messages of `len` bytes in `room`, several senders at once.
async fn seed(chatd: &Chatd, room: &str, n: usize, len: usize) {
    let channel = chatd.channel().await;
    all_or_first_failure((0..8).map(|s| {
        let mut client = Chatd::client(channel.clone(), &format!("seeder{s}"));
        async move {
            for i in (s..n).step_by(8) {
                let text = format!("{i:06} {}", "x".repeat(len - 7));
                send(&mut client, room, &text).await;
            }
        }
    }))
    .await;
}

/// The largest RSS seen while `until` is pending and for `settle` after.
async fn peak_rss_while<F: std::future::Future>(
    chatd: &Chatd,
    until: F,
    settle: Duration,
) -> (u64, F::Output) {
    let mut peak = chatd.rss();
    tokio::pin!(until);
    let out = loop {
        tokio::select! {
            out = &mut until => break out,
            () = tokio::time::sleep(Duration::from_millis(50)) => peak = peak.max(chatd.rss()),
        }
    };
    let end = Instant::now() + settle;
    while Instant::now() < end {
        peak = peak.max(chatd.rss());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (peak, out)
}

/// Issue 7: one user with 2 connections made 500 ListHistory calls each of
/// 500 x 4 KB pages, never read, and took the server from 47 MB to 1.89 GB.
/// Stalled resuming JoinRoom streams held 256-message pages each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_raises_rss_by_at_most_256_mb() {
    let _heavy = heavy().await;
    const CALLS_PER_CONNECTION: usize = 500;
    const RESUMES_PER_CONNECTION: usize = 50;
    let db = TestDb::postgres().await;
    // The buffer budget is what this test is about: the per-user read rate
    // (on by default) would otherwise refuse some of the 1,100 calls first
    // when they arrive quickly, and the refusal would name it instead.
    let chatd = Chatd::start(&db.url, &[("CHAT_USER_READ_RATE", "0")]).await;
    seed(&chatd, "big", 500, 4000).await;
    // Warm up the paths measured below, reading everything.
    let mut reader = Chatd::client(chatd.channel().await, "reader");
    let page = within(reader.list_history(proto::ListHistoryRequest {
        room: "big".into(),
        page_size: 500,
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(page.messages.len(), 500);
    let (mut replay, _) = join(&mut reader, "big", Some(0)).await;
    for seq in 1..=500 {
        assert_eq!(next_message(&mut replay).await.seq, seq);
    }
    drop(replay);
    let before = chatd.rss();

    let token = Chatd::token("hoarder");
    let history = proto::ListHistoryRequest {
        room: "big".into(),
        page_size: 500,
        ..Default::default()
    };
    let resume = proto::JoinRoomRequest {
        room: "big".into(),
        resume_after_seq: Some(0),
    };
    let mut calls = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..2 {
        let sender = chatd.raw(1024).await;
        senders.push(sender.clone());
        for i in 0..CALLS_PER_CONNECTION + RESUMES_PER_CONNECTION {
            let request = if i % 11 == 10 {
                grpc_request("JoinRoom", &token, &resume)
            } else {
                grpc_request("ListHistory", &token, &history)
            };
            let mut sender = sender.clone();
            calls.push(async move {
                within(sender.ready()).await.unwrap();
                within(sender.send_request(request)).await.unwrap()
            });
        }
    }
    let all = futures_util::future::join_all(calls);
    // Every call has its answer's headers (the data waits for the client,
    // which never reads); the server then holds what it holds.
    let (peak, responses) = peak_rss_while(&chatd, all, Duration::from_secs(2)).await;
    let refused: Vec<_> = responses
        .iter()
        .filter(|r| header_status(r) == Code::ResourceExhausted as i32)
        .collect();
    let answering = responses.iter().filter(|r| header_status(r) == 0).count();
    eprintln!(
        "RSS before {:.1} MiB, peak {:.1} MiB (+{:.1} MiB); {answering} calls answering, {} refused",
        mib(before),
        mib(peak),
        mib(peak.saturating_sub(before)),
        refused.len()
    );
    assert!(
        peak <= before + 256 * MIB,
        "RSS grew by {:.1} MiB",
        mib(peak - before)
    );
    // The budget is what refused them, and the status says so.
    let message = refused
        .first()
        .and_then(|r| r.headers().get("grpc-message"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("CHAT_USER_BUFFER_BYTES"), "{message:?}");

    // Once the client goes, so does the memory.
    drop(responses);
    drop(senders);
    let after = settled_rss(&chatd, before, 64 * MIB).await;
    eprintln!("RSS after the client left {:.1} MiB", mib(after));
    assert!(
        after <= before + 64 * MIB,
        "RSS stayed at {:.1} MiB, {:.1} MiB above the start",
        mib(after),
        mib(after - before)
    );
}

/// The RSS once it is back within `margin` of `start`, or after [`STEP`]
/// (no event tells when the server has freed everything: this polls).
async fn settled_rss(chatd: &Chatd, start: u64, margin: u64) -> u64 {
    let deadline = Instant::now() + STEP;
    let mut now = chatd.rss();
    while now > start + margin && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = chatd.rss();
    }
    // A last trim may still be on its way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    chatd.rss().min(now)
}

/// Issue 7: 10,000 streams in 10,000 rooms took the server from 121 MB to
/// 921 MB (80 KB a room), and it stayed near 900 MB after they closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rooms_cost_at_most_16_kb_each_and_memory_comes_back() {
    let _heavy = heavy().await;
    const CONNECTIONS: usize = 10;
    const USERS: usize = 100;
    const ROOMS_PER_USER: usize = 100;
    let db = TestDb::postgres().await;
    // 800 joins at once share 16 pooled connections: on a loaded machine a
    // join waited longer than the default 4 s deadline for one and failed
    // UNAVAILABLE. This test measures memory, not latency: a longer one.
    let chatd = Chatd::start(&db.url, &[("CHAT_DB_TIMEOUT", "30s")]).await;
    // Warm up: a connection, a join, a send.
    {
        let mut c = Chatd::client(chatd.channel().await, "warm");
        let (mut s, _) = join(&mut c, "warm", None).await;
        let sent = send(&mut c, "warm", "hi").await;
        assert_eq!(next_message(&mut s).await, sent);
    }
    let start = chatd.rss();

    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(chatd.channel().await);
    }
    // Each user (100 streams, the per-user cap) on one connection, ten
    // users per connection: 1,000 streams a connection.
    let users = (0..USERS).map(|user| {
        let client = Chatd::client(channels[user % CONNECTIONS].clone(), &format!("u{user}"));
        futures_util::stream::iter(0..ROOMS_PER_USER)
            .map(move |r| {
                let mut client = client.clone();
                async move { join(&mut client, &format!("room-{user}-{r}"), None).await.0 }
            })
            .buffer_unordered(8)
            .collect::<Vec<_>>()
    });
    // One failure (a join past its step) ends the other users' joins.
    let streams: Vec<_> =
        tokio::time::timeout(Duration::from_secs(120), all_or_first_failure(users))
            .await
            .expect("10,000 joins within 120 s")
            .into_iter()
            .flatten()
            .collect();
    assert_eq!(streams.len(), USERS * ROOMS_PER_USER);
    let open = chatd.rss();
    let per_room = open.saturating_sub(start) / streams.len() as u64;
    eprintln!(
        "RSS at start {:.1} MiB, with 10,000 rooms {:.1} MiB: {per_room} bytes a room",
        mib(start),
        mib(open)
    );
    assert!(per_room <= 16 * 1024, "{per_room} bytes a room");

    drop(streams);
    drop(channels);
    // The server has seen every stream go once the rooms are empty.
    let mut probe = Chatd::client(chatd.channel().await, "probe");
    for user in 0..USERS {
        let room = format!("room-{user}-{}", ROOMS_PER_USER - 1);
        let deadline = Instant::now() + STEP;
        while !list_members(&mut probe, &room).await.is_empty() {
            assert!(Instant::now() < deadline, "{room} still has members");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = settled_rss(&chatd, start, 64 * MIB).await;
    eprintln!("RSS after they closed {:.1} MiB", mib(now));
    assert!(
        now <= start + 64 * MIB,
        "RSS stayed at {:.1} MiB, {:.1} MiB above the start",
        mib(now),
        mib(now - start)
    );
}

/// The finding: idle connections (handshake done, never a call) left
/// 200 MB resident after they closed. 10,000 idle HTTP/2 connections, each
/// with one health check behind it (so each has its HTTP/2 state), then
/// closed: chatd hands their memory back and RSS returns near its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_idle_connections_give_their_memory_back() {
    let _heavy = heavy().await;
    use crate::helpers::connections::{Watched, call, frame, untokened_request, whole_body};
    // This process holds the client side of every connection (and chatd,
    // which raises its own limit the same way, the server side).
    let files = rlimit::increase_nofile_limit(10_000 + 1024).expect("open-files limit");
    let connections = usize::try_from(files.saturating_sub(1024)).map_or(10_000, |n| n.min(10_000));
    assert!(
        connections >= 2_000,
        "the open-files limit ({files}) is too low for this test"
    );
    let db = TestDb::postgres().await;
    let chatd = Chatd::start(
        &db.url,
        &[
            ("CHAT_MAX_CONNECTIONS", "12000"),
            ("CHAT_FIRST_CALL_TIMEOUT", "10m"),
        ],
    )
    .await;
    let addr: std::net::SocketAddr = chatd.addr.parse().expect("address");
    let health = || {
        let body = frame(&tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        });
        untokened_request("/grpc.health.v1.Health/Check", whole_body(body))
    };
    // Warm up the paths measured below.
    for _ in 0..2 {
        let mut warm = Watched::connect(addr).await;
        assert_eq!(call(&mut warm.sender, health()).await.0, 0);
    }
    let start = chatd.rss();

    let idle: Vec<Watched> = futures_util::stream::iter(0..connections)
        .map(|_| async move {
            let mut conn = Watched::connect(addr).await;
            assert_eq!(call(&mut conn.sender, health()).await.0, 0);
            conn
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let open = chatd.rss();
    eprintln!(
        "RSS at start {:.1} MiB, with {connections} idle connections {:.1} MiB",
        mib(start),
        mib(open)
    );
    drop(idle);
    let now = settled_rss(&chatd, start, 32 * MIB).await;
    eprintln!("RSS after they closed {:.1} MiB", mib(now));
    assert!(
        now <= start + 32 * MIB,
        "RSS stayed at {:.1} MiB, {:.1} MiB above the start",
        mib(now),
        mib(now.saturating_sub(start))
    );
}
