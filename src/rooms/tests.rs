//! Unit tests of the registry and its ring.

use super::*;
use clap::Parser;

fn rooms(extra: &[&str]) -> Rooms {
    let args = ["chatd"].into_iter().chain(extra.iter().copied());
    Rooms::new(&crate::config::Cli::parse_from(args).config)
}

fn message(room: &RoomName, seq: u64, len: usize) -> StoredMessage {
    StoredMessage {
        room: room.clone(),
        seq,
        sender_id: "s".into(),
        sender_name: "S".into(),
        kind: crate::domain::ContentKind::Text,
        content: "x".repeat(len),
        client_message_id: None,
        sent_at_micros: 0,
    }
}

/// A room entry as the first join leaves it between taking its ring
/// position and reading the last seq from storage.
fn joining(rooms: &Rooms, name: &RoomName) -> Arc<Room> {
    let room = Arc::new(Room {
        name: name.clone(),
        state: Mutex::new(RoomState {
            streams: 1,
            ..RoomState::default()
        }),
        notify: Notify::new(),
    });
    rooms.map().rooms.insert(name.clone(), room.clone());
    room
}

/// The race of issue 7: a first join reads last seq N-1 from storage,
/// N is committed and published, then the join stores what it read.
/// The cache must say N, or the next joiner waits for N forever.
#[test]
fn a_publish_during_the_first_join_is_not_lost_from_the_cache() {
    let rooms = rooms(&[]);
    let name = RoomName::parse("r").unwrap();
    let room = joining(&rooms, &name);
    let n = message(&name, 5, 1);
    rooms.publish(&[&n]);
    let known = room.lock().learn_last_seq(4);
    assert_eq!(known, 5);
    assert_eq!(room.lock().last_seq, Some(5));
}

#[test]
fn defaults_are_the_documented_limits() {
    let config = crate::config::Cli::parse_from(["chatd"]).config;
    assert_eq!(config.user_max_streams, 100);
    assert_eq!(config.room_buffer_bytes, 1024 * 1024);
    assert_eq!(config.user_buffer_bytes, 64 * 1024 * 1024);
    // A history page always fits in a user's budget.
    assert!(crate::service::HISTORY_PAGE_BYTES <= config.user_buffer_bytes as usize);
}

#[test]
fn the_ring_is_bounded_in_slots_and_bytes_and_grows_as_it_fills() {
    let rooms = rooms(&["--room-buffer", "16", "--room-buffer-bytes", "65536"]);
    let name = RoomName::parse("r").unwrap();
    let room = joining(&rooms, &name);
    assert_eq!(room.lock().ring.events.capacity(), 0);
    // Small messages: the slot limit holds.
    for seq in 1..=100 {
        rooms.publish(&[&message(&name, seq, 10)]);
    }
    {
        let state = room.lock();
        assert_eq!(state.ring.events.len(), 16);
        assert_eq!(state.ring.start, 84);
    }
    // Large messages: the byte limit holds.
    for seq in 101..=200 {
        rooms.publish(&[&message(&name, seq, 10_000)]);
    }
    let state = room.lock();
    assert!(state.ring.bytes <= 65_536, "{}", state.ring.bytes);
    assert!(state.ring.events.len() < 16);
    assert_eq!(state.ring.end(), 200);
}
