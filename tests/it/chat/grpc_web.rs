//! grpc-web over plain HTTP/1.1, as a browser sends it.

use bytes::{Buf, Bytes, BytesMut};
use chatd::proto;
use chatd::proto::join_room_response::Event;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use prost::Message as _;

use crate::helpers::connections::frame;
use crate::helpers::*;

type Sender = http1::SendRequest<Full<Bytes>>;

async fn roundtrip(
    sender: &mut Sender,
    request: hyper::Request<Full<Bytes>>,
) -> hyper::Response<hyper::body::Incoming> {
    within(sender.ready()).await.expect("connection ready");
    within(sender.send_request(request))
        .await
        .expect("response")
}

/// A unary call in binary grpc-web framing.
async fn post_binary(
    sender: &mut Sender,
    method: &str,
    token: &str,
    message: &impl prost::Message,
) -> hyper::Response<hyper::body::Incoming> {
    let body = frame(message);
    roundtrip(
        sender,
        request(method, "application/grpc-web+proto", token, body),
    )
    .await
}

async fn connect(server: &TestServer) -> Sender {
    let tcp = within(tokio::net::TcpStream::connect(server.addr))
        .await
        .unwrap();
    let (sender, conn) = within(http1::handshake(TokioIo::new(tcp))).await.unwrap();
    tokio::spawn(conn);
    sender
}

fn request(
    path: &str,
    content_type: &str,
    token: &str,
    body: Bytes,
) -> hyper::Request<Full<Bytes>> {
    hyper::Request::builder()
        .method("POST")
        .uri(format!("/chat.v1.ChatService/{path}"))
        .header("host", "chatd")
        .header("content-type", content_type)
        .header("accept", content_type)
        .header("x-grpc-web", "1")
        .header("origin", "https://app.example")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(body))
        .unwrap()
}

/// Splits one whole grpc-web frame off the front of `buf`:
/// (is_trailer, payload).
fn take_frame(buf: &mut BytesMut) -> Option<(bool, Bytes)> {
    if buf.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() < 5 + len {
        return None;
    }
    let flag = buf[0];
    buf.advance(5);
    Some((flag & 0x80 != 0, buf.split_to(len).freeze()))
}

/// Every whole frame in `buf`.
fn take_frames(buf: &mut BytesMut) -> Vec<(bool, Bytes)> {
    std::iter::from_fn(|| take_frame(buf)).collect()
}

