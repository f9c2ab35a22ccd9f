//! chatd end to end: a real server on loopback, a real PostgreSQL database
//! per test, tonic clients.

#[macro_use]
mod helpers;

on_both_backends! {
    two_users_join_talk_and_leave: crate::two_users_join_talk_and_leave,
    every_validation_rule_names_its_field: crate::every_validation_rule_names_its_field,
    tokens_are_required_and_checked: crate::tokens_are_required_and_checked,
    idempotent_retry_returns_the_original: crate::idempotent_retry_returns_the_original,
    concurrent_senders_every_subscriber_sees_one_to_n_in_order:
        crate::concurrent_senders_every_subscriber_sees_one_to_n_in_order,
    resume_after_a_cut_has_no_gap_even_during_replay: crate::resume_after_a_cut_has_no_gap_even_during_replay,
    history_pages_both_ways: crate::history_pages_both_ways,
    presence_is_per_user_across_devices: crate::presence_is_per_user_across_devices,
    a_slow_subscriber_misses_nothing: crate::a_slow_subscriber_misses_nothing,
    restart_keeps_history_and_continues_seq: crate::restart_keeps_history_and_continues_seq,
    graceful_shutdown_ends_open_streams: crate::graceful_shutdown_ends_open_streams,
    reflection_lists_services_on_v1_and_v1alpha: crate::reflection_lists_services_on_v1_and_v1alpha,
    grpc_web_cors_preflight: crate::grpc_web::cors_preflight_allows_grpc_web_and_authorization,
    grpc_web_cors_origins: crate::grpc_web::cors_origins_can_be_restricted,
    grpc_web_unary_and_streaming_over_http1: crate::grpc_web::unary_and_streaming_over_http1,
    token_command_and_server_share_a_generated_secret:
        crate::binary::token_command_and_server_share_a_generated_secret,
    sigterm_ends_streams_and_exits_zero: crate::binary::sigterm_ends_streams_and_exits_zero,
    kill_9_keeps_every_acknowledged_message: crate::binary::kill_9_keeps_every_acknowledged_message,
}

use std::collections::HashSet;
use std::time::Duration;

use chatd::proto::join_room_response::Event;
use chatd::proto::{self, ContentType};
use helpers::*;
use tonic::Code;

async fn two_users_join_talk_and_leave(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;

    let (mut alice_stream, joined) = join(&mut alice, "  Lobby ", None).await;
    assert_eq!(joined.room, "lobby");
    assert_eq!(user_ids(&joined.members), ["alice"]);
    assert_eq!(joined.last_seq, 0);

    let (mut bob_stream, joined) = join(&mut bob, "lobby", None).await;
    assert_eq!(user_ids(&joined.members), ["alice", "bob"]);
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

fn assert_invalid(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, field: &str) {
    match result {
        Ok(v) => panic!("expected {code:?} naming {field}, got {v:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert!(
                status.message().contains(field),
                "{field} not named in {status:?}"
            );
        }
    }
}

