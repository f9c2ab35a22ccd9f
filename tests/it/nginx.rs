//! nginx in front of three nodes of one cluster, configured by the README's
//! docs/nginx/chatd.conf (its ports replaced by the test's own): gRPC calls,
//! a JoinRoom stream, health and a grpc-web call over HTTP/1.1 through it
//! all reach the cluster.
//!
//! Needs nginx (Debian: `apt-get install nginx-light`; .ci/run installs it).
//! Without it the test says SKIPPED and passes, except under CI (`CI` set),
//! where it fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use chatd::proto::{self, chat_service_client::ChatServiceClient};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use prost::Message as _;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::cluster::{SHARED_NATS, free_port, start_nodes, unique_cluster};
use crate::helpers::connections::frame;
use crate::helpers::*;

/// The configuration the README gives, as committed.
const CONF: &str = include_str!("../../docs/nginx/chatd.conf");

/// The nginx binary: on PATH, or where Debian puts it (/usr/sbin is not on
/// every user's PATH).
fn nginx_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|bin| bin.is_file())
}

/// nginx in the foreground (one process) with a directory of its own,
/// killed and removed on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
    /// gRPC (h2c).
    grpc: String,
    /// grpc-web over HTTP/1.1 and the page.
    web: String,
}

impl Nginx {
    /// nginx with docs/nginx/chatd.conf in front of `nodes`.
    async fn start(bin: &Path, nodes: &[TestServer]) -> Nginx {
        assert_eq!(nodes.len(), 3, "the configuration names three nodes");
        let dir = std::env::temp_dir().join(unique_cluster("nginx"));
        std::fs::create_dir_all(&dir).expect("nginx directory");
        let (grpc, web) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let mut conf = CONF.to_string();
        let mut replace = |from: &str, to: &str| {
            assert!(
                conf.contains(from),
                "docs/nginx/chatd.conf no longer has `{from}`"
            );
            conf = conf.replace(from, to);
        };
        for (port, node) in ["50051", "50052", "50053"].iter().zip(nodes) {
            replace(&format!("127.0.0.1:{port};"), &format!("{};", node.addr));
        }
        replace("listen 8080 http2;", &format!("listen {grpc} http2;"));
        replace("listen 8081;", &format!("listen {web};"));
        std::fs::write(dir.join("chatd.conf"), conf).expect("write chatd.conf");
        let d = dir.display();
        let main = format!(
            "pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             \x20   access_log off;\n\
             \x20   client_body_temp_path {d}/body;\n\
             \x20   proxy_temp_path {d}/proxy;\n\
             \x20   fastcgi_temp_path {d}/fastcgi;\n\
             \x20   uwsgi_temp_path {d}/uwsgi;\n\
             \x20   scgi_temp_path {d}/scgi;\n\
             \x20   include {d}/chatd.conf;\n\
             }}\n"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, main).expect("write nginx.conf");
        let child = Command::new(bin)
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off; master_process off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx {
            child,
            dir,
            grpc,
            web,
        };
        // Listening on both ports, or it exited (a bad configuration).
        within(async {
            loop {
                if let Ok(Some(status)) = nginx.child.try_wait() {
                    panic!("nginx exited ({status}): {}", nginx.error_log());
                }
                if tokio::net::TcpStream::connect(&nginx.grpc).await.is_ok()
                    && tokio::net::TcpStream::connect(&nginx.web).await.is_ok()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        nginx
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    async fn channel(&self) -> Channel {
        within(
            Endpoint::from_shared(format!("http://{}", self.grpc))
                .expect("endpoint")
                .connect(),
        )
        .await
        .expect("connect to nginx")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SendMessage as grpc-web over HTTP/1.1 to `addr`: the stored message.
async fn grpc_web_send(addr: &str, token: &str, room: &str, content: &str) -> proto::Message {
    let tcp = within(tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect");
    let (mut sender, conn) = within(hyper::client::conn::http1::handshake::<_, Full<Bytes>>(
        TokioIo::new(tcp),
    ))
    .await
    .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let request = hyper::Request::builder()
        .method("POST")
        .uri("/chat.v1.ChatService/SendMessage")
        .header("host", "chat.example")
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(frame(&proto::SendMessageRequest {
            room: room.into(),
            content: content.into(),
            ..Default::default()
        })))
        .expect("request");
    let response = within(sender.send_request(request))
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/grpc-web+proto"
    );
    let body = within(response.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    // A data frame, then the trailers frame (flag 0x80) with grpc-status 0.
    assert_eq!(body[0], 0, "a data frame first: {body:?}");
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let trailers = String::from_utf8_lossy(&body[5 + len..]);
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    proto::SendMessageResponse::decode(&body[5..5 + len])
        .expect("a SendMessageResponse frame")
        .message
        .expect("message")
}

/// The stream's next message; presence and read markers are skipped.
async fn next_message_skipping_others(
    stream: &mut tonic::Streaming<proto::JoinRoomResponse>,
) -> proto::Message {
    use proto::join_room_response::Event;
    loop {
        match next_event(stream).await {
            Event::Message(m) => return m,
            Event::MemberJoined(_)
            | Event::MemberLeft(_)
            | Event::Typing(_)
            | Event::ReadMarker(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_grpc_web_through_nginx_reach_three_nodes() {
    let Some(bin) = nginx_binary() else {
        assert!(
            !in_ci(),
            "CI is set, yet nginx is not installed (.ci/run installs nginx-light)"
        );
        eprintln!(
            "SKIPPED: nginx is not installed (apt-get install nginx-light); nginx test not run"
        );
        return;
    };
    let db = TestDb::postgres().await;
    let cluster = unique_cluster("nginx");
    let nodes = start_nodes(&db, SHARED_NATS, &cluster, "3s", 3).await;
    let nginx = Nginx::start(&bin, &nodes).await;

    // gRPC through nginx: health, a stream, and sends (each call to any node).
    let channel = nginx.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = within(health.check(tonic_health::pb::HealthCheckRequest {
        service: "chat.v1.ChatService".into(),
    }))
    .await
    .expect("health through nginx")
    .into_inner()
    .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let client = |user: &str| {
        ChatServiceClient::with_interceptor(channel.clone(), Bearer::new(&nodes[0].token(user)))
    };
    let (mut alice, mut bob) = (client("alice"), client("bob"));
    let (mut stream, joined) = join(&mut alice, "lb", None).await;
    assert_eq!(user_ids(&joined.members), ["alice"]);
    let mut sent = Vec::new();
    for i in 0..6 {
        sent.push(send(&mut bob, "lb", &format!("grpc {i}")).await);
    }
    // grpc-web over HTTP/1.1 through nginx.
    let web = grpc_web_send(&nginx.web, &nodes[0].token("carol"), "lb", "grpc-web").await;
    assert_eq!(web.seq, 7);
    sent.push(web);
    // The stream through nginx gets every message once, in order.
    for message in &sent {
        assert_eq!(next_message_skipping_others(&mut stream).await, *message);
    }
    // Every node has them all.
    for node in &nodes {
        let mut direct = node.client("dave").await;
        assert_eq!(
            seqs(&newest_page(&mut direct, "lb").await.messages),
            (1..=7).collect::<Vec<u64>>()
        );
    }
    drop(nginx);
}
