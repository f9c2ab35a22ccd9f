//! Who may do what (issue 9) on a cluster: nodes on one PostgreSQL
//! database and a NATS of the test's own or the shared one under a cluster
//! name of the test's own. A private room created through one node holds
//! on every node, a grant works at once everywhere, ListRooms and MarkRead
//! agree across nodes, the send rate is per node, admin tokens pass on
//! every node, and revocations end streams on the other nodes.

use std::collections::HashSet;

use crate::helpers::access::*;
use crate::helpers::cluster::{Nats, SHARED_NATS, node_args, start_nodes, unique_cluster};
use crate::helpers::*;
use chatd::proto::admin_service_client::AdminServiceClient;
use chatd::proto::join_room_response::Event;
use chatd::proto::{self, RoomVisibility};
use tonic::{Code, Status};

/// Every ChatService call that names a room, as `client` makes it on
/// `room`: JoinRoom, SendMessage, ListHistory, ListMembers, MarkRead.
async fn every_room_call(
    client: &mut Client,
    room: &str,
) -> Vec<(&'static str, Result<(), Status>)> {
    let joined = join_result(client, room).await;
    let sent = send_request(
        client,
        proto::SendMessageRequest {
            room: room.into(),
            content: "knock knock".into(),
            ..Default::default()
        },
    )
    .await
    .map(|_| ());
    let history = within(client.list_history(proto::ListHistoryRequest {
        room: room.into(),
        ..Default::default()
    }))
    .await
    .map(|_| ());
    let members = within(client.list_members(proto::ListMembersRequest {
        room: room.into(),
        ..Default::default()
    }))
    .await
    .map(|_| ());
    let marked = mark_read(client, room, 0).await.map(|_| ());
    vec![
        ("JoinRoom", joined),
        ("SendMessage", sent),
        ("ListHistory", history),
        ("ListMembers", members),
        ("MarkRead", marked),
    ]
}

