//! Access tests (issue 9): admin clients, AdminService and ListRooms/MarkRead
//! calls, and assertions on refusals and ended streams.

use std::time::Duration;

use chatd::proto::admin_service_client::AdminServiceClient;
use chatd::proto::chat_service_client::ChatServiceClient;
use chatd::proto::join_room_response::Event;
use chatd::proto::{self, JoinRoomResponse, RoomVisibility};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use super::{Bearer, Client, TestServer, newest_page, next_event, send_request, within};

pub type Admin =
    AdminServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

pub fn admin_token(server: &TestServer, user: &str) -> String {
    server
        .keys
        .mint_with(user, None, Some(Duration::from_secs(3600)), true)
        .expect("mint admin")
}

/// An AdminService client with an admin token.
pub async fn admin(server: &TestServer) -> Admin {
    AdminServiceClient::with_interceptor(
        server.channel().await,
        Bearer::new(&admin_token(server, "backend")),
    )
}

/// A ChatService client with an admin token.
pub async fn admin_chat(server: &TestServer) -> Client {
    ChatServiceClient::with_interceptor(
        server.channel().await,
        Bearer::new(&admin_token(server, "backend")),
    )
}

pub async fn create(
    admin: &mut Admin,
    room: &str,
    visibility: RoomVisibility,
) -> Result<bool, Status> {
    within(admin.create_room(proto::CreateRoomRequest {
        room: room.into(),
        visibility: visibility as i32,
    }))
    .await
    .map(|r| r.into_inner().created)
}

pub async fn grant(admin: &mut Admin, room: &str, users: &[&str]) -> Result<(), Status> {
    within(admin.grant_access(proto::GrantAccessRequest {
        room: room.into(),
        user_ids: users.iter().map(|u| u.to_string()).collect(),
    }))
    .await
    .map(|_| ())
}

pub async fn revoke(admin: &mut Admin, room: &str, users: &[&str]) -> Result<(), Status> {
    within(admin.revoke_access(proto::RevokeAccessRequest {
        room: room.into(),
        user_ids: users.iter().map(|u| u.to_string()).collect(),
    }))
    .await
    .map(|_| ())
}

pub async fn mark_read(client: &mut Client, room: &str, seq: u64) -> Result<u64, Status> {
    within(client.mark_read(proto::MarkReadRequest {
        room: room.into(),
        seq,
    }))
    .await
    .map(|r| r.into_inner().read_seq)
}

pub async fn list_rooms(
    client: &mut Client,
    page_size: u32,
    page_token: &str,
) -> Result<proto::ListRoomsResponse, Status> {
    within(client.list_rooms(proto::ListRoomsRequest {
        page_size,
        page_token: page_token.into(),
    }))
    .await
    .map(|r| r.into_inner())
}

/// Every one of the caller's rooms, page by page.
pub async fn all_rooms(client: &mut Client, page_size: u32) -> Vec<proto::RoomSummary> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = list_rooms(client, page_size, &token)
            .await
            .expect("list rooms");
        assert!(page.rooms.len() <= page_size.max(1) as usize);
        out.extend(page.rooms);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

pub fn names(rooms: &[proto::RoomSummary]) -> Vec<&str> {
    rooms.iter().map(|r| r.room.as_str()).collect()
}

pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, needle: &str) {
    match result {
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert!(
                status.message().contains(needle),
                "{:?} should name {needle:?}",
                status.message()
            );
        }
        Ok(v) => panic!("expected {code:?}, got {v:?}"),
    }
}

/// The stream's next item must be its end with `code`.
pub async fn assert_ends_with(stream: &mut Streaming<JoinRoomResponse>, code: Code, needle: &str) {
    loop {
        match within(stream.message()).await {
            Ok(Some(r)) => match r.event {
                // Events already on their way before the end are fine.
                Some(
                    Event::Message(_)
                    | Event::MemberJoined(_)
                    | Event::MemberLeft(_)
                    | Event::Typing(_)
                    | Event::ReadMarker(_),
                ) => {}
                other => panic!("unexpected {other:?}"),
            },
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => {
                assert_eq!(status.code(), code, "{status:?}");
                assert!(status.message().contains(needle), "{status:?}");
                return;
            }
        }
    }
}

