//! The connection metrics: `chatd_connections_open` and
//! `chatd_connections_closed_total{reason}`.

use std::time::{Duration, Instant};

use chatd::proto;

use crate::helpers::connections::{RawBody, Watched, call, frame, h2_connect, request, whole_body};
use crate::helpers::metrics::{metrics_of, sample, scrape, wait_for};
use crate::helpers::{Backend, STEP, TestDb, TestServer, config};

fn list_members_request(server: &TestServer, user: &str) -> hyper::Request<RawBody> {
    let body = frame(&proto::ListMembersRequest {
        room: "r".into(),
        ..Default::default()
    });
    request(
        "/chat.v1.ChatService/ListMembers",
        &server.token(user),
        whole_body(body),
    )
}

const FIRST_CALL: (&str, &str) = ("reason", "first_call");
const EVICTED: (&str, &str) = ("reason", "evicted");

/// The open gauge follows the connections holding a slot; a connection
/// that never calls is closed and counted as `first_call`, and one that
/// gives its slot up to a new client as `evicted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_counted_open_and_closed() {
    let db = TestDb::create(Backend::Sqlite).await;
    let server = TestServer::start_with(config(
        &db.url,
        &[
            "--metrics-addr",
            "127.0.0.1:0",
            "--max-connections",
            "2",
            "--first-call-timeout",
            "1s",
        ],
    ))
    .await;
    let metrics = metrics_of(&server);
    let text = scrape(metrics).await;
    assert_eq!(sample(&text, "chatd_connections_open", &[]), Some(0.0));
    assert_eq!(
        sample(&text, "chatd_connections_closed_total", &[FIRST_CALL]),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "chatd_connections_closed_total", &[EVICTED]),
        Some(0.0)
    );

    let mut oldest = Watched::connect(server.addr).await;
    assert_eq!(
        call(&mut oldest.sender, list_members_request(&server, "a"))
            .await
            .0,
        0
    );
    let mut silent = Watched::connect(server.addr).await;
    wait_for(metrics, "chatd_connections_open", &[], |v| v == Some(2.0)).await;
    silent
        .closed_by(Instant::now() + STEP, "never called")
        .await;
    let text = wait_for(metrics, "chatd_connections_open", &[], |v| v == Some(1.0)).await;
    assert_eq!(
        sample(&text, "chatd_connections_closed_total", &[FIRST_CALL]),
        Some(1.0)
    );

    let mut newer = Watched::connect(server.addr).await;
    assert_eq!(
        call(&mut newer.sender, list_members_request(&server, "b"))
            .await
            .0,
        0
    );
    let mut newcomer = h2_connect(server.addr).await;
    let answered = tokio::time::timeout(
        Duration::from_secs(3),
        call(&mut newcomer, list_members_request(&server, "c")),
    )
    .await
    .expect("answered once the idlest connection gave its slot up");
    assert_eq!(answered.0, 0);
    oldest.closed_by(Instant::now() + STEP, "the idlest").await;
    let text = wait_for(metrics, "chatd_connections_closed_total", &[EVICTED], |v| {
        v == Some(1.0)
    })
    .await;
    assert_eq!(sample(&text, "chatd_connections_open", &[]), Some(2.0));
    assert_eq!(
        sample(&text, "chatd_connections_closed_total", &[FIRST_CALL]),
        Some(1.0)
    );
    assert!(!newer.is_closed());
    server.shutdown().await.expect("clean shutdown");
}
