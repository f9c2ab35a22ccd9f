//! Bans and mutes on a cluster: three nodes on one PostgreSQL and NATS. A
//! ban through one node ends the user's streams on another with the ban's
//! refusal, the room on a third sees one member_left, every node refuses
//! the user; lifting works on every node; a node that missed the notice
//! (NATS down) still ends the stream from the access revision it polls.

use std::time::Duration;

use crate::helpers::access::*;
use crate::helpers::cluster::{Nats, SHARED_NATS, start_nodes, unique_cluster};
use crate::helpers::sanctions::*;
use crate::helpers::*;
use chatd::proto::join_room_response::Event;
use tonic::Code;

/// Reads `stream` up to the message `seq`, counting member_left events.
async fn lefts_until(
    stream: &mut tonic::Streaming<chatd::proto::JoinRoomResponse>,
    seq: u64,
) -> usize {
    let mut lefts = 0;
    loop {
        match next_event(stream).await {
            Event::Message(m) if m.seq == seq => return lefts,
            Event::MemberLeft(_) => lefts += 1,
            Event::Message(_) | Event::MemberJoined(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A ban through node A ends bob's stream on node C with the banned
/// message; alice's stream on node B sees exactly one member_left; bob is
/// refused on every node, muted too; an unban and an unmute through A let
/// him back on C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ban_through_one_node_ends_streams_on_another() {
    let _heavy = heavy().await;
    let db = TestDb::postgres().await;
    let cluster = unique_cluster("ban");
    let nodes = start_nodes(&db, SHARED_NATS, &cluster, "3s", 3).await;
    let mut admin = admin(&nodes[0]).await;
    let mut alice = nodes[1].client("alice").await;
    let mut bob = nodes[2].client("bob").await;
    let (mut alice_stream, _) = join(&mut alice, "lobby", None).await;
    let (mut bob_stream, _) = join(&mut bob, "lobby", None).await;
    // Bob's rights are cached on node C once he has sent there.
    let mine = send(&mut bob, "lobby", "hi").await;
    wait_for_joined(&mut alice_stream, "bob").await;

    ban(&mut admin, sanction("lobby", "bob", 600, "flood"))
        .await
        .unwrap();
    assert_ends_with(
        &mut bob_stream,
        Code::PermissionDenied,
        "you are banned from room lobby until 20",
    )
    .await;
    wait_for_left(&mut alice_stream, "bob").await;
    for node in &nodes {
        let mut bob = node.client("bob").await;
        assert_all_refused(
            &every_room_call(&mut bob, "lobby", mine.seq).await,
            &["banned", "flood"],
        );
    }
    // Only one member_left reached alice: next comes her own message.
    let after = send(&mut alice, "lobby", "after").await;
    assert_eq!(lefts_until(&mut alice_stream, after.seq).await, 0);

    // Lifted through A: back on C (as soon as C has the notice).
    unban(&mut admin, "lobby", "bob").await.unwrap();
    mute(&mut admin, sanction("", "bob", 0, "")).await.unwrap();
    eventually(Duration::from_secs(5), || {
        let mut bob = bob.clone();
        async move { join_result(&mut bob, "lobby").await }
    })
    .await;
    eventually(Duration::from_secs(5), || {
        let mut bob = bob.clone();
        async move {
            match speaking_calls(&mut bob, "lobby", mine.seq)
                .await
                .remove(0)
                .1
            {
                Err(status) if status.message().contains("muted in every room") => Ok(()),
                other => Err(tonic::Status::unknown(format!("{other:?}"))),
            }
        }
    })
    .await;
    unmute(&mut admin, "", "bob").await.unwrap();
    eventually(Duration::from_secs(5), || {
        let mut bob = bob.clone();
        async move {
            send_request(
                &mut bob,
                chatd::proto::SendMessageRequest {
                    room: "lobby".into(),
                    content: "back".into(),
                    ..Default::default()
                },
            )
            .await
            .map(|_| ())
        }
    })
    .await;
}

/// A ban on every room while NATS is down still ends bob's streams on the
/// other node in every room, from the access revision it polls; its
/// lifting reaches that node the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_global_ban_reaches_a_node_that_missed_the_notice() {
    let _heavy = heavy().await;
    let db = TestDb::postgres().await;
    let mut nats = Nats::start().await;
    let cluster = unique_cluster("banpoll");
    let nodes = start_nodes(&db, &nats.url(), &cluster, "3s", 2).await;
    let mut admin = admin(&nodes[0]).await;
    let mut bob = nodes[1].client("bob").await;
    let (mut one, _) = join(&mut bob, "one", None).await;
    let (mut two, _) = join(&mut bob, "two", None).await;
    send(&mut bob, "one", "cached").await;
    nats.stop();
    ban(&mut admin, sanction("", "bob", 0, "")).await.unwrap();
    let said = "you are banned from every room until lifted";
    assert_ends_with(&mut one, Code::PermissionDenied, said).await;
    assert_ends_with(&mut two, Code::PermissionDenied, said).await;
    assert_code(
        join_result(&mut bob, "one").await,
        Code::PermissionDenied,
        said,
    );
    // Lifted while NATS is still down: the other node drops the ban it
    // cached (just above) when it sees the access revision move.
    unban(&mut admin, "", "bob").await.unwrap();
    eventually(Duration::from_secs(10), || {
        let mut bob = bob.clone();
        async move { join_result(&mut bob, "one").await }
    })
    .await;
}