async fn every_validation_rule_names_its_field(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut c = server.client("alice").await;
    let msg = |room: &str, content_type: ContentType, content: &str, id: &str| {
        proto::SendMessageRequest {
            room: room.into(),
            content_type: content_type as i32,
            content: content.into(),
            client_message_id: id.into(),
        }
    };
    use ContentType::*;
    let bad_sends = [
        (msg("", Text, "x", ""), "room"),
        (msg("   ", Text, "x", ""), "room"),
        (msg("-lobby", Text, "x", ""), "room"),
        (msg("a b", Text, "x", ""), "room"),
        (msg(&"a".repeat(65), Text, "x", ""), "room"),
        (msg("lobby", Text, "", ""), "content"),
        (msg("lobby", Unspecified, " \n ", ""), "content"),
        (msg("lobby", Text, &"x".repeat(4097), ""), "content"),
        (msg("lobby", Text, "nul\0byte", ""), "content"),
        (msg("lobby", Image, "not a url", ""), "content"),
        (msg("lobby", File, "ftp://example.com/f", ""), "content"),
        (
            msg(
                "lobby",
                Image,
                &format!("https://e.com/{}", "a".repeat(2040)),
                "",
            ),
            "content",
        ),
        (
            msg("lobby", Text, "x", &"k".repeat(65)),
            "client_message_id",
        ),
    ];
    for (request, field) in bad_sends {
        assert_invalid(
            send_request(&mut c, request).await,
            Code::InvalidArgument,
            field,
        );
    }
    let mut unknown = msg("lobby", Text, "x", "");
    unknown.content_type = 42;
    assert_invalid(
        send_request(&mut c, unknown).await,
        Code::InvalidArgument,
        "content_type",
    );

    // The limits themselves pass.
    assert!(
        send_request(&mut c, msg("lobby", Text, &"x".repeat(4096), ""))
            .await
            .is_ok()
    );
    assert!(
        send_request(&mut c, msg(&"a".repeat(64), Text, "x", &"k".repeat(64)))
            .await
            .is_ok()
    );
    let url = format!("https://e.com/{}", "a".repeat(2048 - 14));
    assert!(
        send_request(&mut c, msg("lobby", Image, &url, ""))
            .await
            .is_ok()
    );

    let history = |before_seq, after_seq, room: &str| proto::ListHistoryRequest {
        room: room.into(),
        page_size: 10,
        before_seq,
        after_seq,
    };
    for (request, field) in [
        (history(Some(5), Some(1), "lobby"), "before_seq"),
        (history(Some(0), None, "lobby"), "before_seq"),
        (history(Some(u64::MAX), None, "lobby"), "before_seq"),
        (history(None, Some(u64::MAX), "lobby"), "after_seq"),
        (history(None, None, "Bad Room"), "room"),
    ] {
        assert_invalid(
            within(c.list_history(request)).await,
            Code::InvalidArgument,
            field,
        );
    }
    assert_invalid(
        within(c.list_members(proto::ListMembersRequest { room: "!".into() })).await,
        Code::InvalidArgument,
        "room",
    );
    assert_invalid(
        within(c.join_room(proto::JoinRoomRequest {
            room: "".into(),
            resume_after_seq: None,
        }))
        .await,
        Code::InvalidArgument,
        "room",
    );
    // Three messages are stored in "lobby"; resuming after 99 is out of range.
    assert_invalid(
        within(c.join_room(proto::JoinRoomRequest {
            room: "lobby".into(),
            resume_after_seq: Some(99),
        }))
        .await,
        Code::OutOfRange,
        "resume_after_seq",
    );
    assert_invalid(
        within(c.join_room(proto::JoinRoomRequest {
            room: "lobby".into(),
            resume_after_seq: Some(u64::MAX),
        }))
        .await,
        Code::InvalidArgument,
        "resume_after_seq",
    );

    // A request larger than the server's limit is refused, not buffered.
    let huge = msg("lobby", Text, &"x".repeat(200_000), "");
    let status = send_request(&mut c, huge).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Nothing invalid was stored, and the server still serves.
    let page = within(c.list_history(history(None, None, "lobby")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seqs(&page.messages), [1, 2]);
    server.shutdown().await.unwrap();
}

async fn tokens_are_required_and_checked(backend: Backend) {
    use chatd::auth::Keys;
    use chatd::proto::chat_service_client::ChatServiceClient;

    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let list = proto::ListMembersRequest {
        room: "lobby".into(),
    };

    // No token at all.
    let mut anonymous = ChatServiceClient::new(server.channel().await);
    assert_invalid(
        within(anonymous.list_members(list.clone())).await,
        Code::Unauthenticated,
        "authorization",
    );

    let forged = Keys::new(b"some-other-secret-0123456789")
        .mint("alice", None, Some(Duration::from_secs(3600)))
        .unwrap();
    let expired = {
        // exp an hour ago, signed with the right secret.
        use jsonwebtoken::{EncodingKey, Header, encode};
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json_like(&[("sub", "\"alice\""), ("exp", &(now - 3600).to_string())]);
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let no_sub = {
        use jsonwebtoken::{EncodingKey, Header, encode};
        let claims = serde_json_like(&[("name", "\"Alice\"")]);
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    for (header, why) in [
        ("Bearer not.a.jwt".to_string(), "malformed"),
        ("Basic dXNlcjpwYXNz".to_string(), "wrong scheme"),
        (format!("Bearer {forged}"), "forged"),
        (format!("Bearer {expired}"), "expired"),
        (format!("Bearer {no_sub}"), "no sub"),
        ("Bearer ".to_string(), "empty"),
    ] {
        let mut request = tonic::Request::new(list.clone());
        request
            .metadata_mut()
            .insert("authorization", header.parse().unwrap());
        let status = within(anonymous.list_members(request)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{why}: {status:?}");
    }

    // A good token works, and identity comes from it, not from the body.
    let token = server
        .keys
        .mint("carol", Some("Carol C."), Some(Duration::from_secs(60)))
        .unwrap();
    let mut carol =
        ChatServiceClient::with_interceptor(server.channel().await, Bearer::new(&token));
    let sent = send(&mut carol, "lobby", "hello").await;
    let sender = sent.sender.unwrap();
    assert_eq!(
        (sender.user_id.as_str(), sender.display_name.as_str()),
        ("carol", "Carol C.")
    );

    // Health needs no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    for service in ["", "chat.v1.ChatService"] {
        let status = within(health.check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
    server.shutdown().await.unwrap();
}

/// A JSON object from already-encoded values (the tests avoid a serde_json
/// dependency for two tokens).
fn serde_json_like(fields: &[(&str, &str)]) -> std::collections::BTreeMap<String, RawJson> {
    fields
        .iter()
        .map(|(k, v)| (k.to_string(), RawJson(v.to_string())))
        .collect()
}

struct RawJson(String);

impl serde::Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Some(text) = self.0.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            s.serialize_str(text)
        } else {
            s.serialize_u64(self.0.parse().map_err(serde::ser::Error::custom)?)
        }
    }
}

async fn idempotent_retry_returns_the_original(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let (mut watcher, _) = join(&mut bob, "lobby", None).await;

    let request = proto::SendMessageRequest {
        room: "lobby".into(),
        content: "once".into(),
        client_message_id: "msg-1".into(),
        ..Default::default()
    };
    let first = send_request(&mut alice, request.clone()).await.unwrap();
    assert_eq!(first.client_message_id, "msg-1");
    let retry = send_request(&mut alice, request.clone()).await.unwrap();
    assert_eq!(retry, first, "a retry returns the original message");

    // Many retries at once still store one message.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut c = alice.clone();
        let r = request.clone();
        tasks.push(tokio::spawn(async move { send_request(&mut c, r).await }));
    }
    for task in tasks {
        assert_eq!(within(task).await.unwrap().unwrap().seq, first.seq);
    }

    // The same key from another sender is another message.
    let bobs = send_request(&mut bob, request.clone()).await.unwrap();
    assert_eq!(bobs.seq, 2);
    // The same key in another room too.
    let other_room = send_request(
        &mut alice,
        proto::SendMessageRequest {
            room: "elsewhere".into(),
            ..request.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(other_room.seq, 1);

    // Retried all at once (so batches hold several keys), each retry finds
    // its own original: the lookup matches room, sender and key exactly.
    let mut tasks = Vec::new();
    for _ in 0..5 {
        for (client, room, original) in [
            (&alice, "lobby", &first),
            (&bob, "lobby", &bobs),
            (&alice, "elsewhere", &other_room),
        ] {
            let mut c = client.clone();
            let r = proto::SendMessageRequest {
                room: room.into(),
                ..request.clone()
            };
            let original = original.clone();
            tasks.push(tokio::spawn(async move {
                (send_request(&mut c, r).await, original)
            }));
        }
    }
    for task in tasks {
        let (got, original) = within(task).await.unwrap();
        assert_eq!(got.unwrap(), original);
    }

    // Delivered once each.
    assert_eq!(next_message(&mut watcher).await, first);
    assert_eq!(next_message(&mut watcher).await, bobs);
    let marker = send(&mut alice, "lobby", "after").await;
    assert_eq!(next_message(&mut watcher).await, marker);

    // Stored once, and the key holds after a restart too.
    server.shutdown().await.unwrap();
    let server = TestServer::start(&db).await;
    let mut alice = server.client("alice").await;
    assert_eq!(send_request(&mut alice, request).await.unwrap(), first);
    let page = newest_page(&mut alice, "lobby").await;
    assert_eq!(seqs(&page.messages), [1, 2, 3]);
    server.shutdown().await.unwrap();
}

async fn concurrent_senders_every_subscriber_sees_one_to_n_in_order(backend: Backend) {
    const SENDERS: usize = 8;
    const EACH: usize = 50;
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut streams = Vec::new();
    for i in 0..3 {
        let mut c = server.client(&format!("watcher{i}")).await;
        streams.push(join(&mut c, "busy", None).await.0);
    }
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let mut c = server.client(&format!("sender{s}")).await;
        senders.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..EACH {
                acked.push(send(&mut c, "busy", &format!("{s}:{i}")).await.seq);
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for task in senders {
        let seqs = within(task).await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one sender's seqs rise"
        );
        acked.extend(seqs);
    }
    acked.sort_unstable();
    let total = (SENDERS * EACH) as u64;
    assert_eq!(acked, (1..=total).collect::<Vec<_>>());

    for stream in &mut streams {
        let mut got = Vec::new();
        while got.len() < total as usize {
            match next_event(stream).await {
                Event::Message(m) => got.push(m.seq),
                Event::MemberJoined(_) | Event::MemberLeft(_) => {}
                Event::Joined(j) => panic!("unexpected resync {j:?}"),
            }
        }
        assert_eq!(got, (1..=total).collect::<Vec<_>>());
    }
    server.shutdown().await.unwrap();
}

async fn resume_after_a_cut_has_no_gap_even_during_replay(backend: Backend) {
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
            Event::MemberJoined(_) | Event::MemberLeft(_) | Event::Joined(_) => {}
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

async fn history_pages_both_ways(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut c = server.client("alice").await;
    for i in 1..=120 {
        send(&mut c, "h", &format!("m{i}")).await;
    }
    let page = |page_size, before_seq, after_seq| {
        let mut c = c.clone();
        async move {
            within(c.list_history(proto::ListHistoryRequest {
                room: "h".into(),
                page_size,
                before_seq,
                after_seq,
            }))
            .await
            .unwrap()
            .into_inner()
        }
    };
    let newest = page(0, None, None).await;
    assert_eq!(seqs(&newest.messages), (71..=120).collect::<Vec<_>>());
    assert!(newest.has_more);
    let older = page(0, Some(71), None).await;
    assert_eq!(seqs(&older.messages), (21..=70).collect::<Vec<_>>());
    assert!(older.has_more);
    let oldest = page(0, Some(21), None).await;
    assert_eq!(seqs(&oldest.messages), (1..=20).collect::<Vec<_>>());
    assert!(!oldest.has_more);
    let first = page(10, None, Some(0)).await;
    assert_eq!(seqs(&first.messages), (1..=10).collect::<Vec<_>>());
    assert!(first.has_more);
    let tail = page(50, None, Some(100)).await;
    assert_eq!(seqs(&tail.messages), (101..=120).collect::<Vec<_>>());
    assert!(!tail.has_more);
    let exact = page(20, None, Some(100)).await;
    assert_eq!(seqs(&exact.messages), (101..=120).collect::<Vec<_>>());
    assert!(!exact.has_more);
    let capped = page(10_000, None, Some(0)).await;
    assert_eq!(capped.messages.len(), 120);
    assert_eq!(page(5, None, Some(120)).await.messages.len(), 0);
    assert_eq!(page(5, Some(1), None).await.messages.len(), 0);
    let first_message = &first.messages[0];
    assert_eq!(first_message.content, "m1");
    assert_eq!(first_message.sender.as_ref().unwrap().user_id, "alice");

    let mut c2 = c.clone();
    let empty = newest_page(&mut c2, "never-used").await;
    assert!(empty.messages.is_empty() && !empty.has_more);
    server.shutdown().await.unwrap();
}

async fn presence_is_per_user_across_devices(backend: Backend) {
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

async fn a_slow_subscriber_misses_nothing(backend: Backend) {
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
            Event::MemberJoined(_) | Event::MemberLeft(_) => {}
        }
    }
    assert_eq!(got, (1..=300).collect::<Vec<_>>());
    // Presence events were dropped from the ring, so the stream re-sent the
    // member list: bob has left again by then.
    let resynced = resynced.expect("a fresh joined after falling behind");
    assert_eq!(user_ids(&resynced.members), ["fast", "slow"]);

    // And it goes on live.
    let next = send(&mut fast, "s", "live").await;
    assert_eq!(next_message(&mut slow_stream).await, next);
    server.shutdown().await.unwrap();
}

async fn restart_keeps_history_and_continues_seq(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut c = server.client("alice").await;
    for i in 1..=3 {
        send(&mut c, "keep", &format!("m{i}")).await;
    }
    server.shutdown().await.unwrap();

    let server = TestServer::start(&db).await;
    let mut c = server.client("alice").await;
    let (mut stream, joined) = join(&mut c, "keep", None).await;
    assert_eq!(joined.last_seq, 3);
    assert_eq!(send(&mut c, "keep", "m4").await.seq, 4);
    assert_eq!(next_message(&mut stream).await.seq, 4);
    let page = newest_page(&mut c, "keep").await;
    assert_eq!(seqs(&page.messages), [1, 2, 3, 4]);
    assert_eq!(page.messages[0].content, "m1");
    server.shutdown().await.unwrap();
}

async fn graceful_shutdown_ends_open_streams(backend: Backend) {
    use tokio_stream::StreamExt;
    use tonic_health::pb::health_check_response::ServingStatus;
    let db = TestDb::create(backend).await;
    // A grace period longer than any test step: if an open stream held
    // shutdown, `within` below would fail instead of waiting it out.
    let server = TestServer::start_with(config(&db.url, &["--shutdown-grace", "60s"])).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let (mut a, _) = join(&mut alice, "g", None).await;
    let (mut b, _) = join(&mut bob, "g2", None).await;
    let sent = send(&mut alice, "g", "before shutdown").await;
    assert_eq!(next_message(&mut a).await, sent);
    // A health watcher: its stream never ends on its own.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let mut watch = within(health.watch(tonic_health::pb::HealthCheckRequest {
        service: "chat.v1.ChatService".into(),
    }))
    .await
    .unwrap()
    .into_inner();
    let first = within(watch.next()).await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let done = tokio::spawn(server.shutdown());
    for stream in [&mut a, &mut b] {
        // Presence or nothing, then UNAVAILABLE telling the client to rejoin.
        loop {
            match within(stream.message()).await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("stream ended without a status"),
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    break;
                }
            }
        }
    }
    // Health says NOT_SERVING, then the watch ends too.
    let mut saw_not_serving = false;
    loop {
        match within(watch.next()).await {
            Some(Ok(r)) => saw_not_serving |= r.status == ServingStatus::NotServing as i32,
            Some(Err(status)) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                break;
            }
            None => break,
        }
    }
    assert!(saw_not_serving);
    within(done).await.unwrap().unwrap();
}

