//! Cluster tests: a NATS server of the test's own that it can stop and
//! restart, unique cluster names, and chatd nodes (in-process or the real
//! binary, which a test can SIGKILL).

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::{TestDb, TestServer, config, within};

/// The machine's NATS, shared by tests that do not stop it.
pub const SHARED_NATS: &str = "nats://127.0.0.1:4222";

/// The cluster key test nodes share (`CHAT_CLUSTER_KEY`): 32 bytes of
/// base64.
pub const CLUSTER_KEY: &str = "Y2hhdGQgdGVzdCBjbHVzdGVyIGtleSwgMzIgYnl0ZXM=";
/// Another key, for rotation and for nodes that must not be understood.
pub const OTHER_KEY: &str = "b3RoZXIgdGVzdCBjbHVzdGVyIGtleSwgMzIgYnl0ZXM=";

/// A cluster name no other test (or run) uses, so tests sharing one NATS
/// do not hear each other.
pub fn unique_cluster(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "t_{tag}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    )
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A nats-server process of this test's own, on a fixed port so that it
/// can be stopped and started again where clients expect it.
pub struct Nats {
    pub port: u16,
    /// Further nats-server flags (authentication, TLS).
    args: Vec<String>,
    child: Option<Child>,
}

impl Nats {
    pub async fn start() -> Nats {
        Self::start_with(&[]).await
    }

    /// A server started with further flags, e.g. `--user u --pass p`.
    pub async fn start_with(args: &[&str]) -> Nats {
        let mut nats = Nats {
            port: free_port(),
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        nats.restart().await;
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server (is it installed?)");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        within(async {
            while tokio::net::TcpStream::connect(&addr).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    /// Kills the server.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The flags of a node of `cluster` on `nats`, with the test key.
pub fn node_args<'a>(nats: &'a str, cluster: &'a str, presence_timeout: &'a str) -> Vec<&'a str> {
    vec![
        "--nats-url",
        nats,
        "--cluster-name",
        cluster,
        "--presence-timeout",
        presence_timeout,
        "--cluster-key",
        CLUSTER_KEY,
    ]
}

/// `count` in-process nodes of one cluster on `db`.
pub async fn start_nodes(
    db: &TestDb,
    nats: &str,
    cluster: &str,
    presence_timeout: &str,
    count: usize,
) -> Vec<TestServer> {
    let mut nodes = Vec::new();
    for _ in 0..count {
        let args = node_args(nats, cluster, presence_timeout);
        nodes.push(TestServer::start_with(config(&db.url, &args)).await);
    }
    nodes
}

/// The real chatd binary as a cluster node, which a test can SIGKILL.
pub type NodeProcess = super::database::Process;

impl NodeProcess {
    pub async fn start_node(
        db: &TestDb,
        nats: &str,
        cluster: &str,
        presence_timeout: &str,
    ) -> Self {
        Self::spawn(&db.url, &node_args(nats, cluster, presence_timeout), None).await
    }
}
