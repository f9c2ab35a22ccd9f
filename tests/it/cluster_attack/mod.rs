//! Attacks on a cluster through its NATS: a raw NATS client (anyone who
//! can reach NATS) forges, replays and reads what nodes say to each other,
//! and a compromised node (it holds the cluster key) says what is not true.
//! Three chatd nodes on one PostgreSQL and a NATS server of the test's own.
//!
//! - cluster_attack/messages.rs: forged, altered, moved and far-ahead
//!   notices of messages.
//! - cluster_attack/presence.rs: forged presence and the bounds, and
//!   `joined` listing the other nodes' members.
//! - cluster_attack/access.rs: forged revocations, a passive listener, an
//!   unsealed sync request.
//! - cluster_attack/setup.rs: key rotation, start-up refusals, the
//!   cluster-key command, NATS with a password and with TLS.

mod access;
mod messages;
mod presence;
mod setup;
mod wire;

use std::time::Duration;

use crate::helpers::cluster::{CLUSTER_KEY, Nats, unique_cluster};
use crate::helpers::metrics::{sample, scrape, wait_for};
use crate::helpers::{TestDb, TestServer, config, next_event, within};
use chatd::proto::JoinRoomResponse;
use chatd::proto::join_room_response::Event;
use tonic::Streaming;
use wire::TestKey;

/// A cluster under attack: nodes with metrics on, a NATS of the test's
/// own and a raw client on it.
pub struct Attack {
    /// The database and the NATS server, held for the attack's life.
    _db: TestDb,
    _nats: Nats,
    pub cluster: String,
    pub nodes: Vec<TestServer>,
    /// The attacker's NATS client: no key, no node id.
    pub raw: async_nats::Client,
    /// The cluster's key, as a compromised node holds it.
    pub key: TestKey,
}

impl Attack {
    /// `count` nodes of a fresh cluster on a NATS of the test's own.
    pub async fn start(tag: &str, count: usize) -> Attack {
        let db = TestDb::postgres().await;
        let nats = Nats::start().await;
        let cluster = unique_cluster(tag);
        let mut nodes = Vec::new();
        for _ in 0..count {
            nodes.push(Self::node(&db, &nats, &cluster, &["--cluster-key", CLUSTER_KEY]).await);
        }
        let raw = within(async_nats::connect(nats.url()))
            .await
            .expect("a raw NATS client");
        Attack {
            _db: db,
            _nats: nats,
            cluster,
            nodes,
            raw,
            key: TestKey::new(CLUSTER_KEY),
        }
    }

    /// A node of this cluster with metrics on, given its key flags (and
    /// any others) in `keys`.
    pub async fn node(db: &TestDb, nats: &Nats, cluster: &str, keys: &[&str]) -> TestServer {
        let url = nats.url();
        let mut args = vec![
            "--nats-url",
            &url,
            "--cluster-name",
            cluster,
            "--presence-timeout",
            "3s",
            "--metrics-addr",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(keys);
        TestServer::start_with(config(&db.url, &args)).await
    }

    /// `<cluster>.<name>`.
    pub fn subject(&self, name: &str) -> String {
        format!("{}.{name}", self.cluster)
    }

    /// The subject of `room`'s `kind` under the cluster key.
    pub fn room_subject(&self, room: &str, kind: &str) -> String {
        format!("{}.room.{}.{kind}", self.cluster, self.key.token(room))
    }

    /// Publishes raw bytes and waits until NATS has them.
    pub async fn publish(&self, subject: String, payload: Vec<u8>) {
        within(self.raw.publish(subject, payload.into()))
            .await
            .expect("publish");
        within(self.raw.flush()).await.expect("flush");
    }

    /// Seals `payload` for `subject` with the cluster key as node `node`
    /// and publishes it.
    pub async fn publish_sealed(&self, subject: String, node: [u8; 8], payload: &[u8]) {
        let sealed = self.key.seal(&subject, node, payload);
        self.publish(subject, sealed).await;
    }

    /// `chatd_nats_dropped_total{reason}` of node `i`.
    pub async fn dropped(&self, i: usize, reason: &str) -> f64 {
        let text = scrape(self.nodes[i].metrics_addr.expect("metrics")).await;
        sample(&text, "chatd_nats_dropped_total", &[("reason", reason)]).unwrap_or(0.0)
    }

    /// Waits until node `i` has dropped at least `n` messages for `reason`.
    pub async fn wait_dropped(&self, i: usize, reason: &str, n: f64) {
        let addr = self.nodes[i].metrics_addr.expect("metrics");
        wait_for(
            addr,
            "chatd_nats_dropped_total",
            &[("reason", reason)],
            |v| v.unwrap_or(0.0) >= n,
        )
        .await;
    }
}

/// A node id of the attacker's choosing.
pub const FAKE_NODE: [u8; 8] = *b"attacker";

/// The next message on `stream` (presence skipped); panics on one whose
/// text is `forbidden`.
pub async fn next_message_not(
    stream: &mut Streaming<JoinRoomResponse>,
    forbidden: &str,
) -> chatd::proto::Message {
    loop {
        if let Event::Message(m) = next_event(stream).await {
            assert_ne!(m.content, forbidden, "a forged message was delivered");
            return m;
        }
    }
}

/// The message with `seq` on `stream`, skipping earlier ones.
pub async fn message_at(
    stream: &mut Streaming<JoinRoomResponse>,
    seq: u64,
) -> chatd::proto::Message {
    loop {
        let m = next_message_not(stream, "").await;
        assert!(m.seq <= seq, "seq {} came before {seq}", m.seq);
        if m.seq == seq {
            return m;
        }
    }
}

/// Nothing but presence arrives on `stream` for `quiet`.
pub async fn no_message_for(stream: &mut Streaming<JoinRoomResponse>, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => return,
            Ok(Ok(Some(r))) => {
                if let Some(Event::Message(m)) = r.event {
                    panic!("unexpected message seq {} {:?}", m.seq, m.content);
                }
            }
            Ok(other) => panic!("stream ended: {other:?}"),
        }
    }
}
