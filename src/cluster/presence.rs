//! Cluster-wide presence: each node's local members of a room, merged on every node.
//!
//! Each node announces its own members of a room (those with a stream on
//! it; `crate::rooms` counts their streams) as a full snapshot on the
//! room's `.p` subject: when a user's first stream there opens or last one
//! closes (coalesced per room), every third of `CHAT_PRESENCE_TIMEOUT` for
//! every room it has members in, after each reconnection, and when asked
//! (a `.s` sync request, sent when a node starts following a room). Every
//! node keeps, per room and per other node, the newest snapshot (by the
//! sender's sequence number, so a stale one is ignored) and when it came;
//! the room's remote members are the union ([`Rooms::set_remote`] turns
//! changes into member_joined / member_left).
//!
//! A node whose snapshots stop (killed, cut off) is dropped after
//! `CHAT_PRESENCE_TIMEOUT`, but only while this node's own NATS connection
//! has been up for that long: a node that was itself cut off expires no one
//! (and so emits no storm of leaves and joins when the partition heals). A
//! node id is random per start, so a restarted node is a new node. A node
//! that shuts down announces empty snapshots for its rooms first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::domain::RoomName;
use crate::rooms::Rooms;

/// Rooms whose local members changed, waiting to be announced; beyond that
/// a change waits for the periodic snapshot.
pub const CHANGES_QUEUE: usize = 4096;
/// How often expiry is checked.
const EXPIRY_CHECK: Duration = Duration::from_millis(250);
/// How long ListMembers waits for the other nodes' answers about a room
/// that has no stream on this node.
const ASK_WAIT: Duration = Duration::from_millis(200);

#[derive(Clone, PartialEq, prost::Message)]
struct WireMember {
    #[prost(string, tag = "1")]
    user_id: String,
    #[prost(string, tag = "2")]
    display_name: String,
}

/// A node's members of one room.
#[derive(Clone, PartialEq, prost::Message)]
struct Snapshot {
    #[prost(string, tag = "1")]
    node: String,
    /// Grows with every snapshot the node sends: an older one is stale.
    #[prost(uint64, tag = "2")]
    seq: u64,
    #[prost(message, repeated, tag = "3")]
    members: Vec<WireMember>,
}

/// What this node last heard from another about a room.
#[derive(Debug)]
struct View {
    seq: u64,
    members: BTreeMap<Arc<str>, Arc<str>>,
    heard: Instant,
}

/// Cluster-wide presence: the other nodes' members of the rooms followed
/// here.
#[derive(Debug)]
pub struct Presence {
    cluster: Cluster,
    rooms: Arc<Rooms>,
    timeout: Duration,
    /// Room -> node -> view. Never held across `.await`.
    views: Mutex<HashMap<RoomName, HashMap<Arc<str>, View>>>,
    /// The sequence number of this node's next snapshot.
    seq: AtomicU64,
}

