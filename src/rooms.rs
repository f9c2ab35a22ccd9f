//! The room registry: live fan-out and presence.
//!
//! A room that has open JoinRoom streams has an entry here holding a
//! broadcast channel of encoded events and the room's members. The writer
//! [`Rooms::publish`]es each message after it is committed; every stream
//! reads the channel through a [`Subscription`].
//!
//! The broadcast channel is a bounded ring shared by the room's streams, so
//! memory per subscriber is bounded. Delivery is exactly-once and gapless
//! per stream because the channel is only a fast path: a subscription
//! tracks the next seq it owes its client, skips what it already sent, and
//! reads from storage whatever it would otherwise miss (a replay on resume,
//! a reader that fell behind the ring, or a seq that never came through the
//! channel).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::domain::{Identity, RoomName, StoredMessage};
use crate::error::{Error, Result};
use crate::proto::{self, EncodedEvent, join_room_response::Event as WireEvent};
use crate::storage::Store;

/// How many messages a catch-up reads from storage at a time.
const REPLAY_PAGE: u32 = 256;
/// The most messages one ring slot carries, which bounds a room's ring to
/// `capacity * PUBLISH_CHUNK` messages.
const PUBLISH_CHUNK: usize = 8;

/// One event in a room's broadcast ring. The bytes are the encoded
/// `JoinRoomResponse`, shared by every subscriber.
#[derive(Clone, Debug)]
enum Event {
    /// Consecutive messages of the room, in seq order: one ring slot and
    /// one wake-up per subscriber for a whole committed batch.
    Messages(Arc<[(u64, Bytes)]>),
    Presence {
        /// Whose presence changed, so a stream can leave out events about
        /// its own user.
        user_id: Arc<str>,
        bytes: Bytes,
    },
    /// The server is shutting down: end the stream. Sent through the ring
    /// so that a stream waiting for events needs no second thing to wait
    /// on.
    Shutdown,
}

/// A user present in a room.
#[derive(Debug)]
struct Presence {
    display_name: Arc<str>,
    /// How many of the user's streams are open in this room: the user leaves
    /// when the last one closes.
    streams: usize,
}

#[derive(Debug)]
struct RoomState {
    tx: broadcast::Sender<Event>,
    /// Members by user id, so listings come out in a stable order.
    members: BTreeMap<Arc<str>, Presence>,
    /// Open streams in the room, all users together; the entry is removed
    /// from the registry when this reaches 0.
    streams: usize,
    /// The newest seq known to be stored, once read from storage. Kept up to
    /// date by `publish`, so only the first join of a room entry reads it.
    last_seq: Option<u64>,
}

#[derive(Debug)]
struct Room {
    name: RoomName,
    state: Mutex<RoomState>,
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

    fn members(state: &RoomState) -> Vec<proto::Member> {
        state
            .members
            .iter()
            .map(|(id, p)| proto::Member {
                user_id: id.to_string(),
                display_name: p.display_name.to_string(),
            })
            .collect()
    }
}

/// The registry of rooms with open streams.
#[derive(Debug)]
pub struct Rooms {
    /// Lock order: this map, then a room's state. Never held across `.await`.
    rooms: Mutex<Registry>,
    /// Slots in each room's broadcast ring.
    capacity: usize,
}

#[derive(Debug, Default)]
struct Registry {
    rooms: HashMap<RoomName, Arc<Room>>,
    /// Set by [`Rooms::close`]: no stream may join after it.
    closed: bool,
}

