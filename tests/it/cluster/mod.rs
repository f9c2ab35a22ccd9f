//! Several chatd nodes as one service over NATS and one PostgreSQL
//! (issue 8): delivery, the PostgreSQL fallback, presence, node death.

mod live;
mod storage;

use std::time::Duration;

use crate::helpers::cluster::{Nats, NodeProcess, SHARED_NATS, start_nodes, unique_cluster};
use crate::helpers::{Client, TestDb, all_or_first_failure, heavy, join, next_event, send, within};
use chatd::proto::join_room_response::Event;
use chatd::proto::{self, JoinRoomResponse};
use tonic::Streaming;

/// Reads `stream` until it has `count` messages and returns their seqs,
/// skipping presence events.
async fn collect_seqs(stream: &mut Streaming<JoinRoomResponse>, count: usize) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(count);
    while seqs.len() < count {
        match next_event(stream).await {
            Event::Message(m) => seqs.push(m.seq),
            Event::MemberJoined(_)
            | Event::MemberLeft(_)
            | Event::Typing(_)
            | Event::ReadMarker(_) => {}
            Event::Joined(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    seqs
}

/// Nothing durable arrives on `stream` for `quiet` (no duplicate, no
/// extra; presence, typing and read markers may).
async fn assert_no_message_for(stream: &mut Streaming<JoinRoomResponse>, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => return,
            Ok(Ok(Some(r))) => match r.event {
                Some(
                    Event::MemberJoined(_)
                    | Event::MemberLeft(_)
                    | Event::Typing(_)
                    | Event::ReadMarker(_),
                )
                | None => {}
                Some(other) => panic!("unexpected extra event {other:?}"),
            },
            Ok(other) => panic!("stream ended: {other:?}"),
        }
    }
}

/// Every node's streams see 1..N in order, exactly once, while senders on
/// every node write to one room at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_on_every_node_see_every_message_once_in_order() {
    let _heavy = heavy().await;
    let db = TestDb::postgres().await;
    let cluster = unique_cluster("order");
    let nodes = start_nodes(&db, SHARED_NATS, &cluster, "3s", 3).await;
    let room = "all.hands";
    let mut streams = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for d in 0..2 {
            let mut c = node.client(&format!("reader{i}{d}")).await;
            let (stream, _) = join(&mut c, room, None).await;
            streams.push((c, stream));
        }
    }
    const PER_SENDER: usize = 40;
    let mut senders = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut c = node.client(&format!("sender{i}")).await;
        senders.push(async move {
            for k in 0..PER_SENDER {
                send(&mut c, "all.hands", &format!("{i}-{k}")).await;
            }
        });
    }
    all_or_first_failure(senders).await;
    let total = PER_SENDER * nodes.len();
    let expected: Vec<u64> = (1..=total as u64).collect();
    for (_, stream) in &mut streams {
        assert_eq!(collect_seqs(stream, total).await, expected);
    }
    for (_, stream) in &mut streams {
        assert_no_message_for(stream, Duration::from_millis(300)).await;
    }
}

/// A message sent through node A reaches a stream on node B while NATS is
/// down, through the PostgreSQL poll, within its bound (1 s) plus margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_messages_still_reach_other_nodes_through_storage() {
    let db = TestDb::postgres().await;
    let mut nats = Nats::start().await;
    let cluster = unique_cluster("fallback");
    let nodes = start_nodes(&db, &nats.url(), &cluster, "3s", 2).await;
    let mut reader = nodes[1].client("reader").await;
    let (mut stream, _) = join(&mut reader, "r", None).await;
    let mut writer = nodes[0].client("writer").await;
    send(&mut writer, "r", "live").await;
    assert_eq!(collect_seqs(&mut stream, 1).await, vec![1]);

    nats.stop();
    for n in 2..=4u64 {
        let started = tokio::time::Instant::now();
        let sent = send(&mut writer, "r", "through storage").await;
        assert_eq!(sent.seq, n);
        assert_eq!(collect_seqs(&mut stream, 1).await, vec![n]);
        let took = started.elapsed();
        // Bound: POLL_DISCONNECTED (1 s) plus a query; generous margin.
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }
    nats.restart().await;
    // Live again: delivered, and nothing twice.
    for n in 5..=7u64 {
        send(&mut writer, "r", "live again").await;
        assert_eq!(collect_seqs(&mut stream, 1).await, vec![n]);
    }
    assert_no_message_for(&mut stream, Duration::from_millis(2500)).await;
}