/// Lists services and resolves `symbols` through one version of the
/// reflection protocol (`v1` or `v1alpha`: same messages, other types).
macro_rules! check_reflection {
    ($version:ident, $channel:expr, $symbols:expr) => {{
        use tokio_stream::StreamExt;
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new($channel);
        let mut ask = async |message_request| {
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(message_request),
            };
            let mut responses =
                within(client.server_reflection_info(tokio_stream::iter([request])))
                    .await
                    .unwrap()
                    .into_inner();
            within(responses.next()).await.unwrap().unwrap()
        };
        let response = ask(MessageRequest::ListServices(String::new())).await;
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected {response:?}");
        };
        let names: HashSet<_> = list.service.into_iter().map(|s| s.name).collect();
        for symbol in $symbols {
            assert!(names.contains(symbol), "{symbol} not in {names:?}");
            // The descriptors resolve too.
            let response = ask(MessageRequest::FileContainingSymbol(symbol.into())).await;
            assert!(
                matches!(
                    response.message_response,
                    Some(MessageResponse::FileDescriptorResponse(_))
                ),
                "{symbol}: {response:?}"
            );
        }
    }};
}

async fn reflection_lists_services_on_v1_and_v1alpha(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let symbols = ["chat.v1.ChatService", "grpc.health.v1.Health"];
    check_reflection!(v1, server.channel().await, symbols);
    check_reflection!(v1alpha, server.channel().await, symbols);
    server.shutdown().await.unwrap();
}

