//! Database faults for tests: a TCP proxy in front of PostgreSQL that can
//! forward, hang (keep every socket open but pass no byte) or cut, and a
//! chatd process whose log lines a test can count.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Bearer, Client, SECRET, TestDb, admin_url, within};

/// What the proxy does with bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Forward,
    /// A partition without RST: sockets stay open, no byte passes.
    Hang,
    /// Every connection is closed; new ones are refused.
    Cut,
}

/// A TCP proxy in front of PostgreSQL that a test can hang, cut and
/// restore.
pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start() -> FaultProxy {
        let upstream = upstream_addr(&admin_url());
        let listener = within(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (mode, mode_rx) = watch::channel(Mode::Forward);
        let task = tokio::spawn(async move {
            // Dropping the set (when the proxy task is aborted) aborts every
            // connection's task.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                if *mode_rx.borrow() == Mode::Cut {
                    continue;
                }
                let mode_rx = mode_rx.clone();
                let upstream = upstream.clone();
                conns.spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (ir, iw) = inbound.into_split();
                    let (or, ow) = outbound.into_split();
                    tokio::join!(pump(ir, ow, mode_rx.clone()), pump(or, iw, mode_rx.clone()));
                });
            }
        });
        FaultProxy { addr, mode, task }
    }

    /// The test database's URL through this proxy.
    pub fn url_for(&self, db: &TestDb) -> String {
        let admin = admin_url();
        let (scheme, rest) = admin.split_once("://").unwrap_or(("postgres", &admin));
        let userinfo = rest
            .rsplit_once('@')
            .map(|(u, _)| format!("{u}@"))
            .unwrap_or_default();
        format!("{scheme}://{userinfo}{}/{}", self.addr, db.pg_name())
    }

    pub fn set(&self, mode: Mode) {
        let _ = self.mode.send(mode);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` while the mode allows: holds bytes while hung,
/// ends (closing both halves) when cut.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Ok(now) = mode.wait_for(|m| *m != Mode::Hang).await.map(|m| *m) else {
            return;
        };
        if now == Mode::Cut {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = mode.changed() => continue,
        };
        // Read before a hang began: held until it ends.
        let Ok(now) = mode.wait_for(|m| *m != Mode::Hang).await.map(|m| *m) else {
            return;
        };
        if now == Mode::Cut || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// `host:port` of a postgres URL.
fn upstream_addr(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host = rest.split(['/', '?']).next().unwrap_or("127.0.0.1");
    if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:5432")
    }
}

/// The real chatd binary, its stderr kept line by line.
pub struct Process {
    child: std::process::Child,
    pub addr: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// The binary on `db_url` with the test flags plus `extra`, and
    /// `CHAT_DATA_DIR` = `dir` when given.
    pub async fn spawn(db_url: &str, extra: &[&str], dir: Option<&std::path::Path>) -> Process {
        Self::spawn_in(db_url, extra, dir, &[]).await
    }

    /// [`Self::spawn`] with more environment variables (`RUST_LOG`…).
    pub async fn spawn_with_env(db_url: &str, extra: &[&str], env: &[(&str, &str)]) -> Process {
        Self::spawn_in(db_url, extra, None, env).await
    }

    async fn spawn_in(
        db_url: &str,
        extra: &[&str],
        dir: Option<&std::path::Path>,
        env: &[(&str, &str)],
    ) -> Process {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chatd"));
        command
            .arg("serve")
            .args(super::server_args(db_url))
            .args(extra)
            .env("RUST_LOG", "info")
            // Off unless `extra` sets it (a flag beats the variable).
            .env("CHAT_USER_SEND_RATE", "0")
            .env("CHAT_USER_JOIN_RATE", "0")
            .env("CHAT_USER_READ_RATE", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(dir) = dir {
            command.env("CHAT_DATA_DIR", dir);
        }
        let mut child = command.spawn().expect("start chatd");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let addr_rx = super::follow_stderr(stderr, Some(log.clone()));
        let addr = within(addr_rx).await.expect("chatd printed its address");
        Process { child, addr, log }
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        within(
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
                .expect("endpoint")
                .connect(),
        )
        .await
        .expect("connect to chatd")
    }

    pub async fn client(&self, user: &str) -> Client {
        let token = chatd::auth::Keys::new(SECRET.as_bytes())
            .mint(user, None, Some(std::time::Duration::from_secs(3600)))
            .expect("mint");
        chatd::proto::chat_service_client::ChatServiceClient::with_interceptor(
            self.channel().await,
            Bearer::new(&token),
        )
    }

    /// Log lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Process {
    /// The process id, to send signals to.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no goodbye to anyone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}
