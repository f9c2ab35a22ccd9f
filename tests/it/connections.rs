//! Connections and request bodies from hostile or broken clients: nobody
//! may lock everyone out, nothing is held forever, and shutdown keeps to
//! its grace period.

on_both_backends! {
    silent_sockets_cannot_lock_clients_out: crate::connections::silent_sockets_cannot_lock_clients_out,
    a_slow_http1_head_is_closed_at_the_deadline: crate::connections::a_slow_http1_head_is_closed_at_the_deadline,
    slots_are_held_by_handshaken_connections: crate::connections::slots_are_held_by_handshaken_connections,
    a_handshaken_idle_connection_outlives_the_handshake_deadline:
        crate::connections::a_handshaken_idle_connection_outlives_the_handshake_deadline,
    per_ip_limit_closes_the_extra_connection: crate::connections::per_ip_limit_closes_the_extra_connection,
    a_request_body_that_never_finishes_is_ended: crate::connections::a_request_body_that_never_finishes_is_ended,
    a_grpc_web_text_body_that_never_finishes_is_ended:
        crate::connections::a_grpc_web_text_body_that_never_finishes_is_ended,
    the_body_deadline_never_cuts_a_stream: crate::connections::the_body_deadline_never_cuts_a_stream,
    shutdown_takes_at_most_the_grace: crate::connections::shutdown_takes_at_most_the_grace,
    idle_connections_cannot_hold_every_slot: crate::connections::idle_connections_cannot_hold_every_slot,
    the_idlest_connection_gives_its_slot_up_and_busy_ones_never:
        crate::connections::the_idlest_connection_gives_its_slot_up_and_busy_ones_never,
    only_an_authenticated_call_keeps_a_connection_past_the_first_call_deadline:
        crate::connections::only_an_authenticated_call_keeps_a_connection_past_the_first_call_deadline,
    the_clients_grpc_timeout_ends_a_call_not_yet_answered:
        crate::connections::the_clients_grpc_timeout_ends_a_call_not_yet_answered,
}

use std::time::{Duration, Instant};

use crate::helpers::connections::*;
use crate::helpers::*;
use bytes::Bytes;
use chatd::proto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const LIST_MEMBERS: &str = "/chat.v1.ChatService/ListMembers";
const SEND_MESSAGE: &str = "/chat.v1.ChatService/SendMessage";
const JOIN_ROOM: &str = "/chat.v1.ChatService/JoinRoom";

fn list_members_request(server: &TestServer) -> hyper::Request<RawBody> {
    let body = frame(&proto::ListMembersRequest {
        room: "r".into(),
        ..Default::default()
    });
    request(LIST_MEMBERS, &server.token("u"), whole_body(body))
}

/// A JoinRoom call on `room` as `user`, whose stream stays open.
fn join_request(server: &TestServer, user: &str, room: &str) -> hyper::Request<RawBody> {
    let body = frame(&proto::JoinRoomRequest {
        room: room.into(),
        resume_after_seq: None,
    });
    request(JOIN_ROOM, &server.token(user), whole_body(body))
}

/// A health call (`Check` or `Watch`) without a token.
fn health_request(method: &str) -> hyper::Request<RawBody> {
    let body = frame(&HealthCheckRequest {
        service: String::new(),
    });
    untokened_request(
        &format!("/grpc.health.v1.Health/{method}"),
        whole_body(body),
    )
}

/// Waits until the server closes `socket` (end of file or an error), by
/// `deadline`; panics otherwise.
async fn closed_by(socket: &mut TcpStream, deadline: Instant) {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline.into(), socket.read(&mut buf)).await {
            Err(_) => panic!("the server did not close the connection in time"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue, // the server's own preface, if any
        }
    }
}

