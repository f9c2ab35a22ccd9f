//! Raw HTTP/2 gRPC calls (hyper's client), for tests that need to control
//! a connection or a request body byte by byte, which tonic's client hides.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::task::JoinHandle;

use super::within;

pub type RawBody = BoxBody<Bytes, Infallible>;
/// One HTTP/2 connection; its requests fail once the server closes it.
pub type H2 = http2::SendRequest<RawBody>;

/// Opens an HTTP/2 connection and completes its handshake (preface and
/// SETTINGS sent).
pub async fn h2_connect(addr: SocketAddr) -> H2 {
    let tcp = within(tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect");
    let (sender, conn) = within(http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)))
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    sender
}

/// An HTTP/2 connection (handshake done, PINGs answered by its driver
/// task) whose closing by the server can be awaited.
pub struct Watched {
    pub sender: H2,
    /// The connection's driver: ends when the server closes the connection.
    driver: JoinHandle<()>,
}

impl Watched {
    pub async fn connect(addr: SocketAddr) -> Watched {
        let tcp = within(tokio::net::TcpStream::connect(addr))
            .await
            .expect("connect");
        let (sender, conn) = within(http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)))
            .await
            .expect("HTTP/2 handshake");
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Watched { sender, driver }
    }

    /// Whether the server has closed the connection (as far as the client
    /// has seen).
    pub fn is_closed(&self) -> bool {
        self.driver.is_finished()
    }

    /// Waits until the server has closed the connection (GOAWAY and EOF),
    /// by `deadline`; panics otherwise.
    pub async fn closed_by(&mut self, deadline: Instant, what: &str) {
        match tokio::time::timeout_at(deadline.into(), &mut self.driver).await {
            Ok(_) => {}
            Err(_) => panic!("{what}: the server did not close the connection in time"),
        }
    }

    /// Waits at most `limit` for the server to close the connection;
    /// whether it did.
    pub async fn closes_within(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, &mut self.driver).await.is_ok()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Sends `request` and returns its response head, leaving its body (a
/// server stream) open.
pub async fn open_stream(
    sender: &mut H2,
    request: hyper::Request<RawBody>,
) -> hyper::Response<hyper::body::Incoming> {
    within(sender.ready()).await.expect("connection ready");
    let response = within(sender.send_request(request))
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    response
}

/// A gRPC message frame: flag, big-endian length, payload.
pub fn frame(message: &impl prost::Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut out = BytesMut::with_capacity(5 + body.len());
    out.put_u8(0);
    out.put_u32(body.len() as u32);
    out.put_slice(&body);
    out.freeze()
}

/// A body of `bytes` that is complete.
pub fn whole_body(bytes: Bytes) -> RawBody {
    Full::new(bytes).boxed()
}

/// A body that sends `bytes` and then never ends.
pub fn hanging_body(bytes: Bytes) -> RawBody {
    let first = futures_util::stream::once(async move { Ok(Frame::data(bytes)) });
    let never = futures_util::stream::pending();
    StreamBody::new(futures_util::StreamExt::chain(first, never)).boxed()
}

/// A gRPC request for `path` (such as `/chat.v1.ChatService/ListMembers`).
pub fn request(path: &str, token: &str, body: RawBody) -> hyper::Request<RawBody> {
    let mut request = untokened_request(path, body);
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    request
}

/// A gRPC request for `path` without a token (health, reflection).
pub fn untokened_request(path: &str, body: RawBody) -> hyper::Request<RawBody> {
    hyper::Request::builder()
        .method("POST")
        .uri(format!("http://chatd{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .expect("request")
}

/// Sends `request` and reads its whole response: (grpc-status,
/// grpc-message).
pub async fn call(sender: &mut H2, request: hyper::Request<RawBody>) -> (i32, String) {
    within(sender.ready()).await.expect("connection ready");
    let response = within(sender.send_request(request))
        .await
        .expect("response");
    status_of(response).await
}

/// The gRPC status of a response, from its headers (trailers-only) or its
/// trailers.
pub async fn status_of(response: hyper::Response<hyper::body::Incoming>) -> (i32, String) {
    let read = |map: &http::HeaderMap| {
        map.get("grpc-status").map(|code| {
            let code = code.to_str().expect("ascii").parse().expect("a number");
            let message = map
                .get("grpc-message")
                .map(|m| m.to_str().expect("ascii").to_string())
                .unwrap_or_default();
            (code, message)
        })
    };
    if let Some(status) = read(response.headers()) {
        return status;
    }
    let collected = within(response.into_body().collect())
        .await
        .expect("response body");
    collected
        .trailers()
        .and_then(read)
        .expect("grpc-status in headers or trailers")
}
