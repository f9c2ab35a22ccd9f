//! Prometheus metrics and JSON logs (issue 10): `/metrics` scraped from a
//! real chatd over loopback after real calls (gRPC and grpc-web) and a
//! cluster's NATS metrics here; the connection metrics in `connections`;
//! the metrics port itself and the binary's JSON log lines and listening
//! sockets in `port`.

mod connections;
mod port;

use std::collections::HashSet;

use crate::helpers::cluster::{Nats, node_args, unique_cluster};
use crate::helpers::connections::frame;
use crate::helpers::metrics::{metered_server, metrics_of, sample, scrape, wait_for};
use crate::helpers::{
    Backend, TestDb, TestServer, config, join, next_any_event, next_message, send, send_request,
    within,
};
use chatd::proto;
use chatd::proto::join_room_response::Event;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

on_both_backends! {
    unary_calls_are_counted_with_their_codes: crate::metrics::unary_calls_are_counted_with_their_codes,
    join_streams_are_counted_while_open_and_when_cancelled: crate::metrics::join_streams_are_counted_while_open_and_when_cancelled,
    grpc_web_calls_are_counted_under_the_same_names: crate::metrics::grpc_web_calls_are_counted_under_the_same_names,
    unknown_methods_share_one_fixed_label: crate::metrics::unknown_methods_share_one_fixed_label,
    a_slow_reader_counts_lag_catchups: crate::metrics::a_slow_reader_counts_lag_catchups,
}

const CHAT: (&str, &str) = ("grpc_service", "chat.v1.ChatService");

fn method(name: &str) -> (&str, &str) {
    ("grpc_method", name)
}

/// OK and InvalidArgument unary calls: started, handled by code, latency,
/// messages each way; a stored message moves chatd_messages_stored_total
/// (a retried send does not), batches and commits are observed, the pool
/// gauges are there, and no NATS metric on a single node.
async fn unary_calls_are_counted_with_their_codes(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = metered_server(&db).await;
    let metrics = metrics_of(&server);
    let mut alice = server.client("alice").await;

    let before = scrape(metrics).await;
    assert_eq!(
        sample(&before, "chatd_messages_stored_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &before,
            "grpc_server_started_total",
            &[CHAT, method("SendMessage")]
        ),
        Some(0.0),
        "known methods are there from the start"
    );

    let retry = proto::SendMessageRequest {
        room: "lobby".into(),
        content: "hello".into(),
        client_message_id: "alice-1".into(),
        ..Default::default()
    };
    send_request(&mut alice, retry.clone()).await.expect("send");
    send_request(&mut alice, retry).await.expect("retried send");
    let bad = send_request(
        &mut alice,
        proto::SendMessageRequest {
            room: "".into(),
            content: "x".into(),
            ..Default::default()
        },
    )
    .await
    .expect_err("an empty room is refused");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    let text = scrape(metrics).await;
    let send = [CHAT, method("SendMessage"), ("grpc_type", "unary")];
    let code = |c| {
        [
            CHAT,
            method("SendMessage"),
            ("grpc_type", "unary"),
            ("grpc_code", c),
        ]
    };
    assert_eq!(sample(&text, "grpc_server_started_total", &send), Some(3.0));
    assert_eq!(
        sample(&text, "grpc_server_handled_total", &code("OK")),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "grpc_server_handled_total", &code("InvalidArgument")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "grpc_server_handling_seconds_count", &send),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            "grpc_server_handling_seconds_bucket",
            &[CHAT, method("SendMessage"), ("le", "+Inf")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, "grpc_server_msg_received_total", &send),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, "grpc_server_msg_sent_total", &send),
        Some(2.0)
    );
    // The retry found the first message: one stored.
    assert_eq!(sample(&text, "chatd_messages_stored_total", &[]), Some(1.0));
    assert_eq!(
        sample(&text, "chatd_write_batch_size_count", &[]),
        Some(2.0)
    );
    assert_eq!(sample(&text, "chatd_write_batch_size_sum", &[]), Some(2.0));
    assert_eq!(sample(&text, "chatd_commit_seconds_count", &[]), Some(2.0));
    assert_eq!(sample(&text, "chatd_db_pool_max_size", &[]), Some(16.0));
    assert!(
        sample(&text, "chatd_db_pool_size", &[]).is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "chatd_db_pool_waiters", &[]), Some(0.0));
    assert!(
        !text.contains("chatd_nats_"),
        "no NATS metrics on a single node"
    );
    server.shutdown().await.expect("clean shutdown");
}

