//! Who may do what (issue 9) on one node, on both backends: private rooms,
//! AdminService, revocations; ListRooms and MarkRead in `rooms.rs`. On a
//! cluster: `access::cluster` (access/cluster.rs).

mod cluster;
mod rooms;

on_both_backends! {
    private_room_refuses_every_rpc_without_a_grant:
        crate::access::private_room_refuses_every_rpc_without_a_grant,
    admin_service_needs_an_admin_token: crate::access::admin_service_needs_an_admin_token,
    create_room_rules: crate::access::create_room_rules,
    grant_rules: crate::access::grant_rules,
    revoke_ends_live_streams_and_refuses_the_next_call:
        crate::access::revoke_ends_live_streams_and_refuses_the_next_call,
    list_rooms_order_paging_and_unread: crate::access::rooms::list_rooms_order_paging_and_unread,
    unread_count_is_exact_to_999_and_caps_at_1000:
        crate::access::rooms::unread_count_is_exact_to_999_and_caps_at_1000,
    mark_read_is_monotonic_and_bounded: crate::access::rooms::mark_read_is_monotonic_and_bounded,
    create_private_racing_sends_keeps_no_unchecked_message:
        crate::access::create_private_racing_sends_keeps_no_unchecked_message,
    creating_a_room_private_ends_streams_opened_while_it_was_public:
        crate::access::creating_a_room_private_ends_streams_opened_while_it_was_public,
    mark_read_of_invented_rooms_is_not_found_and_creates_nothing:
        crate::access::rooms::mark_read_of_invented_rooms_is_not_found_and_creates_nothing,
    only_the_backend_creates_rooms_when_configured:
        crate::access::only_the_backend_creates_rooms_when_configured,
}

use crate::helpers::access::*;
use crate::helpers::*;
use chatd::proto::admin_service_client::AdminServiceClient;
use chatd::proto::join_room_response::Event;
use chatd::proto::{self, RoomVisibility};
use tonic::Code;

/// Every ChatService call on a private room answers PERMISSION_DENIED
/// naming the room to a user without a grant, works for a granted user,
/// and works for an admin token without a grant.
async fn private_room_refuses_every_rpc_without_a_grant(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut admin = admin(&server).await;
    assert!(
        create(&mut admin, "secret", RoomVisibility::Private)
            .await
            .unwrap()
    );
    grant(&mut admin, "secret", &["alice"]).await.unwrap();
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;

    assert_code(
        join_result(&mut bob, "secret").await,
        Code::PermissionDenied,
        "secret",
    );
    let refused = send_request(
        &mut bob,
        proto::SendMessageRequest {
            room: "secret".into(),
            content: "let me in".into(),
            ..Default::default()
        },
    )
    .await;
    assert_code(refused, Code::PermissionDenied, "secret");
    let history = within(bob.list_history(proto::ListHistoryRequest {
        room: "secret".into(),
        ..Default::default()
    }))
    .await;
    assert_code(history, Code::PermissionDenied, "secret");
    let members = within(bob.list_members(proto::ListMembersRequest {
        room: "secret".into(),
        ..Default::default()
    }))
    .await;
    assert_code(members, Code::PermissionDenied, "secret");
    assert_code(
        mark_read(&mut bob, "secret", 0).await,
        Code::PermissionDenied,
        "secret",
    );

    // The granted user does everything; the refused send stored nothing.
    let (mut stream, joined) = join(&mut alice, "secret", None).await;
    assert_eq!(joined.last_seq, 0);
    let sent = send(&mut alice, "secret", "hi").await;
    assert_eq!(sent.seq, 1);
    assert_eq!(next_message(&mut stream).await.seq, 1);
    assert_eq!(seqs(&newest_page(&mut alice, "secret").await.messages), [1]);
    assert_eq!(
        user_ids(&list_members(&mut alice, "secret").await),
        ["alice"]
    );
    assert_eq!(mark_read(&mut alice, "secret", 1).await.unwrap(), 1);

    // An admin token passes every check without a grant.
    let mut backend_chat = admin_chat(&server).await;
    let (_s, joined) = join(&mut backend_chat, "secret", None).await;
    assert_eq!(joined.last_seq, 1);
    send(&mut backend_chat, "secret", "from the backend").await;
    assert_eq!(
        newest_page(&mut backend_chat, "secret")
            .await
            .messages
            .len(),
        2
    );
    list_members(&mut backend_chat, "secret").await;
    mark_read(&mut backend_chat, "secret", 2).await.unwrap();

    // Public rooms stay open to everyone.
    send(&mut bob, "lobby", "hello").await;
}

