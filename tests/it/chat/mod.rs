//! chatd end to end: a real server on loopback, a real PostgreSQL database
//! per test, tonic clients.
//!
//! One test binary, a file per concern: `join`, `send`, `history`,
//! `large` (rooms past one `joined`), `lifecycle` (edits, deletions, reactions, replies), `live` (typing,
//! read markers), `validation`, `server`, `grpc_web` and `binary` (what several
//! of them share in `support`).

mod binary;
mod grpc_web;
mod history;
mod join;
mod large;
mod lifecycle;
mod live;
mod send;
mod server;
pub(crate) mod support;
mod validation;

on_both_backends! {
    two_users_join_talk_and_leave: crate::chat::join::two_users_join_talk_and_leave,
    every_validation_rule_names_its_field: crate::chat::validation::every_validation_rule_names_its_field,
    idempotent_retry_returns_the_original: crate::chat::send::idempotent_retry_returns_the_original,
    concurrent_senders_every_subscriber_sees_one_to_n_in_order:
        crate::chat::send::concurrent_senders_every_subscriber_sees_one_to_n_in_order,
    resume_after_a_cut_has_no_gap_even_during_replay: crate::chat::join::resume_after_a_cut_has_no_gap_even_during_replay,
    history_pages_both_ways: crate::chat::history::history_pages_both_ways,
    pages_are_sized_by_what_is_stored: crate::chat::history::pages_are_sized_by_what_is_stored,
    presence_is_per_user_across_devices: crate::chat::join::presence_is_per_user_across_devices,
    a_slow_subscriber_misses_nothing: crate::chat::join::a_slow_subscriber_misses_nothing,
    a_large_room_lists_500_and_pages_the_rest: crate::chat::large::a_large_room_lists_500_and_pages_the_rest,
    presence_past_the_ring_is_resent_without_a_storage_read:
        crate::chat::large::presence_past_the_ring_is_resent_without_a_storage_read,
    a_presence_burst_in_a_large_room_comes_as_one_count:
        crate::chat::large::a_presence_burst_in_a_large_room_comes_as_one_count,
    restart_keeps_history_and_continues_seq: crate::chat::history::restart_keeps_history_and_continues_seq,
    graceful_shutdown_ends_open_streams: crate::chat::server::graceful_shutdown_ends_open_streams,
    reflection_lists_services_on_v1_and_v1alpha: crate::chat::server::reflection_lists_services_on_v1_and_v1alpha,
    grpc_web_cors_preflight: crate::chat::grpc_web::cors_preflight_allows_grpc_web_and_authorization,
    grpc_web_cors_origins: crate::chat::grpc_web::cors_origins_can_be_restricted,
    grpc_web_unary_and_streaming_over_http1: crate::chat::grpc_web::unary_and_streaming_over_http1,
    grpc_web_compressed_message_is_a_client_error: crate::chat::grpc_web::a_compressed_message_is_a_client_error,
    token_command_and_server_share_a_generated_secret:
        crate::chat::binary::token_command_and_server_share_a_generated_secret,
    sigterm_ends_streams_and_exits_zero: crate::chat::binary::sigterm_ends_streams_and_exits_zero,
    kill_9_keeps_every_acknowledged_message: crate::chat::binary::kill_9_keeps_every_acknowledged_message,
    edits_deletions_and_reactions_are_events_in_order:
        crate::chat::lifecycle::edits_deletions_and_reactions_are_events_in_order,
    a_stream_resuming_before_an_edit_gets_the_message_then_the_edit:
        crate::chat::lifecycle::a_stream_resuming_before_an_edit_gets_the_message_then_the_edit,
    replies_name_a_message_of_the_room: crate::chat::lifecycle::replies_name_a_message_of_the_room,
    every_change_refusal_names_its_field_or_limit:
        crate::chat::lifecycle::every_change_refusal_names_its_field_or_limit,
    typing_reaches_the_others_ends_on_send_and_expires:
        crate::chat::live::typing_reaches_the_others_ends_on_send_and_expires,
    read_markers_are_coalesced_and_listed: crate::chat::live::read_markers_are_coalesced_and_listed,
    changes_count_against_the_send_rate_and_need_the_room:
        crate::chat::lifecycle::changes_count_against_the_send_rate_and_need_the_room,
    typing_and_read_markers_stay_out_of_large_rooms:
        crate::chat::live::typing_and_read_markers_stay_out_of_large_rooms,
}
