//! A user's rooms (ListRooms) and read markers (MarkRead), on both
//! backends.

use crate::helpers::access::*;
use crate::helpers::*;
use chatd::proto::{self, RoomVisibility};
use tonic::Code;

/// ListRooms: private rooms with a grant and public rooms joined or sent
/// to, newest activity first, paged by token, with read markers and
/// unread counts.
pub(super) async fn list_rooms_order_paging_and_unread(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut admin = admin(&server).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;

    create(&mut admin, "plans", RoomVisibility::Private)
        .await
        .unwrap();
    grant(&mut admin, "plans", &["alice"]).await.unwrap();
    // A private room she was not granted stays out of her list, even
    // after an admin used it.
    create(&mut admin, "hidden", RoomVisibility::Private)
        .await
        .unwrap();
    grant(&mut admin, "hidden", &["bob"]).await.unwrap();
    send(&mut bob, "hidden", "psst").await;
    {
        let (_s, _) = join(&mut alice, "joined.only", None).await;
    }
    send(&mut bob, "chat", "one").await;
    send(&mut bob, "chat", "two").await;
    let mine = send(&mut alice, "chat", "three").await;
    send(&mut bob, "chat", "four").await;
    let last = send(&mut bob, "chat", "five").await;
    // Bob's own messages never count as unread for him.
    send(&mut bob, "bobs.room", "talking to myself").await;

    let rooms = all_rooms(&mut alice, 50).await;
    assert_eq!(names(&rooms), ["chat", "joined.only", "plans"]);
    let chat = &rooms[0];
    assert_eq!(chat.visibility, RoomVisibility::Public as i32);
    assert_eq!(
        (chat.last_seq, chat.read_seq, chat.unread_count),
        (5, mine.seq, 2)
    );
    let last_message = chat.last_message.as_ref().expect("last message");
    assert_eq!(
        (last_message.seq, last_message.content.as_str()),
        (last.seq, "five")
    );
    assert_eq!(last_message.sent_at, last.sent_at);
    let joined = &rooms[1];
    assert_eq!((joined.last_seq, joined.unread_count), (0, 0));
    assert!(joined.last_message.is_none());
    assert_eq!(rooms[2].visibility, RoomVisibility::Private as i32);

    // Page by page: the same rooms, in the same order, each once.
    for size in [1, 2] {
        assert_eq!(names(&all_rooms(&mut alice, size).await), names(&rooms));
    }
    // Bigger than 200 is capped, not refused.
    assert_eq!(
        list_rooms(&mut alice, 5000, "").await.unwrap().rooms.len(),
        3
    );
    assert_code(
        list_rooms(&mut alice, 1, "bogus").await,
        Code::InvalidArgument,
        "page_token",
    );
    assert_code(
        list_rooms(&mut alice, 1, "00ff").await,
        Code::InvalidArgument,
        "page_token",
    );

    // New activity moves a room to the front.
    let mut backend_chat = admin_chat(&server).await;
    send(&mut backend_chat, "plans", "agenda").await;
    let rooms = all_rooms(&mut alice, 50).await;
    assert_eq!(names(&rooms), ["plans", "chat", "joined.only"]);
    assert_eq!((rooms[0].last_seq, rooms[0].unread_count), (1, 1));
    // Bob sees his own rooms (his grant, his sends), none unread.
    let b = all_rooms(&mut bob, 10).await;
    assert_eq!(names(&b), ["bobs.room", "chat", "hidden"]);
    assert!(b.iter().all(|r| r.unread_count == 0), "{b:?}");
}

/// unread_count is exact up to 999 and stops at 1000.
pub(super) async fn unread_count_is_exact_to_999_and_caps_at_1000(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut alice = server.client("alice").await;
    {
        let (_s, _) = join(&mut alice, "busy", None).await;
    }
    let bob = server.client("bob").await;
    const SENT: usize = 1005;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..SENT {
        let mut c = bob.clone();
        tasks.spawn(async move {
            send(&mut c, "busy", &format!("m{i}")).await;
        });
    }
    while let Some(done) = within(tasks.join_next()).await {
        done.expect("send task");
    }
    let room = |rooms: Vec<proto::RoomSummary>| rooms.into_iter().next().expect("busy listed");
    let busy = room(all_rooms(&mut alice, 10).await);
    assert_eq!(
        (busy.last_seq, busy.read_seq, busy.unread_count),
        (SENT as u64, 0, 1000)
    );
    mark_read(&mut alice, "busy", 5).await.unwrap();
    assert_eq!(room(all_rooms(&mut alice, 10).await).unread_count, 1000);
    mark_read(&mut alice, "busy", 6).await.unwrap();
    assert_eq!(room(all_rooms(&mut alice, 10).await).unread_count, 999);
    mark_read(&mut alice, "busy", 1004).await.unwrap();
    assert_eq!(room(all_rooms(&mut alice, 10).await).unread_count, 1);
}

/// MarkRead never moves back, refuses a seq beyond the room's last, and
/// sending moves the sender's own marker.
pub(super) async fn mark_read_is_monotonic_and_bounded(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    for i in 0..5 {
        send(&mut bob, "news", &format!("n{i}")).await;
    }
    assert_eq!(mark_read(&mut alice, "news", 3).await.unwrap(), 3);
    assert_eq!(mark_read(&mut alice, "news", 1).await.unwrap(), 3);
    assert_eq!(mark_read(&mut alice, "news", 0).await.unwrap(), 3);
    assert_code(
        mark_read(&mut alice, "news", 6).await,
        Code::OutOfRange,
        "seq",
    );
    // A room that does not exist is not found (and nothing is created).
    assert_code(
        mark_read(&mut alice, "empty", 1).await,
        Code::NotFound,
        "room empty does not exist",
    );
    assert_code(
        mark_read(&mut alice, "news", u64::MAX).await,
        Code::InvalidArgument,
        "seq",
    );
    assert_code(
        mark_read(&mut alice, "", 0).await,
        Code::InvalidArgument,
        "room",
    );
    assert_eq!(mark_read(&mut alice, "news", 5).await.unwrap(), 5);
    // Sending moves the sender's marker to the message sent.
    let sent = send(&mut bob, "news", "n5").await;
    let news = all_rooms(&mut bob, 10).await;
    assert_eq!((news[0].read_seq, news[0].unread_count), (sent.seq, 0));
    // An older MarkRead after that returns the sender's marker.
    assert_eq!(mark_read(&mut bob, "news", 2).await.unwrap(), sent.seq);
    let mine = send(&mut alice, "news", "n6").await;
    assert_eq!(mark_read(&mut alice, "news", 0).await.unwrap(), mine.seq);
}

/// MarkRead on room names nobody created is NOT_FOUND naming the room, and
/// stores nothing: the rooms never show up in ListRooms (the attack was
/// 5,000 invented names listed afterwards).
pub(super) async fn mark_read_of_invented_rooms_is_not_found_and_creates_nothing(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut mallory = server.client("mallory").await;
    for i in 0..50 {
        assert_code(
            mark_read(&mut mallory, &format!("invented.{i}"), 0).await,
            Code::NotFound,
            &format!("room invented.{i} does not exist"),
        );
    }
    assert!(all_rooms(&mut mallory, 200).await.is_empty());
    // A room that exists (sent to) is marked as before.
    let mut bob = server.client("bob").await;
    send(&mut bob, "real", "hello").await;
    assert_eq!(mark_read(&mut mallory, "real", 1).await.unwrap(), 1);
    assert_eq!(names(&all_rooms(&mut mallory, 200).await), ["real"]);
    server.shutdown().await.unwrap();
}