/// A JoinRoom stream: streams open and rooms live go up, then down when
/// the client cancels (counted Canceled); messages sent on it and
/// deliveries count; a resume counts a catch-up read.
async fn join_streams_are_counted_while_open_and_when_cancelled(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = metered_server(&db).await;
    let metrics = metrics_of(&server);
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;

    let (mut stream, _) = join(&mut alice, "room", None).await;
    let text = scrape(metrics).await;
    assert_eq!(sample(&text, "chatd_streams_open", &[]), Some(1.0));
    assert_eq!(sample(&text, "chatd_rooms_live", &[]), Some(1.0));
    // Bob's messages move his read marker, and the stream gets that too
    // (the first at once, the newest a second later): count what comes.
    for i in 1..=3 {
        send(&mut bob, "room", &format!("m{i}")).await;
    }
    let (mut messages, mut markers, mut newest_marker) = (0, 0.0, 0);
    while messages < 3 || newest_marker < 3 {
        match next_any_event(&mut stream).await {
            Event::Message(m) => {
                messages += 1;
                assert_eq!(m.seq, messages);
            }
            Event::ReadMarker(r) => {
                markers += 1.0;
                newest_marker = r.seq;
            }
            other => panic!("expected messages and bob's read marker, got {other:?}"),
        }
    }
    let join_room = [CHAT, method("JoinRoom"), ("grpc_type", "server_stream")];
    let text = scrape(metrics).await;
    assert_eq!(
        sample(&text, "grpc_server_started_total", &join_room),
        Some(1.0)
    );
    // `joined`, three messages and bob's read markers.
    assert_eq!(
        sample(&text, "grpc_server_msg_sent_total", &join_room),
        Some(4.0 + markers)
    );
    assert_eq!(
        sample(&text, "grpc_server_msg_received_total", &join_room),
        Some(1.0)
    );
    assert_eq!(sample(&text, "chatd_deliveries_total", &[]), Some(3.0));
    assert_eq!(
        sample(&text, "chatd_catchup_reads_total", &[("reason", "resume")]),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "grpc_server_handled_total",
            &[CHAT, method("JoinRoom")]
        ),
        None,
        "nothing handled while the stream is open"
    );

    // A second stream resumes after seq 1: two from storage.
    let (mut resumed, _) = join(&mut alice, "room", Some(1)).await;
    assert_eq!(next_message(&mut resumed).await.seq, 2);
    assert_eq!(next_message(&mut resumed).await.seq, 3);
    let text = scrape(metrics).await;
    assert_eq!(sample(&text, "chatd_streams_open", &[]), Some(2.0));
    assert_eq!(
        sample(&text, "chatd_catchup_reads_total", &[("reason", "resume")]),
        Some(1.0)
    );
    assert_eq!(sample(&text, "chatd_deliveries_total", &[]), Some(5.0));

    drop(stream);
    drop(resumed);
    let canceled = [CHAT, method("JoinRoom"), ("grpc_code", "Canceled")];
    let text = wait_for(metrics, "grpc_server_handled_total", &canceled, |v| {
        v == Some(2.0)
    })
    .await;
    assert_eq!(
        sample(&text, "grpc_server_handling_seconds_count", &join_room),
        Some(2.0)
    );
    wait_for(metrics, "chatd_streams_open", &[], |v| v == Some(0.0)).await;
    wait_for(metrics, "chatd_rooms_live", &[], |v| v == Some(0.0)).await;
    server.shutdown().await.expect("clean shutdown");
}