/// AdminService: a valid non-admin token is PERMISSION_DENIED, no token
/// UNAUTHENTICATED, on every call.
async fn admin_service_needs_an_admin_token(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut user = AdminServiceClient::with_interceptor(
        server.channel().await,
        Bearer::new(&server.token("mallory")),
    );
    let mut anonymous = AdminServiceClient::new(server.channel().await);
    let create = proto::CreateRoomRequest {
        room: "r".into(),
        visibility: RoomVisibility::Private as i32,
    };
    let grant = proto::GrantAccessRequest {
        room: "r".into(),
        user_ids: vec!["mallory".into()],
    };
    let revoke = proto::RevokeAccessRequest {
        room: "r".into(),
        user_ids: vec!["mallory".into()],
    };
    assert_code(
        within(user.create_room(create.clone())).await,
        Code::PermissionDenied,
        "admin",
    );
    assert_code(
        within(user.grant_access(grant.clone())).await,
        Code::PermissionDenied,
        "admin",
    );
    assert_code(
        within(user.revoke_access(revoke.clone())).await,
        Code::PermissionDenied,
        "admin",
    );
    assert_code(
        within(anonymous.create_room(create)).await,
        Code::Unauthenticated,
        "authorization",
    );
    assert_code(
        within(anonymous.grant_access(grant)).await,
        Code::Unauthenticated,
        "authorization",
    );
    assert_code(
        within(anonymous.revoke_access(revoke)).await,
        Code::Unauthenticated,
        "authorization",
    );
    // Nothing was created: the room is still public to anyone.
    let mut mallory = server.client("mallory").await;
    send(&mut mallory, "r", "still public").await;
}

async fn create_room_rules(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut admin = admin(&server).await;
    // UNSPECIFIED is PUBLIC; the answer says so.
    let answer = within(admin.create_room(proto::CreateRoomRequest {
        room: " Town.Square ".into(),
        visibility: RoomVisibility::Unspecified as i32,
    }))
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        (answer.room.as_str(), answer.visibility, answer.created),
        ("town.square", RoomVisibility::Public as i32, true)
    );
    assert!(
        !create(&mut admin, "town.square", RoomVisibility::Public)
            .await
            .unwrap()
    );
    assert_code(
        create(&mut admin, "town.square", RoomVisibility::Private).await,
        Code::FailedPrecondition,
        "public",
    );
    // A room with messages exists and is public.
    let mut alice = server.client("alice").await;
    send(&mut alice, "used", "hi").await;
    assert!(
        !create(&mut admin, "used", RoomVisibility::Unspecified)
            .await
            .unwrap()
    );
    assert_code(
        create(&mut admin, "used", RoomVisibility::Private).await,
        Code::FailedPrecondition,
        "used",
    );
    // Private, then the same again, then public refused.
    assert!(
        create(&mut admin, "vault", RoomVisibility::Private)
            .await
            .unwrap()
    );
    assert!(
        !create(&mut admin, "vault", RoomVisibility::Private)
            .await
            .unwrap()
    );
    assert_code(
        create(&mut admin, "vault", RoomVisibility::Public).await,
        Code::FailedPrecondition,
        "private",
    );
    // Bad input names its field.
    assert_code(
        create(&mut admin, "no spaces", RoomVisibility::Public).await,
        Code::InvalidArgument,
        "room",
    );
    let bad = within(admin.create_room(proto::CreateRoomRequest {
        room: "x".into(),
        visibility: 7,
    }))
    .await;
    assert_code(bad, Code::InvalidArgument, "visibility");
}