pub async fn cors_preflight_allows_grpc_web_and_authorization(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let mut sender = connect(&server).await;
    let preflight = hyper::Request::builder()
        .method("OPTIONS")
        .uri("/chat.v1.ChatService/SendMessage")
        .header("host", "chatd")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,x-grpc-web,x-user-agent,grpc-timeout",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = roundtrip(&mut sender, preflight).await;
    assert!(response.status().is_success(), "{response:?}");
    let headers = response.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for h in [
        "authorization",
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
    ] {
        assert!(allowed.contains(h), "{h} not allowed: {allowed}");
    }
    assert!(
        headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    server.shutdown().await.unwrap();
}

pub async fn cors_origins_can_be_restricted(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server =
        TestServer::start_with(config(&db.url, &["--cors-origins", "https://good.example"])).await;
    let mut sender = connect(&server).await;
    for (origin, allowed) in [
        ("https://good.example", true),
        ("https://evil.example", false),
    ] {
        let preflight = hyper::Request::builder()
            .method("OPTIONS")
            .uri("/chat.v1.ChatService/ListMembers")
            .header("host", "chatd")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = roundtrip(&mut sender, preflight).await;
        let got = response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(got.as_deref() == Some(origin), allowed, "{origin}: {got:?}");
    }
    server.shutdown().await.unwrap();
}

pub async fn unary_and_streaming_over_http1(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let token = server.token("webby");

    // Unary, binary framing.
    let mut sender = connect(&server).await;
    let send = proto::SendMessageRequest {
        room: "web".into(),
        content: "from a browser".into(),
        ..Default::default()
    };
    let response = post_binary(&mut sender, "SendMessage", &token, &send).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/grpc-web+proto"
    );
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_string();
    for h in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.contains(h), "{h} not exposed: {exposed}");
    }
    let mut body = BytesMut::from(
        &within(response.into_body().collect())
            .await
            .unwrap()
            .to_bytes()[..],
    );
    let frames = take_frames(&mut body);
    assert_eq!(frames.len(), 2, "{frames:?}");
    let sent = proto::SendMessageResponse::decode(frames[0].1.clone())
        .unwrap()
        .message
        .unwrap();
    assert_eq!(
        (sent.seq, sent.sender.unwrap().user_id.as_str()),
        (1, "webby")
    );
    let trailers = String::from_utf8(frames[1].1.to_vec()).unwrap();
    assert!(
        frames[1].0 && trailers.contains("grpc-status:0"),
        "{trailers}"
    );

    // An error comes back as a grpc-web status, not an HTTP error.
    let bad = proto::SendMessageRequest {
        room: "web".into(),
        ..Default::default()
    };
    let response = post_binary(&mut sender, "SendMessage", &token, &bad).await;
    assert_eq!(response.status(), 200);
    let status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string());
    let status = match status {
        Some(s) => s,
        None => {
            let mut body = BytesMut::from(
                &within(response.into_body().collect())
                    .await
                    .unwrap()
                    .to_bytes()[..],
            );
            let frames = take_frames(&mut body);
            String::from_utf8(frames.last().unwrap().1.to_vec()).unwrap()
        }
    };
    assert!(
        status.contains('3'),
        "INVALID_ARGUMENT expected, got {status}"
    );

    // Unary, text (base64) framing.
    let mut text_sender = connect(&server).await;
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let list = proto::ListMembersRequest {
        room: "web".into(),
        ..Default::default()
    };
    let response = roundtrip(
        &mut text_sender,
        request(
            "ListMembers",
            "application/grpc-web-text",
            &token,
            Bytes::from(b64.encode(frame(&list))),
        ),
    )
    .await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/grpc-web-text"),
        "{content_type}"
    );
    let text = within(response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    // Each chunk is padded base64 on its own: decode four characters at a time.
    let mut decoded = BytesMut::new();
    for quad in text.chunks(4) {
        decoded.extend_from_slice(&b64.decode(quad).unwrap());
    }
    let frames = take_frames(&mut decoded);
    assert!(
        proto::ListMembersResponse::decode(frames[0].1.clone())
            .unwrap()
            .members
            .is_empty()
    );

    // Server streaming, binary and text: each event arrives while the
    // stream stays open, not buffered until it ends.
    let mut native = server.client("native").await;
    for content_type in ["application/grpc-web+proto", "application/grpc-web-text"] {
        let text = content_type.ends_with("text");
        let mut stream_sender = connect(&server).await;
        let join = proto::JoinRoomRequest {
            room: "web".into(),
            resume_after_seq: None,
        };
        let body = if text {
            Bytes::from(b64.encode(frame(&join)))
        } else {
            frame(&join)
        };
        let response = roundtrip(
            &mut stream_sender,
            request("JoinRoom", content_type, &token, body),
        )
        .await;
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let mut raw = BytesMut::new();
        let mut decoded = BytesMut::new();
        let mut next_frame = async || loop {
            if let Some(frame) = take_frame(&mut decoded) {
                return frame;
            }
            let chunk = within(body.frame())
                .await
                .expect("body open")
                .expect("body chunk");
            if let Ok(data) = chunk.into_data() {
                if text {
                    raw.extend_from_slice(&data);
                    let whole = raw.len() / 4 * 4;
                    for quad in raw.split_to(whole).chunks(4) {
                        decoded.extend_from_slice(&b64.decode(quad).unwrap());
                    }
                } else {
                    decoded.extend_from_slice(&data);
                }
            }
        };
        let (trailer, joined) = next_frame().await;
        assert!(!trailer);
        let last_seq = match proto::JoinRoomResponse::decode(joined)
            .unwrap()
            .event
            .unwrap()
        {
            Event::Joined(j) => {
                assert_eq!(j.room, "web");
                j.last_seq
            }
            other => panic!("expected joined, got {other:?}"),
        };
        // A message sent now over native gRPC reaches the browser stream.
        let live =
            crate::helpers::send(&mut native, "web", &format!("live to {content_type}")).await;
        assert_eq!(live.seq, last_seq + 1);
        let (trailer, event) = next_frame().await;
        assert!(!trailer);
        match proto::JoinRoomResponse::decode(event)
            .unwrap()
            .event
            .unwrap()
        {
            Event::Message(m) => assert_eq!(m, live),
            other => panic!("expected the message, got {other:?}"),
        }
    }
    server.shutdown().await.unwrap();
}

/// A message marked compressed (chatd takes no compression) is the
/// client's error, UNIMPLEMENTED, over grpc-web and gRPC alike, and an
/// undefined flag byte INVALID_ARGUMENT: never INTERNAL, which the
/// README's alert counts as the server's fault.
pub async fn a_compressed_message_is_a_client_error(backend: Backend) {
    let db = TestDb::create(backend).await;
    let server = TestServer::start(&db).await;
    let token = server.token("zip");
    let list = proto::ListMembersRequest {
        room: "web".into(),
        ..Default::default()
    };
    let flagged = |flag: u8| {
        let mut body = BytesMut::from(&frame(&list)[..]);
        body[0] = flag;
        body.freeze()
    };
    for (flag, code, needle) in [(1u8, 12, "compressed"), (2, 3, "0x02")] {
        // grpc-web, binary framing over HTTP/1.1.
        let mut sender = connect(&server).await;
        let response = roundtrip(
            &mut sender,
            request(
                "ListMembers",
                "application/grpc-web+proto",
                &token,
                flagged(flag),
            ),
        )
        .await;
        assert_eq!(response.status(), 200);
        let status = match response.headers().get("grpc-status") {
            Some(s) => format!(
                "grpc-status:{}\r\ngrpc-message:{}",
                s.to_str().unwrap(),
                response.headers()["grpc-message"].to_str().unwrap()
            ),
            None => {
                let mut body = BytesMut::from(
                    &within(response.into_body().collect())
                        .await
                        .unwrap()
                        .to_bytes()[..],
                );
                let frames = take_frames(&mut body);
                String::from_utf8(frames.last().unwrap().1.to_vec()).unwrap()
            }
        };
        assert!(
            status.contains(&format!("grpc-status:{code}")),
            "flag {flag}: {status}"
        );
        assert!(status.contains(needle), "flag {flag}: {status}");

        // gRPC over HTTP/2.
        let mut h2 = crate::helpers::connections::h2_connect(server.addr).await;
        let (got, message) = crate::helpers::connections::call(
            &mut h2,
            crate::helpers::connections::request(
                "/chat.v1.ChatService/ListMembers",
                &token,
                crate::helpers::connections::whole_body(flagged(flag)),
            ),
        )
        .await;
        assert_eq!(got, code, "flag {flag}: {message}");
    }
    server.shutdown().await.unwrap();
}