impl Rooms {
    pub fn new(capacity: usize) -> Self {
        Rooms {
            rooms: Mutex::new(Registry::default()),
            capacity: capacity.max(1),
        }
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
            let _ = room.lock().tx.send(Event::Shutdown);
        }
    }

    /// Delivers committed messages, in seq order, to the room's streams.
    pub fn publish(&self, messages: &[&StoredMessage]) {
        // Group by room, keeping each room's (ascending) seq order.
        let mut groups: Vec<(&RoomName, Vec<&StoredMessage>)> = Vec::new();
        for m in messages {
            match groups.iter_mut().find(|(room, _)| **room == m.room) {
                Some((_, group)) => group.push(m),
                None => groups.push((&m.room, vec![m])),
            }
        }
        for (name, group) in groups {
            let Some(room) = self.get(name) else { continue };
            for chunk in group.chunks(PUBLISH_CHUNK) {
                let encoded: Arc<[(u64, Bytes)]> = chunk
                    .iter()
                    .map(|m| {
                        let event = WireEvent::Message(proto::Message::from(*m));
                        (m.seq, EncodedEvent::encode(event).0)
                    })
                    .collect();
                let newest = chunk.last().map_or(0, |m| m.seq);
                let mut state = room.lock();
                if let Some(last) = &mut state.last_seq {
                    *last = (*last).max(newest);
                }
                // An error only means no stream is listening right now.
                let _ = state.tx.send(Event::Messages(encoded));
            }
        }
    }

    /// The room's current members.
    pub fn members(&self, room: &RoomName) -> Vec<proto::Member> {
        match self.get(room) {
            Some(room) => Room::members(&room.lock()),
            None => Vec::new(),
        }
    }

    /// Opens a stream on `room` for `identity`: the caller becomes a member
    /// (announced to the others if this is the user's first stream), and the
    /// subscription starts after `resume_after` when given, else after the
    /// room's newest stored seq.
    pub async fn join(
        self: &Arc<Self>,
        room: RoomName,
        identity: Identity,
        resume_after: Option<u64>,
        store: Store,
        shutdown: CancellationToken,
    ) -> Result<Subscription> {
        // Subscribing, joining and taking the member snapshot happen under
        // one lock, so the snapshot and the events that follow it agree.
        let (entry, rx, members, cached_last) = {
            let mut registry = self.map();
            if registry.closed {
                return Err(Error::ShuttingDown);
            }
            let entry = registry
                .rooms
                .entry(room.clone())
                .or_insert_with(|| {
                    Arc::new(Room {
                        name: room.clone(),
                        state: Mutex::new(RoomState {
                            tx: broadcast::channel(self.capacity).0,
                            members: BTreeMap::new(),
                            streams: 0,
                            last_seq: None,
                        }),
                    })
                })
                .clone();
            let mut state = entry.lock();
            state.streams += 1;
            let presence = state
                .members
                .entry(identity.user_id.clone())
                .or_insert_with(|| Presence {
                    display_name: identity.display_name.clone(),
                    streams: 0,
                });
            presence.streams += 1;
            if presence.streams == 1 {
                let event = WireEvent::MemberJoined(proto::MemberJoined {
                    member: Some(proto::Member::from(&identity)),
                });
                let _ = state.tx.send(Event::Presence {
                    user_id: identity.user_id.clone(),
                    bytes: EncodedEvent::encode(event).0,
                });
            }
            let rx = state.tx.subscribe();
            let members = Room::members(&state);
            let cached_last = state.last_seq;
            drop(state);
            (entry, rx, members, cached_last)
        };
        // From here on, dropping the guard undoes the join.
        let guard = Membership {
            rooms: self.clone(),
            room: entry,
            identity,
        };

        let last_seq = match cached_last {
            Some(last) => last,
            None => {
                // Read after subscribing: anything committed later comes
                // through the channel, anything earlier is <= this.
                let last = store.last_seq(&room).await?;
                let mut state = guard.room.lock();
                let known = state.last_seq.map_or(last, |l| l.max(last));
                state.last_seq = Some(known);
                known
            }
        };
        let start_after = match resume_after {
            Some(n) if n > last_seq => {
                // The cache may trail storage after a failed write whose
                // commit went through; ask storage before refusing.
                let stored = store.last_seq(&room).await?;
                if n > stored {
                    return Err(Error::OutOfRange {
                        field: "resume_after_seq",
                        reason: format!("{n} is beyond the room's last seq {stored}"),
                    });
                }
                n
            }
            Some(n) => n,
            None => last_seq,
        };
        let joined = EncodedEvent::encode(WireEvent::Joined(proto::Joined {
            room: room.to_string(),
            members,
            last_seq,
        }));
        Ok(Subscription {
            guard,
            rx,
            store,
            shutdown,
            next_seq: start_after + 1,
            catching_up: resume_after.is_some_and(|n| n < last_seq),
            resync_members: false,
            pending: VecDeque::from([joined]),
            done: false,
        })
    }
}

/// A stream's place in a room: dropping it makes the user leave when it
/// was their last stream, and drops the room entry when it was the last
/// stream of the room.
#[derive(Debug)]
struct Membership {
    rooms: Arc<Rooms>,
    room: Arc<Room>,
    identity: Identity,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut map = self.rooms.map();
        let mut state = self.room.lock();
        state.streams = state.streams.saturating_sub(1);
        let last_of_user = match state.members.get_mut(&self.identity.user_id) {
            Some(presence) => {
                presence.streams = presence.streams.saturating_sub(1);
                presence.streams == 0
            }
            None => false,
        };
        if last_of_user {
            state.members.remove(&self.identity.user_id);
            let event = WireEvent::MemberLeft(proto::MemberLeft {
                member: Some(proto::Member::from(&self.identity)),
            });
            let _ = state.tx.send(Event::Presence {
                user_id: self.identity.user_id.clone(),
                bytes: EncodedEvent::encode(event).0,
            });
        }
        if state.streams == 0
            && map
                .rooms
                .get(&self.room.name)
                .is_some_and(|r| Arc::ptr_eq(r, &self.room))
        {
            map.rooms.remove(&self.room.name);
        }
    }
}

