//! chatd end to end: a real server on loopback, a real PostgreSQL database
//! per test, tonic clients.
//!
//! One test binary, a file per concern: `join`, `send`, `history`,
//! `validation`, `tokens`, `server`, `grpc_web` and `binary` (what several
//! of them share in `support`). The PostgreSQL-only outage test is here.

#[macro_use]
#[path = "../helpers/mod.rs"]
mod helpers;

mod binary;
mod grpc_web;
mod history;
mod join;
mod lifecycle;
mod send;
mod server;
mod support;
mod tokens;
mod validation;

on_both_backends! {
    two_users_join_talk_and_leave: crate::join::two_users_join_talk_and_leave,
    every_validation_rule_names_its_field: crate::validation::every_validation_rule_names_its_field,
    tokens_are_required_and_checked: crate::tokens::tokens_are_required_and_checked,
    idempotent_retry_returns_the_original: crate::send::idempotent_retry_returns_the_original,
    concurrent_senders_every_subscriber_sees_one_to_n_in_order:
        crate::send::concurrent_senders_every_subscriber_sees_one_to_n_in_order,
    resume_after_a_cut_has_no_gap_even_during_replay: crate::join::resume_after_a_cut_has_no_gap_even_during_replay,
    history_pages_both_ways: crate::history::history_pages_both_ways,
    pages_are_sized_by_what_is_stored: crate::history::pages_are_sized_by_what_is_stored,
    presence_is_per_user_across_devices: crate::join::presence_is_per_user_across_devices,
    a_slow_subscriber_misses_nothing: crate::join::a_slow_subscriber_misses_nothing,
    restart_keeps_history_and_continues_seq: crate::history::restart_keeps_history_and_continues_seq,
    graceful_shutdown_ends_open_streams: crate::server::graceful_shutdown_ends_open_streams,
    reflection_lists_services_on_v1_and_v1alpha: crate::server::reflection_lists_services_on_v1_and_v1alpha,
    grpc_web_cors_preflight: crate::grpc_web::cors_preflight_allows_grpc_web_and_authorization,
    grpc_web_cors_origins: crate::grpc_web::cors_origins_can_be_restricted,
    grpc_web_unary_and_streaming_over_http1: crate::grpc_web::unary_and_streaming_over_http1,
    grpc_web_compressed_message_is_a_client_error: crate::grpc_web::a_compressed_message_is_a_client_error,
    token_command_and_server_share_a_generated_secret:
        crate::binary::token_command_and_server_share_a_generated_secret,
    sigterm_ends_streams_and_exits_zero: crate::binary::sigterm_ends_streams_and_exits_zero,
    kill_9_keeps_every_acknowledged_message: crate::binary::kill_9_keeps_every_acknowledged_message,
    edits_deletions_and_reactions_are_events_in_order:
        crate::lifecycle::edits_deletions_and_reactions_are_events_in_order,
    a_stream_resuming_before_an_edit_gets_the_message_then_the_edit:
        crate::lifecycle::a_stream_resuming_before_an_edit_gets_the_message_then_the_edit,
    replies_name_a_message_of_the_room: crate::lifecycle::replies_name_a_message_of_the_room,
    every_change_refusal_names_its_field_or_limit:
        crate::lifecycle::every_change_refusal_names_its_field_or_limit,
    typing_reaches_the_others_ends_on_send_and_expires:
        crate::lifecycle::typing_reaches_the_others_ends_on_send_and_expires,
    read_markers_are_coalesced_and_listed: crate::lifecycle::read_markers_are_coalesced_and_listed,
}

use chatd::proto;
use helpers::*;
use tonic::Code;

/// PostgreSQL only: a proxy in front of it plays the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_is_unavailable_then_recovers() {
    use tokio_stream::StreamExt;
    use tonic_health::pb::health_check_response::ServingStatus;
    let db = TestDb::postgres().await;
    let proxy = DbProxy::start().await;
    // The health watch below has a connection of its own, which makes no
    // authenticated call: it must outlive CHAT_FIRST_CALL_TIMEOUT.
    let flags = ["--first-call-timeout", "10m"];
    let server = TestServer::start_with(config(&proxy.url_for(&db), &flags)).await;
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