/// The stream's next message; presence events before it are skipped.
async fn next_message_after_presence(
    stream: &mut tonic::Streaming<proto::JoinRoomResponse>,
) -> proto::Message {
    loop {
        match next_event(stream).await {
            Event::Message(m) => return m,
            Event::MemberJoined(_) | Event::MemberLeft(_) => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// A private room created through node 0 refuses a user without a grant
/// on node 1 for every call, naming the room, and nothing they sent is
/// stored; a grant made through node 0 lets them in on node 1 at once
/// (the refusals just seen were not cached), and their messages reach a
/// stream on node 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_private_room_holds_on_every_node_and_a_grant_works_at_once() {
    let db = TestDb::postgres().await;
    let cluster = unique_cluster("private");
    let nodes = start_nodes(&db, SHARED_NATS, &cluster, "3s", 2).await;
    let mut admin = admin(&nodes[0]).await;
    assert!(
        create(&mut admin, "board", RoomVisibility::Private)
            .await
            .unwrap()
    );
    grant(&mut admin, "board", &["alice"]).await.unwrap();
    let mut alice = nodes[0].client("alice").await;
    let (mut alice_stream, _) = join(&mut alice, "board", None).await;

    let mut bob = nodes[1].client("bob").await;
    // Twice: a refusal on node 1 stays a refusal, and is asked again.
    for _ in 0..2 {
        for (call, result) in every_room_call(&mut bob, "board").await {
            match result {
                Err(status) => {
                    assert_eq!(status.code(), Code::PermissionDenied, "{call}: {status:?}");
                    assert!(status.message().contains("board"), "{call}: {status:?}");
                }
                Ok(()) => panic!("{call} on node 1 let bob into the private room"),
            }
        }
    }
    assert!(newest_page(&mut alice, "board").await.messages.is_empty());

    grant(&mut admin, "board", &["bob"]).await.unwrap();
    for (call, result) in every_room_call(&mut bob, "board").await {
        assert!(
            result.is_ok(),
            "{call} on node 1 after the grant: {result:?}"
        );
    }
    // Bob's send above is the room's first message, seen on node 0.
    let first = next_message_after_presence(&mut alice_stream).await;
    let sender = first.sender.as_ref().map(|m| m.user_id.as_str());
    assert_eq!((first.seq, sender), (1, Some("bob")));
    let (mut bob_stream, joined) = join(&mut bob, "board", None).await;
    assert_eq!(joined.last_seq, 1);
    let hello = send(&mut alice, "board", "hello bob").await;
    assert_eq!(
        next_message_after_presence(&mut bob_stream).await.seq,
        hello.seq
    );
}

/// ListRooms through node 1 reflects sends through node 0 (order, last
/// message, unread counts), and a read marker moved through one node is
/// the marker on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_list_rooms_and_mark_read_agree_across_nodes() {
    let db = TestDb::postgres().await;
    let cluster = unique_cluster("rooms");
    let nodes = start_nodes(&db, SHARED_NATS, &cluster, "3s", 2).await;
    let mut admin = admin(&nodes[1]).await;
    create(&mut admin, "team", RoomVisibility::Private)
        .await
        .unwrap();
    grant(&mut admin, "team", &["alice", "bob"]).await.unwrap();
    let mut alice_b = nodes[1].client("alice").await;
    {
        let (_s, _) = join(&mut alice_b, "lobby", None).await;
    }
    let mut bob_a = nodes[0].client("bob").await;
    send(&mut bob_a, "lobby", "one").await;
    send(&mut bob_a, "lobby", "two").await;
    send(&mut bob_a, "team", "t1").await;

    let rooms = all_rooms(&mut alice_b, 10).await;
    assert_eq!(names(&rooms), ["team", "lobby"]);
    let counts: Vec<(u64, u64, u64)> = rooms
        .iter()
        .map(|r| (r.last_seq, r.read_seq, r.unread_count))
        .collect();
    assert_eq!(counts, [(1, 0, 1), (2, 0, 2)]);

    // Newer activity through node 0 moves lobby to the front on node 1.
    let last = send(&mut bob_a, "lobby", "three").await;
    let rooms = all_rooms(&mut alice_b, 1).await;
    assert_eq!(names(&rooms), ["lobby", "team"]);
    let lobby = &rooms[0];
    assert_eq!((lobby.last_seq, lobby.unread_count), (3, 3));
    let shown = lobby.last_message.as_ref().expect("last message");
    assert_eq!((shown.seq, shown.content.as_str()), (last.seq, "three"));

    // MarkRead through node 1, seen through node 0, and back.
    assert_eq!(mark_read(&mut alice_b, "lobby", 2).await.unwrap(), 2);
    let mut alice_a = nodes[0].client("alice").await;
    let rooms = all_rooms(&mut alice_a, 10).await;
    assert_eq!(
        (
            rooms[0].room.as_str(),
            rooms[0].read_seq,
            rooms[0].unread_count
        ),
        ("lobby", 2, 1)
    );
    // Never back, whichever node is asked.
    assert_eq!(mark_read(&mut alice_a, "lobby", 1).await.unwrap(), 2);
    assert_eq!(mark_read(&mut alice_a, "team", 1).await.unwrap(), 1);
    let rooms = all_rooms(&mut alice_b, 10).await;
    assert!(
        rooms
            .iter()
            .all(|r| r.unread_count == 0 || r.room == "lobby"),
        "{rooms:?}"
    );
    assert_eq!(mark_read(&mut alice_b, "team", 0).await.unwrap(), 1);
    // Her own send through node 0 moves her marker, seen on node 1.
    let mine = send(&mut alice_a, "lobby", "read it all").await;
    let rooms = all_rooms(&mut alice_b, 10).await;
    assert_eq!(
        (
            rooms[0].room.as_str(),
            rooms[0].read_seq,
            rooms[0].unread_count
        ),
        ("lobby", mine.seq, 0)
    );
    assert_code(
        mark_read(&mut alice_b, "lobby", mine.seq + 1).await,
        Code::OutOfRange,
        "seq",
    );
}

/// An admin token passes on every node: AdminService calls through either
/// node act for the whole cluster, and ChatService calls with an admin
/// token pass the room checks on a node that did not create the room. A
/// non-admin token is PERMISSION_DENIED on AdminService on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_admin_token_passes_on_every_node() {
    let db = TestDb::postgres().await;
    let cluster = unique_cluster("admin");
    let nodes = start_nodes(&db, SHARED_NATS, &cluster, "3s", 2).await;
    let mut admin_a = admin(&nodes[0]).await;
    let mut admin_b = admin(&nodes[1]).await;
    assert!(
        create(&mut admin_a, "vault", RoomVisibility::Private)
            .await
            .unwrap()
    );
    // Node 1 sees the room node 0 created.
    assert!(
        !create(&mut admin_b, "vault", RoomVisibility::Private)
            .await
            .unwrap()
    );
    assert_code(
        create(&mut admin_b, "vault", RoomVisibility::Public).await,
        Code::FailedPrecondition,
        "vault",
    );
    grant(&mut admin_b, "vault", &["carol"]).await.unwrap();
    let mut backend_b = admin_chat(&nodes[1]).await;
    for (call, result) in every_room_call(&mut backend_b, "vault").await {
        assert!(
            result.is_ok(),
            "{call} with an admin token on node 1: {result:?}"
        );
    }
    let mut carol = nodes[0].client("carol").await;
    assert_eq!(newest_page(&mut carol, "vault").await.messages.len(), 1);
    let (mut carol_stream, _) = join(&mut carol, "vault", None).await;
    revoke(&mut admin_b, "vault", &["carol"]).await.unwrap();
    assert_ends_with(&mut carol_stream, Code::PermissionDenied, "vault").await;
    assert_code(
        join_result(&mut carol, "vault").await,
        Code::PermissionDenied,
        "vault",
    );
    for node in &nodes {
        let mut user = AdminServiceClient::with_interceptor(
            node.channel().await,
            Bearer::new(&node.token("mallory")),
        );
        let refused = within(user.create_room(proto::CreateRoomRequest {
            room: "mine".into(),
            visibility: RoomVisibility::Private as i32,
        }))
        .await;
        assert_code(refused, Code::PermissionDenied, "admin");
    }
}

