//! SendMessage: idempotent retries, and concurrent senders getting
//! gapless seqs that every subscriber sees in order.

use chatd::proto;
use chatd::proto::join_room_response::Event;

use crate::helpers::*;

pub async fn idempotent_retry_returns_the_original(backend: Backend) {
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

pub async fn concurrent_senders_every_subscriber_sees_one_to_n_in_order(backend: Backend) {
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
                Event::MemberJoined(_)
                | Event::MemberLeft(_)
                | Event::Typing(_)
                | Event::ReadMarker(_) => {}
                Event::Joined(j) => panic!("unexpected resync {j:?}"),
                other => panic!("unexpected event {other:?}"),
            }
        }
        assert_eq!(got, (1..=total).collect::<Vec<_>>());
    }
    server.shutdown().await.unwrap();
}