impl Presence {
    pub fn new(cluster: Cluster, rooms: Arc<Rooms>, timeout: Duration) -> Self {
        Presence {
            cluster,
            rooms,
            timeout,
            views: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<RoomName, HashMap<Arc<str>, View>>> {
        self.views
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forgets what other nodes said about `room` (no streams here any more).
    pub fn forget(&self, room: &RoomName) {
        self.lock().remove(room);
    }

    /// For rooms just followed: applies what is known and asks the other
    /// nodes for their members (they answer on the room's subject; the
    /// answers arrive as member_joined events).
    pub async fn sync(&self, rooms: &[RoomName]) {
        for room in rooms {
            self.apply(room);
            self.publish_snapshot(room, None).await;
            let subject = self.cluster.subject(room, "s");
            let _ = self
                .cluster
                .client
                .publish(
                    subject,
                    Bytes::copy_from_slice(self.cluster.node.as_bytes()),
                )
                .await;
        }
    }

    /// Handles a presence message of `kind` for `room`.
    pub async fn receive(&self, room: &RoomName, kind: &str, message: async_nats::Message) {
        match kind {
            "p" => match Snapshot::decode(message.payload) {
                Ok(snapshot) => {
                    if self.merge(room, snapshot) {
                        self.apply(room);
                    }
                }
                Err(e) => tracing::warn!(room = %room, error = %e, "undecodable presence"),
            },
            "s" => self.publish_snapshot(room, message.reply).await,
            _ => {}
        }
    }

    /// Records a snapshot unless it is stale; returns whether it changed
    /// the members.
    fn merge(&self, room: &RoomName, snapshot: Snapshot) -> bool {
        if *snapshot.node == *self.cluster.node {
            return false;
        }
        let members: BTreeMap<Arc<str>, Arc<str>> = snapshot
            .members
            .into_iter()
            .map(|m| (m.user_id.into(), m.display_name.into()))
            .collect();
        let mut views = self.lock();
        let nodes = views.entry(room.clone()).or_default();
        match nodes.get_mut(snapshot.node.as_str()) {
            Some(view) if view.seq >= snapshot.seq => false,
            Some(view) => {
                view.seq = snapshot.seq;
                view.heard = Instant::now();
                let changed = view.members != members;
                view.members = members;
                changed
            }
            None => {
                let changed = !members.is_empty();
                nodes.insert(
                    snapshot.node.into(),
                    View {
                        seq: snapshot.seq,
                        members,
                        heard: Instant::now(),
                    },
                );
                changed
            }
        }
    }

    /// Hands the union of the other nodes' members of `room` to the room.
    fn apply(&self, room: &RoomName) {
        let union: BTreeMap<Arc<str>, Arc<str>> = {
            let views = self.lock();
            views
                .get(room)
                .into_iter()
                .flat_map(|nodes| nodes.values())
                .flat_map(|view| view.members.iter())
                .map(|(id, name)| (id.clone(), name.clone()))
                .collect()
        };
        self.rooms.set_remote(room, union);
    }

    /// Drops the views of nodes not heard from for the timeout, unless this
    /// node's own connection is down or younger than the timeout.
    fn expire(&self) {
        if self
            .cluster
            .link
            .connected_for()
            .is_none_or(|up| up < self.timeout)
        {
            return;
        }
        let mut changed = Vec::new();
        {
            let mut views = self.lock();
            for (room, nodes) in views.iter_mut() {
                let before = nodes.values().any(|v| !v.members.is_empty());
                let mut lost = false;
                nodes.retain(|node, view| {
                    let keep = view.heard.elapsed() < self.timeout;
                    if !keep && !view.members.is_empty() {
                        tracing::info!(room = %room, node = %node, members = view.members.len(), "a node went silent: its members leave");
                        lost = true;
                    }
                    keep
                });
                if before && lost {
                    changed.push(room.clone());
                }
            }
            views.retain(|_, nodes| !nodes.is_empty());
        }
        for room in changed {
            self.apply(&room);
        }
    }

    /// Publishes this node's members of `room` (to `reply` when given,
    /// else on the room's subject).
    async fn publish_snapshot(&self, room: &RoomName, reply: Option<async_nats::Subject>) {
        let members = self
            .rooms
            .local_members(room)
            .into_iter()
            .map(|(id, name)| WireMember {
                user_id: id.to_string(),
                display_name: name.to_string(),
            })
            .collect();
        let snapshot = Snapshot {
            node: self.cluster.node.to_string(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            members,
        };
        let payload = Bytes::from(snapshot.encode_to_vec());
        let subject = match reply {
            Some(reply) => reply.to_string(),
            None => self.cluster.subject(room, "p"),
        };
        if let Err(e) = self.cluster.client.publish(subject, payload).await {
            tracing::debug!(error = %e, "publishing presence failed");
        }
    }

    /// The members of a room with no stream on this node: asks the nodes
    /// that have some and gathers their answers for [`ASK_WAIT`].
    pub async fn ask(&self, room: &RoomName) -> Vec<crate::proto::Member> {
        let client = &self.cluster.client;
        let inbox = client.new_inbox();
        let Ok(Ok(mut answers)) =
            tokio::time::timeout(ASK_WAIT, client.subscribe(inbox.clone())).await
        else {
            return Vec::new();
        };
        let subject = self.cluster.subject(room, "s");
        let asked = client
            .publish_with_reply(
                subject,
                inbox,
                Bytes::copy_from_slice(self.cluster.node.as_bytes()),
            )
            .await;
        let mut members = BTreeMap::new();
        if asked.is_ok() {
            let deadline = Instant::now() + ASK_WAIT;
            while let Ok(Some(answer)) = tokio::time::timeout_at(deadline, answers.next()).await {
                if let Ok(snapshot) = Snapshot::decode(answer.payload) {
                    for m in snapshot.members {
                        members.insert(m.user_id, m.display_name);
                    }
                }
            }
        }
        members
            .into_iter()
            .map(|(user_id, display_name)| crate::proto::Member {
                user_id,
                display_name,
            })
            .collect()
    }
}

/// Announces local changes, sends the periodic snapshots, expires silent
/// nodes; at `stop`, announces that this node's members are gone.
pub async fn run(
    presence: Arc<Presence>,
    mut changes: mpsc::Receiver<RoomName>,
    stop: CancellationToken,
) {
    let mut announce = tokio::time::interval(presence.timeout / 3);
    announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut expiry = tokio::time::interval(EXPIRY_CHECK);
    // Rooms this node announced members in: told "nobody" at shutdown.
    let mut announced: HashSet<RoomName> = HashSet::new();
    loop {
        let mut dirty: HashSet<RoomName> = HashSet::new();
        tokio::select! {
            () = stop.cancelled() => break,
            Some(room) = changes.recv() => {
                dirty.insert(room);
                while let Ok(room) = changes.try_recv() {
                    dirty.insert(room);
                }
            }
            _ = announce.tick() => {
                dirty.extend(presence.rooms.live().into_iter().map(|(room, _)| room));
            }
            () = presence.cluster.link.reconnected_for_presence() => {
                let live: Vec<RoomName> = presence.rooms.live().into_iter().map(|(room, _)| room).collect();
                presence.sync(&live).await;
            }
            _ = expiry.tick() => presence.expire(),
        }
        for room in dirty {
            if presence.rooms.local_members(&room).is_empty() {
                if !announced.remove(&room) {
                    continue;
                }
            } else {
                announced.insert(room.clone());
            }
            presence.publish_snapshot(&room, None).await;
        }
    }
    for room in announced {
        presence.publish_snapshot(&room, None).await;
    }
}