/// CreateRoom(PRIVATE) through node 0 racing sends through node 1 by a
/// user without a grant: a room reported created private holds none of
/// them (see [`race_create_private_with_sends`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_create_private_racing_sends_keeps_no_unchecked_message() {
    let db = TestDb::postgres().await;
    let cluster = unique_cluster("race");
    let nodes = start_nodes(&db, SHARED_NATS, &cluster, "3s", 2).await;
    race_create_private_with_sends(&nodes[0], &nodes[1]).await;
}

/// The per-user send rate is per node (README): a user refused on one
/// node still sends through another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_send_rate_is_per_node() {
    let db = TestDb::postgres().await;
    let cluster = unique_cluster("rate");
    let mut args = node_args(SHARED_NATS, &cluster, "3s");
    args.extend(["--user-send-rate", "1", "--user-send-burst", "3"]);
    let a = TestServer::start_with(config(&db.url, &args)).await;
    let b = TestServer::start_with(config(&db.url, &args)).await;
    let mut alice_a = a.client("alice").await;
    let request = || proto::SendMessageRequest {
        room: "flood".into(),
        content: "x".into(),
        ..Default::default()
    };
    // At one send a second, node 0 refuses within a few sends.
    let mut stored = 0;
    let refusal = loop {
        match send_request(&mut alice_a, request()).await {
            Ok(_) => stored += 1,
            Err(status) => break status,
        }
        assert!(stored < 100, "node 0 never refused");
    };
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert!(
        refusal.message().contains("CHAT_USER_SEND_RATE"),
        "{refusal:?}"
    );
    // Node 1 has its own bucket for her, full.
    let mut alice_b = b.client("alice").await;
    for _ in 0..3 {
        send_request(&mut alice_b, request())
            .await
            .expect("node 1 sends");
    }
    let history = newest_page(&mut alice_b, "flood").await.messages;
    assert_eq!(history.len(), stored + 3);
}

