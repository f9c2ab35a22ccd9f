//! Cluster mode over NATS: the connection, this node's id and the subjects nodes talk on.
//!
//! With `CHAT_NATS_URL` set, chatd is one node of a cluster: every node on
//! the same PostgreSQL, NATS and `CHAT_CLUSTER_NAME` is one chat service.
//! PostgreSQL stays the only source of truth; NATS (core pub/sub, at most
//! once) carries notifications of committed messages ([`bus`]) and
//! presence ([`presence`]), and a node that misses some still delivers
//! everything from storage within a poll interval.
//!
//! Subjects, all under the cluster name (so two clusters can share a NATS):
//! `<cluster>.room.<room token>.m` (messages), `.p` (presence) and `.s`
//! (a presence sync request); a node subscribes to
//! `<cluster>.room.<room token>.*` only while the room has streams on it.
//! `<cluster>.access.revoked` carries revocations ([`revocations`]); every
//! node subscribes to it.

pub mod bus;
pub mod presence;
pub mod revocations;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::Config;
use crate::domain::RoomName;
use crate::error::{Error, Result};

/// How long start-up waits for a first connection to NATS. A node that
/// cannot reach NATS by then serves anyway (sends are stored, streams are
/// fed from PostgreSQL) and keeps trying in the background.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(5);
/// Messages a subscription may hold before NATS drops further ones for it
/// (a slow consumer): bounded, and what it drops the poller finds.
const SUBSCRIPTION_CAPACITY: usize = 4096;
/// Commands (publishes, subscribes) the client may queue, including while
/// disconnected.
const CLIENT_CAPACITY: usize = 4096;
/// The longest pause between two reconnect attempts.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);

/// What this node knows about its NATS connection.
#[derive(Debug, Default)]
pub struct Link {
    connected: AtomicBool,
    /// Milliseconds since `epoch` when the current connection was made.
    connected_at_ms: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
    /// Woken at every (re)connection: a node may have missed notifications
    /// while it was away.
    connected_event: Notify,
    /// Woken at every (re)connection, for presence.
    presence_event: Notify,
}

impl Link {
    fn now_ms(&self) -> u64 {
        let epoch = self.epoch.get_or_init(Instant::now);
        epoch.elapsed().as_millis() as u64
    }

    /// Whether NATS is connected now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// How long the current connection has lasted; `None` while down.
    pub fn connected_for(&self) -> Option<Duration> {
        if !self.is_connected() {
            return None;
        }
        let since = self.connected_at_ms.load(Ordering::Acquire);
        Some(Duration::from_millis(self.now_ms().saturating_sub(since)))
    }

    /// Resolves after the next (re)connection (at once if one happened
    /// since the last call).
    pub async fn reconnected(&self) {
        self.connected_event.notified().await;
    }

    /// [`Self::reconnected`] for the presence task.
    pub async fn reconnected_for_presence(&self) {
        self.presence_event.notified().await;
    }

    fn set(&self, connected: bool) {
        if connected {
            self.connected_at_ms.store(self.now_ms(), Ordering::Release);
        }
        self.connected.store(connected, Ordering::Release);
        if connected {
            self.connected_event.notify_one();
            self.presence_event.notify_one();
        }
    }
}

/// A connection to the cluster: the NATS client, this node's id and the
/// subject names.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub(crate) client: async_nats::Client,
    /// This node's id: random per start, so it is also the node's epoch
    /// (a restarted node is a new node, and what others knew of the old one
    /// expires).
    pub(crate) node: Arc<str>,
    name: Arc<str>,
    pub(crate) link: Arc<Link>,
}

