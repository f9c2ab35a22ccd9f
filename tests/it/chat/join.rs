//! JoinRoom streams: members and presence, resuming after a cut, and a
//! reader too slow for the room buffer.

use chatd::proto::ContentType;
use chatd::proto::join_room_response::Event;

use crate::helpers::*;

pub async fn two_users_join_talk_and_leave(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;

    let (mut alice_stream, joined) = join(&mut alice, "  Lobby ", None).await;
    assert_eq!(joined.room, "lobby");
    assert_eq!(user_ids(&joined.members), ["alice"]);
    assert_eq!(joined.last_seq, 0);

    let (mut bob_stream, joined) = join(&mut bob, "lobby", None).await;
    // The caller first, then the others by id.
    assert_eq!(user_ids(&joined.members), ["bob", "alice"]);
    assert_eq!((joined.member_count, joined.members_truncated), (2, false));
    match next_event(&mut alice_stream).await {
        Event::MemberJoined(e) => assert_eq!(e.member.unwrap().user_id, "bob"),
        other => panic!("expected member_joined, got {other:?}"),
    }

    let sent = send(&mut bob, "LOBBY", "hi alice").await;
    assert_eq!(sent.seq, 1);
    assert_eq!(sent.room, "lobby");
    assert_eq!(sent.sender.as_ref().unwrap().user_id, "bob");
    assert_eq!(sent.content_type, ContentType::Text as i32);
    assert!(sent.sent_at.is_some());
    assert_eq!(next_message(&mut alice_stream).await, sent);
    assert_eq!(next_message(&mut bob_stream).await, sent);

    let history = newest_page(&mut alice, "lobby").await;
    assert_eq!(history.messages, vec![sent]);
    assert!(!history.has_more);

    let members = list_members(&mut alice, "lobby").await;
    assert_eq!(user_ids(&members), ["alice", "bob"]);

    drop(bob_stream);
    match next_event(&mut alice_stream).await {
        Event::MemberLeft(e) => assert_eq!(e.member.unwrap().user_id, "bob"),
        other => panic!("expected member_left, got {other:?}"),
    }
    let members = list_members(&mut alice, "lobby").await;
    assert_eq!(user_ids(&members), ["alice"]);
    server.shutdown().await.unwrap();
}

pub async fn presence_is_per_user_across_devices(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut bob = server.client("bob").await;
    let mut alice = server.client("alice").await;
    let (mut watcher, _) = join(&mut bob, "p", None).await;

    let (phone, joined) = join(&mut alice, "p", None).await;
    assert_eq!(user_ids(&joined.members), ["alice", "bob"]);
    let (mut laptop, joined) = join(&mut alice, "p", None).await;
    assert_eq!(user_ids(&joined.members), ["alice", "bob"]);
    match next_event(&mut watcher).await {
        Event::MemberJoined(e) => assert_eq!(e.member.unwrap().user_id, "alice"),
        other => panic!("expected member_joined, got {other:?}"),
    }
    let members = list_members(&mut bob, "p").await;
    assert_eq!(user_ids(&members), ["alice", "bob"]);

    // Closing one of alice's two streams is no event; a message marks the
    // point in the stream where one would have come.
    drop(phone);
    let marker = send(&mut bob, "p", "still here?").await;
    assert_eq!(next_message(&mut watcher).await, marker);
    assert_eq!(next_message(&mut laptop).await, marker);

    drop(laptop);
    match next_event(&mut watcher).await {
        Event::MemberLeft(e) => assert_eq!(e.member.unwrap().user_id, "alice"),
        other => panic!("expected member_left, got {other:?}"),
    }
    server.shutdown().await.unwrap();
}

pub async fn resume_after_a_cut_has_no_gap_even_during_replay(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;

    let (mut stream, _) = join(&mut alice, "r", None).await;
    for i in 1..=5 {
        send(&mut bob, "r", &format!("m{i}")).await;
    }
    let mut last = 0;
    for _ in 0..5 {
        last = next_message(&mut stream).await.seq;
    }
    assert_eq!(last, 5);
    drop(stream); // the cut

    for i in 6..=700 {
        send(&mut bob, "r", &format!("m{i}")).await;
    }
    // Resume while a sender keeps going: the replay (several pages) and the
    // live tail must join without a gap or a duplicate.
    let (mut stream, joined) = join(&mut alice, "r", Some(last)).await;
    assert!(joined.last_seq >= 700);
    let mut more = bob.clone();
    let sender = tokio::spawn(async move {
        for i in 701..=800 {
            send(&mut more, "r", &format!("m{i}")).await;
        }
    });
    let mut got = Vec::new();
    while got.len() < 795 {
        match next_event(&mut stream).await {
            Event::Message(m) => got.push(m.seq),
            Event::MemberJoined(_)
            | Event::MemberLeft(_)
            | Event::Typing(_)
            | Event::ReadMarker(_)
            | Event::Joined(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    within(sender).await.unwrap();
    assert_eq!(got, (6..=800).collect::<Vec<_>>());

    // Resume from 0 replays everything.
    let (mut stream, _) = join(&mut alice, "r", Some(0)).await;
    for expected in 1..=800 {
        assert_eq!(next_message(&mut stream).await.seq, expected);
    }
    server.shutdown().await.unwrap();
}

pub async fn a_slow_subscriber_misses_nothing(backend: Backend) {
    let db = TestDb::create(backend).await;
    // A tiny room buffer, so the reader below falls far behind it.
    let server = TestServer::start_with(config(&db.url, &["--room-buffer", "16"])).await;
    // A small HTTP/2 window, so the server cannot push the backlog into
    // the connection's buffers either.
    let mut slow = server.client_with_window("slow", 65_535).await;
    let mut fast = server.client("fast").await;
    let mut bob = server.client("bob").await;
    let (mut slow_stream, _) = join(&mut slow, "s", None).await;
    let (mut fast_stream, _) = join(&mut fast, "s", None).await;
    // Presence events also pass through the ring while slow is not reading.
    let (bob_stream, _) = join(&mut bob, "s", None).await;
    drop(bob_stream);

    let big = "x".repeat(4000);
    for i in 1..=300 {
        send(&mut fast, "s", &format!("m{i} {big}")).await;
        if i % 50 == 0 {
            // Keep the fast reader current; the slow one reads nothing yet.
            let _ = next_event(&mut fast_stream).await;
        }
    }
    let mut got = Vec::new();
    let mut resynced = None;
    // The fresh `joined` follows the caught-up messages.
    while got.len() < 300 || resynced.is_none() {
        match next_event(&mut slow_stream).await {
            Event::Message(m) => got.push(m.seq),
            Event::Joined(j) => resynced = Some(j),
            Event::MemberJoined(_)
            | Event::MemberLeft(_)
            | Event::Typing(_)
            | Event::ReadMarker(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(got, (1..=300).collect::<Vec<_>>());
    // Presence events were dropped from the ring, so the stream re-sent the
    // member list: bob has left again by then.
    let resynced = resynced.expect("a fresh joined after falling behind");
    assert_eq!(user_ids(&resynced.members), ["slow", "fast"]);

    // And it goes on live.
    let next = send(&mut fast, "s", "live").await;
    assert_eq!(next_message(&mut slow_stream).await, next);
    server.shutdown().await.unwrap();
}
