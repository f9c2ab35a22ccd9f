//! Ephemeral events: who is typing, and read markers. Live only: no seq,
//! never stored, never replayed; a stream that misses one (the ring
//! dropped it, or it joined later) never gets it.
//!
//! - Typing: a flag per (room, user) that expires [`TYPING_EXPIRES`] after
//!   the last SetTyping (the room then gets `typing = false`); renewals
//!   within [`TYPING_RENEW`] of the last announcement send nothing new; a
//!   message the user sends ends it at once. The user's own streams never
//!   get their own flag. The node that set a flag tells the others when it
//!   ends; they also end it by themselves [`TYPING_EXPIRES`] plus
//!   [`TYPING_RENEW`] after its last announcement, so a flag set on a node
//!   that dies ends within 8 s.
//! - Read markers: when a user's marker moves, the room's streams (the
//!   user's own included: their other devices) get `read_marker`, at most
//!   one per user per room per [`READ_MARKER_EVERY`], the newest seq.
//! - Both only in rooms with at most [`EPHEMERAL_ROOM_MEMBERS`] members
//!   present; beyond that they cost O(members) per keystroke for little.
//!
//! The state is bounded: at most [`EPHEMERAL_ENTRIES`] flags and as many
//! markers waiting; [`Rooms::sweep_ephemeral`], run by an owned task every
//! [`SWEEP_EVERY`], ends expired flags and sends held markers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ring::Event;
use super::{RoomState, Rooms};
use crate::domain::{Identity, RoomName};
use crate::proto::{self, EncodedEvent, join_room_response::Event as WireEvent};

/// Typing and read markers are broadcast only in rooms with at most this
/// many members present.
pub const EPHEMERAL_ROOM_MEMBERS: usize = 200;
/// A typing flag ends this long after the last SetTyping.
pub const TYPING_EXPIRES: Duration = Duration::from_secs(6);
/// A renewal this soon after the last announcement sends nothing.
pub const TYPING_RENEW: Duration = Duration::from_secs(2);
/// At most one read marker per user per room this often.
pub const READ_MARKER_EVERY: Duration = Duration::from_secs(1);
/// How often expired flags end and held markers go out.
pub const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// The most typing flags, and the most read markers remembered, on a node.
const EPHEMERAL_ENTRIES: usize = 100_000;
/// A marker's entry is forgotten this long after it was sent.
const MARKER_FORGET: Duration = Duration::from_secs(60);

type Key = (RoomName, Arc<str>);

/// A user's typing flag in a room.
#[derive(Debug)]
struct Flag {
    display_name: Arc<str>,
    /// Set on this node (whose end the other nodes are told), not relayed.
    local: bool,
    /// When it ends unless renewed.
    expires: Instant,
    /// When `typing = true` last went out for it.
    announced: Instant,
}

/// A user's read marker in a room, as last sent.
#[derive(Debug)]
struct Marker {
    display_name: Arc<str>,
    sent_at: Instant,
    sent_seq: u64,
    /// A newer seq that waits for [`READ_MARKER_EVERY`] to pass.
    held: Option<u64>,
}

/// Typing flags and read markers of every room on this node.
#[derive(Debug, Default)]
pub(super) struct Ephemeral {
    flags: Mutex<HashMap<Key, Flag>>,
    markers: Mutex<HashMap<Key, Marker>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn member(user: &str, name: &str) -> Option<proto::Member> {
    Some(proto::Member {
        user_id: user.to_owned(),
        display_name: name.to_owned(),
    })
}

/// Whether `state`'s room is small enough for ephemeral events: members
/// present here and on other nodes, each user once.
fn small(state: &RoomState) -> bool {
    if state.members.len() + state.remote.len() <= EPHEMERAL_ROOM_MEMBERS {
        return true;
    }
    let elsewhere = state
        .remote
        .keys()
        .filter(|user| !state.members.contains_key(*user))
        .count();
    state.members.len() + elsewhere <= EPHEMERAL_ROOM_MEMBERS
}

impl Rooms {
    /// Puts an ephemeral event (made only when it goes somewhere) into
    /// `room`'s ring here, if it has streams here and is small enough: for
    /// every stream but `skip`'s.
    fn push_ephemeral(
        &self,
        room: &RoomName,
        skip: Option<&Arc<str>>,
        event: impl FnOnce() -> WireEvent,
    ) {
        let Some(room) = self.get(room) else { return };
        let wake = {
            let mut state = room.lock();
            if !small(&state) {
                return;
            }
            let event = Event::Ephemeral {
                skip: skip.cloned(),
                bytes: EncodedEvent::encode(event()).0,
            };
            state.ring.push(event, self.limits);
            self.wake_for_presence(&room, &mut state)
        };
        if wake {
            room.notify.notify_waiters();
        }
    }