impl Cluster {
    /// Connects to `CHAT_NATS_URL`, waiting at most [`CONNECT_DEADLINE`]
    /// for a first connection; if NATS is not reachable by then, returns
    /// anyway and keeps trying in the background. Connection changes are
    /// logged.
    pub async fn connect(config: &Config, url: &str) -> Result<Cluster> {
        let node: Arc<str> = new_node_id()?.into();
        let link = Arc::new(Link::default());
        link.now_ms();
        let events = link.clone();
        let ever = Arc::new(AtomicBool::new(false));
        let options = async_nats::ConnectOptions::new()
            .name(format!("chatd {} node {node}", config.cluster_name))
            .no_echo()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .ping_interval(Duration::from_secs(5))
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .client_capacity(CLIENT_CAPACITY)
            .reconnect_delay_callback(|attempts| {
                (Duration::from_millis(100) * attempts.min(10) as u32).min(RECONNECT_MAX_DELAY)
            })
            .event_callback(move |event| {
                let link = events.clone();
                let ever = ever.clone();
                async move { on_event(&link, &ever, event) }
            });
        let client = options
            .connect(url)
            .await
            .map_err(|e| Error::Config(format!("CHAT_NATS_URL: cannot use {url:?}: {e}")))?;
        let deadline = Instant::now() + CONNECT_DEADLINE;
        while !link.is_connected() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !link.is_connected() {
            tracing::warn!(
                url,
                "NATS is not reachable: serving anyway; messages reach the streams of other nodes through PostgreSQL (within about a second) until it is"
            );
        }
        tracing::info!(node = %node, cluster = %config.cluster_name, "running as a cluster node");
        Ok(Cluster {
            client,
            node,
            name: config.cluster_name.as_str().into(),
            link,
        })
    }

    /// This node's id (random per start).
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// The subject of `room`'s `kind` (`m`, `p` or `s`).
    pub(crate) fn subject(&self, room: &RoomName, kind: &str) -> String {
        format!("{}.room.{}.{kind}", self.name, room_token(room))
    }

    /// What a node subscribes to for `room`: all its kinds.
    pub(crate) fn room_subjects(&self, room: &RoomName) -> String {
        self.subject(room, "*")
    }

    /// Closes the connection after flushing what is queued (bounded).
    pub async fn close(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.drain()).await;
    }
}

/// Logs connection changes (once per change) and records them.
fn on_event(link: &Link, ever: &AtomicBool, event: async_nats::Event) {
    use async_nats::Event;
    match event {
        Event::Connected => {
            if ever.swap(true, Ordering::AcqRel) {
                tracing::info!("NATS reconnected: live delivery between nodes resumes");
            } else {
                tracing::info!("NATS connected");
            }
            link.set(true);
        }
        Event::Disconnected => {
            tracing::warn!(
                "NATS disconnected: nodes deliver each other's messages through PostgreSQL (within about a second) until it is back"
            );
            link.set(false);
        }
        Event::SlowConsumer(sid) => {
            // What a slow subscription lost, the poller finds in storage.
            tracing::debug!(sid, "NATS dropped messages of a slow subscription");
        }
        Event::LameDuckMode => tracing::info!("NATS server is going away (lame duck mode)"),
        Event::Closed => {
            tracing::debug!("NATS connection closed");
            link.set(false);
        }
        other => tracing::warn!(event = %other, "NATS"),
    }
}

/// A random node id: 16 hex digits.
fn new_node_id() -> Result<String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| Error::Internal(format!("random node id: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A room name as one NATS subject token: '.' (a token separator) becomes
/// '~', which room names never contain, so the mapping is one to one.
pub fn room_token(room: &RoomName) -> String {
    room.as_str().replace('.', "~")
}

/// The room a subject token names ([`room_token`] undone), if valid.
pub fn room_of_token(token: &str) -> Option<RoomName> {
    let name = token.replace('~', ".");
    let room = RoomName::parse(&name).ok()?;
    (room.as_str() == name).then_some(room)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_tokens_are_one_to_one_and_valid_subject_tokens() {
        for name in ["a", "a.b", "a..b", "x:y-z_w", "0.1.2", "a~b"] {
            let Ok(room) = RoomName::parse(name) else {
                // '~' is not a room character: no room maps onto another's token.
                assert_eq!(name, "a~b");
                continue;
            };
            let token = room_token(&room);
            assert!(!token.contains(['.', '*', '>', ' ']), "{token}");
            assert_eq!(room_of_token(&token), Some(room));
        }
        let a = room_token(&RoomName::parse("a.b").unwrap());
        let b = room_token(&RoomName::parse("a_b").unwrap());
        assert_ne!(a, b);
    }
}
