//! Live-only events: typing and read markers, and the rule that keeps
//! them out of rooms of over 200 members.

use chatd::proto;
use chatd::proto::join_room_response::Event;
use tonic::{Code, Streaming};

use super::lifecycle::next_durable;
use crate::chat::support::assert_invalid;
use crate::helpers::*;

/// The stream's next typing or read-marker event (presence skipped; a
/// durable event here is a failure: the test sends none meanwhile).
async fn next_ephemeral(stream: &mut Streaming<proto::JoinRoomResponse>) -> Event {
    loop {
        match next_any_event(stream).await {
            Event::MemberJoined(_) | Event::MemberLeft(_) => continue,
            e @ (Event::Typing(_) | Event::ReadMarker(_)) => return e,
            other => panic!("expected typing or a read marker, got {other:?}"),
        }
    }
}

async fn set_typing(client: &mut Client, room: &str, typing: bool) {
    within(client.set_typing(proto::SetTypingRequest {
        room: room.into(),
        typing,
    }))
    .await
    .expect("set_typing");
}

/// The stream's next typing event (presence and read markers skipped).
async fn next_typing(stream: &mut Streaming<proto::JoinRoomResponse>) -> (String, bool) {
    loop {
        match next_ephemeral(stream).await {
            Event::Typing(t) => return (t.member.expect("member").user_id, t.typing),
            Event::ReadMarker(_) => continue,
            other => panic!("expected typing, got {other:?}"),
        }
    }
}

pub async fn typing_reaches_the_others_ends_on_send_and_expires(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let (mut alices, _) = join(&mut alice, "t", None).await;
    let (mut bobs, _) = join(&mut bob, "t", None).await;

    set_typing(&mut alice, "t", true).await;
    assert_eq!(next_typing(&mut bobs).await, ("alice".to_string(), true));
    // A renewal within 2 s sends nothing; a message ends it at once.
    set_typing(&mut alice, "t", true).await;
    send(&mut alice, "t", "done typing").await;
    assert!(matches!(next_durable(&mut bobs).await, Event::Message(m) if m.seq == 1));
    assert_eq!(next_typing(&mut bobs).await, ("alice".to_string(), false));
    // Alice's own stream never saw her flag: its next event is her message.
    assert!(matches!(next_durable(&mut alices).await, Event::Message(m) if m.seq == 1));

    // Unrenewed, a flag ends by itself 6 s after the last call.
    set_typing(&mut bob, "t", true).await;
    let started = tokio::time::Instant::now();
    assert_eq!(next_typing(&mut alices).await, ("bob".to_string(), true));
    assert_eq!(next_typing(&mut alices).await, ("bob".to_string(), false));
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(5_500),
        "ended after {took:?}"
    );
    // Typing needs no stream, and the rules of SendMessage: a bad room is refused.
    let mut carol = server.client("carol").await;
    set_typing(&mut carol, "t", true).await;
    assert_eq!(next_typing(&mut alices).await, ("carol".to_string(), true));
    let status = within(carol.set_typing(proto::SetTypingRequest {
        room: "Bad Room!".into(),
        typing: true,
    }))
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    server.shutdown().await.unwrap();
}

pub async fn read_markers_are_coalesced_and_listed(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let (mut bobs, _) = join(&mut bob, "m", None).await;
    // Alice's own messages move her marker: the first at once, then at
    // most one a second, the newest seq.
    for i in 1..=5 {
        send(&mut alice, "m", &format!("message {i}")).await;
    }
    let mut seen = Vec::new();
    let mut at = Vec::new();
    while seen.last() != Some(&5) {
        match next_any_event(&mut bobs).await {
            Event::ReadMarker(r) => {
                assert_eq!(r.member.as_ref().unwrap().user_id, "alice");
                seen.push(r.seq);
                at.push(tokio::time::Instant::now());
            }
            Event::Message(_) | Event::MemberJoined(_) | Event::MemberLeft(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert!(seen.len() < 5, "coalesced, not one per message: {seen:?}");
    for w in at.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= std::time::Duration::from_millis(900),
            "{seen:?} {gap:?}"
        );
    }
    // MarkRead moves bob's marker: the room hears it, his own stream too.
    within(bob.mark_read(proto::MarkReadRequest {
        room: "m".into(),
        seq: 4,
    }))
    .await
    .unwrap();
    match next_ephemeral(&mut bobs).await {
        Event::ReadMarker(r) => {
            assert_eq!((r.member.unwrap().user_id.as_str(), r.seq), ("bob", 4))
        }
        other => panic!("{other:?}"),
    }
    // Listed highest first, a page at a time.
    let list = |token: String, size: u32| proto::ListReadMarkersRequest {
        room: "m".into(),
        page_size: size,
        page_token: token,
    };
    let page = within(bob.list_read_markers(list(String::new(), 0)))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(String, u64)> = page
        .markers
        .iter()
        .map(|m| (m.member.as_ref().unwrap().user_id.clone(), m.seq))
        .collect();
    assert_eq!(got, [("alice".to_string(), 5), ("bob".to_string(), 4)]);
    assert!(page.next_page_token.is_empty());
    let first = within(bob.list_read_markers(list(String::new(), 1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.markers.len(), 1);
    assert!(!first.next_page_token.is_empty());
    let second = within(bob.list_read_markers(list(first.next_page_token, 1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.markers[0].member.as_ref().unwrap().user_id, "bob");
    assert!(second.next_page_token.is_empty());
    assert_invalid(
        within(bob.list_read_markers(list("not-a-token".into(), 1))).await,
        Code::InvalidArgument,
        "page_token",
    );
    server.shutdown().await.unwrap();
}

/// Over 200 members present, typing and read markers are not sent (SetTyping
/// still answers OK); at 200 they are.
pub async fn typing_and_read_markers_stay_out_of_large_rooms(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut watcher = server.client("watcher").await;
    let (mut watch, _) = join(&mut watcher, "large", None).await;
    // 199 more members: 200 present.
    let mut members = Vec::new();
    for i in 0..199 {
        let mut c = server.client(&format!("member{i:03}")).await;
        let (stream, _) = join(&mut c, "large", None).await;
        members.push((c, stream));
    }
    let mut typist = members[0].0.clone();
    set_typing(&mut typist, "large", true).await;
    // Wait for it past the presence events of the joins.
    assert_eq!(
        next_typing(&mut watch).await,
        ("member000".to_string(), true)
    );
    set_typing(&mut typist, "large", false).await;
    assert_eq!(
        next_typing(&mut watch).await,
        ("member000".to_string(), false)
    );
    // One more: 201 present. Nothing live-only comes before the message.
    let mut last = server.client("member199").await;
    let (_extra, _) = join(&mut last, "large", None).await;
    set_typing(&mut typist, "large", true).await;
    let sent = send(&mut typist, "large", "in a large room").await;
    loop {
        match next_any_event(&mut watch).await {
            Event::MemberJoined(_) | Event::MemberLeft(_) => continue,
            Event::Message(m) => {
                assert_eq!(m.seq, sent.seq);
                break;
            }
            other => panic!("a large room got {other:?}"),
        }
    }
    drop(members);
    server.shutdown().await.unwrap();
}
