//! Cluster-wide presence: each node's local members of a room, merged on every node.
//!
//! Each node announces its own members of a room (those with a stream on
//! it; `crate::rooms` counts their streams) as a sealed snapshot on the
//! room's `.p` subject: when a user's first stream there opens or last one
//! closes (coalesced per room), every third of `CHAT_PRESENCE_TIMEOUT` for
//! every room it has members in, and after each reconnection. Every node
//! keeps, per room and per other node, the newest snapshot (by the
//! sender's sequence number, so a stale one is ignored) and when it came;
//! the room's remote members are the union ([`Rooms::set_remote`] turns
//! changes into member_joined / member_left). A snapshot is believed only
//! whole: its members must obey the token rules and the room must stay
//! within the bounds of [`super::members`].
//!
//! When a node starts following a room it asks every node for its members
//! ([`super::sync`]) and the room's first joins wait for the answers
//! (bounded), so their `joined` lists the members of other nodes; every
//! node answers such requests ([`serve_requests`]).
//!
//! A node whose snapshots stop (killed, cut off) is dropped after
//! `CHAT_PRESENCE_TIMEOUT`, but only while this node's own NATS connection
//! has been up for that long: a node that was itself cut off expires no one
//! (and so emits no storm of leaves and joins when the partition heals). A
//! node id is random per start, so a restarted node is a new node; the
//! last sequence number of a dropped view is remembered for
//! [`MAX_SKEW`], so a replayed old snapshot cannot bring it back. A node
//! that shuts down announces empty snapshots for its rooms first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use super::members::{
    self, Checked, MAX_NODES_PER_ROOM, MAX_REMOTE_BYTES, MAX_REMOTE_MEMBERS, MemberMap, Snapshot,
};
use super::nodes::Directory;
use super::seal::{MAX_SKEW, NodeId, Opened};
use super::sync::{self, Answer, SyncRequest};
use crate::domain::{MembersCursor, MembersQuery, RoomName};
use crate::rooms::{MembersPage, Rooms};

/// Rooms whose local members changed, waiting to be announced; beyond that
/// a change waits for the periodic snapshot. Also the rooms waiting for a
/// presence sync; beyond that a room is not waited for.
pub const CHANGES_QUEUE: usize = 4096;
/// How often expiry is checked.
const EXPIRY_CHECK: Duration = Duration::from_millis(250);
/// Presence syncs running at once (each holds a subscription for at most
/// [`sync::SYNC_WAIT`]).
const SYNCS_AT_ONCE: usize = 256;
/// Dropped views remembered against replays ([`MAX_SKEW`] each).
const FORGOTTEN_MAX: usize = 65_536;

/// What this node last heard from another about a room.
#[derive(Debug)]
struct View {
    seq: u64,
    checked: Checked,
    heard: Instant,
}

/// The other nodes' views of one room, with their totals.
#[derive(Debug, Default)]
struct RoomViews {
    nodes: HashMap<NodeId, View>,
    members: usize,
    bytes: usize,
}

#[derive(Debug, Default)]
struct Views {
    rooms: HashMap<RoomName, RoomViews>,
    /// The last sequence number of views dropped (expired or forgotten),
    /// with when: a snapshot no newer is a replay.
    forgotten: HashMap<(RoomName, NodeId), (u64, Instant)>,
}

impl Views {
    fn forget(&mut self, room: &RoomName, node: NodeId, seq: u64) {
        if self.forgotten.len() < FORGOTTEN_MAX {
            self.forgotten
                .insert((room.clone(), node), (seq, Instant::now()));
        }
    }
}

/// Cluster-wide presence: the other nodes' members of the rooms followed
/// here.
#[derive(Debug)]
pub struct Presence {
    cluster: Cluster,
    rooms: Arc<Rooms>,
    directory: Arc<Directory>,
    timeout: Duration,
    /// Never held across `.await`.
    views: Mutex<Views>,
    /// The sequence number of this node's next snapshot.
    seq: AtomicU64,
    /// Rooms to sync ([`run_syncs`]).
    syncs: mpsc::Sender<RoomName>,
}

impl Presence {
    /// Presence, and the queue of rooms to sync for [`run_syncs`].
    pub(crate) fn new(
        cluster: Cluster,
        rooms: Arc<Rooms>,
        directory: Arc<Directory>,
        timeout: Duration,
    ) -> (Self, mpsc::Receiver<RoomName>) {
        let (syncs, rx) = mpsc::channel(CHANGES_QUEUE);
        let presence = Presence {
            cluster,
            rooms,
            directory,
            timeout,
            views: Mutex::new(Views::default()),
            seq: AtomicU64::new(1),
            syncs,
        };
        (presence, rx)
    }

    fn lock(&self) -> MutexGuard<'_, Views> {
        self.views
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forgets what other nodes said about `room` (no streams here any more).
    pub fn forget(&self, room: &RoomName) {
        let mut views = self.lock();
        if let Some(gone) = views.rooms.remove(room) {
            for (node, view) in gone.nodes {
                views.forget(room, node, view.seq);
            }
        }
    }