/// grpc-web over plain HTTP/1.1, as a browser sends it.
mod grpc_web {
    use super::*;
    use bytes::{Buf, BufMut, Bytes, BytesMut};
    use http_body_util::{BodyExt, Full};
    use hyper::client::conn::http1;
    use hyper_util::rt::TokioIo;
    use prost::Message as _;

    type Sender = http1::SendRequest<Full<Bytes>>;

    async fn roundtrip(
        sender: &mut Sender,
        request: hyper::Request<Full<Bytes>>,
    ) -> hyper::Response<hyper::body::Incoming> {
        within(sender.ready()).await.expect("connection ready");
        within(sender.send_request(request))
            .await
            .expect("response")
    }

    /// A unary call in binary grpc-web framing.
    async fn post_binary(
        sender: &mut Sender,
        method: &str,
        token: &str,
        message: &impl prost::Message,
    ) -> hyper::Response<hyper::body::Incoming> {
        let body = frame(message);
        roundtrip(
            sender,
            request(method, "application/grpc-web+proto", token, body),
        )
        .await
    }

    async fn connect(server: &TestServer) -> Sender {
        let tcp = within(tokio::net::TcpStream::connect(server.addr))
            .await
            .unwrap();
        let (sender, conn) = within(http1::handshake(TokioIo::new(tcp))).await.unwrap();
        tokio::spawn(conn);
        sender
    }

