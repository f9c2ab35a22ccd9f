//! The chat page on the gRPC port: GET serves the embedded bundle with its
//! headers, anything unknown is 404, and gRPC, grpc-web, CORS and health on
//! the same port and connection work as before.

on_both_backends! {
    the_page_and_its_assets_are_served_with_strict_headers:
        crate::web::the_page_and_its_assets_are_served_with_strict_headers,
    unknown_paths_are_404_and_grpc_paths_do_not_answer_get:
        crate::web::unknown_paths_are_404_and_grpc_paths_do_not_answer_get,
    grpc_grpc_web_cors_and_health_still_route_beside_the_page:
        crate::web::grpc_grpc_web_cors_and_health_still_route_beside_the_page,
}

use crate::helpers::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use prost::Message as _;

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(server: &TestServer) -> Sender {
    let tcp = within(tokio::net::TcpStream::connect(server.addr))
        .await
        .expect("connect");
    let (sender, conn) = within(http1::handshake(TokioIo::new(tcp)))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    sender
}

fn request(method: &str, path: &str) -> http::request::Builder {
    hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "chatd")
}

/// Sends `request` and returns the response with its whole body.
async fn roundtrip(
    sender: &mut Sender,
    request: hyper::Request<Full<Bytes>>,
) -> (http::response::Parts, Bytes) {
    within(sender.ready()).await.expect("connection ready");
    let response = within(sender.send_request(request))
        .await
        .expect("response");
    let (parts, body) = response.into_parts();
    let body = within(body.collect()).await.expect("body").to_bytes();
    (parts, body)
}

async fn get(sender: &mut Sender, path: &str) -> (http::response::Parts, Bytes) {
    roundtrip(sender, request("GET", path).body(Full::default()).unwrap()).await
}

fn header<'a>(parts: &'a http::response::Parts, name: &str) -> &'a str {
    parts
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .expect("ascii header")
}

