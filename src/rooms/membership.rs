//! Who is in a room: members and their presence events, revocation, and a stream's membership.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

use super::ring::{Event, RingLimits};
use super::{Room, RoomState, Rooms, joined};
use crate::domain::{Identity, MembersCursor, MembersQuery, RoomName};
use crate::error::{Error, Result};
use crate::limits::quota::StreamSlot;
use crate::proto::{self, EncodedEvent, join_room_response::Event as WireEvent};

/// One ListMembers page of a room with streams on this node.
#[derive(Debug)]
pub struct MembersPage {
    pub members: Vec<proto::Member>,
    /// Where the next page starts, when there is one.
    pub next: Option<MembersCursor>,
    /// How many members the room has (here and on other nodes).
    pub count: usize,
}

/// A user present in a room on this node (the cluster-wide view is
/// `cluster::presence::Presence`).
#[derive(Debug)]
pub(super) struct LocalMember {
    pub(super) display_name: Arc<str>,
    /// How many of the user's streams are open in this room: the user leaves
    /// when the last one closes.
    pub(super) streams: usize,
    /// Whether one of these streams was opened with an admin token: a
    /// revocation does not end them (admin passes every room check).
    pub(super) admin: bool,
    /// Ended by [`Rooms::revoke`]: every stream of this presence ends
    /// with PERMISSION_DENIED.
    pub(super) revoked: Ending,
    /// Tells this presence from a later one of the same user (after a
    /// revocation and a new grant), so a revoked stream's end never counts
    /// against the newer one.
    pub(super) generation: u64,
}

/// How a presence's streams are ended when access is taken away: a token
/// cancelled once the refusal they end with is set.
#[derive(Clone, Debug, Default)]
pub(super) struct Ending {
    token: CancellationToken,
    why: Arc<OnceLock<Arc<str>>>,
}

impl Ending {
    /// Ends the streams with PERMISSION_DENIED saying `why` (the first
    /// reason given, if ended twice).
    pub(super) fn end(&self, why: &Arc<str>) {
        let _ = self.why.set(why.clone());
        self.token.cancel();
    }

