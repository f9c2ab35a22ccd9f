//! Messages that live across nodes (issue 18): edits, reactions,
//! replies and deletions, typing, read markers.

use std::time::Duration;

use super::assert_no_message_for;
use crate::helpers::cluster::{NodeProcess, SHARED_NATS, start_nodes, unique_cluster};
use crate::helpers::{Client, TestDb, join, next_any_event, next_event, send, within};
use chatd::proto::join_room_response::Event;
use chatd::proto::{self, JoinRoomResponse};
use tonic::Streaming;

/// Messages that live, through any node: an edit made on node A reaches
/// the streams on every node once, in order; two users reacting to one
/// message at once on two nodes are both counted, in every stream and in
/// history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_reactions_through_any_node_reach_every_node_once_in_order() {
    let db = TestDb::postgres().await;
    let cluster = unique_cluster("lively");
    let nodes = start_nodes(&db, SHARED_NATS, &cluster, "3s", 3).await;
    let room = "lively";
    let mut streams = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut c = node.client(&format!("watcher{i}")).await;
        let (stream, _) = join(&mut c, room, None).await;
        streams.push((c, stream));
    }
    let mut alice = nodes[0].client("alice").await;
    let bob = nodes[1].client("bob").await;
    send(&mut alice, room, "hello").await;
    let edited = within(alice.edit_message(proto::EditMessageRequest {
        room: room.into(),
        message_seq: 1,
        content: "hello, all".into(),
    }))
    .await
    .expect("edit")
    .into_inner();
    assert_eq!(edited.message.expect("message").updated_seq, 2);
    let react = |client: &Client| {
        let mut client = client.clone();
        tokio::spawn(async move {
            within(client.react(proto::ReactRequest {
                room: "lively".into(),
                message_seq: 1,
                reaction: "👍".into(),
                add: true,
            }))
            .await
        })
    };
    let (a, b) = (react(&alice), react(&bob));
    within(a).await.expect("task").expect("alice reacts");
    within(b).await.expect("task").expect("bob reacts");

    for (_, stream) in &mut streams {
        let mut events = Vec::new();
        while events.len() < 4 {
            match next_event(stream).await {
                Event::MemberJoined(_)
                | Event::MemberLeft(_)
                | Event::Typing(_)
                | Event::ReadMarker(_) => {}
                other => events.push(other),
            }
        }
        assert!(
            matches!(&events[0], Event::Message(m) if m.seq == 1),
            "{events:?}"
        );
        assert!(
            matches!(&events[1], Event::MessageEdited(e) if e.seq == 2 && e.content == "hello, all"),
            "{events:?}"
        );
        // Numbered one after the other, each with the count after it.
        for (event, (seq, count)) in events[2..].iter().zip([(3, 1), (4, 2)]) {
            assert!(
                matches!(event, Event::ReactionChanged(e) if e.seq == seq && e.count == count && e.added),
                "{events:?}"
            );
        }
    }
    for (_, stream) in &mut streams {
        assert_no_message_for(stream, Duration::from_millis(300)).await;
    }
    let mut reader = nodes[2].client("reader").await;
    let page = within(reader.list_history(proto::ListHistoryRequest {
        room: room.into(),
        ..Default::default()
    }))
    .await
    .expect("history")
    .into_inner();
    assert_eq!(page.last_seq, 4);
    let reactions = &page.messages[0].reactions;
    assert_eq!(reactions.len(), 1, "{reactions:?}");
    assert_eq!(
        (reactions[0].reaction.as_str(), reactions[0].count),
        ("👍", 2)
    );

    // A reply through node C and the deletion of what it answers through
    // node A: every stream gets both, in order, once.
    let reply = within(reader.send_message(proto::SendMessageRequest {
        room: room.into(),
        content: "agreed".into(),
        reply_to_seq: 1,
        ..Default::default()
    }))
    .await
    .expect("reply")
    .into_inner()
    .message
    .expect("message");
    assert_eq!((reply.seq, reply.reply_to_seq), (5, 1));
    let tombstone = within(alice.delete_message(proto::DeleteMessageRequest {
        room: room.into(),
        message_seq: 1,
    }))
    .await
    .expect("delete")
    .into_inner()
    .message
    .expect("message");
    assert!(tombstone.deleted && tombstone.content.is_empty());
    for (_, stream) in &mut streams {
        assert!(
            matches!(next_durable(stream).await, Event::Message(m) if m.seq == 5 && m.reply_to_seq == 1)
        );
        assert!(
            matches!(next_durable(stream).await, Event::MessageDeleted(d) if d.seq == 6 && d.message_seq == 1)
        );
    }
}

