//! Every malformed request is refused with the field it got wrong.

use chatd::proto::{self, ContentType};
use tonic::Code;

use crate::chat::support::assert_invalid;
use crate::helpers::*;

pub async fn every_validation_rule_names_its_field(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut c = server.client("alice").await;
    let msg = |room: &str, content_type: ContentType, content: &str, id: &str| {
        proto::SendMessageRequest {
            room: room.into(),
            content_type: content_type as i32,
            content: content.into(),
            client_message_id: id.into(),
            ..Default::default()
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
        within(c.list_members(proto::ListMembersRequest {
            room: "!".into(),
            ..Default::default()
        }))
        .await,
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
