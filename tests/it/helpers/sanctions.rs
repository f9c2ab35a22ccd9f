//! Sanction tests: bans and mutes through AdminService, and every
//! ChatService call a sanctioned user can make in a room.

use std::time::Duration;

use chatd::proto;
use tonic::Status;

use super::access::Admin;
use super::{Client, send_request, within};

/// A ban or mute request; `secs` 0: until lifted.
pub fn sanction(room: &str, user: &str, secs: i64, reason: &str) -> proto::SanctionRequest {
    proto::SanctionRequest {
        room: room.into(),
        user_id: user.into(),
        duration: (secs != 0).then_some(prost_types::Duration {
            seconds: secs,
            nanos: 0,
        }),
        reason: reason.into(),
    }
}

pub async fn ban(
    admin: &mut Admin,
    request: proto::SanctionRequest,
) -> Result<proto::Sanction, Status> {
    within(admin.ban_user(request))
        .await
        .map(|r| r.into_inner().sanction.expect("sanction in response"))
}

pub async fn mute(
    admin: &mut Admin,
    request: proto::SanctionRequest,
) -> Result<proto::Sanction, Status> {
    within(admin.mute_user(request))
        .await
        .map(|r| r.into_inner().sanction.expect("sanction in response"))
}

fn lift_request(room: &str, user: &str) -> proto::LiftSanctionRequest {
    proto::LiftSanctionRequest {
        room: room.into(),
        user_id: user.into(),
    }
}

pub async fn unban(admin: &mut Admin, room: &str, user: &str) -> Result<(), Status> {
    within(admin.unban_user(lift_request(room, user)))
        .await
        .map(|_| ())
}

pub async fn unmute(admin: &mut Admin, room: &str, user: &str) -> Result<(), Status> {
    within(admin.unmute_user(lift_request(room, user)))
        .await
        .map(|_| ())
}

pub async fn list_sanctions(
    admin: &mut Admin,
    room: &str,
    user: &str,
    page_size: u32,
    page_token: &str,
) -> Result<proto::ListSanctionsResponse, Status> {
    within(admin.list_sanctions(proto::ListSanctionsRequest {
        room: room.into(),
        user_id: user.into(),
        page_size,
        page_token: page_token.into(),
    }))
    .await
    .map(|r| r.into_inner())
}

/// Every sanction in force matching the filters, page by page.
pub async fn all_sanctions(
    admin: &mut Admin,
    room: &str,
    user: &str,
    page_size: u32,
) -> Vec<proto::Sanction> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = list_sanctions(admin, room, user, page_size, &token)
            .await
            .expect("list sanctions");
        assert!(page.sanctions.len() <= page_size.max(1) as usize);
        out.extend(page.sanctions);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// The calls that speak in a room (SendMessage, EditMessage, React,
/// SetTyping), `seq` being a message of the caller's there.
pub async fn speaking_calls(
    client: &mut Client,
    room: &str,
    seq: u64,
) -> Vec<(&'static str, Result<(), Status>)> {
    let sent = send_request(
        client,
        proto::SendMessageRequest {
            room: room.into(),
            content: "let me speak".into(),
            ..Default::default()
        },
    )
    .await
    .map(|_| ());
    let edited = within(client.edit_message(proto::EditMessageRequest {
        room: room.into(),
        message_seq: seq,
        content: "edited".into(),
    }))
    .await
    .map(|_| ());
    let reacted = within(client.react(proto::ReactRequest {
        room: room.into(),
        message_seq: seq,
        reaction: "👍".into(),
        add: true,
    }))
    .await
    .map(|_| ());
    let typing = within(client.set_typing(proto::SetTypingRequest {
        room: room.into(),
        typing: true,
    }))
    .await
    .map(|_| ());
    vec![
        ("SendMessage", sent),
        ("EditMessage", edited),
        ("React", reacted),
        ("SetTyping", typing),
    ]
}

/// Every ChatService call that names a room, `seq` being a message of the
/// caller's there: the speaking calls, then JoinRoom, ListHistory,
/// ListMembers, MarkRead, DeleteMessage and ListReadMarkers.
pub async fn every_room_call(
    client: &mut Client,
    room: &str,
    seq: u64,
) -> Vec<(&'static str, Result<(), Status>)> {
    let mut calls = speaking_calls(client, room, seq).await;
    calls.push(("JoinRoom", super::access::join_result(client, room).await));
    let history = within(client.list_history(proto::ListHistoryRequest {
        room: room.into(),
        ..Default::default()
    }))
    .await
    .map(|_| ());
    calls.push(("ListHistory", history));
    let members = within(client.list_members(proto::ListMembersRequest {
        room: room.into(),
        ..Default::default()
    }))
    .await
    .map(|_| ());
    calls.push(("ListMembers", members));
    let marked = super::access::mark_read(client, room, 0).await.map(|_| ());
    calls.push(("MarkRead", marked));
    let markers = within(client.list_read_markers(proto::ListReadMarkersRequest {
        room: room.into(),
        ..Default::default()
    }))
    .await
    .map(|_| ());
    calls.push(("ListReadMarkers", markers));
    calls.push(("DeleteMessage", delete(client, room, seq).await));
    calls
}

pub async fn delete(client: &mut Client, room: &str, seq: u64) -> Result<(), Status> {
    within(client.delete_message(proto::DeleteMessageRequest {
        room: room.into(),
        message_seq: seq,
    }))
    .await
    .map(|_| ())
}

/// Each call must be PERMISSION_DENIED with a message holding every one of
/// `needles`.
pub fn assert_all_refused(calls: &[(&'static str, Result<(), Status>)], needles: &[&str]) {
    for (call, result) in calls {
        match result {
            Err(status) => {
                assert_eq!(
                    status.code(),
                    tonic::Code::PermissionDenied,
                    "{call}: {status:?}"
                );
                for needle in needles {
                    assert!(status.message().contains(needle), "{call}: {status:?}");
                }
            }
            Ok(()) => panic!("{call} was let through"),
        }
    }
}

/// Retries `attempt` every 100 ms until it answers `Ok`, for at most
/// `limit`; panics with the last refusal after that.
pub async fn eventually<F, Fut>(limit: Duration, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Status>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = attempt().await;
        match last {
            Ok(()) => return,
            Err(status) if tokio::time::Instant::now() >= deadline => {
                panic!("still refused after {limit:?}: {status:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
