//! A room's ring of recent events: bounded in slots and bytes, allocated as it fills.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::domain::{RoomName, StoredChange, StoredEvent, StoredMessage};
use crate::proto::{self, EncodedEvent, join_room_response::Event as WireEvent};

/// A durable event of a room (a message or a change of one) as the ring
/// carries it: its room, its seq, and the stream event that announces it.
pub trait Durable {
    fn room(&self) -> &RoomName;
    fn seq(&self) -> u64;
    fn wire(&self) -> WireEvent;
}

impl Durable for StoredMessage {
    fn room(&self) -> &RoomName {
        &self.room
    }
    fn seq(&self) -> u64 {
        self.seq
    }
    fn wire(&self) -> WireEvent {
        WireEvent::Message(proto::Message::from(self))
    }
}

impl Durable for StoredChange {
    fn room(&self) -> &RoomName {
        &self.room
    }
    fn seq(&self) -> u64 {
        self.seq
    }
    fn wire(&self) -> WireEvent {
        proto::change_event(self)
    }
}

impl Durable for StoredEvent {
    fn room(&self) -> &RoomName {
        StoredEvent::room(self)
    }
    fn seq(&self) -> u64 {
        StoredEvent::seq(self)
    }
    fn wire(&self) -> WireEvent {
        proto::stored_event(self)
    }
}

/// The most messages one ring event carries.
const PUBLISH_CHUNK: usize = 8;
/// A ring event stops taking messages once it holds this many bytes.
const PUBLISH_CHUNK_BYTES: usize = 64 * 1024;
/// What a ring event costs besides its encoded bytes (Arc, slot, lengths),
/// as counted against `CHAT_ROOM_BUFFER_BYTES`.
const EVENT_OVERHEAD: usize = 64;

/// One event in a room's ring. The bytes are encoded `JoinRoomResponse`s,
/// shared by every subscriber.
#[derive(Clone, Debug)]
pub(super) enum Event {
    /// Consecutive messages of the room, in seq order: one ring slot and
    /// one look per subscriber for up to a chunk of a committed batch.
    Messages(Arc<[(u64, Bytes)]>),
    Presence {
        /// Whose presence changed, so a stream can leave out events about
        /// its own user.
        user_id: Arc<str>,
        bytes: Bytes,
    },
    /// A typing flag or a read marker: live only.
    Ephemeral {
        /// The user whose streams leave it out (the typist), if any.
        skip: Option<Arc<str>>,
        bytes: Bytes,
    },
}

impl Event {
    /// A live-only event's bytes and the user whose streams leave it out
    /// (presence: the user it is about); `None` for messages.
    pub(super) fn live_only(&self) -> Option<(Option<&Arc<str>>, &Bytes)> {
        match self {
            Event::Presence { user_id, bytes } => Some((Some(user_id), bytes)),
            Event::Ephemeral { skip, bytes } => Some((skip.as_ref(), bytes)),
            Event::Messages(_) => None,
        }
    }

    /// Bytes counted against the ring's byte limit.
    pub(super) fn size(&self) -> usize {
        EVENT_OVERHEAD
            + match self {
                Event::Messages(batch) => batch.iter().map(|(_, b)| b.len() + 16).sum(),
                Event::Presence { user_id, bytes } => user_id.len() + bytes.len(),
                Event::Ephemeral { skip, bytes } => {
                    skip.as_ref().map_or(0, |s| s.len()) + bytes.len()
                }
            }
    }
}

/// A room's recent events, oldest first, at absolute positions that only
/// grow: a stream's cursor below `start` means the ring dropped events it
/// had not read.
#[derive(Debug, Default)]
pub(super) struct Ring {
    /// The position of `events[0]`.
    pub(super) start: u64,
    pub(super) events: VecDeque<Event>,
    /// The sum of [`Event::size`] over `events`.
    pub(super) bytes: usize,
    /// The highest seq of the messages dropped so far (0: none): a stream
    /// the ring left behind that has delivered up to it lost only
    /// live-only events (presence, typing), which need no storage read.
    pub(super) dropped_seq: u64,
}

impl Ring {
    /// The position the next event will get.
    pub(super) fn end(&self) -> u64 {
        self.start + self.events.len() as u64
    }

    /// Appends `event`, dropping the oldest ones past either limit (the
    /// newest event stays even if it alone is over the byte limit).
    pub(super) fn push(&mut self, event: Event, limits: RingLimits) {
        self.bytes += event.size();
        self.events.push_back(event);
        while self.events.len() > 1
            && (self.events.len() > limits.slots || self.bytes > limits.bytes)
        {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.size();
                self.start += 1;
                if let Event::Messages(batch) = &old
                    && let Some((seq, _)) = batch.last()
                {
                    self.dropped_seq = self.dropped_seq.max(*seq);
                }
            }
        }
    }
}

/// The bounds of every room's ring.
#[derive(Debug, Clone, Copy)]
pub(super) struct RingLimits {
    pub(super) slots: usize,
    pub(super) bytes: usize,
}

/// A durable event encoded once as a `JoinRoomResponse`, with its seq.
pub(super) fn encode_durable<T: Durable>(event: &T) -> (u64, Bytes) {
    (event.seq(), EncodedEvent::encode(event.wire()).0)
}

/// The ring events for a room's share of a committed batch (encoded
/// messages in seq order): up to [`PUBLISH_CHUNK`] messages or
/// [`PUBLISH_CHUNK_BYTES`] per event.
pub(super) fn chunks(messages: &[(u64, Bytes)]) -> Vec<Event> {
    let mut events = Vec::new();
    let mut chunk: Vec<(u64, Bytes)> = Vec::with_capacity(PUBLISH_CHUNK.min(messages.len()));
    let mut bytes = 0;
    for (seq, encoded) in messages {
        bytes += encoded.len();
        chunk.push((*seq, encoded.clone()));
        if chunk.len() == PUBLISH_CHUNK || bytes >= PUBLISH_CHUNK_BYTES {
            events.push(Event::Messages(std::mem::take(&mut chunk).into()));
            bytes = 0;
        }
    }
    if !chunk.is_empty() {
        events.push(Event::Messages(chunk.into()));
    }
    events
}