async fn grant_rules(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut admin = admin(&server).await;
    assert_code(
        grant(&mut admin, "nowhere", &["a"]).await,
        Code::NotFound,
        "nowhere",
    );
    assert_code(
        revoke(&mut admin, "nowhere", &["a"]).await,
        Code::NotFound,
        "nowhere",
    );
    create(&mut admin, "open", RoomVisibility::Public)
        .await
        .unwrap();
    assert_code(
        grant(&mut admin, "open", &["a"]).await,
        Code::FailedPrecondition,
        "public",
    );
    create(&mut admin, "club", RoomVisibility::Private)
        .await
        .unwrap();
    grant(&mut admin, "club", &["a", "b", "a"]).await.unwrap();
    grant(&mut admin, "club", &["a"]).await.unwrap();
    // Revoking a user without a grant is fine.
    revoke(&mut admin, "club", &["nobody"]).await.unwrap();
    assert_code(
        grant(&mut admin, "club", &[]).await,
        Code::InvalidArgument,
        "user_ids",
    );
    assert_code(
        grant(&mut admin, "club", &["ok", " "]).await,
        Code::InvalidArgument,
        "user_ids[1]",
    );
    assert_code(
        grant(&mut admin, "club", &["bidi\u{202e}"]).await,
        Code::InvalidArgument,
        "user_ids",
    );
    let long = "x".repeat(129);
    assert_code(
        grant(&mut admin, "club", &[&long]).await,
        Code::InvalidArgument,
        "user_ids",
    );
    let many: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_code(
        grant(&mut admin, "club", &many).await,
        Code::InvalidArgument,
        "1000",
    );
    assert_code(
        grant(&mut admin, "", &["a"]).await,
        Code::InvalidArgument,
        "room",
    );
    // Both granted users get in.
    for user in ["a", "b"] {
        let mut c = server.client(user).await;
        send(&mut c, "club", "in").await;
    }
}

/// Revoking ends the user's open streams in the room with
/// PERMISSION_DENIED, the others see member_left once, the next call is
/// refused, and a new grant lets the user back in.
async fn revoke_ends_live_streams_and_refuses_the_next_call(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut admin = admin(&server).await;
    create(&mut admin, "team", RoomVisibility::Private)
        .await
        .unwrap();
    grant(&mut admin, "team", &["alice", "bob"]).await.unwrap();
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let (mut alice_stream, _) = join(&mut alice, "team", None).await;
    let (mut bob_stream, _) = join(&mut bob, "team", None).await;
    let (mut bob_second, _) = join(&mut bob, "team", None).await;
    // Bob's streams in another room are not touched.
    let (mut bob_lobby, _) = join(&mut bob, "lobby", None).await;
    match next_event(&mut alice_stream).await {
        Event::MemberJoined(j) => assert_eq!(j.member.unwrap().user_id, "bob"),
        other => panic!("expected bob joining, got {other:?}"),
    }

    revoke(&mut admin, "team", &["bob"]).await.unwrap();
    assert_ends_with(&mut bob_stream, Code::PermissionDenied, "team").await;
    assert_ends_with(&mut bob_second, Code::PermissionDenied, "team").await;
    match next_event(&mut alice_stream).await {
        Event::MemberLeft(l) => assert_eq!(l.member.unwrap().user_id, "bob"),
        other => panic!("expected bob leaving, got {other:?}"),
    }
    assert_code(
        join_result(&mut bob, "team").await,
        Code::PermissionDenied,
        "team",
    );
    let refused = send_request(
        &mut bob,
        proto::SendMessageRequest {
            room: "team".into(),
            content: "still here?".into(),
            ..Default::default()
        },
    )
    .await;
    assert_code(refused, Code::PermissionDenied, "team");
    // Exactly one member_left: the next event alice sees is her message.
    let sent = send(&mut alice, "team", "bye bob").await;
    assert_eq!(next_message(&mut alice_stream).await.seq, sent.seq);
    assert_eq!(user_ids(&list_members(&mut alice, "team").await), ["alice"]);
    let lobby = send(&mut alice, "lobby", "lobby is open").await;
    assert_eq!(next_message(&mut bob_lobby).await.seq, lobby.seq);

    // A new grant lets bob back in at once.
    grant(&mut admin, "team", &["bob"]).await.unwrap();
    let (mut back, _) = join(&mut bob, "team", None).await;
    let again = send(&mut alice, "team", "welcome back").await;
    assert_eq!(next_message(&mut back).await.seq, again.seq);
}

