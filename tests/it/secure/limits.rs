//! Limits per user: the send rate, the join rate and the stream cap, each
//! refusal naming its setting, and their defaults.

use chatd::proto;
use tonic::Code;

use crate::helpers::access::list_rooms;
use crate::helpers::*;

pub async fn a_send_over_the_rate_is_refused_and_not_stored(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start_with(config(
        &db.url,
        &["--user-send-rate", "1", "--user-send-burst", "5"],
    ))
    .await;
    let mut alice = server.client("alice").await;
    // The burst goes through, then the bucket is empty: at 1 token per
    // second, a slow machine may refill one or two on the way.
    let mut stored = 0;
    let refused = loop {
        let request = proto::SendMessageRequest {
            room: "lobby".into(),
            content: format!("m{stored}"),
            ..Default::default()
        };
        match send_request(&mut alice, request).await {
            Ok(_) => stored += 1,
            Err(status) => break status,
        }
        assert!(stored < 50, "no send was refused");
    };
    assert!(stored >= 5, "the burst of 5 was not allowed: {stored}");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().starts_with("CHAT_USER_SEND_RATE"),
        "{refused:?}"
    );
    // Nothing of the refused send was stored.
    let page = newest_page(&mut alice, "lobby").await;
    assert_eq!(seqs(&page.messages), (1..=stored).collect::<Vec<u64>>());
    assert!(
        page.messages
            .iter()
            .all(|m| m.content != format!("m{stored}"))
    );
    // Another user is not affected.
    let mut bob = server.client("bob").await;
    let sent = send(&mut bob, "lobby", "bob's turn").await;
    assert_eq!(sent.seq, stored + 1);
    server.shutdown().await.unwrap();
}

pub async fn a_join_over_the_rate_is_refused_and_leaves_no_trace(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start_with(config(
        &db.url,
        &["--user-join-rate", "1", "--user-join-burst", "3"],
    ))
    .await;
    let mut alice = server.client("alice").await;
    // The burst goes through (a slow machine may refill a token or two on
    // the way), then a join is refused before it touches the room.
    let mut streams = Vec::new();
    let refused = loop {
        let request = proto::JoinRoomRequest {
            room: format!("j{}", streams.len()),
            resume_after_seq: None,
        };
        match within(alice.join_room(request)).await {
            Ok(stream) => streams.push(stream.into_inner()),
            Err(status) => break status,
        }
        assert!(streams.len() < 50, "no join was refused");
    };
    assert!(
        streams.len() >= 3,
        "the burst of 3 was not allowed: {}",
        streams.len()
    );
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().starts_with("CHAT_USER_JOIN_RATE"),
        "{refused:?}"
    );
    // The refused room did not become one of alice's rooms.
    let rooms = list_rooms(&mut alice, 100, "").await.unwrap().rooms;
    let names: Vec<&str> = rooms.iter().map(|r| r.room.as_str()).collect();
    assert_eq!(names.len(), streams.len(), "{names:?}");
    assert!(
        !names.contains(&format!("j{}", streams.len()).as_str()),
        "{names:?}"
    );
    // Another user is not affected.
    let mut bob = server.client("bob").await;
    let _bob = join(&mut bob, "lobby", None).await;
    server.shutdown().await.unwrap();
}

pub async fn the_stream_cap_names_its_limit(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start_with(config(&db.url, &["--user-max-streams", "2"])).await;
    let mut alice = server.client("alice").await;
    let _a = join(&mut alice, "a", None).await;
    let _b = join(&mut alice, "b", None).await;
    let request = proto::JoinRoomRequest {
        room: "c".into(),
        resume_after_seq: None,
    };
    let status = within(alice.join_room(request)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().starts_with("CHAT_USER_MAX_STREAMS"),
        "{status:?}"
    );
    let mut bob = server.client("bob").await;
    let (_bob_stream, joined) = join(&mut bob, "c", None).await;
    assert_eq!(user_ids(&joined.members), ["bob"]);
    server.shutdown().await.unwrap();
}

