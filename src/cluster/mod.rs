//! Cluster mode over NATS: the connection, this node's id, the subjects nodes talk on and the seal on everything they say.
//!
//! With `CHAT_NATS_URL` set, chatd is one node of a cluster: every node on
//! the same PostgreSQL, NATS, `CHAT_CLUSTER_NAME` and `CHAT_CLUSTER_KEY` is
//! one chat service. PostgreSQL stays the only source of truth; NATS (core
//! pub/sub, at most once) carries notifications of committed messages
//! ([`bus`]), presence ([`presence`], [`sync`], [`nodes`]) and revocations
//! ([`revocations`]), and a node that misses some still delivers
//! everything from storage within a poll interval.
//!
//! Nothing crosses NATS in clear: [`Cluster::publish`] seals every payload
//! ([`seal`]: XChaCha20-Poly1305 under a key derived from the cluster key,
//! bound to the subject) and [`Cluster::open`] is the only way to read one;
//! what does not open is dropped and counted ([`drops`]). Room names (which
//! carry user ids, `dm:alice:bob`) never appear in subjects either: a
//! room's subject token is a keyed hash of its name.
//!
//! Subjects, all under the cluster name (so two clusters can share a NATS):
//! `<cluster>.room.<room token>.m` (messages) and `.p` (presence); a node
//! subscribes to `<cluster>.room.<room token>.*` only while the room has
//! streams on it (to the tokens of both keys during a key rotation).
//! `<cluster>.access.revoked` carries revocations, `<cluster>.node` the
//! nodes' announcements and `<cluster>.sync` presence requests; every node
//! subscribes to those three.

pub(crate) mod bus;
pub(crate) mod connect;
pub(crate) mod drops;
pub(crate) mod ephemeral;
pub(crate) mod members;
pub(crate) mod nodes;
pub(crate) mod presence;
pub(crate) mod revocations;
pub(crate) mod seal;
pub(crate) mod sync;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::Config;
use crate::domain::RoomName;
use crate::error::{Error, Result};
use crate::metrics::{Metrics, NatsDrop};
use drops::Drops;
use seal::{Keyring, NodeId, Opened, Refusal, Which};

pub(crate) use connect::redact;
pub(crate) use seal::MAX_SKEW;
pub use seal::new_key;

/// How often a node compares its live rooms with storage while NATS is
/// connected: the bound on the delay of a notification NATS lost.
pub(crate) const POLL_CONNECTED: Duration = Duration::from_secs(2);
/// The same while NATS is down: the delay bound between nodes then.
pub(crate) const POLL_DISCONNECTED: Duration = Duration::from_secs(1);

/// How long start-up waits for a first connection to NATS. A node that
/// cannot reach NATS by then serves anyway (sends are stored, streams are
/// fed from PostgreSQL) and keeps trying in the background.
pub(crate) const CONNECT_DEADLINE: Duration = Duration::from_secs(5);
/// Messages a subscription may hold before NATS drops further ones for it
/// (a slow consumer): bounded, and what it drops the poller finds.
const SUBSCRIPTION_CAPACITY: usize = 4096;
/// Commands (publishes, subscribes) the client may queue, including while
/// disconnected.
const CLIENT_CAPACITY: usize = 4096;
/// The longest pause between two reconnect attempts.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);
/// How long subscribing (and a flush) may take.
pub(crate) const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Room subject tokens kept per generation of the cache (two generations):
/// a token is one HMAC, computed once per room rather than per publish.
const TOKEN_CACHE: usize = 16_384;

/// What this node knows about its NATS connection.
#[derive(Debug, Default)]
pub(crate) struct Link {
    connected: AtomicBool,
    /// Milliseconds since `epoch` when the current connection was made.
    connected_at_ms: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
    /// Woken at every (re)connection: a node may have missed notifications
    /// while it was away.
    connected_event: Notify,
    /// Woken at every (re)connection, for presence.
    presence_event: Notify,
    /// Woken at every (re)connection, for the node directory.
    nodes_event: Notify,
}

impl Link {
    fn now_ms(&self) -> u64 {
        let epoch = self.epoch.get_or_init(Instant::now);
        epoch.elapsed().as_millis() as u64
    }

    /// Whether NATS is connected now.
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// How long the current connection has lasted; `None` while down.
    pub(crate) fn connected_for(&self) -> Option<Duration> {
        if !self.is_connected() {
            return None;
        }
        let since = self.connected_at_ms.load(Ordering::Acquire);
        Some(Duration::from_millis(self.now_ms().saturating_sub(since)))
    }

    /// Resolves after the next (re)connection (at once if one happened
    /// since the last call).
    pub(crate) async fn reconnected(&self) {
        self.connected_event.notified().await;
    }

    /// [`Self::reconnected`] for the presence task.
    pub(crate) async fn reconnected_for_presence(&self) {
        self.presence_event.notified().await;
    }