    pub(super) fn is_ended(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once ended.
    pub(super) fn ended(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// The status an ended stream answers.
    pub(super) fn refusal(&self) -> Error {
        let why = self.why.get().map_or("access revoked", |w| &**w);
        Error::PermissionDenied(why.to_owned())
    }
}

impl Room {
    /// Pushes a member_joined or member_left of `user` into the ring.
    pub(super) fn push_presence(
        state: &mut RoomState,
        user: &Arc<str>,
        name: &Arc<str>,
        joined: bool,
        limits: RingLimits,
    ) {
        let member = Some(proto::Member {
            user_id: user.to_string(),
            display_name: name.to_string(),
        });
        let event = if joined {
            WireEvent::MemberJoined(proto::MemberJoined { member })
        } else {
            WireEvent::MemberLeft(proto::MemberLeft { member })
        };
        let event = Event::Presence {
            user_id: user.clone(),
            bytes: EncodedEvent::encode(event).0,
        };
        state.ring.push(event, limits);
    }
}

impl Rooms {
    /// Ends `user`'s streams in `room` on this node with PERMISSION_DENIED
    /// saying `why` (unless one was opened with an admin token): the user leaves the
    /// room at once (member_left, unless present on another node, which
    /// revokes there too) and their streams deliver nothing more. Returns
    /// whether the user had streams here.
    pub fn revoke(&self, name: &RoomName, user: &str, why: &Arc<str>) -> bool {
        let Some(room) = self.get(name) else {
            return false;
        };
        let removed = {
            let mut state = room.lock();
            let admin = state.members.get(user).is_none_or(|p| p.admin);
            if admin {
                return false;
            }
            let Some((id, presence)) = state.members.remove_entry(user) else {
                return false;
            };
            presence.revoked.end(why);
            if state.remote.contains_key(user) {
                state.shared -= 1;
            } else {
                Room::push_presence(&mut state, &id, &presence.display_name, false, self.limits);
            }
            id
        };
        tracing::debug!(room = %name, user = %removed, "access revoked: streams end");
        room.notify.notify_waiters();
        self.presence_changed(name);
        true
    }

    /// Every (room, user) with a stream on this node that a revocation
    /// could end (admin streams left out), in every room or in `only`:
    /// what a node re-checks when it may have missed a revocation.
    pub fn local_users(&self, only: Option<&RoomName>) -> Vec<(RoomName, Arc<str>)> {
        let rooms: Vec<Arc<Room>> = match only {
            Some(name) => self.get(name).into_iter().collect(),
            None => self.map().rooms.values().cloned().collect(),
        };
        let mut out = Vec::new();
        for room in rooms {
            let state = room.lock();
            out.extend(
                state
                    .members
                    .iter()
                    .filter(|(_, p)| !p.admin)
                    .map(|(id, _)| (room.name.clone(), id.clone())),
            );
        }
        out
    }

    /// The users with streams in `room` on this node (id, display name).
    pub fn local_members(&self, room: &RoomName) -> Vec<(Arc<str>, Arc<str>)> {
        match self.get(room) {
            Some(room) => room
                .lock()
                .members
                .iter()
                .map(|(id, p)| (id.clone(), p.display_name.clone()))
                .collect(),
            None => Vec::new(),
        }
    }

    /// Sets who is in `room` on the other nodes; the users this adds to or
    /// removes from the room's members (here or there) are announced to
    /// the room's streams.
    pub fn set_remote(&self, name: &RoomName, remote: BTreeMap<Arc<str>, Arc<str>>) {
        let Some(room) = self.get(name) else { return };
        let mut changed = false;
        let wake = {
            let mut state = room.lock();
            let old = std::mem::take(&mut state.remote);
            for (user, display) in &remote {
                if !old.contains_key(user) && !state.members.contains_key(user) {
                    Room::push_presence(&mut state, user, display, true, self.limits);
                    changed = true;
                }
            }
            for (user, display) in &old {
                if !remote.contains_key(user) && !state.members.contains_key(user) {
                    Room::push_presence(&mut state, user, display, false, self.limits);
                    changed = true;
                }
            }
            state.shared = remote
                .keys()
                .filter(|user| state.members.contains_key(*user))
                .count();
            state.remote = remote;
            changed && self.wake_for_presence(&room, &mut state)
        };
        if wake {
            room.notify.notify_waiters();
        }
    }

    /// One page of the room's current members (by user id, after the
    /// query's cursor), the next page's cursor and the member count; `None`
    /// when the room has no stream on this node.
    pub fn members_page(&self, room: &RoomName, query: &MembersQuery) -> Option<MembersPage> {
        let room = self.get(room)?;
        let state = room.lock();
        let (members, next) = joined::members_page(&state, query.after(), query.limit);
        Some(MembersPage {
            members,
            next: next.map(|after| MembersCursor { after }),
            count: state.member_count(),
        })
    }
}

/// A stream's place in a room: dropping it makes the user leave when it
/// was their last stream, and drops the room entry when it was the last
/// stream of the room.
#[derive(Debug)]
pub(super) struct Membership {
    pub(super) rooms: Arc<Rooms>,
    pub(super) room: Arc<Room>,
    pub(super) identity: Identity,
    /// Whether the join succeeded and counts in the room's members.
    pub(super) member: bool,
    /// The presence this stream counts in ([`LocalMember::generation`]) and
    /// its revocation, once a member.
    pub(super) generation: u64,
    pub(super) revoked: Ending,
    /// The stream's place in the user's `CHAT_USER_MAX_STREAMS`.
    pub(super) _slot: StreamSlot,
}

impl Membership {
    /// Makes the stream's user a member (announcing them if this is their
    /// first stream); returns the stream's `joined` event (the member list
    /// and `last_seq`) and the ring position from which presence events are
    /// news to it.
    pub(super) fn become_member(&mut self, last_seq: u64) -> Result<(EncodedEvent, u64)> {
        let mut state = self.room.lock();
        if state.closed {
            return Err(Error::ShuttingDown);
        }
        let generations = &self.rooms.generations;
        if !state.members.contains_key(&self.identity.user_id)
            && state.remote.contains_key(&self.identity.user_id)
        {
            state.shared += 1;
        }
        let presence = state
            .members
            .entry(self.identity.user_id.clone())
            .or_insert_with(|| LocalMember {
                display_name: self.identity.display_name.clone(),
                streams: 0,
                admin: false,
                revoked: Ending::default(),
                generation: generations.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            });
        presence.streams += 1;
        presence.admin |= self.identity.admin;
        self.generation = presence.generation;
        self.revoked = presence.revoked.clone();
        let first = presence.streams == 1;
        // A user already present on another node is no news.
        let news = first && !state.remote.contains_key(&self.identity.user_id);
        if news {
            Room::push_presence(
                &mut state,
                &self.identity.user_id,
                &self.identity.display_name,
                true,
                self.rooms.limits,
            );
        }
        let snapshot = (
            joined::joined(
                &state,
                self.room.name.as_str(),
                last_seq,
                &self.identity.user_id,
            ),
            state.ring.end(),
        );
        let wake = news && self.rooms.wake_for_presence(&self.room, &mut state);
        drop(state);
        self.member = true;
        self.rooms.metrics.stream_open(true);
        if wake {
            self.room.notify.notify_waiters();
        }
        if first {
            self.rooms.presence_changed(&self.room.name);
        }
        Ok(snapshot)
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut map = self.rooms.map();
        let mut state = self.room.lock();
        state.streams = state.streams.saturating_sub(1);
        let mut left = false;
        // A revoked stream's presence is gone (or is a newer one).
        if self.member
            && let Some(presence) = state.members.get_mut(&self.identity.user_id)
            && presence.generation == self.generation
        {
            presence.streams = presence.streams.saturating_sub(1);
            left = presence.streams == 0;
        }
        // Still present on another node: no news.
        let news = left && !state.remote.contains_key(&self.identity.user_id);
        if left {
            state.members.remove(&self.identity.user_id);
            if !news {
                state.shared -= 1;
            }
        }
        if news {
            Room::push_presence(
                &mut state,
                &self.identity.user_id,
                &self.identity.display_name,
                false,
                self.rooms.limits,
            );
        }
        if state.streams == 0
            && map
                .rooms
                .get(&self.room.name)
                .is_some_and(|r| Arc::ptr_eq(r, &self.room))
        {
            map.rooms.remove(&self.room.name);
            self.rooms.changed.notify_one();
            self.rooms.metrics.room_live(false);
        }
        if self.member {
            self.rooms.metrics.stream_open(false);
        }
        // A room left without streams has no one to wake.
        let wake =
            news && state.streams > 0 && self.rooms.wake_for_presence(&self.room, &mut state);
        drop(state);
        drop(map);
        if wake {
            self.room.notify.notify_waiters();
        }
        if left {
            self.rooms.presence_changed(&self.room.name);
        }
    }
}

impl crate::access::Streams for Rooms {
    fn local_users(&self, only: Option<&RoomName>) -> Vec<(RoomName, Arc<str>)> {
        Rooms::local_users(self, only)
    }

    fn revoke(&self, room: &RoomName, user: &str, why: &Arc<str>) -> bool {
        Rooms::revoke(self, room, user, why)
    }
}
