//! Messages that live: edits, deletions, reactions and replies, each a
//! durable event at the room's next seq, delivered live and replayed on
//! resume; and every refusal with its code and the field or limit named.

use chatd::proto;
use chatd::proto::join_room_response::Event;
use tonic::{Code, Streaming};

use crate::chat::support::assert_invalid;
use crate::helpers::access::admin_chat;
use crate::helpers::*;

/// The stream's next durable event (presence, typing and read markers
/// are skipped).
pub(super) async fn next_durable(stream: &mut Streaming<proto::JoinRoomResponse>) -> Event {
    loop {
        match next_event(stream).await {
            Event::MemberJoined(_) | Event::MemberLeft(_) => continue,
            Event::Typing(_) | Event::ReadMarker(_) => continue,
            other => return other,
        }
    }
}

/// The seq of a durable event.
fn seq_of(event: &Event) -> u64 {
    match event {
        Event::Message(m) => m.seq,
        Event::MessageEdited(e) => e.seq,
        Event::MessageDeleted(e) => e.seq,
        Event::ReactionChanged(e) => e.seq,
        other => panic!("not a durable event: {other:?}"),
    }
}

async fn edit(
    client: &mut Client,
    room: &str,
    seq: u64,
    content: &str,
) -> Result<proto::Message, tonic::Status> {
    within(client.edit_message(proto::EditMessageRequest {
        room: room.into(),
        message_seq: seq,
        content: content.into(),
    }))
    .await
    .map(|r| r.into_inner().message.expect("message"))
}

async fn delete(
    client: &mut Client,
    room: &str,
    seq: u64,
) -> Result<proto::Message, tonic::Status> {
    within(client.delete_message(proto::DeleteMessageRequest {
        room: room.into(),
        message_seq: seq,
    }))
    .await
    .map(|r| r.into_inner().message.expect("message"))
}

async fn react(
    client: &mut Client,
    room: &str,
    seq: u64,
    reaction: &str,
    add: bool,
) -> Result<proto::Message, tonic::Status> {
    within(client.react(proto::ReactRequest {
        room: room.into(),
        message_seq: seq,
        reaction: reaction.into(),
        add,
    }))
    .await
    .map(|r| r.into_inner().message.expect("message"))
}

fn counts(message: &proto::Message) -> Vec<(&str, u32, bool)> {
    message
        .reactions
        .iter()
        .map(|r| (r.reaction.as_str(), r.count, r.mine))
        .collect()
}