    /// [`Self::reconnected`] for the node directory.
    pub(crate) async fn reconnected_for_nodes(&self) {
        self.nodes_event.notified().await;
    }

    fn set(&self, connected: bool) {
        if connected {
            self.connected_at_ms.store(self.now_ms(), Ordering::Release);
        }
        self.connected.store(connected, Ordering::Release);
        if connected {
            self.connected_event.notify_one();
            self.presence_event.notify_one();
            self.nodes_event.notify_one();
        }
    }
}

/// A connection to the cluster: the NATS client, this node's id, the keys
/// and the subject names.
#[derive(Clone, Debug)]
pub(crate) struct Cluster {
    /// Private: every payload goes through [`Cluster::publish`] (sealed)
    /// and comes back through [`Cluster::open`].
    client: async_nats::Client,
    /// This node's id: random per start, so it is also the node's epoch
    /// (a restarted node is a new node, and what others knew of the old one
    /// expires).
    pub(crate) node: NodeId,
    name: Arc<str>,
    keys: Arc<Keyring>,
    /// Room subject tokens under the current key.
    tokens: Arc<TokenCache>,
    drops: Arc<Drops>,
    pub(crate) link: Arc<Link>,
}

impl Cluster {
    /// Connects to `CHAT_NATS_URL` (with `CHAT_NATS_CREDS`, `CHAT_NATS_CA`
    /// and the URL's own credentials), waiting at most [`CONNECT_DEADLINE`]
    /// for a first connection; if NATS is not reachable by then, returns
    /// anyway and keeps trying in the background. Connection changes are
    /// logged; URLs only ever redacted.
    pub(crate) async fn connect(config: &Config, url: &str, metrics: Metrics) -> Result<Cluster> {
        let (current, previous) =
            config
                .cluster_keys()
                .map_err(Error::Config)?
                .ok_or_else(|| {
                    Error::Config("CHAT_CLUSTER_KEY is required with CHAT_NATS_URL".into())
                })?;
        let keys = Arc::new(Keyring::new(&current, previous.as_ref())?);
        let target = connect::parse(url)
            .map_err(|e| Error::Config(format!("CHAT_NATS_URL: {} {e}", redact(url))))?;
        let node = NodeId::random()?;
        let link = Arc::new(Link::default());
        link.now_ms();
        let options = options(config, node, &link);
        let options = connect::secure(
            options,
            &target,
            config.cluster_security.nats_creds.as_deref(),
            config.cluster_security.nats_ca.as_deref(),
        )
        .await?;
        let client = options.connect(target.urls.clone()).await.map_err(|e| {
            Error::Config(format!("CHAT_NATS_URL: cannot use {}: {e}", redact(url)))
        })?;
        let deadline = Instant::now() + CONNECT_DEADLINE;
        while !link.is_connected() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !link.is_connected() {
            tracing::warn!(
                url = %redact(url),
                "NATS is not reachable: serving anyway; messages reach the streams of other nodes through PostgreSQL (within about a second) until it is"
            );
        }
        tracing::info!(
            node = %node,
            cluster = %config.cluster_name,
            key_id = %keys.current_id(),
            rotating = keys.has_previous(),
            "running as a cluster node; traffic between nodes is sealed with CHAT_CLUSTER_KEY"
        );
        Ok(Cluster {
            client,
            node,
            name: config.cluster_name.as_str().into(),
            keys,
            tokens: Arc::new(TokenCache::default()),
            drops: Arc::new(Drops::new(metrics)),
            link,
        })
    }

    /// A subject that carries no room: `<cluster>.<name>`.
    pub(crate) fn subject(&self, name: &str) -> String {
        format!("{}.{name}", self.name)
    }

    /// The subject of `room`'s `kind` (`m` or `p`) under the current key.
    pub(crate) fn room_subject(&self, room: &RoomName, kind: &str) -> String {
        let token = self.tokens.get(room, &self.keys);
        format!("{}.room.{token}.{kind}", self.name)
    }

    /// What a node subscribes to for `room`: all its kinds, under the
    /// current key and, during a rotation, the previous one.
    pub(crate) fn room_subscriptions(&self, room: &RoomName) -> Vec<String> {
        [Which::Current, Which::Previous]
            .into_iter()
            .filter_map(|which| self.keys.room_token(which, room.as_str()))
            .map(|token| format!("{}.room.{token}.*", self.name))
            .collect()
    }

    /// Seals `payload` for `subject` and publishes it.
    pub(crate) async fn publish(&self, subject: String, payload: &[u8]) -> Result<()> {
        let sealed = self.seal(&subject, payload)?;
        self.client
            .publish(subject, sealed)
            .await
            .map_err(|e| Error::Internal(format!("publishing on NATS: {e}")))
    }

