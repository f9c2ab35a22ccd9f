//! Unit tests of the registry and its ring.

use super::wake::{PRESENCE_EVERY, WAKE_EVERY};
use super::*;
use crate::domain::StoredMessage;
use clap::Parser;
use std::time::Duration;

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
        reply_to_seq: 0,
        edited_at_micros: None,
        deleted: false,
        updated_seq: seq,
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
        synced: Notify::new(),
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
    assert!(crate::domain::HISTORY_PAGE_BYTES <= config.user_buffer_bytes as usize);
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

/// Whether `room`'s streams have been woken since `notified` was enabled.
fn woken(notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>) -> bool {
    use futures_util::FutureExt;
    notified.now_or_never().is_some()
}

/// A busy room wakes its streams for messages at once, then at most once
/// per interval, with every message published meanwhile in the ring; and
/// a wake-up queued when the task stops still happens.
#[tokio::test(start_paused = true)]
async fn a_busy_room_wakes_once_per_interval_and_never_drops_a_wake_up() {
    let rooms = Arc::new(rooms(&[]));
    let name = RoomName::parse("r").unwrap();
    let room = joining(&rooms, &name);
    let stop = CancellationToken::new();
    let task = tokio::spawn(rooms.clone().wake_deferred(stop.clone()));

    // A quiet room: woken at once.
    let first = room.notify.notified();
    tokio::pin!(first);
    first.as_mut().enable();
    rooms.publish(&[&message(&name, 1, 1)]);
    assert!(woken(first.as_mut()), "the first publish wakes at once");

    // Within the interval: deferred, both publishes in one wake-up.
    let started = tokio::time::Instant::now();
    let second = room.notify.notified();
    tokio::pin!(second);
    second.as_mut().enable();
    rooms.publish(&[&message(&name, 2, 1)]);
    rooms.publish(&[&message(&name, 3, 1)]);
    assert!(
        !woken(second.as_mut()),
        "a publish within the interval waits"
    );
    assert_eq!(
        room.lock().ring.end(),
        3,
        "the messages are in the ring already"
    );
    tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the deferred wake-up happens");
    assert_eq!(started.elapsed(), WAKE_EVERY);

    // Queued when the task stops: woken by the stopping task.
    let third = room.notify.notified();
    tokio::pin!(third);
    third.as_mut().enable();
    rooms.publish(&[&message(&name, 4, 1)]);
    assert!(!woken(third.as_mut()));
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the task ends at stop")
        .expect("the task does not panic");
    assert!(woken(third.as_mut()), "stopping wakes what is queued");

    // Stopped: every publish wakes at once again.
    let fourth = room.notify.notified();
    tokio::pin!(fourth);
    fourth.as_mut().enable();
    rooms.publish(&[&message(&name, 5, 1)]);
    assert!(woken(fourth.as_mut()));
}

/// Without the task (a registry nobody runs it for), publishes are never
/// deferred.
#[tokio::test(start_paused = true)]
async fn without_the_task_every_publish_wakes_at_once() {
    let rooms = rooms(&[]);
    let name = RoomName::parse("r").unwrap();
    let room = joining(&rooms, &name);
    for seq in 1..=3 {
        let notified = room.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        rooms.publish(&[&message(&name, seq, 1)]);
        assert!(woken(notified.as_mut()), "publish {seq} wakes at once");
    }
}

/// Presence changes in a room wake its streams at once when the room's
/// presence has been quiet, then at most once per [`PRESENCE_EVERY`]; a
/// message wake-up queued meanwhile keeps its own, shorter, interval.
#[tokio::test(start_paused = true)]
async fn presence_wakes_once_per_interval_without_delaying_messages() {
    let rooms = Arc::new(rooms(&[]));
    let name = RoomName::parse("r").unwrap();
    let room = joining(&rooms, &name);
    let stop = CancellationToken::new();
    let task = tokio::spawn(rooms.clone().wake_deferred(stop.clone()));
    let remote = |users: &[&str]| -> BTreeMap<Arc<str>, Arc<str>> {
        users
            .iter()
            .map(|u| (Arc::from(*u), Arc::from(*u)))
            .collect()
    };

    let first = room.notify.notified();
    tokio::pin!(first);
    first.as_mut().enable();
    rooms.set_remote(&name, remote(&["a"]));
    assert!(
        woken(first.as_mut()),
        "the first presence change wakes at once"
    );

    // Within the interval: a second change and a message are queued.
    let started = tokio::time::Instant::now();
    let second = room.notify.notified();
    tokio::pin!(second);
    second.as_mut().enable();
    rooms.set_remote(&name, remote(&["a", "b"]));
    assert!(
        !woken(second.as_mut()),
        "a change within the interval waits"
    );
    // The task now sleeps until the presence wake-up is due; a message
    // queued after that is due sooner.
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(!woken(second.as_mut()));
    rooms.publish(&[&message(&name, 1, 1)]);
    assert!(!woken(second.as_mut()));
    assert_eq!(room.lock().ring.end(), 3, "both events are in the ring");
    tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the message's wake-up happens");
    assert_eq!(
        started.elapsed(),
        WAKE_EVERY,
        "the queued presence does not hold the message back"
    );

    // The presence wake-up still comes, at its own time.
    let third = room.notify.notified();
    tokio::pin!(third);
    third.as_mut().enable();
    tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the presence wake-up happens");
    assert_eq!(started.elapsed(), PRESENCE_EVERY);

    // A change while a message wake-up is queued rides on it.
    rooms.publish(&[&message(&name, 2, 1)]);
    let fourth = room.notify.notified();
    tokio::pin!(fourth);
    fourth.as_mut().enable();
    let at = tokio::time::Instant::now();
    rooms.set_remote(&name, remote(&["a"]));
    assert!(room.lock().wake_queued && !room.lock().presence_queued);
    tokio::time::timeout(Duration::from_secs(5), fourth)
        .await
        .expect("the message's wake-up takes the change along");
    assert_eq!(at.elapsed(), WAKE_EVERY);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the task ends at stop")
        .expect("the task does not panic");
}

/// A large room's presence goes out less often, so that waking all its
/// streams stays a bounded share of the server's time.
#[test]
fn the_presence_interval_grows_with_the_room() {
    use super::wake::presence_interval;
    assert_eq!(presence_interval(0), PRESENCE_EVERY);
    assert_eq!(presence_interval(200), PRESENCE_EVERY);
    assert_eq!(presence_interval(1_000), Duration::from_millis(100));
    assert_eq!(presence_interval(10_000), Duration::from_secs(1));
    assert_eq!(presence_interval(usize::MAX), Duration::from_secs(5));
}