pub async fn edits_deletions_and_reactions_are_events_in_order(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let (mut live, _) = join(&mut bob, "l", None).await;

    let first = send(&mut alice, "l", "first").await;
    assert_eq!((first.seq, first.updated_seq), (1, 1));
    assert!(matches!(next_durable(&mut live).await, Event::Message(m) if m.seq == 1));

    // An edit: the answer is the message after it; streams get the event.
    let edited = edit(&mut alice, "l", 1, "first, edited").await.unwrap();
    assert_eq!(edited.content, "first, edited");
    assert_eq!(edited.updated_seq, 2);
    assert!(edited.edited_at.is_some());
    match next_durable(&mut live).await {
        Event::MessageEdited(e) => {
            assert_eq!((e.seq, e.message_seq), (2, 1));
            assert_eq!(e.content, "first, edited");
            assert_eq!(e.editor.unwrap().user_id, "alice");
            assert!(e.edited_at.is_some());
        }
        other => panic!("expected the edit, got {other:?}"),
    }
    // The same content again stores and sends nothing.
    assert_eq!(
        edit(&mut alice, "l", 1, "first, edited").await.unwrap(),
        edited
    );

    // Reactions: counts after each change, `mine` for the caller.
    let r = react(&mut bob, "l", 1, "👍", true).await.unwrap();
    assert_eq!(counts(&r), [("👍", 1, true)]);
    let r = react(&mut alice, "l", 1, "👍", true).await.unwrap();
    assert_eq!(counts(&r), [("👍", 2, true)]);
    let r = react(&mut alice, "l", 1, ":tada:", true).await.unwrap();
    assert_eq!(counts(&r), [("👍", 2, true), (":tada:", 1, true)]);
    // Held already / not held: nothing stored.
    assert_eq!(react(&mut alice, "l", 1, "👍", true).await.unwrap(), r);
    let r = react(&mut bob, "l", 1, "👍", false).await.unwrap();
    assert_eq!(counts(&r), [("👍", 1, false), (":tada:", 1, false)]);
    assert_eq!(react(&mut bob, "l", 1, "👍", false).await.unwrap(), r);
    for (seq, reaction, who, added, count) in [
        (3, "👍", "bob", true, 1),
        (4, "👍", "alice", true, 2),
        (5, ":tada:", "alice", true, 1),
        (6, "👍", "bob", false, 1),
    ] {
        match next_durable(&mut live).await {
            Event::ReactionChanged(e) => {
                assert_eq!((e.seq, e.message_seq), (seq, 1));
                assert_eq!(e.reaction, reaction);
                assert_eq!(e.member.unwrap().user_id, who);
                assert_eq!((e.added, e.count), (added, count));
            }
            other => panic!("expected reaction change {seq}, got {other:?}"),
        }
    }

    // History folds the changes into the message, `mine` for the caller;
    // last_seq is the room's newest event.
    let page = newest_page(&mut bob, "l").await;
    assert_eq!(page.last_seq, 6);
    assert_eq!(seqs(&page.messages), [1]);
    let m = &page.messages[0];
    assert_eq!((m.content.as_str(), m.updated_seq), ("first, edited", 6));
    assert_eq!(counts(m), [("👍", 1, false), (":tada:", 1, false)]);
    let page = newest_page(&mut alice, "l").await;
    assert_eq!(
        counts(&page.messages[0]),
        [("👍", 1, true), (":tada:", 1, true)]
    );

    // A deletion leaves a tombstone: content and reactions go.
    let tombstone = delete(&mut alice, "l", 1).await.unwrap();
    assert!(tombstone.deleted);
    assert_eq!(tombstone.content, "");
    assert!(tombstone.reactions.is_empty());
    assert_eq!((tombstone.seq, tombstone.updated_seq), (1, 7));
    assert_eq!(tombstone.sender.as_ref().unwrap().user_id, "alice");
    match next_durable(&mut live).await {
        Event::MessageDeleted(e) => {
            assert_eq!((e.seq, e.message_seq), (7, 1));
            assert_eq!(e.deleted_by.unwrap().user_id, "alice");
            assert!(e.deleted_at.is_some());
        }
        other => panic!("expected the deletion, got {other:?}"),
    }
    assert_eq!(delete(&mut alice, "l", 1).await.unwrap(), tombstone);
    let second = send(&mut alice, "l", "second").await;
    assert_eq!(second.seq, 8, "nothing was stored for the repeated calls");
    assert!(matches!(next_durable(&mut live).await, Event::Message(m) if m.seq == 8));

    // A stream resuming from the start replays every event once, in
    // order: the tombstone, then its edit with the content erased.
    let (mut replay, joined) = join(&mut bob, "l", Some(0)).await;
    assert_eq!(joined.last_seq, 8);
    let mut events = Vec::new();
    for _ in 0..8 {
        events.push(next_durable(&mut replay).await);
    }
    assert_eq!(
        events.iter().map(seq_of).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    match &events[0] {
        Event::Message(m) => assert!(m.deleted && m.content.is_empty(), "{m:?}"),
        other => panic!("{other:?}"),
    }
    match &events[1] {
        Event::MessageEdited(e) => assert_eq!(e.content, "", "the edit's content is erased"),
        other => panic!("{other:?}"),
    }
    server.shutdown().await.unwrap();
}

pub async fn a_stream_resuming_before_an_edit_gets_the_message_then_the_edit(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut alice = server.client("alice").await;
    send(&mut alice, "r", "zero").await;
    send(&mut alice, "r", "one").await;
    react(&mut alice, "r", 2, "🙂", true).await.unwrap();
    edit(&mut alice, "r", 2, "one, edited").await.unwrap();
    // Resuming after seq 1: the message in its current state (with its
    // reactions as this user sees them), then the reaction and the edit.
    let (mut stream, _) = join(&mut alice, "r", Some(1)).await;
    match next_durable(&mut stream).await {
        Event::Message(m) => {
            assert_eq!(
                (m.seq, m.content.as_str(), m.updated_seq),
                (2, "one, edited", 4)
            );
            assert_eq!(counts(&m), [("🙂", 1, true)]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(next_durable(&mut stream).await, Event::ReactionChanged(e) if e.seq == 3));
    assert!(
        matches!(next_durable(&mut stream).await, Event::MessageEdited(e) if e.seq == 4 && e.content == "one, edited")
    );
    // Then live.
    edit(&mut alice, "r", 1, "zero, edited").await.unwrap();
    assert!(
        matches!(next_durable(&mut stream).await, Event::MessageEdited(e) if e.seq == 5 && e.message_seq == 1)
    );
    server.shutdown().await.unwrap();
}

pub async fn replies_name_a_message_of_the_room(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let (mut live, _) = join(&mut bob, "q", None).await;
    send(&mut alice, "q", "question").await;
    send(&mut alice, "elsewhere", "other room").await;
    let reply = |to: u64| proto::SendMessageRequest {
        room: "q".into(),
        content: "answer".into(),
        reply_to_seq: to,
        ..Default::default()
    };
    let answer = send_request(&mut bob, reply(1)).await.unwrap();
    assert_eq!((answer.seq, answer.reply_to_seq), (2, 1));
    assert!(matches!(next_durable(&mut live).await, Event::Message(m) if m.seq == 1));
    assert!(
        matches!(next_durable(&mut live).await, Event::Message(m) if m.seq == 2 && m.reply_to_seq == 1)
    );
    let page = newest_page(&mut alice, "q").await;
    assert_eq!(
        page.messages
            .iter()
            .map(|m| m.reply_to_seq)
            .collect::<Vec<_>>(),
        [0, 1]
    );
    // Not a message of this room: a seq beyond it, another event's seq.
    assert_invalid(
        send_request(&mut bob, reply(9)).await,
        Code::NotFound,
        "reply_to_seq",
    );
    react(&mut alice, "q", 1, "👍", true).await.unwrap();
    assert_invalid(
        send_request(&mut bob, reply(3)).await,
        Code::NotFound,
        "reply_to_seq",
    );
    assert_invalid(
        send_request(&mut bob, reply(u64::MAX)).await,
        Code::InvalidArgument,
        "reply_to_seq",
    );
    // A tombstone may be answered.
    delete(&mut alice, "q", 1).await.unwrap();
    assert_eq!(
        send_request(&mut bob, reply(1)).await.unwrap().reply_to_seq,
        1
    );
    server.shutdown().await.unwrap();
}

pub async fn every_change_refusal_names_its_field_or_limit(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    send(&mut alice, "x", "text").await;
    // Bob's room from his first join (for ListRooms below).
    drop(join(&mut bob, "x", None).await);
    send_request(
        &mut alice,
        proto::SendMessageRequest {
            room: "x".into(),
            content: "https://example.com/cat.png".into(),
            content_type: proto::ContentType::Image as i32,
            ..Default::default()
        },
    )
    .await
    .unwrap();

    // Who may.
    let denied = edit(&mut bob, "x", 1, "mine now").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let denied = delete(&mut bob, "x", 1).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    // Which message.
    react(&mut bob, "x", 1, "👍", true).await.unwrap(); // seq 3
    for seq in [3, 4, 1000] {
        assert_invalid(
            edit(&mut alice, "x", seq, "y").await,
            Code::NotFound,
            "message_seq",
        );
        assert_invalid(
            react(&mut bob, "x", seq, "👍", true).await,
            Code::NotFound,
            "message_seq",
        );
    }
    assert_invalid(
        delete(&mut alice, "nowhere", 1).await,
        Code::NotFound,
        "message_seq",
    );
    assert_invalid(
        edit(&mut alice, "x", 0, "y").await,
        Code::InvalidArgument,
        "message_seq",
    );
    assert_invalid(
        edit(&mut alice, "Bad Room!", 1, "y").await,
        Code::InvalidArgument,
        "room",
    );
    // What an edit may say: SendMessage's rules for the message's type.
    assert_invalid(
        edit(&mut alice, "x", 1, "  ").await,
        Code::InvalidArgument,
        "content",
    );
    assert_invalid(
        edit(&mut alice, "x", 2, "not a url").await,
        Code::InvalidArgument,
        "content",
    );
    let big = "x".repeat(20_000);
    assert_invalid(
        edit(&mut alice, "x", 1, &big).await,
        Code::InvalidArgument,
        "content",
    );
    // Reactions.
    for bad in ["", "a b", "tab\t", &"x".repeat(65)] {
        assert_invalid(
            react(&mut bob, "x", 1, bad, true).await,
            Code::InvalidArgument,
            "reaction",
        );
    }
    let status = react(&mut bob, "x", 1, &"x".repeat(65), true)
        .await
        .unwrap_err();
    assert!(status.message().contains("64"), "{status:?}");
    for i in 1..20 {
        react(&mut bob, "x", 1, &format!(":r{i}:"), true)
            .await
            .unwrap();
    }
    let full = react(&mut alice, "x", 1, ":one-too-many:", true)
        .await
        .unwrap_err();
    assert_eq!(full.code(), Code::FailedPrecondition, "{full:?}");
    assert!(full.message().contains("20"), "{full:?}");
    // One already there is still fine.
    assert_eq!(
        react(&mut alice, "x", 1, "👍", true)
            .await
            .unwrap()
            .reactions
            .len(),
        20
    );
    // A deleted message takes no edit and no reaction; an admin token may delete.
    let mut admin = admin_chat(&server).await;
    assert!(delete(&mut admin, "x", 1).await.unwrap().deleted);
    let gone = edit(&mut alice, "x", 1, "again").await.unwrap_err();
    assert_eq!(gone.code(), Code::FailedPrecondition, "{gone:?}");
    let gone = react(&mut bob, "x", 1, "👍", true).await.unwrap_err();
    assert_eq!(gone.code(), Code::FailedPrecondition, "{gone:?}");
    // Unread counts count messages only, tombstones excluded.
    let rooms = within(bob.list_rooms(proto::ListRoomsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .rooms;
    let x = rooms.iter().find(|r| r.room == "x").expect("bob's room");
    assert_eq!(x.unread_count, 1, "the image only: {x:?}");
    assert_eq!(x.last_message.as_ref().unwrap().seq, 2);
    server.shutdown().await.unwrap();
}

pub async fn changes_count_against_the_send_rate_and_need_the_room(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start_with(config(
        &db.url,
        &["--user-send-rate", "1", "--user-send-burst", "3"],
    ))
    .await;
    let mut alice = server.client("alice").await;
    let first = send(&mut alice, "rate", "first").await;
    // One send spent; edits and reactions spend the rest of the burst.
    let mut changes = 0;
    let refused = loop {
        let result = if changes % 2 == 0 {
            edit(&mut alice, "rate", first.seq, &format!("edit {changes}")).await
        } else {
            react(&mut alice, "rate", first.seq, "👍", changes % 4 == 1).await
        };
        match result {
            Ok(_) => changes += 1,
            Err(status) => break status,
        }
        assert!(changes < 50, "no change was refused");
    };
    assert!(changes >= 2, "the burst was not allowed: {changes}");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().starts_with("CHAT_USER_SEND_RATE"),
        "{refused:?}"
    );
    server.shutdown().await.unwrap();

    // A private room: a change needs what a send needs there (a grant).
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut admin = crate::helpers::access::admin(&server).await;
    crate::helpers::access::create(&mut admin, "team", proto::RoomVisibility::Private)
        .await
        .unwrap();
    crate::helpers::access::grant(&mut admin, "team", &["alice"])
        .await
        .unwrap();
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let said = send(&mut alice, "team", "members only").await;
    for denied in [
        react(&mut bob, "team", said.seq, "👍", true).await,
        edit(&mut bob, "team", said.seq, "x").await,
        delete(&mut bob, "team", said.seq).await,
    ] {
        let status = denied.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    let status = within(bob.set_typing(proto::SetTypingRequest {
        room: "team".into(),
        typing: true,
    }))
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // ListRooms shows the last message with its reactions, `mine` for the caller.
    react(&mut alice, "team", said.seq, "🎉", true)
        .await
        .unwrap();
    let rooms = within(alice.list_rooms(proto::ListRoomsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .rooms;
    let last = rooms[0].last_message.as_ref().expect("last message");
    assert_eq!(counts(last), [("🎉", 1, true)]);
    server.shutdown().await.unwrap();
}