pub async fn join_result(client: &mut Client, room: &str) -> Result<(), Status> {
    let mut stream = within(client.join_room(proto::JoinRoomRequest {
        room: room.into(),
        resume_after_seq: None,
    }))
    .await?
    .into_inner();
    within(stream.message()).await.map(|_| ())
}

/// Members seen so far on `stream` until `user` leaves; panics on another
/// stream end.
pub async fn wait_for_left(stream: &mut Streaming<JoinRoomResponse>, user: &str) {
    loop {
        if let Event::MemberLeft(l) = next_event(stream).await
            && l.member.as_ref().is_some_and(|m| m.user_id == user)
        {
            return;
        }
    }
}

/// Reads `stream` until `user` joins.
pub async fn wait_for_joined(stream: &mut Streaming<JoinRoomResponse>, user: &str) {
    loop {
        if let Event::MemberJoined(j) = next_event(stream).await
            && j.member.as_ref().is_some_and(|m| m.user_id == user)
        {
            return;
        }
    }
}

/// CreateRoom(PRIVATE) racing sends to the same unknown room by a user
/// without a grant (each round a new room, the sends and the CreateRoom
/// started together). Either the room was created private and every send
/// was refused and nothing is stored, or a send made the room public first
/// and CreateRoom answered FAILED_PRECONDITION. A send that passed its
/// check while the room did not exist must never be stored in a room that
/// CreateRoom reports created private.
///
/// CreateRoom goes through `admin_node`, the sends through `send_node`.
///
/// At least `ROUNDS` rounds, more (up to `MAX_ROUNDS`) until both outcomes
/// were seen: a race that one side always wins tests only that side.
pub async fn race_create_private_with_sends(admin_node: &TestServer, send_node: &TestServer) {
    const ROUNDS: usize = 40;
    const MAX_ROUNDS: usize = 400;
    const SENDS: usize = 4;
    let mut admin = admin(admin_node).await;
    let mut backend_chat = admin_chat(admin_node).await;
    let mallory = send_node.client("mallory").await;
    let (mut private, mut public) = (0, 0);
    let mut round = 0;
    while round < ROUNDS || ((private == 0 || public == 0) && round < MAX_ROUNDS) {
        round += 1;
        let room = format!("race.{round}");
        let sends = (0..SENDS).map(|i| {
            let mut c = mallory.clone();
            let room = room.clone();
            async move {
                send_request(
                    &mut c,
                    proto::SendMessageRequest {
                        room,
                        content: format!("m{i}"),
                        ..Default::default()
                    },
                )
                .await
            }
        });
        let (sent, created) = tokio::join!(
            futures_util::future::join_all(sends),
            create(&mut admin, &room, RoomVisibility::Private)
        );
        let stored = newest_page(&mut backend_chat, &room).await.messages;
        match created {
            Ok(true) => {
                private += 1;
                assert!(
                    stored.is_empty(),
                    "round {round}: created private, yet holds {stored:?}"
                );
                for s in sent {
                    assert_code(s, Code::PermissionDenied, &room);
                }
            }
            Err(status) if status.code() == Code::FailedPrecondition => {
                public += 1;
                for s in &sent {
                    assert!(s.is_ok(), "round {round}: public room refused {s:?}");
                }
                assert_eq!(stored.len(), SENDS, "round {round}");
            }
            other => panic!("round {round}: CreateRoom answered {other:?}"),
        }
    }
    eprintln!("{round} rounds: {private} created private, {public} made public by a send");
    assert!(
        private > 0 && public > 0,
        "{round} rounds saw only one outcome: {private} created private, {public} made public by a send"
    );
}