async fn the_page_and_its_assets_are_served_with_strict_headers(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut sender = connect(&server).await;

    let (page, html) = get(&mut sender, "/").await;
    assert_eq!(page.status, 200);
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    let html = String::from_utf8(html.to_vec()).expect("utf-8 page");
    assert!(
        html.contains(r#"<script type="module" src="/app.js">"#),
        "{html}"
    );
    assert!(html.contains(r#"href="/style.css""#), "{html}");
    let csp = header(&page, "content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src http: https:",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "CSP {csp:?} lacks {directive:?}");
    }
    assert!(!csp.contains("unsafe"), "CSP allows unsafe sources: {csp}");
    assert_eq!(header(&page, "cache-control"), "no-cache");
    assert_eq!(header(&page, "x-content-type-options"), "nosniff");
    assert_eq!(header(&page, "referrer-policy"), "no-referrer");

    // The client's current copy: 304 without a body.
    let etag = header(&page, "etag").to_string();
    let (cached, body) = roundtrip(
        &mut sender,
        request("GET", "/")
            .header("if-none-match", &etag)
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(cached.status, 304);
    assert!(body.is_empty());
    assert_eq!(header(&cached, "etag"), etag);

    // HEAD: the headers, no body.
    let (head, body) = roundtrip(
        &mut sender,
        request("HEAD", "/").body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(head.status, 200);
    assert!(body.is_empty());

    for (path, content_type, needle) in [
        (
            "/app.js",
            "text/javascript; charset=utf-8",
            "application/grpc-web",
        ),
        ("/style.css", "text/css; charset=utf-8", "#messages"),
        ("/favicon.svg", "image/svg+xml", "<svg"),
        ("/favicon.ico", "image/svg+xml", "<svg"),
    ] {
        let (parts, body) = get(&mut sender, path).await;
        assert_eq!(parts.status, 200, "{path}");
        assert_eq!(header(&parts, "content-type"), content_type, "{path}");
        assert!(header(&parts, "content-security-policy").contains("default-src 'none'"));
        assert_ne!(header(&parts, "etag"), etag, "{path} has its own ETag");
        let text = String::from_utf8(body.to_vec()).expect("utf-8 asset");
        assert!(text.contains(needle), "{path} lacks {needle:?}");
    }
    server.shutdown().await.expect("clean shutdown");
}

async fn unknown_paths_are_404_and_grpc_paths_do_not_answer_get(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut sender = connect(&server).await;
    for path in [
        "/index.htm",
        "/app.js/",
        "/../Cargo.toml",
        "/favicon.png",
        "/chat.v1.ChatService/ListMembers",
        "/grpc.health.v1.Health/Check",
    ] {
        let (parts, _) = get(&mut sender, path).await;
        assert_eq!(parts.status, 404, "{path}");
        assert!(header(&parts, "content-security-policy").contains("default-src 'none'"));
    }
    server.shutdown().await.expect("clean shutdown");
}

async fn grpc_grpc_web_cors_and_health_still_route_beside_the_page(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;

    // One HTTP/1.1 connection: the page, a CORS preflight, a grpc-web call.
    let mut sender = connect(&server).await;
    assert_eq!(get(&mut sender, "/").await.0.status, 200);
    let (preflight, _) = roundtrip(
        &mut sender,
        request("OPTIONS", "/chat.v1.ChatService/SendMessage")
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,x-grpc-web",
            )
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(preflight.status, 200);
    assert_eq!(header(&preflight, "access-control-allow-origin"), "*");

    let send = crate::helpers::connections::frame(&chatd::proto::SendMessageRequest {
        room: "web-page".into(),
        content: "beside the page".into(),
        ..Default::default()
    });
    let (parts, body) = roundtrip(
        &mut sender,
        request("POST", "/chat.v1.ChatService/SendMessage")
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .header("authorization", format!("Bearer {}", server.token("webby")))
            .body(Full::new(send))
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, 200);
    assert_eq!(header(&parts, "content-type"), "application/grpc-web+proto");
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let sent = chatd::proto::SendMessageResponse::decode(&body[5..5 + len])
        .expect("a SendMessageResponse frame")
        .message
        .expect("message");
    assert_eq!((sent.seq, sent.content.as_str()), (1, "beside the page"));

    // gRPC over HTTP/2 on the same port: ChatService and health.
    let mut client = server.client("grpc").await;
    let page = newest_page(&mut client, "web-page").await;
    assert_eq!(page.messages.len(), 1);
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let status = within(health.check(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    }))
    .await
    .expect("health answers")
    .into_inner()
    .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // An HTTP/2 GET (prior knowledge) gets the page as well.
    let tcp = within(tokio::net::TcpStream::connect(server.addr))
        .await
        .expect("connect");
    let (mut h2, conn) = within(hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    ))
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let response = within(
        h2.send_request(
            hyper::Request::builder()
                .uri(format!("http://{}/", server.addr))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        ),
    )
    .await
    .expect("HTTP/2 response");
    assert_eq!(response.status(), 200);
    server.shutdown().await.expect("clean shutdown");
}

/// The start-up lines of the real binary in `format`, up to the chat
/// page's line, on a loopback port with a data directory of its own (so
/// its secret is chatd's own and the text log carries a page token).
fn start_up_lines(format: &str) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = std::env::temp_dir().join(format!(
        "chatd-test-logs-{format}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args(["--addr", "127.0.0.1:0", "--log-format", format])
        .env("CHAT_DATA_DIR", &dir)
        .env_remove("CHAT_JWT_SECRET")
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chatd");
    let stderr = child.stderr.take().expect("stderr");
    // Read on a thread; the test's deadline kills the child if the page
    // line never comes.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let last = line.contains("chat page");
            lines.push(line);
            if last {
                break;
            }
        }
        let _ = tx.send(lines);
    });
    let lines = rx.recv_timeout(STEP);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    lines.expect("the chat page's start-up line")
}

/// JSON logs are for log collectors: no line carries the page's token
/// (the text log, for a person at a terminal, does).
#[test]
fn json_logs_never_carry_the_page_token() {
    let text = start_up_lines("text");
    assert!(
        text.iter().any(|l| l.contains("#token=ey")),
        "the text log prints the page with its token: {text:?}"
    );
    let json = start_up_lines("json");
    let page = json.last().expect("a page line");
    assert!(page.contains("http://127.0.0.1:"), "{page}");
    for line in &json {
        assert!(!line.contains("token=") && !line.contains("eyJ"), "{line}");
        serde_json::from_str::<serde_json::Value>(line).expect("one JSON object per line");
    }
}
