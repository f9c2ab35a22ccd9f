//! A room's member list: this node's and the other nodes' members merged in id order, encoded as a `joined` event and paged for ListMembers.
//!
//! A `joined` lists the caller first and then the others in id order, at
//! most [`JOINED_MEMBERS_MAX`] members and [`JOINED_MEMBERS_BYTES`] of
//! them, with the room's member count: a join costs the same in a room of
//! 100,000 as in a room of 500, and ListMembers pages through the rest.
//! It is written straight from the room's two sorted maps into one buffer,
//! with no `proto::Member` (two strings) built per member. The bytes are
//! those prost writes for the same `JoinRoomResponse` (a unit test holds
//! them equal).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use super::RoomState;
use crate::proto::{self, EncodedEvent};

/// The most members one `joined` lists.
pub const JOINED_MEMBERS_MAX: usize = 500;
/// The most bytes of members one `joined` lists, whatever the lengths of
/// ids and names: the event stays under 32 KiB on the wire.
pub const JOINED_MEMBERS_BYTES: usize = 30 * 1024;

/// `map`'s entries after `after` (all of them for `None`), in key order.
fn from<'a, V>(
    map: &'a BTreeMap<Arc<str>, V>,
    after: Option<&str>,
) -> std::collections::btree_map::Range<'a, Arc<str>, V> {
    let start = after.map_or(Bound::Unbounded, Bound::Excluded);
    map.range::<str, _>((start, Bound::Unbounded))
}

/// The room's members here and on other nodes as (user id, display name),
/// in user id order, after `after`; a user present in both counts once,
/// with this node's display name.
pub(super) fn member_list<'a>(
    state: &'a RoomState,
    after: Option<&str>,
) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    let mut local = from(&state.members, after).peekable();
    let mut remote = from(&state.remote, after).peekable();
    std::iter::from_fn(move || {
        let next_local = local.peek().map(|(id, _)| *id);
        let next_remote = remote.peek().map(|(id, _)| *id);
        match (next_local, next_remote) {
            (None, None) => None,
            (Some(l), Some(r)) if r < l => remote.next().map(|(id, name)| (&**id, &**name)),
            (Some(l), Some(r)) => {
                if l == r {
                    remote.next();
                }
                local.next().map(|(id, p)| (&**id, &*p.display_name))
            }
            (Some(_), None) => local.next().map(|(id, p)| (&**id, &*p.display_name)),
            (None, Some(_)) => remote.next().map(|(id, name)| (&**id, &**name)),
        }
    })
}

/// One ListMembers page: up to `limit` members after `after`, and the user
/// id the next page starts after when there are more.
pub(super) fn members_page(
    state: &RoomState,
    after: Option<&str>,
    limit: usize,
) -> (Vec<proto::Member>, Option<String>) {
    let mut list = member_list(state, after);
    let members: Vec<proto::Member> = list
        .by_ref()
        .take(limit)
        .map(|(id, name)| proto::Member {
            user_id: id.to_owned(),
            display_name: name.to_owned(),
        })
        .collect();
    let next = match (list.next(), members.last()) {
        (Some(_), Some(last)) => Some(last.user_id.clone()),
        _ => None,
    };
    (members, next)
}

/// `JoinRoomResponse.joined` (field 1), `Joined.room` (1),
/// `Joined.members` (2), `Joined.last_seq` (3), `Joined.member_count` (4),
/// `Joined.members_truncated` (5), `Member.user_id` (1) and
/// `Member.display_name` (2), as numbered in chat.proto.
const EVENT_JOINED: u32 = 1;
const JOINED_ROOM: u32 = 1;
const JOINED_MEMBERS: u32 = 2;
const JOINED_LAST_SEQ: u32 = 3;
const JOINED_MEMBER_COUNT: u32 = 4;
const JOINED_TRUNCATED: u32 = 5;
const MEMBER_USER_ID: u32 = 1;
const MEMBER_DISPLAY_NAME: u32 = 2;

/// The encoded length of a string field (nothing when empty, as proto3
/// leaves default values out).
fn str_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
    }
}

fn put_str(buf: &mut Vec<u8>, tag: u32, s: &str) {
    if !s.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(s.len() as u64, buf);
        buf.extend_from_slice(s.as_bytes());
    }
}

/// The encoded length of a varint field (nothing when 0).
fn varint_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(value)
    }
}

