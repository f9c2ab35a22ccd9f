//! TLS: gRPC and grpc-web (HTTP/1.1 and HTTP/2) over TLS with a generated
//! certificate, a certificate swapped (file change, SIGHUP, a bad file)
//! while a JoinRoom stream is open, and plaintext or silent clients on the
//! TLS port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use chatd::proto::{self, chat_service_client::ChatServiceClient};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::helpers::connections::frame;
use crate::helpers::database::Process;
use crate::helpers::*;

/// A CA and a certificate for `localhost` it signed, in PEM.
pub struct Pki {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// Every PEM file is padded to this length, so that two pairs differ in
/// content only (not in size): what the SIGHUP test needs.
const PEM_FILE_BYTES: usize = 4096;

impl Pki {
    pub fn new(name: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("chatd test CA {name}"));
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, &ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        Pki {
            ca: ca.pem(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// Writes the certificate and key to `dir`/cert.pem and key.pem.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        write_padded(&cert, &self.cert);
        write_padded(&key, &self.key);
        (cert, key)
    }
}

fn write_padded(path: &Path, pem: &str) {
    assert!(pem.len() < PEM_FILE_BYTES);
    let mut text = pem.to_owned();
    text.push_str(&"\n".repeat(PEM_FILE_BYTES - pem.len()));
    std::fs::write(path, text).unwrap();
}

/// A directory of the test's own, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("chatd-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A gRPC channel over TLS to `addr`, trusting only `ca`.
async fn tls_channel(addr: SocketAddr, ca: &str) -> Result<Channel, tonic::transport::Error> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    within(
        Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)?
            .connect(),
    )
    .await
}

fn token(user: &str) -> String {
    chatd::auth::Keys::new(SECRET.as_bytes())
        .mint(user, None, Some(Duration::from_secs(3600)))
        .unwrap()
}

fn client(channel: Channel, user: &str) -> Client {
    ChatServiceClient::with_interceptor(channel, Bearer::new(&token(user)))
}

/// A TLS connection to `addr` trusting `ca`, offering `alpn`.
async fn tls_connect(
    addr: SocketAddr,
    ca: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = within(TcpStream::connect(addr)).await?;
    let name = ServerName::try_from("localhost").unwrap();
    within(tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp)).await
}

/// A SendMessage in binary grpc-web framing.
fn grpc_web_send(user: &str, text: &str) -> hyper::Request<Full<Bytes>> {
    let body = frame(&proto::SendMessageRequest {
        room: "lobby".into(),
        content: text.into(),
        ..Default::default()
    });
    hyper::Request::builder()
        .method("POST")
        .uri("https://localhost/chat.v1.ChatService/SendMessage")
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("authorization", format!("Bearer {}", token(user)))
        .body(Full::new(body))
        .unwrap()
}

/// The stored message of a grpc-web SendMessage response, checking its
/// trailer says OK.
async fn grpc_web_answer(response: hyper::Response<hyper::body::Incoming>) -> proto::Message {
    assert_eq!(response.status(), 200);
    let mut body = BytesMut::from(
        within(response.into_body().collect())
            .await
            .unwrap()
            .to_bytes(),
    );
    let mut message = None;
    let mut trailer = String::new();
    while body.len() >= 5 {
        let flag = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        body.advance(5);
        let payload = body.split_to(len);
        if flag & 0x80 != 0 {
            trailer = String::from_utf8_lossy(&payload).into_owned();
        } else {
            message = proto::SendMessageResponse::decode(payload.freeze())
                .unwrap()
                .message;
        }
    }
    assert!(trailer.contains("grpc-status:0"), "{trailer}");
    message.expect("a message")
}

pub async fn grpc_and_grpc_web_over_tls(backend: Backend) {
    let db = TestDb::create(backend).await;
    let dir = TempDir::new();
    let pki = Pki::new("a");
    let (cert, key) = pki.write(&dir.0);
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let server =
        TestServer::start_with(config(&db.url, &["--tls-cert", cert, "--tls-key", key])).await;

    // gRPC over HTTP/2 (tonic's client offers ALPN h2).
    let mut alice = client(tls_channel(server.addr, &pki.ca).await.unwrap(), "alice");
    let (mut stream, _) = join(&mut alice, "lobby", None).await;
    let first = send(&mut alice, "lobby", "over TLS").await;
    assert_eq!(next_message(&mut stream).await, first);

    // grpc-web over HTTP/1.1 and over HTTP/2, as ALPN chose.
    let tls = tls_connect(server.addr, &pki.ca, &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, conn) = within(hyper::client::conn::http1::handshake(TokioIo::new(tls)))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = within(sender.send_request(grpc_web_send("bob", "web 1.1")))
        .await
        .unwrap();
    let sent = grpc_web_answer(response).await;
    assert_eq!((sent.seq, sent.content.as_str()), (2, "web 1.1"));
    assert_eq!(next_message(&mut stream).await, sent);

    let tls = tls_connect(server.addr, &pki.ca, &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = within(hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(tls),
    ))
    .await
    .unwrap();
    tokio::spawn(conn);
    let response = within(sender.send_request(grpc_web_send("bob", "web 2")))
        .await
        .unwrap();
    let sent = grpc_web_answer(response).await;
    assert_eq!(sent.seq, 3);
    assert_eq!(next_message(&mut stream).await, sent);

    // A client that does not trust the certificate gets no connection.
    let stranger = Pki::new("stranger");
    assert!(tls_channel(server.addr, &stranger.ca).await.is_err());
    drop(stream);
    server.shutdown().await.unwrap();
}

