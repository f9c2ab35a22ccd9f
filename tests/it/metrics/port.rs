//! The metrics port itself: only `GET /metrics` answers, connections that
//! say nothing cannot keep a scraper out, and the binary's JSON log lines
//! and listening sockets with metrics on and off.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::helpers::metrics::{Binary, http_get, metered_server, metrics_of, scrape};
use crate::helpers::{Backend, SECRET, TestDb, within};

/// Only `GET /metrics` answers; everything else on the port is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_port_serves_only_get_metrics() {
    let db = TestDb::create(Backend::Sqlite).await;
    let server = metered_server(&db).await;
    let metrics = metrics_of(&server);
    let (status, content_type, body) = http_get(metrics, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(
        body.contains("# TYPE grpc_server_started counter"),
        "{body}"
    );
    assert!(body.trim_end().ends_with("# EOF"));
    for (verb, path) in [
        ("GET", "/"),
        ("GET", "/metrics/x"),
        ("GET", "/metricsx"),
        ("POST", "/metrics"),
        ("GET", "/chat.v1.ChatService/SendMessage"),
    ] {
        let (status, _, _) = http_get(metrics, verb, path).await;
        assert_eq!(status, 404, "{verb} {path}");
    }
    server.shutdown().await.expect("clean shutdown");
}

/// The finding: 64 connections that connected and sent nothing stopped
/// scrapes (16 at once, 5 s each). With 64, then 300, open, a scrape is
/// answered at once: the port always accepts, past 256 open it closes the
/// oldest silent one, and the others are closed after 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_answer_under_half_open_connections() {
    let db = TestDb::create(Backend::Sqlite).await;
    let server = metered_server(&db).await;
    let metrics = metrics_of(&server);
    let mut silent = Vec::new();
    for count in [64, 300] {
        while silent.len() < count {
            silent.push(within(TcpStream::connect(metrics)).await.expect("connect"));
        }
        let text = tokio::time::timeout(Duration::from_secs(2), scrape(metrics))
            .await
            .unwrap_or_else(|_| panic!("no scrape answered with {count} silent connections"));
        assert!(text.contains("chatd_connections_open"), "{text}");
    }
    // Each is closed: as the oldest silent one, or at its 2 s deadline.
    let deadline = Instant::now() + Duration::from_secs(6);
    for (i, socket) in silent.iter_mut().enumerate() {
        let mut buf = [0u8; 64];
        match tokio::time::timeout_at(deadline.into(), socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!("silent connection {i} got {n} bytes"),
            Err(_) => panic!("silent connection {i} was not closed"),
        }
    }
    server.shutdown().await.expect("clean shutdown");
}

/// `CHAT_LOG_FORMAT=json`: every line is a JSON object with a level and
/// a message. Without `CHAT_METRICS_ADDR` chatd listens on one port only;
/// with it, on two, and says where.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_and_metrics_listen_only_when_asked() {
    let db = TestDb::create(Backend::Sqlite).await;
    let off = Binary::start(&db.url, &[("CHAT_LOG_FORMAT", "json")]);
    let lines = off.lines_until("chatd is serving").await;
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value["level"].is_string(), "{line}");
        assert!(value["message"].is_string(), "{line}");
        assert!(value["timestamp"].is_string(), "{line}");
    }
    let serving: serde_json::Value =
        serde_json::from_str(lines.last().expect("a line")).expect("json");
    assert_eq!(serving["level"], "INFO");
    assert!(
        serving["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );
    // Listening happens before the line above, so this is final.
    assert_eq!(
        off.listening_sockets(),
        1,
        "metrics off: only the gRPC port"
    );
    drop(off);

    let on = Binary::start(&db.url, &[("CHAT_METRICS_ADDR", "127.0.0.1:0")]);
    let lines = on.lines_until("Prometheus metrics").await;
    assert!(
        serde_json::from_str::<serde_json::Value>(&lines[0]).is_err(),
        "text is the default: {}",
        lines[0]
    );
    let url = lines
        .last()
        .and_then(|l| l.split("url=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the metrics url")
        .to_owned();
    assert_eq!(on.listening_sockets(), 2, "metrics on: gRPC and metrics");
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .parse()
        .expect("address");
    let text = scrape(addr).await;
    assert!(text.contains("chatd_streams_open 0"), "{text}");
}

/// A bad `CHAT_LOG_FORMAT` stops start-up with a message naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_log_format_is_refused_by_name() {
    let run = tokio::task::spawn_blocking(|| {
        Command::new(env!("CARGO_BIN_EXE_chatd"))
            .args(["serve", "--addr", "127.0.0.1:0"])
            .env("CHAT_LOG_FORMAT", "xml")
            .env("CHAT_JWT_SECRET", SECRET)
            .stdin(Stdio::null())
            .output()
    });
    let output = within(run)
        .await
        .expect("the blocking task")
        .expect("run chatd");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CHAT_LOG_FORMAT"), "{stderr}");
}