    /// Queues presence syncs of `rooms`; a room the queue has no place for
    /// is not waited for (its members arrive with the next snapshots).
    pub fn request_sync(&self, rooms: Vec<RoomName>) {
        for room in rooms {
            if self.syncs.try_send(room.clone()).is_err() {
                self.rooms.mark_synced(&room);
            }
        }
    }

    /// Announces this node's members of `room`, asks the other nodes for
    /// theirs, hands them to the room and lets its joins go on.
    async fn sync(&self, room: RoomName) {
        if !self.rooms.local_members(&room).is_empty() {
            self.publish_snapshot(&room).await;
        }
        let answers = sync::gather(&self.cluster, &self.directory, &room).await;
        if self.rooms.is_live(&room) {
            for Answer { node, seq, checked } in answers {
                if let Err(why) = self.merge(&room, node, seq, checked) {
                    self.cluster.invalid(|| format!("a presence answer: {why}"));
                }
            }
            self.apply(&room);
        }
        self.rooms.mark_synced(&room);
    }

    /// Handles a snapshot that arrived on `room`'s `.p` subject.
    pub(crate) fn receive(&self, room: &RoomName, opened: Opened) {
        let merged = Snapshot::decode(opened.payload)
            .map_err(|e| e.to_string())
            .and_then(|snapshot| {
                if snapshot.room != room.as_str() {
                    return Err("a snapshot of another room".into());
                }
                let checked = members::check(snapshot.members)?;
                self.merge(room, opened.node, snapshot.seq, checked)
            });
        match merged {
            Ok(true) => self.apply(room),
            Ok(false) => {}
            Err(why) => self.cluster.invalid(|| format!("presence: {why}")),
        }
    }

    /// Records a node's snapshot of `room` unless it is stale or breaks a
    /// bound; returns whether it changed the members.
    fn merge(
        &self,
        room: &RoomName,
        node: NodeId,
        seq: u64,
        checked: Checked,
    ) -> Result<bool, String> {
        let mut views = self.lock();
        let Views { rooms, forgotten } = &mut *views;
        let replayed = forgotten
            .get(&(room.clone(), node))
            .is_some_and(|(last, _)| *last >= seq);
        let views = rooms.entry(room.clone()).or_default();
        let (old_members, old_bytes) = match views.nodes.get(&node) {
            Some(view) if view.seq >= seq => return Ok(false),
            Some(view) => (view.checked.members.len(), view.checked.bytes),
            None if replayed => return Ok(false),
            None if views.nodes.len() >= MAX_NODES_PER_ROOM => {
                return Err(format!(
                    "a {}th node in one room (at most {MAX_NODES_PER_ROOM})",
                    views.nodes.len() + 1
                ));
            }
            None => (0, 0),
        };
        let members = views.members - old_members + checked.members.len();
        let bytes = views.bytes - old_bytes + checked.bytes;
        if members > MAX_REMOTE_MEMBERS || bytes > MAX_REMOTE_BYTES {
            return Err(format!(
                "{members} members of {bytes} bytes on other nodes in one room (at most {MAX_REMOTE_MEMBERS} and {MAX_REMOTE_BYTES})"
            ));
        }
        views.members = members;
        views.bytes = bytes;
        let view = View {
            seq,
            checked,
            heard: Instant::now(),
        };
        let changed = match views.nodes.insert(node, view) {
            Some(old) => old.checked.members != views.nodes[&node].checked.members,
            None => !views.nodes[&node].checked.members.is_empty(),
        };
        Ok(changed)
    }

    /// Hands the union of the other nodes' members of `room` to the room.
    fn apply(&self, room: &RoomName) {
        let union: MemberMap = {
            let views = self.lock();
            views
                .rooms
                .get(room)
                .into_iter()
                .flat_map(|views| views.nodes.values())
                .flat_map(|view| view.checked.members.iter())
                .map(|(id, name)| (id.clone(), name.clone()))
                .collect()
        };
        self.rooms.set_remote(room, union);
    }