/// The stream's next durable event (presence skipped).
async fn next_durable(stream: &mut Streaming<JoinRoomResponse>) -> Event {
    loop {
        match next_event(stream).await {
            Event::MemberJoined(_) | Event::MemberLeft(_) => {}
            other => return other,
        }
    }
}

/// Typing through any node: a flag set on one node reaches a stream on
/// another; a message sent there ends it; a flag set on a node that dies
/// ends on the others by itself (within 8 s of its last announcement).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_crosses_nodes_and_ends_when_its_node_dies() {
    let db = TestDb::postgres().await;
    let cluster = unique_cluster("typing");
    let nodes = start_nodes(&db, SHARED_NATS, &cluster, "3s", 1).await;
    let mut doomed = NodeProcess::start_node(&db, SHARED_NATS, &cluster, "3s").await;
    let mut watcher = nodes[0].client("watcher").await;
    let (mut stream, _) = join(&mut watcher, "tt", None).await;
    let mut alice = doomed.client("alice").await;
    let typing = |on: bool| proto::SetTypingRequest {
        room: "tt".into(),
        typing: on,
    };
    /// The next typing event within `wait`, skipping everything else.
    async fn typing_within(
        stream: &mut Streaming<JoinRoomResponse>,
        wait: Duration,
    ) -> Option<(String, bool)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Err(_) => return None,
                Ok(Ok(Some(r))) => {
                    if let Some(Event::Typing(t)) = r.event {
                        return Some((t.member.expect("member").user_id, t.typing));
                    }
                }
                Ok(other) => panic!("stream ended: {other:?}"),
            }
        }
    }
    // The watcher's node follows the room shortly after the join: announce
    // (a fresh flag each time) until it arrives.
    let mut arrived = false;
    for _ in 0..10 {
        within(alice.set_typing(typing(true)))
            .await
            .expect("typing");
        if typing_within(&mut stream, Duration::from_secs(1)).await == Some(("alice".into(), true))
        {
            arrived = true;
            break;
        }
        within(alice.set_typing(typing(false)))
            .await
            .expect("typing");
    }
    assert!(arrived, "a flag set on one node never reached the other");
    // A message through the flag's node ends it everywhere.
    send(&mut alice, "tt", "sent").await;
    assert_eq!(
        typing_within(&mut stream, Duration::from_secs(10)).await,
        Some(("alice".into(), false))
    );
    // Its node dies with the flag up: it ends here by itself.
    within(alice.set_typing(typing(true)))
        .await
        .expect("typing");
    assert_eq!(
        typing_within(&mut stream, Duration::from_secs(10)).await,
        Some(("alice".into(), true))
    );
    doomed.kill9();
    let died = tokio::time::Instant::now();
    assert_eq!(
        typing_within(&mut stream, Duration::from_secs(15)).await,
        Some(("alice".into(), false))
    );
    assert!(
        died.elapsed() <= Duration::from_secs(9),
        "{:?}",
        died.elapsed()
    );
}

/// Read markers through any node: a marker moved on one node (MarkRead,
/// or the user's own message) reaches a stream on another, coalesced on
/// the node that moved it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_markers_cross_nodes() {
    let db = TestDb::postgres().await;
    let cluster = unique_cluster("markers");
    let nodes = start_nodes(&db, SHARED_NATS, &cluster, "3s", 2).await;
    let mut watcher = nodes[0].client("watcher").await;
    let (mut stream, _) = join(&mut watcher, "rm", None).await;
    let mut alice = nodes[1].client("alice").await;
    // Alice's node follows the room once she has a stream there; her
    // messages move her marker. Send until one of her markers arrives.
    let (_alices, _) = join(&mut alice, "rm", None).await;
    let mut newest = 0;
    let mut seen = None;
    for i in 0..10 {
        newest = send(&mut alice, "rm", &format!("m{i}")).await.seq;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Ok(Some(r))) = tokio::time::timeout_at(deadline, stream.message()).await {
            if let Some(Event::ReadMarker(m)) = r.event {
                assert_eq!(m.member.as_ref().expect("member").user_id, "alice");
                seen = Some(m.seq);
                break;
            }
        }
        if seen.is_some() {
            break;
        }
    }
    let first = seen.expect("no read marker crossed the nodes");
    assert!((1..=newest).contains(&first), "{first} of {newest}");
    // MarkRead by bob on that node: the other node hears it.
    let mut bob = nodes[1].client("bob").await;
    within(bob.mark_read(proto::MarkReadRequest {
        room: "rm".into(),
        seq: newest,
    }))
    .await
    .expect("mark_read");
    loop {
        if let Event::ReadMarker(m) = next_any_event(&mut stream).await
            && m.member.as_ref().expect("member").user_id == "bob"
        {
            assert_eq!(m.seq, newest);
            break;
        }
    }
}