    fn push_typing(&self, room: &RoomName, user: &Arc<str>, name: &str, typing: bool) {
        self.push_ephemeral(room, Some(user), || {
            WireEvent::Typing(proto::Typing {
                member: member(user, name),
                typing,
            })
        });
    }

    /// SetTyping of `who` in `room`, or (`typing = false`) its end: sent
    /// to the room's streams and the other nodes unless it changes nothing
    /// (a renewal within [`TYPING_RENEW`], an end of no flag, the table
    /// full).
    pub fn set_typing(&self, room: &RoomName, who: &Identity, typing: bool) {
        if self.record_typing(room, who, typing, true) {
            self.push_typing(room, &who.user_id, &who.display_name, typing);
            self.relay_typing(room, &who.user_id, &who.display_name, typing);
        }
    }

    /// A typing flag another node announced: held here until that node
    /// ends it, or [`TYPING_EXPIRES`] plus [`TYPING_RENEW`] after its last
    /// announcement (the node died).
    pub fn typing_from_peer(&self, room: &RoomName, who: &Identity, typing: bool) {
        if self.record_typing(room, who, typing, false) {
            self.push_typing(room, &who.user_id, &who.display_name, typing);
        }
    }

    /// Records `who`'s flag in `room` (or, `typing = false`, its end) and
    /// says whether that is news for the room's streams. A flag set here
    /// (`local`) lives [`TYPING_EXPIRES`], and a renewal more than
    /// [`TYPING_RENEW`] after its last announcement is news again; one from
    /// another node lives [`TYPING_EXPIRES`] plus [`TYPING_RENEW`] and its
    /// renewals are not news. A new flag is dropped when the table is full.
    fn record_typing(&self, room: &RoomName, who: &Identity, typing: bool, local: bool) -> bool {
        let now = Instant::now();
        let key = (room.clone(), who.user_id.clone());
        let mut flags = lock(&self.ephemeral.flags);
        if !typing {
            return flags.remove(&key).is_some();
        }
        let lifetime = if local {
            TYPING_EXPIRES
        } else {
            TYPING_EXPIRES + TYPING_RENEW
        };
        let full = flags.len() >= EPHEMERAL_ENTRIES;
        match flags.get_mut(&key) {
            Some(flag) => {
                flag.expires = now + lifetime;
                let news = local && now >= flag.announced + TYPING_RENEW;
                if news || !local {
                    flag.announced = now;
                }
                news
            }
            None if full => false,
            None => {
                flags.insert(
                    key,
                    Flag {
                        display_name: who.display_name.clone(),
                        local,
                        expires: now + lifetime,
                        announced: now,
                    },
                );
                true
            }
        }
    }

    /// `user` sent a message to `room`: their typing flag ends at once.
    pub fn end_typing(&self, room: &RoomName, user: &Arc<str>) {
        let key = (room.clone(), user.clone());
        let ended = lock(&self.ephemeral.flags).remove(&key);
        if let Some(flag) = ended {
            self.push_typing(room, user, &flag.display_name, false);
            if flag.local {
                self.relay_typing(room, user, &flag.display_name, false);
            }
        }
    }

    /// `who`'s read marker in `room` moved to `seq`: sent now, or held
    /// until [`READ_MARKER_EVERY`] has passed since the last one (then the
    /// newest seq goes); the other nodes are told what goes out.
    pub fn read_marker(&self, room: &RoomName, who: &Identity, seq: u64) {
        let now = Instant::now();
        let key = (room.clone(), who.user_id.clone());
        let send = {
            let mut markers = lock(&self.ephemeral.markers);
            let full = markers.len() >= EPHEMERAL_ENTRIES;
            match markers.get_mut(&key) {
                Some(marker) if seq <= marker.sent_seq => false,
                Some(marker) if now < marker.sent_at + READ_MARKER_EVERY => {
                    marker.held = Some(marker.held.map_or(seq, |held| held.max(seq)));
                    false
                }
                Some(marker) => {
                    marker.sent_at = now;
                    marker.sent_seq = seq;
                    marker.held = None;
                    true
                }
                None if full => true,
                None => {
                    markers.insert(
                        key,
                        Marker {
                            display_name: who.display_name.clone(),
                            sent_at: now,
                            sent_seq: seq,
                            held: None,
                        },
                    );
                    true
                }
            }
        };
        if send {
            self.push_marker(room, &who.user_id, &who.display_name, seq);
            self.relay_marker(room, &who.user_id, &who.display_name, seq);
        }
    }