/// The issue's test: at 20 connections, 25 silent sockets and 25 that sent
/// half the HTTP/2 preface do not keep a client out for longer than the
/// handshake deadline plus a second, and all 50 are closed.
async fn silent_sockets_cannot_lock_clients_out(backend: Backend) {
    let db = TestDb::create(backend).await;
    let handshake = Duration::from_secs(2);
    let server = TestServer::start_with(config(
        &db.url,
        &["--max-connections", "20", "--handshake-timeout", "2s"],
    ))
    .await;
    let mut idle = Vec::new();
    for i in 0..50 {
        let mut socket = within(TcpStream::connect(server.addr)).await.unwrap();
        if i % 2 == 1 {
            within(socket.write_all(b"PRI * HTTP/2.0\r\n"))
                .await
                .unwrap();
        }
        idle.push(socket);
    }
    let opened = Instant::now();

    let started = Instant::now();
    let served = tokio::time::timeout(handshake + Duration::from_secs(1), async {
        let channel = tonic::transport::Endpoint::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .expect("connect");
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health check")
            .into_inner()
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "a client was not served within the handshake deadline plus a second ({:?})",
            started.elapsed()
        )
    });
    assert_eq!(served.status, ServingStatus::Serving as i32);

    // Every socket that never finished its handshake is closed by the
    // deadline (plus a margin for a loaded machine).
    let deadline = opened + handshake + Duration::from_secs(3);
    for socket in &mut idle {
        closed_by(socket, deadline).await;
    }
    server.shutdown().await.unwrap();
}

/// An HTTP/1.1 request head that never ends is closed at the handshake
/// deadline too (hyper's own header timeout is 30 s).
async fn a_slow_http1_head_is_closed_at_the_deadline(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start_with(config(&db.url, &["--handshake-timeout", "1s"])).await;
    let mut socket = within(TcpStream::connect(server.addr)).await.unwrap();
    let opened = Instant::now();
    within(socket.write_all(b"POST /chat.v1.ChatService/ListMembers HTTP/1.1\r\nhost: a\r\n"))
        .await
        .unwrap();
    closed_by(&mut socket, opened + Duration::from_secs(4)).await;
    server.shutdown().await.unwrap();
}

/// Slots still bound handshaken connections: with one slot, held by a
/// connection with a call in flight (an idle one would give it up), a
/// second client waits until the first leaves, then is served.
async fn slots_are_held_by_handshaken_connections(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start_with(config(&db.url, &["--max-connections", "1"])).await;
    let mut first = h2_connect(server.addr).await;
    assert_eq!(call(&mut first, list_members_request(&server)).await.0, 0);
    let _stream = open_stream(&mut first, join_request(&server, "u", "r")).await;

    let mut second = h2_connect(server.addr).await;
    let waiting = tokio::spawn({
        let request = list_members_request(&server);
        async move { call(&mut second, request).await }
    });
    // Nothing to wait for: the call must not be answered while the slot is
    // taken. A short bounded look is enough to catch it being served.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a second connection got in");
    drop((first, _stream));
    assert_eq!(within(waiting).await.unwrap().0, 0);
    server.shutdown().await.unwrap();
}

/// The deadline is for the handshake only: a client that connected and
/// then stayed idle for longer is still served on the same connection.
async fn a_handshaken_idle_connection_outlives_the_handshake_deadline(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start_with(config(&db.url, &["--handshake-timeout", "500ms"])).await;
    let mut idle_from_start = h2_connect(server.addr).await;
    let mut idle_after_a_call = h2_connect(server.addr).await;
    assert_eq!(
        call(&mut idle_after_a_call, list_members_request(&server))
            .await
            .0,
        0
    );
    // The passing of time is the event here.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for sender in [&mut idle_from_start, &mut idle_after_a_call] {
        assert!(!sender.is_closed(), "connection closed");
        assert_eq!(call(sender, list_members_request(&server)).await.0, 0);
    }
    server.shutdown().await.unwrap();
}