fn put_varint(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

/// The encoded length of one `Member` message's fields.
fn member_len(id: &str, name: &str) -> usize {
    str_len(MEMBER_USER_ID, id) + str_len(MEMBER_DISPLAY_NAME, name)
}

/// The length of one `Joined.members` entry, its key and length included.
fn entry_len(id: &str, name: &str) -> usize {
    let len = member_len(id, name);
    key_len(JOINED_MEMBERS) + encoded_len_varint(len as u64) + len
}

/// The members a `joined` for `caller` lists: the caller first (when a
/// member), then the others in id order, within [`JOINED_MEMBERS_MAX`]
/// and [`JOINED_MEMBERS_BYTES`].
fn listed<'a>(state: &'a RoomState, caller: &'a str, most: usize) -> Vec<(&'a str, &'a str)> {
    let own = state
        .members
        .get(caller)
        .map(|p| &*p.display_name)
        .or_else(|| state.remote.get(caller).map(|n| &**n))
        .map(|name| (caller, name));
    let others = member_list(state, None).filter(|(id, _)| *id != caller);
    let mut bytes = 0;
    let mut list = Vec::with_capacity(most.min(state.member_count()));
    for (id, name) in own.into_iter().chain(others) {
        bytes += entry_len(id, name);
        if list.len() == most || bytes > JOINED_MEMBERS_BYTES {
            break;
        }
        list.push((id, name));
    }
    list
}

/// The `joined` event of `room` for `caller` as it is now: the members
/// [`listed`], the member count and `last_seq`.
pub(super) fn joined(state: &RoomState, room: &str, last_seq: u64, caller: &str) -> EncodedEvent {
    encode(state, room, last_seq, caller, JOINED_MEMBERS_MAX)
}

/// The `joined` a stream gets again after presence passed it by (a crowd
/// joining, the ring left behind): as [`joined`] in a room that one lists
/// whole, else the caller alone with the count. Re-sending 500 members to
/// each of 100,000 streams at every burst would cost gigabytes; the list
/// is a page of ListMembers away.
pub(super) fn resent(state: &RoomState, room: &str, last_seq: u64, caller: &str) -> EncodedEvent {
    let most = if is_large(state) {
        1
    } else {
        JOINED_MEMBERS_MAX
    };
    encode(state, room, last_seq, caller, most)
}

/// Whether the room has more members than one `joined` lists.
pub(super) fn is_large(state: &RoomState) -> bool {
    state.member_count() > JOINED_MEMBERS_MAX
}