/// One JoinRoom stream's reader.
#[derive(Debug)]
pub struct Subscription {
    guard: Membership,
    rx: broadcast::Receiver<Event>,
    store: Store,
    /// Cancelled when the server shuts down: the stream then ends with
    /// UNAVAILABLE so the client rejoins with `resume_after_seq`. Waiting
    /// streams learn it from `Event::Shutdown`; this token interrupts a
    /// catch-up read.
    shutdown: CancellationToken,
    /// The seq this stream owes its client next.
    next_seq: u64,
    /// Whether to read from storage before reading the channel again.
    catching_up: bool,
    /// Whether presence events were dropped, so a fresh `joined` is owed
    /// once caught up.
    resync_members: bool,
    /// Events ready to send, at most a replay page or a ring slot.
    pending: VecDeque<EncodedEvent>,
    /// Whether the stream has ended (after an error status).
    done: bool,
}

impl Subscription {
    /// The next event for the client; `None` ends the stream.
    pub async fn next(&mut self) -> Option<std::result::Result<EncodedEvent, Status>> {
        if self.done {
            return None;
        }
        match self.next_inner().await {
            Ok(event) => Some(Ok(event)),
            Err(status) => {
                self.done = true;
                Some(Err(status))
            }
        }
    }

    async fn next_inner(&mut self) -> std::result::Result<EncodedEvent, Status> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            // No shutdown check here: it would lock the token's mutex for
            // every event of every stream. A stream learns of shutdown from
            // `Event::Shutdown` in the ring, or, if it fell behind past that
            // event, from the token in `catch_up`.
            if self.catching_up {
                self.catch_up().await?;
                continue;
            }
            // Shutdown arrives through the ring too (`Rooms::close`), so
            // this is the only wait on the hot path.
            match self.rx.recv().await {
                Ok(Event::Presence { user_id, bytes }) => {
                    if user_id != self.guard.identity.user_id {
                        return Ok(EncodedEvent(bytes));
                    }
                }
                Ok(Event::Messages(batch)) => {
                    for (seq, bytes) in batch.iter() {
                        if *seq < self.next_seq {
                            continue;
                        }
                        if *seq > self.next_seq {
                            // A seq is missing before this one: storage has
                            // it and the rest.
                            self.catching_up = true;
                            break;
                        }
                        self.next_seq += 1;
                        self.pending.push_back(EncodedEvent(bytes.clone()));
                    }
                }
                Ok(Event::Shutdown) => return Err(Error::ShuttingDown.into()),
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(room = %self.guard.room.name, missed, "stream fell behind; catching up from storage");
                    self.catching_up = true;
                    self.resync_members = true;
                }
                // The sender lives in the room entry we hold: cannot happen.
                Err(RecvError::Closed) => return Err(Status::internal("room closed")),
            }
        }
    }

    /// Reads the next page of messages this stream owes from storage.
    async fn catch_up(&mut self) -> std::result::Result<(), Status> {
        let room = &self.guard.room.name;
        let page = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => return Err(Error::ShuttingDown.into()),
            page = self.store.read_after(room, self.next_seq - 1, REPLAY_PAGE) => page?,
        };
        if page.len() < REPLAY_PAGE as usize {
            // Everything committed before the read is in the page; anything
            // later comes through the channel, which we subscribed to first.
            self.catching_up = false;
        }
        for m in &page {
            if m.seq != self.next_seq {
                tracing::error!(room = %room, expected = self.next_seq, found = m.seq, "gap in stored seqs");
                return Err(Status::internal("internal error"));
            }
            self.next_seq += 1;
            self.pending
                .push_back(EncodedEvent::encode(WireEvent::Message(
                    proto::Message::from(m),
                )));
        }
        if !self.catching_up && self.resync_members {
            self.resync_members = false;
            let members = Room::members(&self.guard.room.lock());
            self.pending
                .push_back(EncodedEvent::encode(WireEvent::Joined(proto::Joined {
                    room: room.to_string(),
                    members,
                    last_seq: self.next_seq - 1,
                })));
        }
        Ok(())
    }
}