/// On a cluster: a revocation made through one node ends the user's stream
/// on another with PERMISSION_DENIED, the member on the first node sees
/// member_left exactly once, and the next call on either node is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_revoke_ends_streams_on_other_nodes() {
    let db = TestDb::postgres().await;
    let cluster = unique_cluster("revoke");
    let nodes = start_nodes(&db, SHARED_NATS, &cluster, "3s", 2).await;
    let mut admin = admin(&nodes[0]).await;
    create(&mut admin, "ops", RoomVisibility::Private)
        .await
        .unwrap();
    grant(&mut admin, "ops", &["alice", "bob"]).await.unwrap();
    let mut alice = nodes[0].client("alice").await;
    let mut bob = nodes[1].client("bob").await;
    let (mut alice_stream, _) = join(&mut alice, "ops", None).await;
    let (mut bob_stream, _) = join(&mut bob, "ops", None).await;
    // Bob is cached as granted on node 1 once he has sent there.
    send(&mut bob, "ops", "hi").await;
    wait_for_joined(&mut alice_stream, "bob").await;

    revoke(&mut admin, "ops", &["bob"]).await.unwrap();
    assert_ends_with(&mut bob_stream, Code::PermissionDenied, "ops").await;
    wait_for_left(&mut alice_stream, "bob").await;
    let refused = send_request(
        &mut bob,
        proto::SendMessageRequest {
            room: "ops".into(),
            content: "still here?".into(),
            ..Default::default()
        },
    )
    .await;
    assert_code(refused, Code::PermissionDenied, "ops");
    let mut bob_on_first = nodes[0].client("bob").await;
    assert_code(
        join_result(&mut bob_on_first, "ops").await,
        Code::PermissionDenied,
        "ops",
    );
    // Only one member_left reached alice: next comes her own message.
    let sent = send(&mut alice, "ops", "after").await;
    loop {
        match next_event(&mut alice_stream).await {
            Event::Message(m) if m.seq == sent.seq => break,
            Event::Message(_) => {}
            Event::MemberLeft(l) => panic!("a second member_left: {l:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    let seen: HashSet<String> = list_members(&mut alice, "ops")
        .await
        .into_iter()
        .map(|m| m.user_id)
        .collect();
    assert!(!seen.contains("bob"), "{seen:?}");
}

/// A node that missed the NATS notice (NATS is down) still ends the
/// revoked user's stream, from the access revision it polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_revoke_reaches_a_node_that_missed_the_notice() {
    let db = TestDb::postgres().await;
    let mut nats = Nats::start().await;
    let cluster = unique_cluster("revpoll");
    let nodes = start_nodes(&db, &nats.url(), &cluster, "3s", 2).await;
    let mut admin = admin(&nodes[0]).await;
    create(&mut admin, "ops", RoomVisibility::Private)
        .await
        .unwrap();
    grant(&mut admin, "ops", &["bob"]).await.unwrap();
    let mut bob = nodes[1].client("bob").await;
    let (mut bob_stream, _) = join(&mut bob, "ops", None).await;
    send(&mut bob, "ops", "cached").await;
    nats.stop();
    revoke(&mut admin, "ops", &["bob"]).await.unwrap();
    // Within the poll interval (1 s while NATS is down), well inside STEP.
    assert_ends_with(&mut bob_stream, Code::PermissionDenied, "ops").await;
    let refused = send_request(
        &mut bob,
        proto::SendMessageRequest {
            room: "ops".into(),
            content: "still here?".into(),
            ..Default::default()
        },
    )
    .await;
    assert_code(refused, Code::PermissionDenied, "ops");
}

/// A room created private through one node ends the streams another node
/// opened in it while it did not exist (and so was public).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_creating_a_room_private_ends_streams_on_other_nodes() {
    let db = TestDb::postgres().await;
    let cluster = unique_cluster("made-private");
    let nodes = start_nodes(&db, SHARED_NATS, &cluster, "3s", 2).await;
    let mut admin = admin(&nodes[0]).await;
    let mut watcher = admin_chat(&nodes[0]).await;
    let mut bob = nodes[1].client("bob").await;
    let (mut watch, _) = join(&mut watcher, "later", None).await;
    let (mut bob_stream, _) = join(&mut bob, "later", None).await;
    wait_for_joined(&mut watch, "bob").await;
    assert!(
        create(&mut admin, "later", RoomVisibility::Private)
            .await
            .unwrap()
    );
    assert_ends_with(&mut bob_stream, Code::PermissionDenied, "later").await;
    wait_for_left(&mut watch, "bob").await;
}