    /// Seals `payload` for `subject` and publishes it as a request whose
    /// answers go to `reply`.
    pub(crate) async fn request(
        &self,
        subject: String,
        reply: String,
        payload: &[u8],
    ) -> Result<()> {
        let sealed = self.seal(&subject, payload)?;
        self.client
            .publish_with_reply(subject, reply, sealed)
            .await
            .map_err(|e| Error::Internal(format!("publishing on NATS: {e}")))
    }

    fn seal(&self, subject: &str, payload: &[u8]) -> Result<Bytes> {
        self.keys.seal(subject, self.node, drops::now_ms(), payload)
    }

    /// Opens a received message: `None` (counted and logged, throttled)
    /// unless it was sealed for its subject with a key this node holds,
    /// sent within [`MAX_SKEW`] of this node's clock, by another node.
    pub(crate) fn open(&self, message: &async_nats::Message) -> Option<Opened> {
        match self
            .keys
            .open(&message.subject, &message.payload, drops::now_ms())
        {
            Ok(opened) if opened.node == self.node => {
                self.invalid(|| "a message carrying this node's own id (a replay)".into());
                None
            }
            Ok(opened) => Some(opened),
            Err(Refusal::Seal { seen }) => {
                let ours = self.keys.current_id();
                self.drops.record(NatsDrop::Seal, || match seen {
                    Some(seen) => format!(
                        "a message sealed with key id {seen} did not open (this node's key id is {ours}): is every node given the same CHAT_CLUSTER_KEY?"
                    ),
                    None => format!(
                        "an unsealed or malformed message (this node's key id is {ours}): is every node given the same CHAT_CLUSTER_KEY?"
                    ),
                });
                None
            }
            Err(Refusal::Stale) => {
                self.drops.record(NatsDrop::Stale, || {
                    format!(
                        "a message sent more than {}s from this node's clock: do the nodes' clocks agree?",
                        MAX_SKEW.as_secs()
                    )
                });
                None
            }
        }
    }

    /// Counts (and logs, throttled) a message that opened but says what
    /// this node does not believe.
    pub(crate) fn invalid(&self, what: impl FnOnce() -> String) {
        self.drops.record(NatsDrop::Invalid, what);
    }

    /// Subscribes to `subject`, within [`SUBSCRIBE_TIMEOUT`].
    pub(crate) async fn subscribe(&self, subject: String) -> Result<async_nats::Subscriber> {
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.client.subscribe(subject)).await {
            Ok(Ok(subscriber)) => Ok(subscriber),
            Ok(Err(e)) => Err(Error::Internal(format!("subscribing on NATS: {e}"))),
            Err(_) => Err(Error::Internal("subscribing on NATS timed out".into())),
        }
    }

    /// A fresh inbox subject for answers.
    pub(crate) fn new_inbox(&self) -> String {
        self.client.new_inbox()
    }

    /// Waits (at most [`SUBSCRIBE_TIMEOUT`]) until the server has what was
    /// sent so far.
    pub(crate) async fn flush(&self) {
        let _ = tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.client.flush()).await;
    }

    /// Closes the connection after flushing what is queued (bounded).
    pub(crate) async fn close(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.drain()).await;
    }
}

/// Checks the cluster settings that name files (`CHAT_NATS_CREDS`,
/// `CHAT_NATS_CA`) and the URL, so that a bad one stops start-up.
pub(crate) async fn check_settings(config: &Config) -> Result<()> {
    let Some(url) = &config.nats_url else {
        return Ok(());
    };
    connect::parse(url)
        .map_err(|e| Error::Config(format!("CHAT_NATS_URL: {} {e}", redact(url))))?;
    let security = &config.cluster_security;
    connect::check_files(security.nats_creds.as_deref(), security.nats_ca.as_deref()).await
}

/// The client's options: its name, reconnection, bounded queues, and the
/// connection changes recorded in `link`.
fn options(config: &Config, node: NodeId, link: &Arc<Link>) -> async_nats::ConnectOptions {
    let events = link.clone();
    let ever = Arc::new(AtomicBool::new(false));
    async_nats::ConnectOptions::new()
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
        })
}

/// Room subject tokens under the current key, two generations of at most
/// [`TOKEN_CACHE`] each. Never held across `.await`.
#[derive(Debug, Default)]
struct TokenCache {
    maps: Mutex<[HashMap<RoomName, Arc<str>>; 2]>,
}

impl TokenCache {
    fn get(&self, room: &RoomName, keys: &Keyring) -> Arc<str> {
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(token) = maps[0].get(room) {
            return token.clone();
        }
        let token = match maps[1].remove(room) {
            Some(token) => token,
            None => keys
                .room_token(Which::Current, room.as_str())
                .unwrap_or_default()
                .into(),
        };
        if maps[0].len() >= TOKEN_CACHE {
            maps[1] = std::mem::take(&mut maps[0]);
        }
        maps[0].insert(room.clone(), token.clone());
        token
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