    fn frame(message: &impl prost::Message) -> Bytes {
        let body = message.encode_to_vec();
        let mut out = BytesMut::with_capacity(5 + body.len());
        out.put_u8(0);
        out.put_u32(body.len() as u32);
        out.put_slice(&body);
        out.freeze()
    }

    fn request(
        path: &str,
        content_type: &str,
        token: &str,
        body: Bytes,
    ) -> hyper::Request<Full<Bytes>> {
        hyper::Request::builder()
            .method("POST")
            .uri(format!("/chat.v1.ChatService/{path}"))
            .header("host", "chatd")
            .header("content-type", content_type)
            .header("accept", content_type)
            .header("x-grpc-web", "1")
            .header("origin", "https://app.example")
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(body))
            .unwrap()
    }

    /// Splits one whole grpc-web frame off the front of `buf`:
    /// (is_trailer, payload).
    fn take_frame(buf: &mut BytesMut) -> Option<(bool, Bytes)> {
        if buf.len() < 5 {
            return None;
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            return None;
        }
        let flag = buf[0];
        buf.advance(5);
        Some((flag & 0x80 != 0, buf.split_to(len).freeze()))
    }

    /// Every whole frame in `buf`.
    fn take_frames(buf: &mut BytesMut) -> Vec<(bool, Bytes)> {
        std::iter::from_fn(|| take_frame(buf)).collect()
    }

    pub async fn cors_preflight_allows_grpc_web_and_authorization(backend: Backend) {
        let db = TestDb::create(backend).await;
        let server = TestServer::start(&db).await;
        let mut sender = connect(&server).await;
        let preflight = hyper::Request::builder()
            .method("OPTIONS")
            .uri("/chat.v1.ChatService/SendMessage")
            .header("host", "chatd")
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,x-grpc-web,x-user-agent,grpc-timeout",
            )
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = roundtrip(&mut sender, preflight).await;
        assert!(response.status().is_success(), "{response:?}");
        let headers = response.headers();
        assert_eq!(headers["access-control-allow-origin"], "*");
        let allowed = headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        for h in [
            "authorization",
            "content-type",
            "x-grpc-web",
            "x-user-agent",
            "grpc-timeout",
        ] {
            assert!(allowed.contains(h), "{h} not allowed: {allowed}");
        }
        assert!(
            headers["access-control-allow-methods"]
                .to_str()
                .unwrap()
                .contains("POST")
        );
        server.shutdown().await.unwrap();
    }

    pub async fn cors_origins_can_be_restricted(backend: Backend) {
        let db = TestDb::create(backend).await;
        let server =
            TestServer::start_with(config(&db.url, &["--cors-origins", "https://good.example"]))
                .await;
        let mut sender = connect(&server).await;
        for (origin, allowed) in [
            ("https://good.example", true),
            ("https://evil.example", false),
        ] {
            let preflight = hyper::Request::builder()
                .method("OPTIONS")
                .uri("/chat.v1.ChatService/ListMembers")
                .header("host", "chatd")
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response = roundtrip(&mut sender, preflight).await;
            let got = response
                .headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap().to_string());
            assert_eq!(got.as_deref() == Some(origin), allowed, "{origin}: {got:?}");
        }
        server.shutdown().await.unwrap();
    }

    pub async fn unary_and_streaming_over_http1(backend: Backend) {
        let db = TestDb::create(backend).await;
        let server = TestServer::start(&db).await;
        let token = server.token("webby");

        // Unary, binary framing.
        let mut sender = connect(&server).await;
        let send = proto::SendMessageRequest {
            room: "web".into(),
            content: "from a browser".into(),
            ..Default::default()
        };
        let response = post_binary(&mut sender, "SendMessage", &token, &send).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "application/grpc-web+proto"
        );
        assert_eq!(response.headers()["access-control-allow-origin"], "*");
        let exposed = response.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .to_string();
        for h in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
            assert!(exposed.contains(h), "{h} not exposed: {exposed}");
        }
        let mut body = BytesMut::from(
            &within(response.into_body().collect())
                .await
                .unwrap()
                .to_bytes()[..],
        );
        let frames = take_frames(&mut body);
        assert_eq!(frames.len(), 2, "{frames:?}");
        let sent = proto::SendMessageResponse::decode(frames[0].1.clone())
            .unwrap()
            .message
            .unwrap();
        assert_eq!(
            (sent.seq, sent.sender.unwrap().user_id.as_str()),
            (1, "webby")
        );
        let trailers = String::from_utf8(frames[1].1.to_vec()).unwrap();
        assert!(
            frames[1].0 && trailers.contains("grpc-status:0"),
            "{trailers}"
        );

        // An error comes back as a grpc-web status, not an HTTP error.
        let bad = proto::SendMessageRequest {
            room: "web".into(),
            ..Default::default()
        };
        let response = post_binary(&mut sender, "SendMessage", &token, &bad).await;
        assert_eq!(response.status(), 200);
        let status = response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_string());
        let status = match status {
            Some(s) => s,
            None => {
                let mut body = BytesMut::from(
                    &within(response.into_body().collect())
                        .await
                        .unwrap()
                        .to_bytes()[..],
                );
                let frames = take_frames(&mut body);
                String::from_utf8(frames.last().unwrap().1.to_vec()).unwrap()
            }
        };
        assert!(
            status.contains('3'),
            "INVALID_ARGUMENT expected, got {status}"
        );

        // Unary, text (base64) framing.
        let mut text_sender = connect(&server).await;
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let list = proto::ListMembersRequest { room: "web".into() };
        let response = roundtrip(
            &mut text_sender,
            request(
                "ListMembers",
                "application/grpc-web-text",
                &token,
                Bytes::from(b64.encode(frame(&list))),
            ),
        )
        .await;
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            content_type.starts_with("application/grpc-web-text"),
            "{content_type}"
        );
        let text = within(response.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        // Each chunk is padded base64 on its own: decode four characters at a time.
        let mut decoded = BytesMut::new();
        for quad in text.chunks(4) {
            decoded.extend_from_slice(&b64.decode(quad).unwrap());
        }
        let frames = take_frames(&mut decoded);
        assert!(
            proto::ListMembersResponse::decode(frames[0].1.clone())
                .unwrap()
                .members
                .is_empty()
        );

        // Server streaming, binary and text: each event arrives while the
        // stream stays open, not buffered until it ends.
        let mut native = server.client("native").await;
        for content_type in ["application/grpc-web+proto", "application/grpc-web-text"] {
            let text = content_type.ends_with("text");
            let mut stream_sender = connect(&server).await;
            let join = proto::JoinRoomRequest {
                room: "web".into(),
                resume_after_seq: None,
            };
            let body = if text {
                Bytes::from(b64.encode(frame(&join)))
            } else {
                frame(&join)
            };
            let response = roundtrip(
                &mut stream_sender,
                request("JoinRoom", content_type, &token, body),
            )
            .await;
            assert_eq!(response.status(), 200);
            let mut body = response.into_body();
            let mut raw = BytesMut::new();
            let mut decoded = BytesMut::new();
            let mut next_frame = async || loop {
                if let Some(frame) = take_frame(&mut decoded) {
                    return frame;
                }
                let chunk = within(body.frame())
                    .await
                    .expect("body open")
                    .expect("body chunk");
                if let Ok(data) = chunk.into_data() {
                    if text {
                        raw.extend_from_slice(&data);
                        let whole = raw.len() / 4 * 4;
                        for quad in raw.split_to(whole).chunks(4) {
                            decoded.extend_from_slice(&b64.decode(quad).unwrap());
                        }
                    } else {
                        decoded.extend_from_slice(&data);
                    }
                }
            };
            let (trailer, joined) = next_frame().await;
            assert!(!trailer);
            let last_seq = match proto::JoinRoomResponse::decode(joined)
                .unwrap()
                .event
                .unwrap()
            {
                Event::Joined(j) => {
                    assert_eq!(j.room, "web");
                    j.last_seq
                }
                other => panic!("expected joined, got {other:?}"),
            };
            // A message sent now over native gRPC reaches the browser stream.
            let live = helpers::send(&mut native, "web", &format!("live to {content_type}")).await;
            assert_eq!(live.seq, last_seq + 1);
            let (trailer, event) = next_frame().await;
            assert!(!trailer);
            match proto::JoinRoomResponse::decode(event)
                .unwrap()
                .event
                .unwrap()
            {
                Event::Message(m) => assert_eq!(m, live),
                other => panic!("expected the message, got {other:?}"),
            }
        }
        server.shutdown().await.unwrap();
    }
}