/// A reader the ring leaves behind is caught up from storage: counted as
/// `lag` catch-up reads, and each message still counts as one delivery.
async fn a_slow_reader_counts_lag_catchups(backend: Backend) {
    let db = TestDb::create(backend).await;
    // A tiny ring and a small HTTP/2 window: the reader falls behind both.
    let server = TestServer::start_with(config(
        &db.url,
        &["--room-buffer", "16", "--metrics-addr", "127.0.0.1:0"],
    ))
    .await;
    let metrics = metrics_of(&server);
    let mut slow = server.client_with_window("slow", 65_535).await;
    let mut sender = server.client("sender").await;
    let (mut stream, _) = join(&mut slow, "s", None).await;
    let big = "x".repeat(4000);
    for i in 1..=100 {
        send(&mut sender, "s", &format!("m{i} {big}")).await;
    }
    for seq in 1..=100 {
        assert_eq!(next_message(&mut stream).await.seq, seq);
    }
    let text = scrape(metrics).await;
    assert!(
        sample(&text, "chatd_catchup_reads_total", &[("reason", "lag")]).is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "chatd_deliveries_total", &[]), Some(100.0));
    assert_eq!(
        sample(&text, "chatd_messages_stored_total", &[]),
        Some(100.0)
    );
    server.shutdown().await.expect("clean shutdown");
}

/// grpc-web over HTTP/1.1, as a browser sends it: an OK call and an
/// InvalidArgument one, counted under the gRPC names.
async fn grpc_web_calls_are_counted_under_the_same_names(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = metered_server(&db).await;
    let metrics = metrics_of(&server);
    let token = server.token("web");
    let tcp = within(tokio::net::TcpStream::connect(server.addr))
        .await
        .expect("connect");
    let (mut sender, conn) = within(hyper::client::conn::http1::handshake(TokioIo::new(tcp)))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    for room in ["web", ""] {
        let message = proto::SendMessageRequest {
            room: room.into(),
            content: "from a browser".into(),
            ..Default::default()
        };
        let request = hyper::Request::builder()
            .method("POST")
            .uri("/chat.v1.ChatService/SendMessage")
            .header("host", "chatd")
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(frame(&message)))
            .expect("request");
        within(sender.ready()).await.expect("ready");
        let response = within(sender.send_request(request))
            .await
            .expect("response");
        assert_eq!(response.status(), 200);
        within(response.into_body().collect()).await.expect("body");
    }
    let text = scrape(metrics).await;
    let send = [CHAT, method("SendMessage"), ("grpc_type", "unary")];
    assert_eq!(sample(&text, "grpc_server_started_total", &send), Some(2.0));
    for code in ["OK", "InvalidArgument"] {
        assert_eq!(
            sample(
                &text,
                "grpc_server_handled_total",
                &[CHAT, method("SendMessage"), ("grpc_code", code)]
            ),
            Some(1.0),
            "{code}: {text}"
        );
    }
    assert_eq!(
        sample(&text, "grpc_server_msg_received_total", &send),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "grpc_server_msg_sent_total", &send),
        Some(1.0)
    );
    assert_eq!(sample(&text, "chatd_messages_stored_total", &[]), Some(1.0));
    server.shutdown().await.expect("clean shutdown");
}