    /// A read marker another node sent (coalesced there).
    pub fn read_marker_from_peer(&self, room: &RoomName, who: &Identity, seq: u64) {
        self.push_marker(room, &who.user_id, &who.display_name, seq);
    }

    fn push_marker(&self, room: &RoomName, user: &str, name: &str, seq: u64) {
        self.push_ephemeral(room, None, || {
            WireEvent::ReadMarker(proto::ReadMarker {
                member: member(user, name),
                seq,
            })
        });
    }

    /// Ends the typing flags that expired (telling the other nodes of the
    /// ones set here) and sends the read markers whose interval passed.
    pub fn sweep_ephemeral(&self) {
        let now = Instant::now();
        let expired: Vec<(Key, Flag)> = {
            let mut flags = lock(&self.ephemeral.flags);
            let keys: Vec<Key> = flags
                .iter()
                .filter(|(_, flag)| flag.expires <= now)
                .map(|(key, _)| key.clone())
                .collect();
            keys.into_iter()
                .filter_map(|key| flags.remove(&key).map(|flag| (key, flag)))
                .collect()
        };
        for ((room, user), flag) in expired {
            self.push_typing(&room, &user, &flag.display_name, false);
            if flag.local {
                self.relay_typing(&room, &user, &flag.display_name, false);
            }
        }
        let due: Vec<(RoomName, Arc<str>, Arc<str>, u64)> = {
            let mut markers = lock(&self.ephemeral.markers);
            markers.retain(|_, m| m.held.is_some() || now < m.sent_at + MARKER_FORGET);
            markers
                .iter_mut()
                .filter(|(_, m)| now >= m.sent_at + READ_MARKER_EVERY)
                .filter_map(|((room, user), m)| {
                    let seq = m.held.take()?;
                    m.sent_at = now;
                    m.sent_seq = seq;
                    Some((room.clone(), user.clone(), m.display_name.clone(), seq))
                })
                .collect()
        };
        for (room, user, name, seq) in due {
            self.push_marker(&room, &user, &name, seq);
            self.relay_marker(&room, &user, &name, seq);
        }
    }

    /// Runs [`Rooms::sweep_ephemeral`] every [`SWEEP_EVERY`] until `stop`.
    pub async fn sweep_ephemeral_every(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => self.sweep_ephemeral(),
            }
        }
    }

    /// Cluster only: where this node's ephemeral announcements go.
    pub fn relay_ephemeral(&self, out: mpsc::Sender<Outgoing>) {
        let _ = self.ephemeral_out.set(out);
    }

    fn relay_typing(&self, room: &RoomName, user: &str, name: &str, typing: bool) {
        if self.ephemeral_out.get().is_none() {
            return;
        }
        let event = WireEvent::Typing(proto::Typing {
            member: member(user, name),
            typing,
        });
        self.relay(room, OutgoingKind::Typing, event);
    }

    fn relay_marker(&self, room: &RoomName, user: &str, name: &str, seq: u64) {
        if self.ephemeral_out.get().is_none() {
            return;
        }
        let event = WireEvent::ReadMarker(proto::ReadMarker {
            member: member(user, name),
            seq,
        });
        self.relay(room, OutgoingKind::ReadMarker, event);
    }

    fn relay(&self, room: &RoomName, kind: OutgoingKind, event: WireEvent) {
        if let Some(out) = self.ephemeral_out.get()
            && out
                .try_send(Outgoing {
                    room: room.clone(),
                    kind,
                    bytes: EncodedEvent::encode(event).0,
                })
                .is_err()
        {
            tracing::debug!(room = %room, "the ephemeral relay is full: an event stays on this node");
        }
    }
}

/// What kind of ephemeral event an [`Outgoing`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutgoingKind {
    Typing,
    ReadMarker,
}

/// An ephemeral event announced on this node, for the other nodes: its
/// room, its kind and the encoded `JoinRoomResponse`.
#[derive(Debug)]
pub struct Outgoing {
    pub room: RoomName,
    pub kind: OutgoingKind,
    pub bytes: bytes::Bytes,
}
