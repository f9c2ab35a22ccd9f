//! The room registry: live fan-out and presence.
//!
//! A room that has open JoinRoom streams has an entry here holding a ring
//! of encoded events and the room's members. The writer
//! [`Rooms::publish`]es each message after it is committed; every stream
//! reads the ring through a [`Subscription`].
//!
//! The ring is bounded in slots (`CHAT_ROOM_BUFFER`) and in bytes
//! (`CHAT_ROOM_BUFFER_BYTES`), allocates only as it fills, and is shared
//! by the room's streams: each event is encoded once and each stream keeps
//! only a cursor into it. Delivery is exactly-once and gapless per stream
//! because the ring is only a fast path: a subscription tracks the next seq
//! it owes its client, skips what it already sent, and reads from storage
//! whatever it would otherwise miss (a replay on resume, a reader the ring
//! left behind, or a seq that never came through the ring). Such catch-up
//! pages are bounded in bytes and charged to the user's budget
//! ([`crate::limits::quota`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::domain::{Identity, RoomName, StoredEvent};
use crate::error::{Error, Result};
use crate::limits::quota::Quotas;
use crate::metrics::{CatchUp, Metrics};
use crate::proto;
use crate::storage::Store;

mod ephemeral;
mod joined;
mod membership;
mod order;
mod ring;
mod subscription;
mod synced;
mod wake;

pub use order::HOLD;
pub use subscription::Subscription;
pub use synced::SYNC_WAIT;

use bytes::Bytes;
pub use ephemeral::{Outgoing, OutgoingKind};
pub use membership::MembersPage;
use membership::{LocalMember, Membership};
use order::Reorder;
pub use ring::Durable;
use ring::{Ring, RingLimits, chunks, encode_durable};
use synced::Synced;
use wake::Deferred;

#[derive(Debug, Default)]
struct RoomState {
    ring: Ring,
    /// Members by user id, so listings come out in a stable order. Only
    /// streams whose join succeeded count.
    members: BTreeMap<Arc<str>, LocalMember>,
    /// Users present in the room on other nodes of a cluster (by user id,
    /// with their display name), as [`Rooms::set_remote`] last said. A user
    /// is a member while present here or there; events go out when the
    /// union gains or loses them.
    remote: BTreeMap<Arc<str>, Arc<str>>,
    /// How many users are in both `members` and `remote`, so the member
    /// count a `joined` and ListMembers give costs nothing in a large room.
    shared: usize,
    /// Open and joining streams in the room, all users together; the entry
    /// is removed from the registry when this reaches 0.
    streams: usize,
    /// The newest seq known to be stored: set by the first join's read of
    /// storage and raised by every `publish` (whether or not that read has
    /// come back), always under this lock and always to the larger value,
    /// so it never goes back below a published seq.
    last_seq: Option<u64>,
    /// Set by [`Rooms::close`]: streams end with UNAVAILABLE.
    closed: bool,
    /// Cluster only: messages that arrived ahead of a missing seq.
    order: Reorder,
    /// When the streams were last woken for messages ([`WAKE_EVERY`]).
    woken_at: Option<tokio::time::Instant>,
    /// Whether the room waits in the queue of deferred wake-ups.
    wake_queued: bool,
    /// When the streams were last woken for presence ([`PRESENCE_EVERY`]).
    presence_woken_at: Option<tokio::time::Instant>,
    /// Whether the room waits in the queue of deferred presence wake-ups.
    presence_queued: bool,
    /// Cluster only: whether the other nodes' members are known yet.
    synced: Synced,
}

impl RoomState {
    /// How many users are members, here or on other nodes.
    fn member_count(&self) -> usize {
        (self.members.len() + self.remote.len()).saturating_sub(self.shared)
    }

    /// Records that `seq` is stored; returns the newest seq known.
    fn learn_last_seq(&mut self, seq: u64) -> u64 {
        let known = self.last_seq.map_or(seq, |l| l.max(seq));
        self.last_seq = Some(known);
        known
    }
}

#[derive(Debug)]
struct Room {
    name: RoomName,
    state: Mutex<RoomState>,
    /// Woken when the ring has news (at most once per [`WAKE_EVERY`] for
    /// messages and per [`PRESENCE_EVERY`] for presence, at once for a
    /// revocation or shutdown): a waiting stream then takes what is new
    /// under the lock.
    notify: Notify,
    /// Woken when the room is synced ([`Rooms::mark_synced`]).
    synced: Notify,
}