/// NATS stopped mid-traffic and restarted: sends keep succeeding, every
/// stream on every node gets every message once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_and_restarted_mid_traffic_loses_and_repeats_nothing() {
    let db = TestDb::postgres().await;
    let mut nats = Nats::start().await;
    let cluster = unique_cluster("restart");
    let nodes = start_nodes(&db, &nats.url(), &cluster, "3s", 3).await;
    let mut streams = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut c = node.client(&format!("reader{i}")).await;
        let (stream, _) = join(&mut c, "busy", None).await;
        streams.push((c, stream));
    }
    let mut clients: Vec<Client> = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        clients.push(node.client(&format!("sender{i}")).await);
    }
    let mut sent = 0u64;
    for phase in 0..3 {
        for _ in 0..10 {
            let done = futures_util::future::join_all(
                clients
                    .iter_mut()
                    .map(|c| async move { send(c, "busy", "m").await }),
            )
            .await;
            sent += done.len() as u64;
        }
        match phase {
            0 => nats.stop(),
            1 => nats.restart().await,
            _ => {}
        }
    }
    let expected: Vec<u64> = (1..=sent).collect();
    for (_, stream) in &mut streams {
        assert_eq!(collect_seqs(stream, sent as usize).await, expected);
    }
    for (_, stream) in &mut streams {
        assert_no_message_for(stream, Duration::from_millis(2500)).await;
    }
    drop(nodes);
}

/// The next presence event on `stream` (messages are skipped):
/// (joined?, user id).
async fn next_presence(stream: &mut Streaming<JoinRoomResponse>) -> (bool, String) {
    loop {
        match next_event(stream).await {
            Event::MemberJoined(j) => return (true, member_id(j.member)),
            Event::MemberLeft(l) => return (false, member_id(l.member)),
            _ => {}
        }
    }
}

fn member_id(member: Option<proto::Member>) -> String {
    member.map(|m| m.user_id).unwrap_or_default()
}

/// The next presence event on `stream` about someone other than the
/// observers (users named obs*).
async fn next_presence_not_obs(stream: &mut Streaming<JoinRoomResponse>) -> (bool, String) {
    loop {
        let event = next_presence(stream).await;
        if !event.1.starts_with("obs") {
            return event;
        }
    }
}

/// No presence event arrives on `stream` for `quiet`.
async fn assert_no_presence_for(stream: &mut Streaming<JoinRoomResponse>, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => return,
            Ok(Ok(Some(r))) => {
                if let Some(Event::MemberJoined(_) | Event::MemberLeft(_)) = r.event {
                    panic!("unexpected presence event {:?}", r.event)
                }
            }
            Ok(other) => panic!("stream ended: {other:?}"),
        }
    }
}