#[test]
fn the_limits_default_to_the_issue() {
    use clap::Parser as _;
    let config = chatd::config::Cli::try_parse_from(["chatd"])
        .unwrap()
        .config;
    assert_eq!((config.user_send_rate, config.user_send_burst), (20, 40));
    assert_eq!((config.user_join_rate, config.user_join_burst), (10, 100));
    assert_eq!((config.user_read_rate, config.user_read_burst), (50, 200));
    assert_eq!(config.user_max_streams, 100);
    assert_eq!(
        config.room_creation,
        chatd::config::RoomCreation::Anyone,
        "today's behaviour by default"
    );
}

/// ListRooms, ListHistory, ListMembers and MarkRead share one per-user
/// bucket: a user calling them in a loop is refused with
/// RESOURCE_EXHAUSTED naming CHAT_USER_READ_RATE; another user is not.
pub async fn reads_over_the_rate_are_refused_and_others_unaffected(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start_with(config(
        &db.url,
        &["--user-read-rate", "1", "--user-read-burst", "8"],
    ))
    .await;
    let mut alice = server.client("alice").await;
    send(&mut alice, "lobby", "hi").await;
    let mut calls = 0;
    let refused = loop {
        let result = match calls % 4 {
            0 => list_rooms(&mut alice, 10, "").await.map(|_| ()),
            1 => within(alice.list_history(proto::ListHistoryRequest {
                room: "lobby".into(),
                ..Default::default()
            }))
            .await
            .map(|_| ()),
            2 => within(alice.list_members(proto::ListMembersRequest {
                room: "lobby".into(),
                ..Default::default()
            }))
            .await
            .map(|_| ()),
            _ => crate::helpers::access::mark_read(&mut alice, "lobby", 1)
                .await
                .map(|_| ()),
        };
        match result {
            Ok(()) => calls += 1,
            Err(status) => break status,
        }
        assert!(calls < 100, "no read was refused");
    };
    assert!(calls >= 8, "the burst of 8 was not allowed: {calls}");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().starts_with("CHAT_USER_READ_RATE"),
        "{refused:?}"
    );
    // Sends have their own bucket, and other users theirs.
    send(&mut alice, "lobby", "still sending").await;
    let mut bob = server.client("bob").await;
    let page = newest_page(&mut bob, "lobby").await;
    assert_eq!(page.messages.len(), 2);
    server.shutdown().await.unwrap();
}

/// One user resuming many streams from the start of a long history reads
/// them a few at a time (CHAT_USER_BUFFER_BYTES and the per-user read
/// slots), and every stream still gets every message once, in order, while
/// another user's sends go through.
pub async fn many_resumes_of_one_user_all_complete(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut writer = server.client("writer").await;
    const STORED: u64 = 1200;
    const STREAMS: usize = 24;
    for chunk in 0..(STORED / 100) {
        let mut sends = Vec::new();
        for i in 0..100 {
            let mut w = writer.clone();
            sends.push(tokio::spawn(async move {
                send(&mut w, "long", &format!("m{}", chunk * 100 + i)).await
            }));
        }
        for s in sends {
            within(s).await.expect("send");
        }
    }
    let reader = server.client("reader").await;
    let mut readers = Vec::new();
    for _ in 0..STREAMS {
        let mut r = reader.clone();
        readers.push(tokio::spawn(async move {
            let (mut stream, _) = join(&mut r, "long", Some(0)).await;
            let mut seqs = Vec::with_capacity(STORED as usize);
            while (seqs.len() as u64) < STORED {
                if let chatd::proto::join_room_response::Event::Message(m) =
                    next_event(&mut stream).await
                {
                    seqs.push(m.seq);
                }
            }
            seqs
        }));
    }
    // Another user's sends are answered meanwhile.
    for i in 0..20 {
        send(&mut writer, "elsewhere", &format!("e{i}")).await;
    }
    for r in readers {
        let seqs = within(r).await.expect("reader");
        assert_eq!(seqs, (1..=STORED).collect::<Vec<u64>>());
    }
    server.shutdown().await.unwrap();
}