impl Room {
    fn lock(&self) -> MutexGuard<'_, RoomState> {
        // A panic while holding the lock cannot leave the state half
        // updated in a way that matters more than losing the room: keep
        // serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The most messages one gap fill reads.
const FILL_PAGE: u32 = 256;

/// The registry of rooms with open streams.
#[derive(Debug)]
pub struct Rooms {
    /// Lock order: this map, then a room's state. Never held across `.await`.
    rooms: Mutex<Registry>,
    limits: RingLimits,
    /// Per-user limits: open streams and unsent response bytes.
    quotas: Quotas,
    /// The largest encoded size of one message ([`proto::message_size_bound`]).
    message_bound: usize,
    /// Notified when a room entry is added or removed, so a cluster node
    /// can follow only the rooms that have streams here.
    changed: Notify,
    /// Cluster only: told the room whose local members changed (a user's
    /// first stream opened or last closed), so the node announces them.
    /// Bounded; a change it drops goes out with the next periodic snapshot.
    presence_changes: std::sync::OnceLock<tokio::sync::mpsc::Sender<RoomName>>,
    /// Typing flags and read markers of this node's rooms.
    ephemeral: ephemeral::Ephemeral,
    /// Cluster only: ephemeral events announced here, for the other nodes.
    /// Bounded; one it drops is lost (they are live only).
    ephemeral_out: std::sync::OnceLock<tokio::sync::mpsc::Sender<Outgoing>>,
    /// Cluster only: whether rooms put messages back in seq order before
    /// the ring (one node's own commits arrive in order already).
    ordered: bool,
    /// Woken when a room starts holding messages behind a gap, for
    /// [`Rooms::fill_gaps`].
    gaps: Notify,
    /// The next [`LocalMember::generation`].
    generations: std::sync::atomic::AtomicU64,
    /// Rooms whose wake-up for messages waits for [`WAKE_EVERY`].
    deferred: Deferred,
    /// Live rooms, open streams, deliveries and catch-up reads.
    metrics: Metrics,
}

#[derive(Debug, Default)]
struct Registry {
    rooms: HashMap<RoomName, Arc<Room>>,
    /// Set by [`Rooms::close`]: no stream may join after it.
    closed: bool,
}

impl Rooms {
    pub fn new(config: &Config) -> Self {
        Rooms {
            rooms: Mutex::new(Registry::default()),
            limits: RingLimits {
                slots: (config.room_buffer as usize).max(1),
                bytes: config.room_buffer_bytes as usize,
            },
            quotas: Quotas::new(config.user_max_streams as usize, config.user_buffer_bytes),
            message_bound: proto::message_size_bound(config.max_message_bytes as usize),
            changed: Notify::new(),
            presence_changes: std::sync::OnceLock::new(),
            ephemeral: ephemeral::Ephemeral::default(),
            ephemeral_out: std::sync::OnceLock::new(),
            ordered: config.nats_url.is_some(),
            gaps: Notify::new(),
            generations: std::sync::atomic::AtomicU64::new(1),
            deferred: Deferred::default(),
            metrics: Metrics::off(),
        }
    }

    /// The same registry, counting into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Where the room registry, its streams and the writers count.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The per-user limits.
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// The largest encoded size of one message under the configured limits.
    pub fn message_bound(&self) -> usize {
        self.message_bound
    }

    fn map(&self) -> MutexGuard<'_, Registry> {
        self.rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, room: &RoomName) -> Option<Arc<Room>> {
        self.map().rooms.get(room).cloned()
    }

    /// Ends every open stream (each with UNAVAILABLE) and refuses new ones.
    pub fn close(&self) {
        let mut registry = self.map();
        registry.closed = true;
        for room in registry.rooms.values() {
            room.lock().closed = true;
            room.notify.notify_waiters();
        }
    }

    /// Delivers committed messages, in seq order, to the room's streams.
    pub fn publish<T: Durable>(&self, messages: &[&T]) {
        for (name, group) in group_by_room(messages) {
            // Rooms without streams here cost no encoding.
            if self.get(name).is_none() {
                continue;
            }
            let encoded: Vec<(u64, Bytes)> = group.into_iter().map(encode_durable).collect();
            self.publish_encoded(name, &encoded);
        }
    }

