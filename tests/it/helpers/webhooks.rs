//! A webhook receiver for tests: `tests/it/webhooks/receiver.py`, which
//! verifies signatures with the `standardwebhooks` library from PyPI, and
//! the parsing of each event's `data` with a protobuf library
//! (prost-reflect's proto3 JSON).

use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use super::within;
use chatd::proto;

/// The secret the tests sign with (32 bytes, 0..=31).
pub const WEBHOOK_SECRET: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Hook {
    pub id: String,
    pub verified: bool,
    pub content_type: String,
    /// What the receiver did: "ok" (200), "fail" (503), "hang".
    pub answer: String,
    /// The verified body.
    pub body: Value,
}

impl Hook {
    pub fn kind(&self) -> &str {
        self.body["type"].as_str().unwrap_or("")
    }

    /// The `data`, parsed as a `chat.v1.Event` by a protobuf library.
    pub fn event(&self) -> proto::Event {
        parse_event(&self.body["data"])
    }
}

/// `data` (proto3 JSON) as a `chat.v1.Event`, parsed by prost-reflect.
pub fn parse_event(data: &Value) -> proto::Event {
    let pool =
        prost_reflect::DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let descriptor = pool
        .get_message_by_name("chat.v1.Event")
        .expect("chat.v1.Event");
    let dynamic = prost_reflect::DynamicMessage::deserialize(descriptor, data.clone())
        .unwrap_or_else(|e| panic!("data is not proto3 JSON of chat.v1.Event: {e}: {data}"));
    dynamic.transcode_to().expect("transcodes to chat.v1.Event")
}

/// The Python that runs the receiver: `$CHAT_TEST_PYTHON`, else the venv
/// `bash .ci/run` makes (.ci/.tools/venv), else `python3`.
fn python() -> std::path::PathBuf {
    if let Some(python) = std::env::var_os("CHAT_TEST_PYTHON") {
        return python.into();
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/.tools/venv/bin/python");
    if venv.exists() {
        return venv;
    }
    "python3".into()
}

/// The receiver process (killed when dropped).
pub struct Receiver {
    _child: Child,
    stdin: ChildStdin,
    pub port: u16,
    lines: mpsc::Receiver<Value>,
}

impl Receiver {
    /// Starts a receiver on `port` (0: any free port).
    pub async fn start(port: u16) -> Receiver {
        let mut child = Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/it/webhooks/receiver.py"
            ))
            .arg(WEBHOOK_SECRET)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python runs the receiver");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take().expect("stdin");
        // Large enough for every request of the largest test; the reader
        // waits when it is full (and so does the receiver).
        let (tx, lines) = mpsc::channel(1 << 16);
        tokio::spawn(async move {
            let mut stdout = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = stdout.next_line().await {
                let value: Value = serde_json::from_str(&line).expect("the receiver prints JSON");
                if tx.send(value).await.is_err() {
                    break;
                }
            }
        });
        let mut receiver = Receiver {
            _child: child,
            stdin,
            port: 0,
            lines,
        };
        let first = within(receiver.lines.recv()).await.unwrap_or_else(|| {
            panic!(
                "the webhook receiver did not start: it needs Python with the standardwebhooks \
                 package: `pip install -r tests/it/webhooks/requirements.txt` (or set \
                 CHAT_TEST_PYTHON to a python that has it; `bash .ci/run` makes .ci/.tools/venv)"
            )
        });
        receiver.port = first["port"].as_u64().expect("the port first") as u16;
        receiver
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks", self.port)
    }

    async fn line(&mut self) -> Value {
        within(self.lines.recv())
            .await
            .expect("the receiver is running")
    }

    /// Sets what the receiver answers: "ok", "fail" or "hang".
    pub async fn answer(&mut self, mode: &str) {
        within(self.stdin.write_all(format!("{mode}\n").as_bytes()))
            .await
            .expect("the receiver reads its stdin");
        within(self.stdin.flush()).await.expect("flushed");
        loop {
            if self.line().await["mode"] == mode {
                return;
            }
        }
    }

    /// The next request (within the helpers' step).
    pub async fn next(&mut self) -> Hook {
        loop {
            if let Some(hook) = hook_of(self.line().await) {
                return hook;
            }
        }
    }

    /// Requests until `count` were answered 200, each checked: signed as
    /// Standard Webhooks says, JSON. Returns those answered 200.
    pub async fn delivered(&mut self, count: usize) -> Vec<Hook> {
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let hook = self.next().await;
            assert!(hook.verified, "signature verified: {hook:?}");
            assert_eq!(hook.content_type, "application/json");
            if hook.answer == "ok" {
                out.push(hook);
            }
        }
        out
    }

    /// The first request within `quiet`, if any.
    pub async fn quiet_for(&mut self, quiet: std::time::Duration) -> Option<Hook> {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Err(_) => return None,
                Ok(None) => panic!("the receiver stopped"),
                Ok(Some(v)) => {
                    if let Some(hook) = hook_of(v) {
                        return Some(hook);
                    }
                }
            }
        }
    }
}

/// A line of the receiver about a request (not a mode acknowledgement).
fn hook_of(v: Value) -> Option<Hook> {
    v.get("id")?;
    Some(Hook {
        id: v["id"].as_str().unwrap_or("").to_owned(),
        verified: v["verified"].as_bool().unwrap_or(false),
        content_type: v["content_type"].as_str().unwrap_or("").to_owned(),
        answer: v["answer"].as_str().unwrap_or("").to_owned(),
        body: v["body"].clone(),
    })
}

/// The flags of a server that sends webhooks to `url`.
pub fn webhook_args(url: &str, timeout: &'static str) -> Vec<String> {
    vec![
        "--webhook-url".into(),
        url.into(),
        "--webhook-secret".into(),
        WEBHOOK_SECRET.into(),
        "--webhook-timeout".into(),
        timeout.into(),
    ]
}
