//! Bans and mutes on one node, on both backends: AdminService's rules,
//! streams ended by a ban, every call refused, mutes, expiry without a
//! call, replacing, ListSanctions. On a cluster: `sanctions::cluster`.

mod cluster;

on_both_backends! {
    sanction_rules_name_their_fields: crate::sanctions::sanction_rules_name_their_fields,
    a_ban_ends_the_stream_and_refuses_every_call_in_the_room:
        crate::sanctions::a_ban_ends_the_stream_and_refuses_every_call_in_the_room,
    a_global_ban_hits_every_room_and_unban_lets_them_back_at_once:
        crate::sanctions::a_global_ban_hits_every_room_and_unban_lets_them_back_at_once,
    a_mute_refuses_only_the_calls_that_speak:
        crate::sanctions::a_mute_refuses_only_the_calls_that_speak,
    sanctions_expire_without_a_call: crate::sanctions::sanctions_expire_without_a_call,
    sanctioning_again_replaces: crate::sanctions::sanctioning_again_replaces,
    list_sanctions_filters_orders_and_pages:
        crate::sanctions::list_sanctions_filters_orders_and_pages,
    a_ban_before_joining_stops_the_join_and_spares_admin_tokens:
        crate::sanctions::a_ban_before_joining_stops_the_join_and_spares_admin_tokens,
}

use std::time::Duration;

use crate::helpers::access::*;
use crate::helpers::sanctions::*;
use crate::helpers::*;
use chatd::proto::admin_service_client::AdminServiceClient;
use chatd::proto::join_room_response::Event;
use chatd::proto::{self, RoomVisibility, SanctionKind};
use tonic::Code;

/// Every rule of the five calls names its field; a non-admin token is
/// PERMISSION_DENIED on each; lifting what does not exist is fine.
async fn sanction_rules_name_their_fields(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut admin = admin(&server).await;
    let with = |secs: i64, nanos: i32| proto::SanctionRequest {
        duration: Some(prost_types::Duration {
            seconds: secs,
            nanos,
        }),
        ..sanction("lobby", "bob", 0, "")
    };
    for bad in [
        with(366 * 86_400 + 1, 0),
        with(-1, 0),
        with(0, -5),
        with(1, 2_000_000_000),
    ] {
        assert_code(
            ban(&mut admin, bad.clone()).await,
            Code::InvalidArgument,
            "duration",
        );
        assert_code(
            mute(&mut admin, bad).await,
            Code::InvalidArgument,
            "duration",
        );
    }
    ban(&mut admin, with(366 * 86_400, 0)).await.unwrap();
    let long = sanction("lobby", "bob", 60, &"x".repeat(257));
    assert_code(
        ban(&mut admin, long.clone()).await,
        Code::InvalidArgument,
        "reason",
    );
    assert_code(mute(&mut admin, long).await, Code::InvalidArgument, "256");
    // 256 characters of two bytes each are fine.
    let wide = mute(&mut admin, sanction("lobby", "bob", 60, &"é".repeat(256)))
        .await
        .unwrap();
    assert_eq!(wide.reason.chars().count(), 256);
    for room in ["no spaces", " ", "x".repeat(65).as_str()] {
        let bad = sanction(room, "bob", 0, "");
        assert_code(
            ban(&mut admin, bad.clone()).await,
            Code::InvalidArgument,
            "room",
        );
        assert_code(
            within(admin.unmute_user(proto::LiftSanctionRequest {
                room: room.into(),
                user_id: "bob".into(),
            }))
            .await,
            Code::InvalidArgument,
            "room",
        );
        assert_code(
            list_sanctions(&mut admin, room, "", 0, "").await,
            Code::InvalidArgument,
            "room",
        );
    }
    for user in ["", " ", "a\u{202e}b", "u".repeat(129).as_str()] {
        let bad = sanction("lobby", user, 0, "");
        assert_code(
            mute(&mut admin, bad).await,
            Code::InvalidArgument,
            "user_id",
        );
        assert_code(
            unban(&mut admin, "", user).await,
            Code::InvalidArgument,
            "user_id",
        );
    }
    assert_code(
        list_sanctions(&mut admin, "", "a\u{0}", 0, "").await,
        Code::InvalidArgument,
        "user_id",
    );
    for token in ["nope", "00", "7331"] {
        assert_code(
            list_sanctions(&mut admin, "", "", 0, token).await,
            Code::InvalidArgument,
            "page_token",
        );
    }
    // Lifting what was never imposed is fine.
    unban(&mut admin, "nowhere", "nobody").await.unwrap();
    unmute(&mut admin, "", "nobody").await.unwrap();

    let mut user = AdminServiceClient::with_interceptor(
        server.channel().await,
        Bearer::new(&server.token("mallory")),
    );
    let request = sanction("lobby", "bob", 0, "");
    assert_code(
        within(user.ban_user(request.clone())).await,
        Code::PermissionDenied,
        "admin",
    );
    assert_code(
        within(user.mute_user(request)).await,
        Code::PermissionDenied,
        "admin",
    );
    let lift = proto::LiftSanctionRequest {
        room: "lobby".into(),
        user_id: "bob".into(),
    };
    assert_code(
        within(user.unban_user(lift.clone())).await,
        Code::PermissionDenied,
        "admin",
    );
    assert_code(
        within(user.unmute_user(lift)).await,
        Code::PermissionDenied,
        "admin",
    );
    assert_code(
        within(user.list_sanctions(proto::ListSanctionsRequest::default())).await,
        Code::PermissionDenied,
        "admin",
    );
}

