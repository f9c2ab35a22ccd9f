//! A room's member list: this node's and the other nodes' members merged in id order, and encoded as a `joined` event.
//!
//! Every join sends the whole list, so it is O(members) per join: it is
//! written straight from the room's two sorted maps into one buffer, with
//! no `proto::Member` (two strings) built per member. The bytes are those
//! prost writes for the same `JoinRoomResponse` (a unit test holds them
//! equal).

use bytes::Bytes;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use super::RoomState;
use crate::proto::EncodedEvent;

/// The room's members here and on other nodes as (user id, display name),
/// in user id order; a user present in both counts once, with this node's
/// display name.
pub(super) fn member_list(state: &RoomState) -> impl Iterator<Item = (&str, &str)> + '_ {
    let mut local = state.members.iter().peekable();
    let mut remote = state.remote.iter().peekable();
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

/// `JoinRoomResponse.joined` (field 1), `Joined.room` (1) and
/// `Joined.members` (2), `Joined.last_seq` (3), `Member.user_id` (1) and
/// `Member.display_name` (2), as numbered in chat.proto.
const EVENT_JOINED: u32 = 1;
const JOINED_ROOM: u32 = 1;
const JOINED_MEMBERS: u32 = 2;
const JOINED_LAST_SEQ: u32 = 3;
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

/// The encoded length of one `Member` message's fields.
fn member_len(id: &str, name: &str) -> usize {
    str_len(MEMBER_USER_ID, id) + str_len(MEMBER_DISPLAY_NAME, name)
}

/// The `joined` event of `room` as it is now: its members and `last_seq`.
pub(super) fn joined(state: &RoomState, room: &str, last_seq: u64) -> EncodedEvent {
    let mut body = str_len(JOINED_ROOM, room);
    for (id, name) in member_list(state) {
        let len = member_len(id, name);
        body += key_len(JOINED_MEMBERS) + encoded_len_varint(len as u64) + len;
    }
    if last_seq != 0 {
        body += key_len(JOINED_LAST_SEQ) + encoded_len_varint(last_seq);
    }
    let total = key_len(EVENT_JOINED) + encoded_len_varint(body as u64) + body;
    let mut buf = Vec::with_capacity(total);
    encode_key(EVENT_JOINED, WireType::LengthDelimited, &mut buf);
    encode_varint(body as u64, &mut buf);
    put_str(&mut buf, JOINED_ROOM, room);
    for (id, name) in member_list(state) {
        encode_key(JOINED_MEMBERS, WireType::LengthDelimited, &mut buf);
        encode_varint(member_len(id, name) as u64, &mut buf);
        put_str(&mut buf, MEMBER_USER_ID, id);
        put_str(&mut buf, MEMBER_DISPLAY_NAME, name);
    }
    if last_seq != 0 {
        encode_key(JOINED_LAST_SEQ, WireType::Varint, &mut buf);
        encode_varint(last_seq, &mut buf);
    }
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

    /// What prost writes for the same event, from `proto::Member`s.
    fn by_prost(state: &RoomState, room: &str, last_seq: u64) -> EncodedEvent {
        let members = member_list(state)
            .map(|(id, name)| proto::Member {
                user_id: id.to_string(),
                display_name: name.to_string(),
            })
            .collect();
        EncodedEvent::encode(WireEvent::Joined(proto::Joined {
            room: room.to_string(),
            members,
            last_seq,
            ..Default::default()
        }))
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
        let list: Vec<(&str, &str)> = member_list(&state).collect();
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
    }

    #[test]
    fn the_event_is_the_bytes_prost_writes() {
        let mut state = RoomState::default();
        assert_eq!(joined(&state, "lobby", 0), by_prost(&state, "lobby", 0));
        // Long names take two-byte length prefixes; an empty display name
        // is left out like any proto3 default.
        let long = "n".repeat(300);
        state.members.insert("u1".into(), presence(&long));
        state.members.insert("u2".into(), presence(""));
        state.remote.insert("u0".into(), "remote".into());
        for n in 1..=2000 {
            state.remote.insert(format!("r{n:05}").into(), "R".into());
        }
        for last_seq in [0, 1, 127, 128, u64::MAX] {
            let ours = joined(&state, "lobby", last_seq);
            assert_eq!(
                ours,
                by_prost(&state, "lobby", last_seq),
                "last_seq {last_seq}"
            );
        }
        assert!(
            joined(&state, "lobby", 1).0.len() > 16_384,
            "a multi-byte body length"
        );
    }
}