fn encode(state: &RoomState, room: &str, last_seq: u64, caller: &str, most: usize) -> EncodedEvent {
    let list = listed(state, caller, most);
    let count = state.member_count().max(list.len());
    let truncated = list.len() < count;
    let mut body = str_len(JOINED_ROOM, room)
        + varint_len(JOINED_LAST_SEQ, last_seq)
        + varint_len(JOINED_MEMBER_COUNT, count as u64)
        + varint_len(JOINED_TRUNCATED, u64::from(truncated));
    body += list
        .iter()
        .map(|(id, name)| entry_len(id, name))
        .sum::<usize>();
    let total = key_len(EVENT_JOINED) + encoded_len_varint(body as u64) + body;
    let mut buf = Vec::with_capacity(total);
    encode_key(EVENT_JOINED, WireType::LengthDelimited, &mut buf);
    encode_varint(body as u64, &mut buf);
    put_str(&mut buf, JOINED_ROOM, room);
    for (id, name) in &list {
        encode_key(JOINED_MEMBERS, WireType::LengthDelimited, &mut buf);
        encode_varint(member_len(id, name) as u64, &mut buf);
        put_str(&mut buf, MEMBER_USER_ID, id);
        put_str(&mut buf, MEMBER_DISPLAY_NAME, name);
    }
    put_varint(&mut buf, JOINED_LAST_SEQ, last_seq);
    put_varint(&mut buf, JOINED_MEMBER_COUNT, count as u64);
    put_varint(&mut buf, JOINED_TRUNCATED, u64::from(truncated));
    debug_assert_eq!(buf.len(), total);
    EncodedEvent(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::super::membership::LocalMember;
    use super::*;
    use crate::proto::{self, join_room_response::Event as WireEvent};

    fn presence(name: &str) -> LocalMember {
        LocalMember {
            display_name: name.into(),
            streams: 1,
            admin: false,
            revoked: Default::default(),
            generation: 0,
        }
    }

    fn decode(event: &EncodedEvent) -> proto::Joined {
        let response = <proto::JoinRoomResponse as prost::Message>::decode(event.0.clone())
            .expect("a JoinRoomResponse");
        match response.event {
            Some(WireEvent::Joined(joined)) => joined,
            other => panic!("not a joined: {other:?}"),
        }
    }

    fn ids(joined: &proto::Joined) -> Vec<&str> {
        joined.members.iter().map(|m| m.user_id.as_str()).collect()
    }

    #[test]
    fn the_list_merges_both_maps_in_id_order_and_this_node_names_a_shared_user() {
        let mut state = RoomState::default();
        for (id, name) in [("b", "Bee"), ("d", "Dee"), ("c", "local C")] {
            state.members.insert(id.into(), presence(name));
        }
        for (id, name) in [("a", "Ay"), ("c", "remote C"), ("e", "Ee")] {
            state.remote.insert(id.into(), name.into());
        }
        state.shared = 1;
        let list: Vec<(&str, &str)> = member_list(&state, None).collect();
        assert_eq!(
            list,
            [
                ("a", "Ay"),
                ("b", "Bee"),
                ("c", "local C"),
                ("d", "Dee"),
                ("e", "Ee")
            ]
        );
        let after_b: Vec<&str> = member_list(&state, Some("b")).map(|(id, _)| id).collect();
        assert_eq!(after_b, ["c", "d", "e"]);
        let small = decode(&joined(&state, "lobby", 9, "d"));
        assert_eq!(ids(&small), ["d", "a", "b", "c", "e"]);
        assert_eq!((small.member_count, small.members_truncated), (5, false));
    }

    #[test]
    fn the_event_is_the_bytes_prost_writes() {
        let mut state = RoomState::default();
        for last_seq in [0, 1] {
            let ours = joined(&state, "lobby", last_seq, "nobody");
            let event = decode(&ours);
            assert_eq!(ours, EncodedEvent::encode(WireEvent::Joined(event)));
        }
        // Long names take two-byte length prefixes; an empty display name
        // is left out like any proto3 default.
        state
            .members
            .insert("u1".into(), presence(&"n".repeat(300)));
        state.members.insert("u2".into(), presence(""));
        state.remote.insert("u0".into(), "remote".into());
        for n in 1..=2000 {
            state.remote.insert(format!("r{n:05}").into(), "R".into());
        }
        for last_seq in [0, 1, 127, 128, u64::MAX] {
            let ours = joined(&state, "lobby", last_seq, "u2");
            let event = decode(&ours);
            assert_eq!(event.last_seq, last_seq);
            assert_eq!(
                ours,
                EncodedEvent::encode(WireEvent::Joined(event)),
                "last_seq {last_seq}"
            );
        }
    }

    #[test]
    fn a_large_room_lists_the_caller_first_and_500_in_all() {
        let mut state = RoomState::default();
        for n in 0..100_000 {
            state
                .members
                .insert(format!("user-{n:06}").into(), presence("Some Name"));
        }
        let event = joined(&state, "big", 7, "user-099999");
        assert!(event.0.len() <= 32 * 1024, "{} bytes", event.0.len());
        let big = decode(&event);
        assert_eq!(big.members.len(), JOINED_MEMBERS_MAX);
        assert_eq!(big.members[0].user_id, "user-099999");
        assert_eq!(big.members[1].user_id, "user-000000");
        assert_eq!(big.members[499].user_id, "user-000498");
        assert_eq!((big.member_count, big.members_truncated), (100_000, true));
        // Long ids and names: fewer members, still within the byte bound.
        let mut long = RoomState::default();
        for n in 0..1000 {
            long.members
                .insert(format!("{n:0128}").into(), presence(&"x".repeat(200)));
        }
        let event = joined(&long, "big", 7, &format!("{:0128}", 5));
        assert!(event.0.len() <= 32 * 1024, "{} bytes", event.0.len());
        let long = decode(&event);
        assert!(long.members.len() < JOINED_MEMBERS_MAX);
        assert_eq!(long.members[0].user_id, format!("{:0128}", 5));
        assert!(long.members_truncated);
    }

    #[test]
    fn pages_walk_every_member_once() {
        let mut state = RoomState::default();
        for n in 0..250 {
            let id: Arc<str> = format!("m{n:03}").into();
            if n % 2 == 0 {
                state.members.insert(id, presence("L"));
            } else {
                state.remote.insert(id, "R".into());
            }
        }
        let (mut seen, mut after) = (Vec::new(), None::<String>);
        loop {
            let (page, next) = members_page(&state, after.as_deref(), 100);
            assert!(page.len() <= 100);
            seen.extend(page.into_iter().map(|m| m.user_id));
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let want: Vec<String> = (0..250).map(|n| format!("m{n:03}")).collect();
        assert_eq!(seen, want);
        let (page, next) = members_page(&state, Some("m249"), 100);
        assert!(page.is_empty() && next.is_none());
    }
}