/// PostgreSQL only: a proxy in front of it plays the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_is_unavailable_then_recovers() {
    use tokio_stream::StreamExt;
    use tonic_health::pb::health_check_response::ServingStatus;
    let db = TestDb::postgres().await;
    let proxy = DbProxy::start().await;
    let server = TestServer::start_with(config(&proxy.url_for(&db), &[])).await;
    let mut c = server.client("alice").await;
    assert_eq!(send(&mut c, "o", "before").await.seq, 1);
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let mut watch = within(health.watch(tonic_health::pb::HealthCheckRequest {
        service: "chat.v1.ChatService".into(),
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        within(watch.next()).await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    proxy.cut();
    let status = send_request(
        &mut c,
        proto::SendMessageRequest {
            room: "o".into(),
            content: "during".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        !status.message().to_lowercase().contains("sql"),
        "{status:?}"
    );
    let status = within(c.list_history(proto::ListHistoryRequest {
        room: "o".into(),
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        within(watch.next()).await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );

    proxy.restore();
    assert_eq!(
        within(watch.next()).await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    // Health saw the database answer again; calls work again too.
    assert_eq!(send(&mut c, "o", "after").await.seq, 2);
    let page = newest_page(&mut c, "o").await;
    assert_eq!(seqs(&page.messages), [1, 2]);
    server.shutdown().await.unwrap();
}

/// The real binary: `chatd token` with a generated secret, and SIGTERM.
mod binary {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    use std::sync::Arc;

    /// Kills the child process if the test ends before it exits.
    struct KillOnDrop(Option<std::process::Child>);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Some(child) = &mut self.0 {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    fn unique_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "chatd-test-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    pub async fn token_command_and_server_share_a_generated_secret(backend: Backend) {
        use std::os::unix::fs::PermissionsExt;
        // The server generates the secret on first start; `chatd token`
        // only ever reads it.
        let dir = unique_dir("secret");
        let db = TestDb::create(backend).await;
        let config = <chatd::config::Cli as clap::Parser>::try_parse_from([
            "chatd",
            "--addr",
            "127.0.0.1:0",
            "--database-url",
            &db.url,
            "--data-dir",
            dir.to_str().unwrap(),
        ])
        .unwrap()
        .config;
        let server = TestServer::start_with(config).await;
        let secret_file = dir.join("jwt-secret");
        let mode = std::fs::metadata(&secret_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let output = Command::new(env!("CARGO_BIN_EXE_chatd"))
            .args(["token", "dave", "--name", "Dave", "--ttl", "1h"])
            .env("CHAT_DATA_DIR", &dir)
            .env_remove("CHAT_JWT_SECRET")
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let token = String::from_utf8(output.stdout).unwrap().trim().to_string();

        let mut client = chatd::proto::chat_service_client::ChatServiceClient::with_interceptor(
            server.channel().await,
            Bearer::new(&token),
        );
        let sent = helpers::send(&mut client, "lobby", "hi").await;
        assert_eq!(sent.sender.unwrap().display_name, "Dave");
        server.shutdown().await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A chatd process serving `db_url` with its data in `dir`.
    struct Process {
        child: KillOnDrop,
        pid: u32,
        addr: String,
    }

    impl Process {
        async fn start(db_url: &str, dir: &std::path::Path) -> Process {
            let child = Command::new(env!("CARGO_BIN_EXE_chatd"))
                .arg("serve")
                .args(server_args(db_url))
                .env("CHAT_DATA_DIR", dir)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut child = KillOnDrop(Some(child));
            let pid = child.0.as_ref().unwrap().id();
            // The start-up log names the address.
            let stderr = child.0.as_mut().unwrap().stderr.take().unwrap();
            let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let mut addr_tx = Some(addr_tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("chatd: {line}");
                    if let Some(rest) = line.split("addr=").nth(1)
                        && let Some(tx) = addr_tx.take()
                    {
                        let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                    }
                }
            });
            let addr = within(addr_rx).await.expect("chatd printed its address");
            Process { child, pid, addr }
        }

        async fn client(&self, user: &str) -> Client {
            let channel = within(
                tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
                    .unwrap()
                    .connect(),
            )
            .await
            .unwrap();
            let token = chatd::auth::Keys::new(SECRET.as_bytes())
                .mint(user, None, Some(Duration::from_secs(3600)))
                .unwrap();
            chatd::proto::chat_service_client::ChatServiceClient::with_interceptor(
                channel,
                Bearer::new(&token),
            )
        }

        fn signal(&self, signal: &str) {
            let sent = Command::new("kill")
                .args([signal, &self.pid.to_string()])
                .status()
                .unwrap();
            assert!(sent.success());
        }

        async fn wait(mut self) -> std::process::ExitStatus {
            let mut process = self.child.0.take().unwrap();
            within(tokio::task::spawn_blocking(move || process.wait()))
                .await
                .unwrap()
                .unwrap()
        }
    }

    pub async fn sigterm_ends_streams_and_exits_zero(backend: Backend) {
        let db = TestDb::create(backend).await;
        let dir = unique_dir("sigterm");
        let chatd = Process::start(&db.url, &dir).await;
        let mut client = chatd.client("erin").await;
        let (mut stream, _) = join(&mut client, "term", None).await;

        let started = std::time::Instant::now();
        chatd.signal("-TERM");
        let status = within(stream.message()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        let exit = chatd.wait().await;
        assert!(exit.success(), "{exit:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// SIGKILL while senders are mid-flight: after a restart on the same
    /// data, every acknowledged message is in history and seqs are gapless.
    pub async fn kill_9_keeps_every_acknowledged_message(backend: Backend) {
        const ROOMS: [&str; 3] = ["k0", "k1", "k2"];
        const BEFORE_KILL: usize = 300;
        let db = TestDb::create(backend).await;
        let dir = unique_dir("kill9");
        let chatd = Process::start(&db.url, &dir).await;

        let acked = Arc::new(std::sync::Mutex::new(Vec::<(String, u64, String)>::new()));
        let (enough_tx, mut enough_rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut senders = Vec::new();
        for s in 0..8 {
            let mut client = chatd.client(&format!("sender{s}")).await;
            let (acked, enough) = (acked.clone(), enough_tx.clone());
            senders.push(tokio::spawn(async move {
                for k in 0.. {
                    let room = ROOMS[(s + k) % ROOMS.len()];
                    let content = format!("s{s}-{k}");
                    let request = proto::SendMessageRequest {
                        room: room.into(),
                        content: content.clone(),
                        ..Default::default()
                    };
                    // Sends fail once chatd is killed: that ends the sender.
                    let Ok(Ok(response)) =
                        tokio::time::timeout(STEP, client.send_message(request)).await
                    else {
                        break;
                    };
                    let seq = response.into_inner().message.expect("message").seq;
                    let count = {
                        let mut acked = acked.lock().unwrap();
                        acked.push((room.to_string(), seq, content));
                        acked.len()
                    };
                    if count == BEFORE_KILL {
                        let _ = enough.try_send(());
                    }
                }
            }));
        }
        drop(enough_tx);
        within(enough_rx.recv())
            .await
            .expect("senders acknowledged enough");
        chatd.signal("-KILL");
        let exit = chatd.wait().await;
        assert!(!exit.success(), "killed: {exit:?}");
        for sender in senders {
            within(sender).await.unwrap();
        }
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        assert!(acked.len() >= BEFORE_KILL);

        let chatd = Process::start(&db.url, &dir).await;
        let mut client = chatd.client("auditor").await;
        for room in ROOMS {
            let mut history = Vec::new();
            loop {
                let page = within(client.list_history(proto::ListHistoryRequest {
                    room: room.into(),
                    page_size: 500,
                    before_seq: None,
                    after_seq: Some(history.len() as u64),
                }))
                .await
                .unwrap()
                .into_inner();
                history.extend(page.messages);
                if !page.has_more {
                    break;
                }
            }
            assert_eq!(
                seqs(&history),
                (1..=history.len() as u64).collect::<Vec<_>>(),
                "{room} is gapless"
            );
            for (_, seq, content) in acked.iter().filter(|(r, _, _)| r == room) {
                let stored = &history[*seq as usize - 1];
                assert_eq!(&stored.content, content, "{room}#{seq} survived");
            }
        }
        drop(chatd);
        let _ = std::fs::remove_dir_all(dir);
    }
}