/// Waits until `done` holds, checking as the log grows.
async fn until(what: &str, done: impl Fn() -> bool) {
    let waited = tokio::time::timeout(STEP, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "gave up waiting for: {what}");
}

pub async fn a_certificate_swapped_under_an_open_stream(backend: Backend) {
    let db = TestDb::create(backend).await;
    let dir = TempDir::new();
    let a = Pki::new("a");
    let (cert, key) = a.write(&dir.0);
    let node = Process::spawn(
        &db.url,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        None,
    )
    .await;
    let addr: SocketAddr = node.addr.parse().unwrap();
    let mut alice = client(tls_channel(addr, &a.ca).await.unwrap(), "alice");
    let (mut stream, _) = join(&mut alice, "lobby", None).await;

    // The files change: new connections get the new certificate...
    let b = Pki::new("b");
    b.write(&dir.0);
    let reloaded = "TLS certificate reloaded";
    until("the reload after the files changed", || {
        node.count(reloaded) == 1
    })
    .await;
    let mut bob = client(tls_channel(addr, &b.ca).await.unwrap(), "bob");
    assert!(
        tls_channel(addr, &a.ca).await.is_err(),
        "old certificate still served"
    );
    // ...and the open stream (and its connection) keeps working.
    let sent = send(&mut bob, "lobby", "after the swap").await;
    assert_eq!(next_message(&mut stream).await, sent);
    let sent = send(&mut alice, "lobby", "alice's old connection").await;
    assert_eq!(next_message(&mut stream).await, sent);

    // SIGHUP reloads files whose size and time did not change.
    let c = Pki::new("c");
    let stamp = std::fs::metadata(&cert).unwrap().modified().unwrap();
    c.write(&dir.0);
    for path in [&cert, &key] {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(stamp).unwrap();
    }
    assert_eq!(unsafe { libc::kill(node.pid() as i32, libc::SIGHUP) }, 0);
    until("the reload on SIGHUP", || node.count(reloaded) == 2).await;
    let mut carol = client(tls_channel(addr, &c.ca).await.unwrap(), "carol");

    // A bad certificate keeps the one there is, logged once.
    std::fs::write(&cert, "not a certificate").unwrap();
    let refused = "TLS certificate not reloaded";
    until("the refused reload", || node.count(refused) == 1).await;
    let sent = send(&mut carol, "lobby", "still served").await;
    assert_eq!(next_message(&mut stream).await, sent);
    let _again = client(tls_channel(addr, &c.ca).await.unwrap(), "carol");
    assert_eq!(node.count(refused), 1);
    assert_eq!(node.count(reloaded), 2);
}

pub async fn a_plaintext_or_silent_client_on_the_tls_port_fails(backend: Backend) {
    let db = TestDb::create(backend).await;
    let dir = TempDir::new();
    let pki = Pki::new("a");
    let (cert, key) = pki.write(&dir.0);
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    // A handshake timeout far beyond a test step: a plaintext client must
    // fail because of what it sent, not be cut by the deadline.
    let server = TestServer::start_with(config(
        &db.url,
        &[
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--handshake-timeout",
            "120s",
        ],
    ))
    .await;
    let plain = within(
        Endpoint::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect(),
    )
    .await;
    if let Ok(channel) = plain {
        let mut client = client(channel, "alice");
        let request = proto::ListMembersRequest {
            room: "lobby".into(),
            ..Default::default()
        };
        within(client.list_members(request)).await.unwrap_err();
    }
    // grpc-web over plain HTTP/1.1 fails as well.
    let mut tcp = within(TcpStream::connect(server.addr)).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut tcp,
        b"POST /chat.v1.ChatService/ListMembers HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    let _ = within(tcp.read_to_end(&mut reply)).await;
    assert!(!reply.starts_with(b"HTTP/"), "plaintext HTTP answered");
    server.shutdown().await.unwrap();

    // A silent client is cut at the handshake timeout.
    let server = TestServer::start_with(config(
        &db.url,
        &[
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--handshake-timeout",
            "1s",
        ],
    ))
    .await;
    let mut tcp = within(TcpStream::connect(server.addr)).await.unwrap();
    let mut buf = [0u8; 64];
    let read = within(tcp.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // The server still serves TLS clients.
    let mut alice = client(tls_channel(server.addr, &pki.ca).await.unwrap(), "alice");
    send(&mut alice, "lobby", "fine").await;
    server.shutdown().await.unwrap();
}