/// A stream opened on a room that did not exist (so public) ends with
/// PERMISSION_DENIED when the room is then created private, unless its
/// user holds a grant; an admin's stream stays.
async fn creating_a_room_private_ends_streams_opened_while_it_was_public(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut admin = admin(&server).await;
    let mut backend_chat = admin_chat(&server).await;
    let mut bob = server.client("bob").await;
    let (mut bob_stream, _) = join(&mut bob, "later", None).await;
    let (mut admin_stream, _) = join(&mut backend_chat, "later", None).await;
    assert!(
        create(&mut admin, "later", RoomVisibility::Private)
            .await
            .unwrap()
    );
    assert_ends_with(&mut bob_stream, Code::PermissionDenied, "later").await;
    wait_for_left(&mut admin_stream, "bob").await;
    // The admin's stream goes on.
    let sent = send(&mut backend_chat, "later", "private now").await;
    assert_eq!(next_message(&mut admin_stream).await.seq, sent.seq);
}

/// CreateRoom(PRIVATE) racing sends by a user without a grant to the same
/// unknown room: see [`race_create_private_with_sends`].
async fn create_private_racing_sends_keeps_no_unchecked_message(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    race_create_private_with_sends(&server, &server).await;
}

/// With `CHAT_ROOM_CREATION=backend`, joins, sends and MarkRead to a room
/// that does not exist are NOT_FOUND (for admin tokens too), so nobody can
/// squat a name the backend means to create private; rooms the backend
/// created work as usual.
async fn only_the_backend_creates_rooms_when_configured(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start_with(config(&db.url, &["--room-creation", "backend"])).await;
    let mut mallory = server.client("mallory").await;
    let squat = "dm:alice:bob.7";
    let sent = send_request(
        &mut mallory,
        proto::SendMessageRequest {
            room: squat.into(),
            content: "mine now".into(),
            ..Default::default()
        },
    )
    .await;
    assert_code(sent, Code::NotFound, "CHAT_ROOM_CREATION=backend");
    assert_code(
        join_result(&mut mallory, squat).await,
        Code::NotFound,
        "room dm:alice:bob.7",
    );
    assert_code(
        mark_read(&mut mallory, squat, 0).await,
        Code::NotFound,
        "room",
    );
    let mut backend_chat = admin_chat(&server).await;
    assert_code(
        join_result(&mut backend_chat, "lobby").await,
        Code::NotFound,
        "room lobby",
    );
    assert!(all_rooms(&mut mallory, 200).await.is_empty());

    // The backend creates the private room: nobody squatted it.
    let mut admin = admin(&server).await;
    assert!(
        create(&mut admin, squat, RoomVisibility::Private)
            .await
            .unwrap()
    );
    grant(&mut admin, squat, &["alice"]).await.unwrap();
    let mut alice = server.client("alice").await;
    let (_stream, joined) = join(&mut alice, squat, None).await;
    assert_eq!(joined.last_seq, 0);
    assert_eq!(send(&mut alice, squat, "hi bob").await.seq, 1);
    // And a public room it created is open to everyone.
    assert!(
        create(&mut admin, "lobby", RoomVisibility::Public)
            .await
            .unwrap()
    );
    let (_lobby, _) = join(&mut mallory, "lobby", None).await;
    assert_eq!(send(&mut mallory, "lobby", "hello").await.seq, 1);
    assert_eq!(mark_read(&mut mallory, "lobby", 1).await.unwrap(), 1);
    server.shutdown().await.unwrap();
}
