//! Metrics tests: a server with metrics on, scraping `/metrics` and
//! reading samples from it, and the real binary with the sockets it
//! listens on.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use super::{SECRET, STEP, TestDb, TestServer, config, within};

/// A test server with metrics on a port of its own.
pub async fn metered_server(db: &TestDb) -> TestServer {
    TestServer::start_with(config(&db.url, &["--metrics-addr", "127.0.0.1:0"])).await
}

pub fn metrics_of(server: &TestServer) -> SocketAddr {
    server.metrics_addr.expect("metrics are on")
}

/// One HTTP/1.1 request to `addr`: (status, content type, body).
pub async fn http_get(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let tcp = within(tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect to the metrics port");
    let (mut sender, conn) = within(hyper::client::conn::http1::handshake(TokioIo::new(tcp)))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "chatd")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = within(sender.send_request(request))
        .await
        .expect("response");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = within(response.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).expect("utf-8"),
    )
}

/// The text of `GET /metrics`.
pub async fn scrape(addr: SocketAddr) -> String {
    let (status, _, body) = http_get(addr, "GET", "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the sample `name` whose labels include all of `labels`
/// (the sum when several match); `None` when none does.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = match line.rsplit_once(' ') {
            Some(parts) => parts,
            None => continue,
        };
        let (sample_name, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if sample_name != name {
            continue;
        }
        let matches = labels.iter().all(|(k, v)| {
            label_text
                .split(',')
                .any(|pair| pair == format!("{k}=\"{v}\""))
        });
        if matches {
            let value: f64 = value.parse().expect("a number");
            found = Some(found.unwrap_or(0.0) + value);
        }
    }
    found
}

/// Scrapes until the sample satisfies `ok` (it may lag a cancelled call),
/// failing after [`STEP`].
pub async fn wait_for(
    addr: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    ok: impl Fn(Option<f64>) -> bool,
) -> String {
    within(async {
        loop {
            let text = scrape(addr).await;
            if ok(sample(&text, name, labels)) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// The real binary, its stderr lines sent to a channel.
pub struct Binary {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Binary {
    pub fn start(db_url: &str, env: &[(&str, &str)]) -> Binary {
        // The SQLite file's directory keeps chatd's own files too.
        let dir = db_url
            .strip_prefix("sqlite://")
            .and_then(|path| std::path::Path::new(path).parent())
            .expect("a SQLite test database");
        let mut command = Command::new(env!("CARGO_BIN_EXE_chatd"));
        command
            .args(["serve", "--addr", "127.0.0.1:0", "--database-url", db_url])
            .env("CHAT_DATA_DIR", dir)
            .env("CHAT_JWT_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .env_remove("CHAT_METRICS_ADDR")
            .env_remove("CHAT_LOG_FORMAT")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start chatd");
        let stderr = child.stderr.take().expect("stderr");
        // Unbounded, but the process writes a few dozen lines.
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("chatd: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Binary { child, lines }
    }

    /// Lines up to and including the first containing `needle`.
    pub async fn lines_until(&self, needle: &str) -> Vec<String> {
        let deadline = std::time::Instant::now() + STEP;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = tokio::task::block_in_place(|| self.lines.recv_timeout(left))
                .unwrap_or_else(|_| panic!("no log line with {needle:?}; got {seen:#?}"));
            let found = line.contains(needle);
            seen.push(line);
            if found {
                return seen;
            }
        }
    }

    /// TCP sockets this process listens on.
    pub fn listening_sockets(&self) -> usize {
        let pid = self.child.id();
        let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("the process's descriptors")
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter_map(|target| {
                let target = target.to_string_lossy().into_owned();
                let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
                Some(inode.to_owned())
            })
            .collect();
        ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|table| std::fs::read_to_string(table).ok())
            .flat_map(|table| {
                table
                    .lines()
                    .skip(1)
                    .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                    .collect::<Vec<_>>()
            })
            // Columns: sl local rem st … inode (the tenth).
            .filter(|cols| cols.len() > 9 && cols[3] == "0A" && inodes.contains(&cols[9]))
            .count()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
