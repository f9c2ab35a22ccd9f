//! Helpers for the memory tests: a chatd child process whose RSS a test can
//! read, tokens for it, and raw HTTP/2 gRPC calls whose answers are never
//! read.

use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::{Bearer, Client, SECRET, server_args, within};

/// A chatd child process with default settings on a loopback port.
pub struct Chatd {
    child: Option<std::process::Child>,
    pub pid: u32,
    pub addr: String,
    dir: std::path::PathBuf,
}

impl Chatd {
    /// Starts `chatd serve` on `db_url` with default settings plus `env`.
    pub async fn start(db_url: &str, env: &[(&str, &str)]) -> Chatd {
        let dir = std::env::temp_dir().join(format!(
            "chatd-mem-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatd"))
            .arg("serve")
            .args(server_args(db_url))
            .env("CHAT_DATA_DIR", &dir)
            .env("RUST_LOG", "warn,chatd::server=info")
            .env("CHAT_USER_SEND_RATE", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let stderr = child.stderr.take().unwrap();
        let addr_rx = super::follow_stderr(stderr, None);
        let mut chatd = Chatd {
            child: Some(child),
            pid,
            addr: String::new(),
            dir,
        };
        chatd.addr = within(addr_rx).await.expect("chatd printed its address");
        chatd
    }

    /// The process's resident set, in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kb * 1024
    }

    /// A token for `user`, valid for an hour.
    pub fn token(user: &str) -> String {
        chatd::auth::Keys::new(SECRET.as_bytes())
            .mint(user, None, Some(Duration::from_secs(3600)))
            .unwrap()
    }

    /// A new tonic connection.
    pub async fn channel(&self) -> tonic::transport::Channel {
        within(
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect(),
        )
        .await
        .expect("connect to chatd")
    }

    /// A client for `user` on `channel`.
    pub fn client(channel: tonic::transport::Channel, user: &str) -> Client {
        chatd::proto::chat_service_client::ChatServiceClient::with_interceptor(
            channel,
            Bearer::new(&Self::token(user)),
        )
        .max_decoding_message_size(64 * 1024 * 1024)
    }

    /// A raw HTTP/2 connection whose stream windows are `window` bytes: the
    /// server can send no more than that per call until the caller reads.
    pub async fn raw(&self, window: u32) -> http2::SendRequest<Full<Bytes>> {
        let tcp = within(tokio::net::TcpStream::connect(&self.addr))
            .await
            .unwrap();
        let (sender, conn) = within(
            http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(window)
                .initial_connection_window_size(65_535)
                .handshake(TokioIo::new(tcp)),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        sender
    }
}

impl Drop for Chatd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A gRPC call to ChatService `method` with `message`, as `token`'s user.
pub fn grpc_request(
    method: &str,
    token: &str,
    message: &impl prost::Message,
) -> hyper::Request<Full<Bytes>> {
    hyper::Request::builder()
        .method("POST")
        .uri(format!("http://chatd/chat.v1.ChatService/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(super::connections::frame(message)))
        .unwrap()
}

/// A response's gRPC status from its headers (a trailers-only answer), if
/// it has one there; 0 means the call is answering with data.
pub fn header_status(response: &hyper::Response<hyper::body::Incoming>) -> i32 {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Mebibytes, for messages.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}
