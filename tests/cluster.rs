//! Several chatd nodes as one service over NATS and one PostgreSQL
//! (issue 8): delivery, the PostgreSQL fallback, presence, node death.

mod helpers;

use std::time::Duration;

use chatd::proto::join_room_response::Event;
use chatd::proto::{self, JoinRoomResponse};
use helpers::cluster::{Nats, NodeProcess, SHARED_NATS, start_nodes, unique_cluster};
use helpers::{Client, TestDb, join, next_event, send, within};
use tonic::Streaming;

/// Reads `stream` until it has `count` messages and returns their seqs,
/// skipping presence events.
async fn collect_seqs(stream: &mut Streaming<JoinRoomResponse>, count: usize) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(count);
    while seqs.len() < count {
        match next_event(stream).await {
            Event::Message(m) => seqs.push(m.seq),
            Event::MemberJoined(_) | Event::MemberLeft(_) => {}
            Event::Joined(_) => {}
        }
    }
    seqs
}

/// Nothing more arrives on `stream` for `quiet` (no duplicate, no extra).
async fn assert_no_message_for(stream: &mut Streaming<JoinRoomResponse>, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => return,
            Ok(Ok(Some(r))) => {
                if let Some(Event::Message(m)) = r.event {
                    panic!("unexpected extra message seq {}", m.seq);
                }
            }
            Ok(other) => panic!("stream ended: {other:?}"),
        }
    }
}

/// Every node's streams see 1..N in order, exactly once, while senders on
/// every node write to one room at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_on_every_node_see_every_message_once_in_order() {
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
        senders.push(tokio::spawn(async move {
            for k in 0..PER_SENDER {
                send(&mut c, "all.hands", &format!("{i}-{k}")).await;
            }
        }));
    }
    for s in senders {
        within(s).await.expect("sender");
    }
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

#[allow(dead_code)]
fn _unused(_: proto::Member, _: NodeProcess) {}