    /// Delivers a room's share of a committed batch, already encoded, to
    /// the room's streams (if it has any here). The messages may come from
    /// any node, late, twice or out of order: a stream skips seqs it has
    /// sent and catches up from storage past a gap, and the room's newest
    /// known seq only ever grows.
    pub fn publish_encoded(&self, name: &RoomName, messages: &[(u64, Bytes)]) {
        let Some(room) = self.get(name) else { return };
        if messages.is_empty() {
            return;
        }
        let (wake_now, holding) = {
            let mut state = room.lock();
            let ready;
            let ready = if self.ordered {
                ready = state.order.accept(messages, self.limits.bytes);
                &ready[..]
            } else {
                messages
            };
            // Only what goes into the ring moves the room's last seq:
            // messages held behind a gap are not confirmed yet.
            if let Some(newest) = ready.iter().map(|(seq, _)| *seq).max() {
                state.learn_last_seq(newest);
            }
            for event in chunks(ready) {
                state.ring.push(event, self.limits);
            }
            let wake = !ready.is_empty() && self.wake_for_messages(&room, &mut state);
            (wake, state.order.holding())
        };
        if wake_now {
            // One wake-up per waiting stream for the whole batch.
            room.notify.notify_waiters();
        }
        if holding {
            self.gaps.notify_one();
        }
    }

    /// Cluster only: fills the gaps rooms hold messages behind, each with
    /// one storage read once it has been open for [`HOLD`]; if the read
    /// fails, the held messages go into the ring as they are and the
    /// streams read the gap themselves. Ends at `stop`.
    pub async fn fill_gaps(self: Arc<Self>, store: Store, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.gaps.notified() => {}
            }
            let mut holding = true;
            while holding {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(HOLD) => {}
                }
                let rooms: Vec<Arc<Room>> = self.map().rooms.values().cloned().collect();
                holding = false;
                for room in rooms {
                    let overdue = {
                        let state = room.lock();
                        holding |= state.order.holding();
                        state.order.overdue(HOLD)
                    };
                    if let Some((after, missing)) = overdue {
                        self.fill_gap(&room, &store, after, missing).await;
                    }
                }
            }
        }
    }

    /// Reads the `missing` seqs after `after` of `room` and publishes them
    /// (which releases what was held behind them). Held messages beyond
    /// what storage holds are not committed (a node only announces
    /// committed messages, before this read): they never reach the ring.
    async fn fill_gap(&self, room: &Arc<Room>, store: &Store, after: u64, missing: u32) {
        let limit = missing.clamp(1, FILL_PAGE);
        match store.read_events(&room.name, after, limit).await {
            Ok((found, more)) => {
                let stored_through = found.last().map_or(after, StoredEvent::seq);
                let complete = !more;
                let found: Vec<&StoredEvent> = found.iter().collect();
                self.publish(&found);
                if complete {
                    let dropped = room.lock().order.drop_beyond(stored_through);
                    if dropped > 0 {
                        tracing::debug!(room = %room.name, dropped, stored_through, "dropped held messages that storage does not have");
                    }
                }
            }
            Err(e) => {
                tracing::debug!(room = %room.name, error = %e, "filling a gap from storage failed");
                let mut state = room.lock();
                let held = state.order.release();
                if let Some((newest, _)) = held.last() {
                    state.learn_last_seq(*newest);
                }
                for event in chunks(&held) {
                    state.ring.push(event, self.limits);
                }
                room.notify.notify_waiters();
            }
        }
    }

    /// The newest seq `room` knows to be stored, if it has streams here and
    /// knows it yet.
    pub fn known_last_seq(&self, room: &RoomName) -> Option<u64> {
        self.get(room).and_then(|room| room.lock().last_seq)
    }

    /// The rooms with streams here and, for each, the newest seq the room
    /// has seen (`None` while its first join is still reading storage).
    pub fn live(&self) -> Vec<(RoomName, Option<u64>)> {
        let rooms: Vec<Arc<Room>> = self.map().rooms.values().cloned().collect();
        rooms
            .into_iter()
            .map(|room| {
                let last = room.lock().last_seq;
                (room.name.clone(), last)
            })
            .collect()
    }

    /// Cluster only: where to tell which rooms' local members changed.
    pub fn watch_presence(&self, changes: tokio::sync::mpsc::Sender<RoomName>) {
        let _ = self.presence_changes.set(changes);
    }

    fn presence_changed(&self, room: &RoomName) {
        if let Some(changes) = self.presence_changes.get() {
            let _ = changes.try_send(room.clone());
        }
    }

    /// Whether `room` has streams here.
    pub fn is_live(&self, room: &RoomName) -> bool {
        self.get(room).is_some()
    }

    /// Resolves after a room entry was added or removed since the last
    /// call (at once if one was): what interest-based subscriptions follow.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Opens a stream on `room` for `identity`: the subscription starts
    /// after `resume_after` when given, else after the room's newest stored
    /// seq. Only once everything that can fail has passed does the caller
    /// become a member (announced to the others if this is the user's first
    /// stream), so a failed join is never seen by the room.
    pub async fn join(
        self: &Arc<Self>,
        room: RoomName,
        identity: Identity,
        resume_after: Option<u64>,
        store: Store,
        shutdown: CancellationToken,
    ) -> Result<Subscription> {
        let slot = self.quotas.open_stream(&identity.user_id)?;
        // Taking the ring position first: anything published later is read
        // from the ring, anything earlier is in storage before we read it.
        let (entry, cursor, cached_last) = self.enter(&room)?;
        // From here on, dropping the guard undoes the join.
        let mut guard = Membership {
            rooms: self.clone(),
            room: entry,
            identity,
            member: false,
            generation: 0,
            revoked: membership::Ending::default(),
            _slot: slot,
        };

        let last_seq = match cached_last {
            Some(last) => last,
            None => {
                let read = store.last_seq(&room).await?;
                let mut state = guard.room.lock();
                if self.ordered {
                    state.order.start(read);
                }
                state.learn_last_seq(read)
            }
        };
        let start_after = start_after(&store, &room, resume_after, last_seq).await?;
        // On a cluster, the first joins of a room wait (bounded) for the
        // other nodes' members, so that `joined` lists them.
        self.wait_synced(&guard.room).await;
        let (joined, presence_from) = guard.become_member(last_seq)?;
        let revoked = guard.revoked.clone();
        Ok(Subscription {
            revoked,
            guard,
            store,
            shutdown,
            cursor,
            presence_from,
            next_seq: start_after + 1,
            catching_up: resume_after.is_some_and(|n| n < last_seq),
            catchup_reason: CatchUp::Resume,
            resync_members: false,
            pending: VecDeque::from([joined]),
            page_charge: None,
            done: false,
        })
    }

    /// Counts one more stream in `room`'s entry (made live if it was not),
    /// with the ring position the stream starts at and the room's cached
    /// last seq.
    fn enter(&self, room: &RoomName) -> Result<(Arc<Room>, u64, Option<u64>)> {
        let mut registry = self.map();
        if registry.closed {
            return Err(Error::ShuttingDown);
        }
        let entry = registry
            .rooms
            .entry(room.clone())
            .or_insert_with(|| self.new_room(room))
            .clone();
        let mut state = entry.lock();
        state.streams += 1;
        let cursor = state.ring.end();
        let cached_last = state.last_seq;
        drop(state);
        Ok((entry, cursor, cached_last))
    }

    /// A room entry just made live.
    fn new_room(&self, room: &RoomName) -> Arc<Room> {
        self.changed.notify_one();
        self.metrics.room_live(true);
        let synced = if self.ordered {
            Synced::Pending
        } else {
            Synced::Done
        };
        Arc::new(Room {
            name: room.clone(),
            state: Mutex::new(RoomState {
                synced,
                ..RoomState::default()
            }),
            notify: Notify::new(),
            synced: Notify::new(),
        })
    }
}