/// Over CHAT_MAX_CONNECTIONS_PER_IP the new connection is closed at once;
/// a connection that closes makes room again.
async fn per_ip_limit_closes_the_extra_connection(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start_with(config(&db.url, &["--max-connections-per-ip", "2"])).await;
    let mut a = h2_connect(server.addr).await;
    let mut b = h2_connect(server.addr).await;
    for sender in [&mut a, &mut b] {
        assert_eq!(call(sender, list_members_request(&server)).await.0, 0);
    }
    let mut extra = within(TcpStream::connect(server.addr)).await.unwrap();
    closed_by(&mut extra, Instant::now() + STEP).await;
    assert!(!a.is_closed() && !b.is_closed());

    drop(a);
    // The server learns of the close asynchronously: retry until it has.
    let deadline = Instant::now() + STEP;
    loop {
        let mut c = h2_connect(server.addr).await;
        let request = list_members_request(&server);
        let answered = tokio::time::timeout(Duration::from_secs(2), async {
            c.ready().await.ok()?;
            c.send_request(request).await.ok()
        })
        .await;
        if let Ok(Some(response)) = answered {
            assert_eq!(status_of(response).await.0, 0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no room after a connection closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await.unwrap();
}

/// A body whose length prefix announces 60 KB and that sends 6 bytes, and
/// a whole message whose body never ends, both end with DEADLINE_EXCEEDED
/// within the request body deadline.
async fn a_request_body_that_never_finishes_is_ended(backend: Backend) {
    let db = TestDb::create(backend).await;
    let timeout = Duration::from_secs(1);
    let server = TestServer::start_with(config(&db.url, &["--request-body-timeout", "1s"])).await;
    let mut sender = h2_connect(server.addr).await;
    let token = server.token("slow");

    let six_bytes = Bytes::from_static(&[0, 0, 0, 0xEA, 0x60, 0x0A]);
    let whole = frame(&proto::SendMessageRequest {
        room: "r".into(),
        content: "never sent".into(),
        ..Default::default()
    });
    for body in [six_bytes, whole] {
        let started = Instant::now();
        let (code, message) = tokio::time::timeout(
            timeout + Duration::from_secs(3),
            call(
                &mut sender,
                request(SEND_MESSAGE, &token, hanging_body(body)),
            ),
        )
        .await
        .expect("the hanging body was not ended");
        assert_eq!(code, Code::DeadlineExceeded as i32, "{message}");
        assert!(message.contains("CHAT_REQUEST_BODY_TIMEOUT"), "{message}");
        assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
    }
    // Nothing was stored, and the connection still serves.
    let mut client = server.client("slow").await;
    assert!(newest_page(&mut client, "r").await.messages.is_empty());
    assert_eq!(call(&mut sender, list_members_request(&server)).await.0, 0);
    server.shutdown().await.unwrap();
}

/// The same over grpc-web-text on HTTP/1.1: the deadline sees the body as
/// tonic-web translates it.
async fn a_grpc_web_text_body_that_never_finishes_is_ended(backend: Backend) {
    use http_body_util::BodyExt;
    let db = TestDb::create(backend).await;
    let server = TestServer::start_with(config(&db.url, &["--request-body-timeout", "1s"])).await;
    let tcp = within(TcpStream::connect(server.addr)).await.unwrap();
    let (mut sender, conn) = within(hyper::client::conn::http1::handshake::<_, RawBody>(
        hyper_util::rt::TokioIo::new(tcp),
    ))
    .await
    .unwrap();
    tokio::spawn(conn);
    // base64 of the 6 bytes: a prefix announcing 60,000 bytes, and one.
    let body = hanging_body(Bytes::from_static(b"AAAA6mAK"));
    let request = hyper::Request::builder()
        .method("POST")
        .uri(SEND_MESSAGE)
        .header("host", "chatd")
        .header("content-type", "application/grpc-web-text")
        .header("x-grpc-web", "1")
        .header("authorization", format!("Bearer {}", server.token("web")))
        .body(body)
        .unwrap();
    let answer = async {
        let response = sender.send_request(request).await.expect("response");
        if let Some(code) = response.headers().get("grpc-status") {
            return code.to_str().unwrap().to_string();
        }
        // Otherwise the status is in a base64 trailer frame.
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .unwrap_or_default();
        String::from_utf8_lossy(&decoded).to_string()
    };
    let status = tokio::time::timeout(Duration::from_secs(4), answer)
        .await
        .expect("the hanging grpc-web-text body was not ended");
    assert!(
        status == "4" || status.contains("grpc-status:4"),
        "{status:?}"
    );
    server.shutdown().await.unwrap();
}

/// A JoinRoom stream lives on past the request body deadline.
async fn the_body_deadline_never_cuts_a_stream(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server =
        TestServer::start_with(config(&db.url, &["--request-body-timeout", "500ms"])).await;
    let mut alice = server.client("alice").await;
    let (mut stream, _) = join(&mut alice, "long", None).await;
    // The passing of time is the event here.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sent = send(&mut alice, "long", "still here").await;
    assert_eq!(next_message(&mut stream).await, sent);
    server.shutdown().await.unwrap();
}

/// A call that holds the server open (its body never ends) holds shutdown
/// for CHAT_SHUTDOWN_GRACE at most, not twice that.
async fn shutdown_takes_at_most_the_grace(backend: Backend) {
    let db = TestDb::create(backend).await;
    let grace = Duration::from_secs(3);
    let server = TestServer::start_with(config(
        &db.url,
        &["--shutdown-grace", "3s", "--request-body-timeout", "60s"],
    ))
    .await;
    let mut sender = h2_connect(server.addr).await;
    let hanging = request(
        SEND_MESSAGE,
        &server.token("u"),
        hanging_body(Bytes::from_static(&[0, 0, 0, 0xEA, 0x60, 0x0A])),
    );
    within(sender.ready()).await.unwrap();
    let held = sender.send_request(hanging);
    let _held = tokio::spawn(held);
    // Frames on one connection arrive in order: once a later call is
    // answered, the server has the hanging call too.
    assert_eq!(call(&mut sender, list_members_request(&server)).await.0, 0);

    let started = Instant::now();
    server.shutdown().await.unwrap();
    let took = started.elapsed();
    assert!(
        took < grace + Duration::from_millis(1500),
        "shutdown took {took:?} with a grace of {grace:?}"
    );
}

/// The finding: idle HTTP/2 connections (handshake done, PINGs answered,
/// never a call) held every slot, and a real client waited 20 s and got
/// UNAVAILABLE. At 40 slots, 60 of them: an authenticated ListRooms is
/// answered within seconds, and every idle one is closed by its first-call
/// deadline (a waiting one evicts another and then gets its own two
/// seconds).
async fn idle_connections_cannot_hold_every_slot(backend: Backend) {
    let db = TestDb::create(backend).await;
    let first_call = Duration::from_secs(2);
    let server = TestServer::start_with(config(
        &db.url,
        // A long handshake deadline: only the new rules close them.
        &[
            "--max-connections",
            "40",
            "--first-call-timeout",
            "2s",
            "--handshake-timeout",
            "60s",
        ],
    ))
    .await;
    let opened = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..60 {
        idle.push(Watched::connect(server.addr).await);
    }

    let started = Instant::now();
    let rooms = tokio::time::timeout(Duration::from_secs(5), async {
        let mut alice = server.client("alice").await;
        alice.list_rooms(proto::ListRoomsRequest::default()).await
    })
    .await
    .unwrap_or_else(|_| panic!("ListRooms not answered ({:?})", started.elapsed()))
    .expect("ListRooms");
    assert!(rooms.into_inner().rooms.is_empty());

    // The last to get a slot got it at once (an eviction freed one): all
    // are closed by two first-call deadlines, plus the forced-close bound
    // and a margin for a loaded machine.
    let deadline = opened + first_call * 2 + Duration::from_secs(4);
    for (i, conn) in idle.iter_mut().enumerate() {
        conn.closed_by(deadline, &format!("idle connection {i}"))
            .await;
    }
    server.shutdown().await.unwrap();
}

/// When every slot is taken, the new client's call is answered promptly:
/// the connection idle longest gives its slot up (GOAWAY), not one with a
/// call in flight (an older JoinRoom stream) nor a more recent idle one.
/// Once every connection has a call in flight, nobody is evicted and the
/// new client waits for a slot, as before.
async fn the_idlest_connection_gives_its_slot_up_and_busy_ones_never(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start_with(config(&db.url, &["--max-connections", "3"])).await;
    let mut busy = server.client("busy").await;
    let (mut stream, _) = join(&mut busy, "room", None).await;
    let mut oldest = Watched::connect(server.addr).await;
    assert_eq!(
        call(&mut oldest.sender, list_members_request(&server))
            .await
            .0,
        0
    );
    let mut newer = Watched::connect(server.addr).await;
    assert_eq!(
        call(&mut newer.sender, list_members_request(&server))
            .await
            .0,
        0
    );

    let mut newcomer = h2_connect(server.addr).await;
    let answered = tokio::time::timeout(
        Duration::from_secs(3),
        call(&mut newcomer, list_members_request(&server)),
    )
    .await
    .expect("the new client waited for a slot although idle connections held them");
    assert_eq!(answered.0, 0);
    oldest
        .closed_by(Instant::now() + STEP, "the idlest connection")
        .await;
    assert!(
        !newer.is_closed(),
        "a more recently active connection was evicted"
    );
    let sent = send(&mut busy, "room", "still here").await;
    assert_eq!(next_message(&mut stream).await, sent);

    // Now every slot has a call in flight.
    let _newer_stream = open_stream(&mut newer.sender, join_request(&server, "n", "a")).await;
    let newcomer_stream = open_stream(&mut newcomer, join_request(&server, "c", "b")).await;
    let mut late = h2_connect(server.addr).await;
    let waiting = tokio::spawn({
        let request = list_members_request(&server);
        async move { call(&mut late, request).await }
    });
    // Nothing to wait for: a bounded look catches an eviction.
    assert!(!newer.closes_within(Duration::from_millis(500)).await);
    assert!(
        !waiting.is_finished(),
        "a connection with a call in flight was evicted"
    );
    assert!(!newcomer.is_closed());
    let sent = send(&mut busy, "room", "and still here").await;
    assert_eq!(next_message(&mut stream).await, sent);
    drop((newcomer, newcomer_stream));
    assert_eq!(within(waiting).await.unwrap().0, 0);
    server.shutdown().await.unwrap();
}

/// Within CHAT_FIRST_CALL_TIMEOUT a connection must make a call whose
/// token verifies, or it is closed: a health check, a refused token, a
/// health Watch stream (closed one second after its GOAWAY) and an HTTP/1.1
/// page fetch do not count; one ListMembers with a good token does, for
/// good.
async fn only_an_authenticated_call_keeps_a_connection_past_the_first_call_deadline(
    backend: Backend,
) {
    use http_body_util::BodyExt;
    let db = TestDb::create(backend).await;
    let server = TestServer::start_with(config(&db.url, &["--first-call-timeout", "1s"])).await;
    let opened = Instant::now();
    let mut authenticated = Watched::connect(server.addr).await;
    assert_eq!(
        call(&mut authenticated.sender, list_members_request(&server))
            .await
            .0,
        0
    );
    let mut health = Watched::connect(server.addr).await;
    assert_eq!(call(&mut health.sender, health_request("Check")).await.0, 0);
    let mut refused = Watched::connect(server.addr).await;
    let bad = request(LIST_MEMBERS, "not-a-token", whole_body(Bytes::new()));
    assert_eq!(
        call(&mut refused.sender, bad).await.0,
        Code::Unauthenticated as i32
    );
    let mut watcher = Watched::connect(server.addr).await;
    let _watch = open_stream(&mut watcher.sender, health_request("Watch")).await;

    let tcp = within(TcpStream::connect(server.addr)).await.unwrap();
    let (mut page, page_conn) = within(hyper::client::conn::http1::handshake::<_, RawBody>(
        hyper_util::rt::TokioIo::new(tcp),
    ))
    .await
    .unwrap();
    let page_closed = tokio::spawn(page_conn);
    let get = hyper::Request::get("/")
        .header("host", "chatd")
        .body(whole_body(Bytes::new()));
    let response = within(page.send_request(get.unwrap())).await.unwrap();
    assert_eq!(response.status(), 200);
    within(response.into_body().collect()).await.unwrap();

    // The deadline, the forced close a second later, and a margin.
    let deadline = opened + Duration::from_secs(2) + Duration::from_secs(3);
    health.closed_by(deadline, "health check only").await;
    refused.closed_by(deadline, "refused token").await;
    watcher.closed_by(deadline, "health Watch").await;
    within(page_closed).await.unwrap().unwrap();
    // Its deadline came first (it connected first): it is still served.
    assert!(!authenticated.is_closed());
    assert_eq!(
        call(&mut authenticated.sender, list_members_request(&server))
            .await
            .0,
        0
    );
    server.shutdown().await.unwrap();
}

/// A client's `grpc-timeout` bounds the wait for its answer, as tonic's
/// server made it: a send whose body never ends is answered
/// DEADLINE_EXCEEDED at the client's 500 ms, long before the body deadline,
/// and the connection goes on serving.
async fn the_clients_grpc_timeout_ends_a_call_not_yet_answered(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start_with(config(&db.url, &["--request-body-timeout", "60s"])).await;
    let mut sender = h2_connect(server.addr).await;
    let body = hanging_body(Bytes::from_static(&[0, 0, 0, 0xEA, 0x60, 0x0A]));
    let mut hanging = request(SEND_MESSAGE, &server.token("u"), body);
    hanging
        .headers_mut()
        .insert("grpc-timeout", http::HeaderValue::from_static("500m"));
    let started = Instant::now();
    let (code, message) = tokio::time::timeout(Duration::from_secs(5), call(&mut sender, hanging))
        .await
        .expect("the call outlived its grpc-timeout");
    assert_eq!(code, Code::DeadlineExceeded as i32, "{message}");
    assert!(message.contains("grpc-timeout"), "{message}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(call(&mut sender, list_members_request(&server)).await.0, 0);
    server.shutdown().await.unwrap();
}