    /// Drops the views of nodes not heard from for the timeout, unless this
    /// node's own connection is down or younger than the timeout; forgets
    /// dropped views after [`MAX_SKEW`].
    fn expire(&self) {
        self.lock()
            .forgotten
            .retain(|_, (_, at)| at.elapsed() < MAX_SKEW);
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
            let mut dropped = Vec::new();
            for (room, room_views) in views.rooms.iter_mut() {
                let mut lost = false;
                room_views.nodes.retain(|node, view| {
                    let keep = view.heard.elapsed() < self.timeout;
                    if !keep {
                        if !view.checked.members.is_empty() {
                            tracing::info!(room = %room, node = %node, members = view.checked.members.len(), "a node went silent: its members leave");
                            lost = true;
                        }
                        dropped.push((room.clone(), *node, view.seq));
                    }
                    keep
                });
                room_views.members = room_views
                    .nodes
                    .values()
                    .map(|v| v.checked.members.len())
                    .sum();
                room_views.bytes = room_views.nodes.values().map(|v| v.checked.bytes).sum();
                if lost {
                    changed.push(room.clone());
                }
            }
            views
                .rooms
                .retain(|_, room_views| !room_views.nodes.is_empty());
            for (room, node, seq) in dropped {
                views.forget(&room, node, seq);
            }
        }
        for room in changed {
            self.apply(&room);
        }
    }

    /// This node's members of `room`, as a snapshot with a fresh sequence
    /// number.
    fn snapshot(&self, room: &RoomName) -> Vec<u8> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        members::snapshot(room.as_str(), seq, self.rooms.local_members(room)).encode_to_vec()
    }

    /// Publishes this node's members of `room` on the room's subject.
    async fn publish_snapshot(&self, room: &RoomName) {
        let subject = self.cluster.room_subject(room, "p");
        if let Err(e) = self.cluster.publish(subject, &self.snapshot(room)).await {
            tracing::debug!(error = %e, "publishing presence failed");
        }
    }

    /// Answers a sync request with this node's members of its room (none
    /// is an answer too), sealed for the request's reply subject.
    async fn answer(&self, message: &async_nats::Message) {
        let Some(opened) = self.cluster.open(message) else {
            return;
        };
        let request = match SyncRequest::decode(opened.payload) {
            Ok(request) => request,
            Err(e) => {
                self.cluster.invalid(|| format!("a sync request: {e}"));
                return;
            }
        };
        let Ok(room) = RoomName::parse(&request.room) else {
            self.cluster
                .invalid(|| "a sync request for an invalid room".into());
            return;
        };
        match &message.reply {
            Some(reply) if reply.as_str() == request.reply && room.as_str() == request.room => {
                if let Err(e) = self
                    .cluster
                    .publish(request.reply, &self.snapshot(&room))
                    .await
                {
                    tracing::debug!(error = %e, "answering a presence sync failed");
                }
            }
            _ => self
                .cluster
                .invalid(|| "a sync request whose reply subject is not the one it names".into()),
        }
    }

    /// One page of the members of a room with no stream on this node: asks
    /// every node and returns once each has answered (within
    /// [`sync::SYNC_WAIT`]), within the bounds of a room's remote members.
    pub async fn ask_page(&self, room: &RoomName, query: &MembersQuery) -> MembersPage {
        let answers = sync::gather(&self.cluster, &self.directory, room).await;
        let mut members: BTreeMap<Arc<str>, Arc<str>> = BTreeMap::new();
        let (mut count, mut bytes) = (0, 0);
        for answer in answers.into_iter().take(MAX_NODES_PER_ROOM) {
            count += answer.checked.members.len();
            bytes += answer.checked.bytes;
            if count > MAX_REMOTE_MEMBERS || bytes > MAX_REMOTE_BYTES {
                break;
            }
            members.extend(answer.checked.members);
        }
        let start = query.after().map_or(Bound::Unbounded, Bound::Excluded);
        let mut rest = members.range::<str, _>((start, Bound::Unbounded));
        let page: Vec<crate::proto::Member> = rest
            .by_ref()
            .take(query.limit)
            .map(|(user_id, display_name)| crate::proto::Member {
                user_id: user_id.to_string(),
                display_name: display_name.to_string(),
            })
            .collect();
        let next = match (rest.next(), page.last()) {
            (Some(_), Some(last)) => Some(MembersCursor {
                after: last.user_id.clone(),
            }),
            _ => None,
        };
        MembersPage {
            members: page,
            next,
            count: members.len(),
        }
    }
}

/// Announces local changes, sends the periodic snapshots, expires silent
/// nodes, asks again after a reconnection; at `stop`, announces that this
/// node's members are gone.
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
                let live = presence.rooms.live().into_iter().map(|(room, _)| room).collect();
                presence.request_sync(live);
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
            presence.publish_snapshot(&room).await;
        }
    }
    for room in announced {
        presence.publish_snapshot(&room).await;
    }
}

/// Runs the queued presence syncs, at most [`SYNCS_AT_ONCE`] at a time,
/// each bounded by [`sync::SYNC_WAIT`]. Ends at `stop`.
pub async fn run_syncs(
    presence: Arc<Presence>,
    mut queue: mpsc::Receiver<RoomName>,
    stop: CancellationToken,
) {
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            Some(room) = queue.recv(), if running.len() < SYNCS_AT_ONCE => {
                let presence = presence.clone();
                running.push(async move { presence.sync(room).await });
            }
            Some(()) = running.next(), if !running.is_empty() => {}
        }
    }
}

/// Answers the other nodes' sync requests on `<cluster>.sync` for as long
/// as the node runs; retries the subscription when it fails.
pub async fn serve_requests(presence: Arc<Presence>, stop: CancellationToken) {
    let cluster = presence.cluster.clone();
    loop {
        let subscribed = tokio::select! {
            () = stop.cancelled() => return,
            s = cluster.subscribe(cluster.subject("sync")) => s,
        };
        let Ok(mut requests) = subscribed else {
            tracing::debug!("subscribing to presence sync requests failed; retrying");
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(super::POLL_DISCONNECTED) => continue,
            }
        };
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                message = requests.next() => match message {
                    Some(message) => message,
                    None => break,
                },
            };
            presence.answer(&message).await;
        }
    }
}
