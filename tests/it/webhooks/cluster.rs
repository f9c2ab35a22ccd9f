//! Webhooks on a cluster of three nodes (real NATS, one PostgreSQL): each
//! event delivered by one node, once; a node killed mid-delivery has its
//! events taken over within 2 × CHAT_WEBHOOK_TIMEOUT.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::helpers::cluster::{NodeProcess, SHARED_NATS, node_args, unique_cluster};
use crate::helpers::webhooks::{Receiver, webhook_args};
use crate::helpers::{TestDb, TestServer, config, heavy, send};

/// An in-process node of `cluster` sending webhooks to `url`.
async fn node(db: &TestDb, cluster: &str, url: &str, timeout: &'static str) -> TestServer {
    let hooks = webhook_args(url, timeout);
    let mut args = node_args(SHARED_NATS, cluster, "3s");
    args.extend(hooks.iter().map(String::as_str));
    TestServer::start_with(config(&db.url, &args)).await
}

/// Sends through every node of three, to three rooms: every event reaches
/// the receiver exactly once (one webhook-id each, one delivery per room
/// and seq), and nothing more follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_each_event_exactly_once() {
    let _heavy = heavy().await;
    let db = TestDb::postgres().await;
    let cluster = unique_cluster("hooks");
    let mut receiver = Receiver::start(0).await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(node(&db, &cluster, &receiver.url(), "5s").await);
    }
    const PER_ROOM: usize = 60;
    let mut clients = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        clients.push(n.client(&format!("user{i}")).await);
    }
    for i in 0..PER_ROOM * 3 {
        let client = &mut clients[i % 3];
        send(client, &format!("room{}", i % 3), &format!("m{i}")).await;
    }
    // Three room.created and every message.
    let hooks = receiver.delivered(PER_ROOM * 3 + 3).await;
    let ids: HashSet<&str> = hooks.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids.len(), hooks.len(), "no event delivered twice");
    let mut per_room: HashMap<String, Vec<u64>> = HashMap::new();
    for hook in &hooks {
        if hook.kind() == "message.created" {
            let event = hook.event();
            per_room.entry(event.room).or_default().push(event.seq);
        } else {
            assert_eq!(hook.kind(), "room.created");
        }
    }
    for (room, mut seqs) in per_room.clone() {
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=PER_ROOM as u64).collect::<Vec<_>>(), "{room}");
    }
    assert_eq!(per_room.len(), 3);
    if let Some(extra) = receiver.quiet_for(Duration::from_secs(2)).await {
        panic!("an event delivered again: {extra:?}");
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// A node killed (SIGKILL) while its request hangs: another node,
/// started after the kill, delivers the event with the same webhook-id
/// within 2 × CHAT_WEBHOOK_TIMEOUT (2 s here) of the kill. The node that
/// hangs is alone until then, so the claim was surely its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_delivery_has_its_events_taken_over() {
    let _heavy = heavy().await;
    let db = TestDb::postgres().await;
    let cluster = unique_cluster("hooks-kill");
    let mut receiver = Receiver::start(0).await;
    let hooks = webhook_args(&receiver.url(), "2s");
    let mut args = node_args(SHARED_NATS, &cluster, "3s");
    args.extend(hooks.iter().map(String::as_str));
    let mut doomed = NodeProcess::spawn(&db.url, &args, None).await;
    let mut alice = doomed.client("alice").await;
    send(&mut alice, "k", "first").await;
    let first = receiver.delivered(2).await;
    assert!(first.iter().any(|h| h.kind() == "room.created"));

    receiver.answer("hang").await;
    send(&mut alice, "k", "in flight").await;
    let hung = receiver.next().await;
    assert_eq!(hung.answer, "hang");
    doomed.kill9();
    let killed = Instant::now();
    receiver.answer("ok").await;
    let heir = node(&db, &cluster, &receiver.url(), "2s").await;
    let done = receiver.next().await;
    let took = killed.elapsed();
    assert_eq!(
        (done.id.as_str(), done.answer.as_str()),
        (hung.id.as_str(), "ok")
    );
    assert_eq!(done.event().seq, 2);
    assert!(
        took <= Duration::from_secs(4),
        "taken over {took:?} after the kill, over 2 × the 2 s timeout"
    );
    heir.shutdown().await.unwrap();
}