/// Polls ListMembers on `client` until it names exactly `expected`.
async fn wait_members(client: &mut Client, room: &str, expected: &[&str]) {
    within(async {
        loop {
            let members = crate::helpers::list_members(client, room).await;
            if crate::helpers::user_ids(&members) == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// A user with streams on two nodes is one member, announced once; they
/// leave when their last stream anywhere closes, once; ListMembers on
/// every node agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_nodes_and_a_user_on_two_nodes_is_one_member() {
    let db = TestDb::postgres().await;
    let cluster = unique_cluster("presence");
    let nodes = start_nodes(&db, SHARED_NATS, &cluster, "3s", 3).await;
    let room = "team";
    let mut obs = nodes[0].client("obs").await;
    let (mut watch, joined) = join(&mut obs, room, None).await;
    assert_eq!(crate::helpers::user_ids(&joined.members), vec!["obs"]);

    let mut alice1 = nodes[1].client("alice").await;
    let (phone, _) = join(&mut alice1, room, None).await;
    assert_eq!(next_presence(&mut watch).await, (true, "alice".into()));
    let mut alice2 = nodes[2].client("alice").await;
    let (laptop, _) = join(&mut alice2, room, None).await;
    for node in &nodes {
        let mut c = node.client("lister").await;
        wait_members(&mut c, room, &["alice", "obs"]).await;
    }
    // A node with no stream in the room asks the others.
    let extra = crate::helpers::TestServer::start_with(crate::helpers::config(
        &db.url,
        &crate::helpers::cluster::node_args(SHARED_NATS, &cluster, "3s"),
    ))
    .await;
    let mut c = extra.client("lister").await;
    wait_members(&mut c, room, &["alice", "obs"]).await;

    drop(phone);
    // Still present through the laptop: no member_left.
    assert_no_presence_for(&mut watch, Duration::from_millis(1500)).await;
    drop(laptop);
    assert_eq!(next_presence(&mut watch).await, (false, "alice".into()));
    // Exactly once, and no storm of refreshes after it.
    assert_no_presence_for(&mut watch, Duration::from_millis(2500)).await;
    for node in &nodes {
        let mut c = node.client("lister").await;
        wait_members(&mut c, room, &["obs"]).await;
    }
}

/// A node killed with SIGKILL: its members leave on every other node
/// within the presence timeout (3 s here) plus 2 s, with one member_left
/// each; its clients resume on another node and miss nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_members_leave_everywhere_and_its_clients_resume_elsewhere() {
    let db = TestDb::postgres().await;
    let cluster = unique_cluster("kill");
    let nodes = start_nodes(&db, SHARED_NATS, &cluster, "3s", 2).await;
    let mut doomed = NodeProcess::start_node(&db, SHARED_NATS, &cluster, "3s").await;
    let room = "ops";
    let mut watches = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut c = node.client(&format!("obs{i}")).await;
        let (stream, _) = join(&mut c, room, None).await;
        watches.push((c, stream));
    }
    let mut carol = doomed.client("carol").await;
    let (mut carol_stream, _) = join(&mut carol, room, None).await;
    let mut dave = doomed.client("dave").await;
    let (_dave_stream, _) = join(&mut dave, room, None).await;
    for (_, w) in &mut watches {
        let mut seen = vec![
            next_presence_not_obs(w).await,
            next_presence_not_obs(w).await,
        ];
        seen.sort();
        assert_eq!(seen, vec![(true, "carol".into()), (true, "dave".into())]);
    }
    let mut sender = nodes[0].client("sender").await;
    for _ in 0..3 {
        send(&mut sender, room, "before").await;
    }
    let last_seen = *collect_seqs(&mut carol_stream, 3).await.last().unwrap();

    doomed.kill9();
    let killed = tokio::time::Instant::now();
    // Messages sent while carol is away.
    for _ in 0..3 {
        send(&mut sender, room, "while away").await;
    }
    for (_, w) in &mut watches {
        let mut seen = vec![
            next_presence_not_obs(w).await,
            next_presence_not_obs(w).await,
        ];
        seen.sort();
        assert_eq!(seen, vec![(false, "carol".into()), (false, "dave".into())]);
    }
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(5), "members left after {took:?}");
    eprintln!("members of the killed node left after {took:?}");
    for (_, w) in &mut watches {
        assert_no_presence_for(w, Duration::from_millis(1500)).await;
    }

    // Carol resumes on another node: nothing missed.
    let mut carol = nodes[1].client("carol").await;
    let (mut resumed, _) = join(&mut carol, room, Some(last_seen)).await;
    assert_eq!(
        collect_seqs(&mut resumed, 3).await,
        vec![last_seen + 1, last_seen + 2, last_seen + 3]
    );
}

/// NATS restarted (every node cut off at once, then back): members who
/// never left get no member_left / member_joined, and one who left during
/// the outage is not resurrected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_neither_storms_nor_resurrects_presence() {
    let db = TestDb::postgres().await;
    let mut nats = Nats::start().await;
    let cluster = unique_cluster("heal");
    let nodes = start_nodes(&db, &nats.url(), &cluster, "3s", 2).await;
    let room = "calm";
    let mut obs = nodes[0].client("obs").await;
    let (mut watch, _) = join(&mut obs, room, None).await;
    let mut alice = nodes[1].client("alice").await;
    let (_alice_stream, _) = join(&mut alice, room, None).await;
    let mut bob = nodes[1].client("bob").await;
    let (bob_stream, _) = join(&mut bob, room, None).await;
    let mut seen = vec![
        next_presence(&mut watch).await,
        next_presence(&mut watch).await,
    ];
    seen.sort();
    assert_eq!(seen, vec![(true, "alice".into()), (true, "bob".into())]);

    nats.stop();
    drop(bob_stream);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nats.restart().await;
    // Bob left while NATS was down: one member_left once it is back.
    assert_eq!(next_presence(&mut watch).await, (false, "bob".into()));
    // Alice never left: nothing about her, past a full timeout.
    assert_no_presence_for(&mut watch, Duration::from_secs(5)).await;
    wait_members(&mut obs, room, &["alice", "obs"]).await;
}