/// Committed messages grouped by room, keeping each room's (ascending)
/// seq order.
fn group_by_room<'a, T: Durable>(messages: &[&'a T]) -> Vec<(&'a RoomName, Vec<&'a T>)> {
    let mut groups: Vec<(&RoomName, Vec<&T>)> = Vec::new();
    for m in messages {
        match groups.iter_mut().find(|(room, _)| **room == *m.room()) {
            Some((_, group)) => group.push(m),
            None => groups.push((m.room(), vec![m])),
        }
    }
    groups
}

/// A committed batch, each message encoded once as a `JoinRoomResponse`,
/// grouped by room in seq order: what the local streams and the other
/// nodes of a cluster both get.
pub fn encode_batch<T: Durable>(messages: &[&T]) -> Vec<(RoomName, Vec<(u64, Bytes)>)> {
    group_by_room(messages)
        .into_iter()
        .map(|(room, group)| {
            (
                room.clone(),
                group.into_iter().map(encode_durable).collect(),
            )
        })
        .collect()
}

/// The seq a stream starts after: `resume_after` when given (refused
/// past the room's last seq), else the room's last seq.
async fn start_after(
    store: &Store,
    room: &RoomName,
    resume_after: Option<u64>,
    last_seq: u64,
) -> Result<u64> {
    match resume_after {
        Some(n) if n > last_seq => {
            // The cache may trail storage after a failed write whose
            // commit went through; ask storage before refusing.
            let stored = store.last_seq(room).await?;
            if n > stored {
                return Err(Error::OutOfRange {
                    field: "resume_after_seq",
                    reason: format!("{n} is beyond the room's last seq {stored}"),
                });
            }
            Ok(n)
        }
        Some(n) => Ok(n),
        None => Ok(last_seq),
    }
}

#[cfg(test)]
mod tests;
