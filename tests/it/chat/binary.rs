//! The real binary: `chatd token` with a generated secret, and SIGTERM.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chatd::proto;
use tonic::Code;

use crate::helpers::*;

/// Kills the child process if the test ends before it exits.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn unique_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "chatd-test-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub async fn token_command_and_server_share_a_generated_secret(backend: Backend) {
    use std::os::unix::fs::PermissionsExt;
    // The server generates the secret on first start; `chatd token`
    // only ever reads it.
    let dir = unique_dir("secret");
    let db = TestDb::create(backend).await;
    let config = <chatd::config::Cli as clap::Parser>::try_parse_from([
        "chatd",
        "--addr",
        "127.0.0.1:0",
        "--database-url",
        &db.url,
        "--data-dir",
        dir.to_str().unwrap(),
    ])
    .unwrap()
    .config;
    let server = TestServer::start_with(config).await;
    let secret_file = dir.join("jwt-secret");
    let mode = std::fs::metadata(&secret_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let output = Command::new(env!("CARGO_BIN_EXE_chatd"))
        .args(["token", "dave", "--name", "Dave", "--ttl", "1h"])
        .env("CHAT_DATA_DIR", &dir)
        .env_remove("CHAT_JWT_SECRET")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap().trim().to_string();

    let mut client = chatd::proto::chat_service_client::ChatServiceClient::with_interceptor(
        server.channel().await,
        Bearer::new(&token),
    );
    let sent = crate::helpers::send(&mut client, "lobby", "hi").await;
    assert_eq!(sent.sender.unwrap().display_name, "Dave");
    server.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// A chatd process serving `db_url` with its data in `dir`.
struct Process {
    child: KillOnDrop,
    pid: u32,
    addr: String,
}

impl Process {
    async fn start(db_url: &str, dir: &std::path::Path) -> Process {
        let child = Command::new(env!("CARGO_BIN_EXE_chatd"))
            .arg("serve")
            .args(server_args(db_url))
            .env("CHAT_DATA_DIR", dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(Some(child));
        let pid = child.0.as_ref().unwrap().id();
        // The start-up log names the address.
        let stderr = child.0.as_mut().unwrap().stderr.take().unwrap();
        let addr_rx = crate::helpers::follow_stderr(stderr, None);
        let addr = within(addr_rx).await.expect("chatd printed its address");
        Process { child, pid, addr }
    }

    async fn client(&self, user: &str) -> Client {
        let channel = within(
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect(),
        )
        .await
        .unwrap();
        let token = chatd::auth::Keys::new(SECRET.as_bytes())
            .mint(user, None, Some(Duration::from_secs(3600)))
            .unwrap();
        chatd::proto::chat_service_client::ChatServiceClient::with_interceptor(
            channel,
            Bearer::new(&token),
        )
    }

    fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([signal, &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    async fn wait(mut self) -> std::process::ExitStatus {
        let mut process = self.child.0.take().unwrap();
        within(tokio::task::spawn_blocking(move || process.wait()))
            .await
            .unwrap()
            .unwrap()
    }
}

pub async fn sigterm_ends_streams_and_exits_zero(backend: Backend) {
    let db = TestDb::create(backend).await;
    let dir = unique_dir("sigterm");
    let chatd = Process::start(&db.url, &dir).await;
    let mut client = chatd.client("erin").await;
    let (mut stream, _) = join(&mut client, "term", None).await;

    let started = std::time::Instant::now();
    chatd.signal("-TERM");
    let status = within(stream.message()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let exit = chatd.wait().await;
    assert!(exit.success(), "{exit:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// SIGKILL while senders are mid-flight: after a restart on the same
/// data, every acknowledged message is in history and seqs are gapless.
pub async fn kill_9_keeps_every_acknowledged_message(backend: Backend) {
    const ROOMS: [&str; 3] = ["k0", "k1", "k2"];
    const BEFORE_KILL: usize = 300;
    let db = TestDb::create(backend).await;
    let dir = unique_dir("kill9");
    let chatd = Process::start(&db.url, &dir).await;

    let acked = Arc::new(std::sync::Mutex::new(Vec::<(String, u64, String)>::new()));
    let (enough_tx, mut enough_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut senders = Vec::new();
    for s in 0..8 {
        let mut client = chatd.client(&format!("sender{s}")).await;
        let (acked, enough) = (acked.clone(), enough_tx.clone());
        senders.push(tokio::spawn(async move {
            for k in 0.. {
                let room = ROOMS[(s + k) % ROOMS.len()];
                let content = format!("s{s}-{k}");
                let request = proto::SendMessageRequest {
                    room: room.into(),
                    content: content.clone(),
                    ..Default::default()
                };
                // Sends fail once chatd is killed: that ends the sender.
                let Ok(Ok(response)) =
                    tokio::time::timeout(STEP, client.send_message(request)).await
                else {
                    break;
                };
                let seq = response.into_inner().message.expect("message").seq;
                let count = {
                    let mut acked = acked.lock().unwrap();
                    acked.push((room.to_string(), seq, content));
                    acked.len()
                };
                if count == BEFORE_KILL {
                    let _ = enough.try_send(());
                }
            }
        }));
    }
    drop(enough_tx);
    within(enough_rx.recv())
        .await
        .expect("senders acknowledged enough");
    chatd.signal("-KILL");
    let exit = chatd.wait().await;
    assert!(!exit.success(), "killed: {exit:?}");
    for sender in senders {
        within(sender).await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.len() >= BEFORE_KILL);

    let chatd = Process::start(&db.url, &dir).await;
    let mut client = chatd.client("auditor").await;
    for room in ROOMS {
        let mut history = Vec::new();
        loop {
            let page = within(client.list_history(proto::ListHistoryRequest {
                room: room.into(),
                page_size: 500,
                before_seq: None,
                after_seq: Some(history.len() as u64),
            }))
            .await
            .unwrap()
            .into_inner();
            history.extend(page.messages);
            if !page.has_more {
                break;
            }
        }
        assert_eq!(
            seqs(&history),
            (1..=history.len() as u64).collect::<Vec<_>>(),
            "{room} is gapless"
        );
        for (_, seq, content) in acked.iter().filter(|(r, _, _)| r == room) {
            let stored = &history[*seq as usize - 1];
            assert_eq!(&stored.content, content, "{room}#{seq} survived");
        }
    }
    drop(chatd);
    let _ = std::fs::remove_dir_all(dir);
}