/// Bob's message in `room` (sent before any sanction), and his stream.
async fn bob_in(
    bob: &mut Client,
    room: &str,
) -> (tonic::Streaming<proto::JoinRoomResponse>, proto::Message) {
    let (stream, _) = join(bob, room, None).await;
    let sent = send(bob, room, "hello").await;
    (stream, sent)
}

/// Reads `stream` up to the message `seq`; a member_left on the way is
/// counted and returned.
async fn lefts_until(stream: &mut tonic::Streaming<proto::JoinRoomResponse>, seq: u64) -> usize {
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

/// A ban from a public and from a private room ends bob's stream there with
/// PERMISSION_DENIED saying banned, until when and why; the room sees one
/// member_left; every ChatService call of his there is refused the same;
/// other rooms are untouched.
async fn a_ban_ends_the_stream_and_refuses_every_call_in_the_room(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut admin = admin(&server).await;
    create(&mut admin, "vault", RoomVisibility::Private)
        .await
        .unwrap();
    grant(&mut admin, "vault", &["alice", "bob"]).await.unwrap();
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    for room in ["lobby", "vault"] {
        let (mut alice_stream, _) = join(&mut alice, room, None).await;
        let (mut bob_stream, mine) = bob_in(&mut bob, room).await;
        let (mut bob_elsewhere, _) = join(&mut bob, "elsewhere", None).await;

        let imposed = ban(
            &mut admin,
            sanction(&format!(" {room} "), "bob", 3600, "spam"),
        )
        .await
        .unwrap();
        assert_eq!(
            (
                imposed.room.as_str(),
                imposed.user_id.as_str(),
                imposed.kind
            ),
            (room, "bob", SanctionKind::Ban as i32)
        );
        let (until, created) = (imposed.until.unwrap(), imposed.created_at.unwrap());
        assert!((3599..=3601).contains(&(until.seconds - created.seconds)));
        assert_eq!(imposed.reason, "spam");
        let banned = format!("you are banned from room {room} until 20");
        let said = [banned.as_str(), "Z: spam"];
        assert_ends_with(&mut bob_stream, Code::PermissionDenied, said[0]).await;
        let calls = every_room_call(&mut bob, room, mine.seq).await;
        assert_all_refused(&calls, &said);

        // Exactly one member_left reached alice: next comes her message.
        let after = send(&mut alice, room, "after").await;
        assert_eq!(lefts_until(&mut alice_stream, after.seq).await, 1);
        // Elsewhere nothing changed.
        let there = send(&mut bob, "elsewhere", "still here").await;
        assert_eq!(next_message(&mut bob_elsewhere).await.seq, there.seq);
        unban(&mut admin, room, "bob").await.unwrap();
    }
}

/// A ban on every room (room "") ends bob's streams in every room with
/// "until lifted", refuses him anywhere, and an unban lets him back at
/// once.
async fn a_global_ban_hits_every_room_and_unban_lets_them_back_at_once(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut admin = admin(&server).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let (mut alice_stream, _) = join(&mut alice, "one", None).await;
    let (mut one, mine) = bob_in(&mut bob, "one").await;
    let (mut two, _) = join(&mut bob, "two", None).await;

    let imposed = ban(&mut admin, sanction("", "bob", 0, "")).await.unwrap();
    assert_eq!((imposed.room.as_str(), imposed.until), ("", None));
    let said = "you are banned from every room until lifted";
    assert_ends_with(&mut one, Code::PermissionDenied, said).await;
    assert_ends_with(&mut two, Code::PermissionDenied, said).await;
    assert_all_refused(&every_room_call(&mut bob, "one", mine.seq).await, &[said]);
    assert_code(
        join_result(&mut bob, "three").await,
        Code::PermissionDenied,
        said,
    );
    let after = send(&mut alice, "one", "after").await;
    assert_eq!(lefts_until(&mut alice_stream, after.seq).await, 1);

    // A room ban lifted does not lift the ban on every room.
    unban(&mut admin, "one", "bob").await.unwrap();
    assert_code(
        join_result(&mut bob, "one").await,
        Code::PermissionDenied,
        said,
    );
    unban(&mut admin, "", "bob").await.unwrap();
    let (_back, _) = join(&mut bob, "one", None).await;
    send(&mut bob, "two", "back").await;
    assert!(all_sanctions(&mut admin, "", "bob", 10).await.is_empty());
}

/// A mute refuses SendMessage, EditMessage, React and SetTyping saying
/// muted and until when, and leaves joining, reading, MarkRead and
/// deleting his own messages; an unmute lets him speak at once.
async fn a_mute_refuses_only_the_calls_that_speak(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut admin = admin(&server).await;
    let mut bob = server.client("bob").await;
    let (mut stream, mine) = bob_in(&mut bob, "lobby").await;
    assert_eq!(next_message(&mut stream).await.seq, mine.seq);
    let extra = send(&mut bob, "lobby", "to delete").await;
    assert_eq!(next_message(&mut stream).await.seq, extra.seq);

    let imposed = mute(&mut admin, sanction("lobby", "bob", 0, "calm down"))
        .await
        .unwrap();
    assert_eq!(imposed.kind, SanctionKind::Mute as i32);
    let said = ["you are muted in room lobby until lifted", "calm down"];
    assert_all_refused(&speaking_calls(&mut bob, "lobby", mine.seq).await, &said);
    // The stream stays open; reading, joining, marking and deleting work.
    join_result(&mut bob, "lobby").await.unwrap();
    assert_eq!(newest_page(&mut bob, "lobby").await.messages.len(), 2);
    list_members(&mut bob, "lobby").await;
    mark_read(&mut bob, "lobby", mine.seq).await.unwrap();
    delete(&mut bob, "lobby", extra.seq).await.unwrap();
    match next_event(&mut stream).await {
        Event::MessageDeleted(d) => assert_eq!(d.message_seq, extra.seq),
        other => panic!("expected the deletion, got {other:?}"),
    }
    // Other rooms are untouched; an unmute works at once.
    send(&mut bob, "elsewhere", "fine here").await;
    unmute(&mut admin, "lobby", "bob").await.unwrap();
    for (call, result) in speaking_calls(&mut bob, "lobby", mine.seq).await {
        assert!(result.is_ok(), "{call} after the unmute: {result:?}");
    }
}

/// A 2 s mute and a 3 s ban end by themselves (no call): the user speaks
/// and joins again within a bounded poll, and ListSanctions no longer
/// lists them.
async fn sanctions_expire_without_a_call(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut admin = admin(&server).await;
    let mut bob = server.client("bob").await;
    let (mut stream, _) = bob_in(&mut bob, "lobby").await;
    mute(&mut admin, sanction("lobby", "bob", 2, ""))
        .await
        .unwrap();
    ban(&mut admin, sanction("", "bob", 3, "")).await.unwrap();
    assert_ends_with(&mut stream, Code::PermissionDenied, "until").await;
    assert_code(
        join_result(&mut bob, "lobby").await,
        Code::PermissionDenied,
        "banned",
    );
    assert_eq!(all_sanctions(&mut admin, "", "", 10).await.len(), 2);
    let limit = Duration::from_secs(10);
    eventually(limit, || {
        let mut bob = bob.clone();
        async move { join_result(&mut bob, "lobby").await }
    })
    .await;
    // The mute ended before the ban.
    send(&mut bob, "lobby", "free again").await;
    assert!(all_sanctions(&mut admin, "", "", 10).await.is_empty());
}

/// Banning again replaces the ban: its until, reason and created_at.
async fn sanctioning_again_replaces(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut admin = admin(&server).await;
    let first = ban(&mut admin, sanction("lobby", "bob", 0, "first"))
        .await
        .unwrap();
    let second = ban(&mut admin, sanction("lobby", "bob", 2, "second"))
        .await
        .unwrap();
    let at = |s: &proto::Sanction| s.created_at.map(|t| (t.seconds, t.nanos));
    assert!(second.until.is_some() && at(&second) >= at(&first));
    assert_eq!((first.until, first.reason.as_str()), (None, "first"));
    assert_eq!(
        all_sanctions(&mut admin, "lobby", "bob", 10).await,
        [second]
    );
    let mut bob = server.client("bob").await;
    // The forever ban is gone: the 2 s one ends by itself.
    eventually(Duration::from_secs(10), || {
        let mut bob = bob.clone();
        async move { join_result(&mut bob, "lobby").await }
    })
    .await;
    send(&mut bob, "lobby", "back").await;
}

/// ListSanctions: newest first, filtered by room (a room's own only;
/// "" any, those on every room included) and by user, paged with tokens
/// that end on the last page; page_size 0 is 50.
async fn list_sanctions_filters_orders_and_pages(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut admin = admin(&server).await;
    let mut imposed = Vec::new();
    for (i, (room, user)) in [
        ("a", "u1"),
        ("b", "u1"),
        ("", "u2"),
        ("a", "u2"),
        ("c", "u3"),
    ]
    .into_iter()
    .enumerate()
    {
        let request = sanction(room, user, 3600, &format!("n{i}"));
        imposed.push(ban(&mut admin, request.clone()).await.unwrap());
        imposed.push(mute(&mut admin, request).await.unwrap());
    }
    // An expired one is not listed.
    ban(&mut admin, sanction("d", "u4", 1, "")).await.unwrap();
    let newest_first = |mut list: Vec<proto::Sanction>| {
        list.reverse();
        list
    };
    let everything = all_sanctions(&mut admin, "", "", 3).await;
    let key = |s: &proto::Sanction| (s.room.clone(), s.user_id.clone(), s.kind);
    let mut expected = newest_first(imposed.clone());
    // Within one created_at, room, user and kind ascending.
    expected.sort_by(|a, b| {
        let at = |s: &proto::Sanction| s.created_at.map(|t| (t.seconds, t.nanos));
        at(b).cmp(&at(a)).then(key(a).cmp(&key(b)))
    });
    let listed: Vec<_> = everything
        .iter()
        .filter(|s| s.user_id != "u4")
        .cloned()
        .collect();
    assert_eq!(listed, expected);
    // Filters.
    let in_a = all_sanctions(&mut admin, "a", "", 2).await;
    assert_eq!(in_a.len(), 4);
    assert!(in_a.iter().all(|s| s.room == "a"));
    let of_u2 = all_sanctions(&mut admin, "", "u2", 50).await;
    assert_eq!(of_u2.len(), 4);
    assert!(of_u2.iter().any(|s| s.room.is_empty()));
    assert_eq!(all_sanctions(&mut admin, "A", "u2", 50).await.len(), 2);
    assert!(all_sanctions(&mut admin, "b", "u2", 50).await.is_empty());
    let first = list_sanctions(&mut admin, "", "", 0, "").await.unwrap();
    assert!(first.next_page_token.is_empty());
    // The 1 s ban ends by itself and leaves the listing.
    eventually(Duration::from_secs(10), || {
        let mut admin = admin.clone();
        async move {
            let page = list_sanctions(&mut admin, "d", "", 0, "").await?;
            if page.sanctions.is_empty() {
                Ok(())
            } else {
                Err(tonic::Status::unavailable("still listed"))
            }
        }
    })
    .await;
    assert_eq!(all_sanctions(&mut admin, "", "", 200).await.len(), 10);
}

/// A ban imposed before the user ever joined stops their join (public and
/// private rooms); an admin token is never refused, even with a banned
/// user id.
async fn a_ban_before_joining_stops_the_join_and_spares_admin_tokens(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut admin = admin(&server).await;
    create(&mut admin, "vault", RoomVisibility::Private)
        .await
        .unwrap();
    grant(&mut admin, "vault", &["carol"]).await.unwrap();
    ban(&mut admin, sanction("lobby", "carol", 0, ""))
        .await
        .unwrap();
    ban(&mut admin, sanction("vault", "carol", 0, ""))
        .await
        .unwrap();
    let mut carol = server.client("carol").await;
    for room in ["lobby", "vault"] {
        assert_code(
            join_result(&mut carol, room).await,
            Code::PermissionDenied,
            "banned",
        );
    }
    join_result(&mut carol, "elsewhere").await.unwrap();

    // The admin token's user ("backend") banned and muted everywhere.
    ban(&mut admin, sanction("", "backend", 0, ""))
        .await
        .unwrap();
    mute(&mut admin, sanction("", "backend", 0, ""))
        .await
        .unwrap();
    let mut backend_chat = admin_chat(&server).await;
    let (_s, _) = join(&mut backend_chat, "lobby", None).await;
    let sent = send(&mut backend_chat, "vault", "from the backend").await;
    for (call, result) in speaking_calls(&mut backend_chat, "vault", sent.seq).await {
        assert!(result.is_ok(), "{call} with an admin token: {result:?}");
    }
}