/// Calls to paths chatd does not serve all count under one fixed label
/// set, so clients cannot create series at will.
async fn unknown_methods_share_one_fixed_label(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = metered_server(&db).await;
    let metrics = metrics_of(&server);
    for path in [
        "/no.such.Service/Thing",
        "/chat.v1.ChatService/NoSuchMethod",
        "/x",
    ] {
        let mut grpc = tonic::client::Grpc::new(server.channel().await);
        within(grpc.ready()).await.expect("ready");
        let status = within(grpc.unary::<_, proto::ListMembersResponse, _>(
            tonic::Request::new(proto::ListMembersRequest {
                room: "r".into(),
                ..Default::default()
            }),
            http::uri::PathAndQuery::from_static(path),
            tonic_prost::ProstCodec::default(),
        ))
        .await
        .expect_err("not served");
        // ChatService's interceptor asks for a token first.
        let expected = if path.starts_with("/chat.v1.") {
            tonic::Code::Unauthenticated
        } else {
            tonic::Code::Unimplemented
        };
        assert_eq!(status.code(), expected, "{path}");
    }
    let text = scrape(metrics).await;
    let unknown = [
        ("grpc_service", "unknown"),
        ("grpc_method", "unknown"),
        ("grpc_type", "unknown"),
    ];
    assert_eq!(
        sample(&text, "grpc_server_started_total", &unknown),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            "grpc_server_handled_total",
            &[unknown[0], unknown[1], ("grpc_code", "Unimplemented")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            "grpc_server_handled_total",
            &[unknown[0], unknown[1], ("grpc_code", "Unauthenticated")]
        ),
        Some(1.0)
    );
    assert!(!text.contains("no.such.Service") && !text.contains("NoSuchMethod"));
    server.shutdown().await.expect("clean shutdown");
}

/// On a cluster: `chatd_nats_connected` follows the NATS connection, and
/// a message that reached a node only through the storage poll (NATS
/// down) counts as a missed notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_reports_nats_state_and_missed_notifications() {
    let db = TestDb::postgres().await;
    let mut nats = Nats::start().await;
    let url = nats.url();
    let cluster = unique_cluster("metrics");
    let mut args = node_args(&url, &cluster, "3s");
    args.extend(["--metrics-addr", "127.0.0.1:0"]);
    let a = TestServer::start_with(config(&db.url, &args)).await;
    let b = TestServer::start_with(config(&db.url, &args)).await;
    let metrics = metrics_of(&b);
    let text = wait_for(metrics, "chatd_nats_connected", &[], |v| v == Some(1.0)).await;
    assert_eq!(
        sample(&text, "chatd_nats_notifications_missed_total", &[]),
        Some(0.0)
    );
    let mut reader = b.client("reader").await;
    let (mut stream, _) = join(&mut reader, "r", None).await;
    let mut writer = a.client("writer").await;

    nats.stop();
    wait_for(metrics, "chatd_nats_connected", &[], |v| v == Some(0.0)).await;
    send(&mut writer, "r", "through storage").await;
    assert_eq!(next_message(&mut stream).await.seq, 1);
    let text = scrape(metrics).await;
    assert_eq!(
        sample(&text, "chatd_nats_notifications_missed_total", &[]),
        Some(1.0),
        "{text}"
    );
    // A call that ends on this node, so handled_total has a series.
    crate::helpers::list_members(&mut reader, "r").await;
    nats.restart().await;
    let text = wait_for(metrics, "chatd_nats_connected", &[], |v| v == Some(1.0)).await;
    // Every family is in this scrape (a cluster node that has served
    // calls): what the docs name must be among them.
    documented_names_are_exported(&text);
    drop(stream);
    b.shutdown().await.expect("clean shutdown");
    a.shutdown().await.expect("clean shutdown");
}

/// The metric names the README's metrics section and the Grafana
/// dashboard use, each one a family in `text`.
fn documented_names_are_exported(text: &str) {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README");
    let section = readme
        .split("## Metrics and alerting")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the README's metrics section");
    let dashboard =
        std::fs::read_to_string(format!("{root}/docs/grafana/chatd.json")).expect("dashboard");
    let families: HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for doc in [section, dashboard.as_str()] {
        let names = doc
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("grpc_server_") || w.starts_with("chatd_"));
        let mut checked = 0;
        for name in names {
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            assert!(
                families.contains(family),
                "{name} is documented but not exported"
            );
            checked += 1;
        }
        assert!(checked > 10, "too few metric names found in the docs");
    }
}
