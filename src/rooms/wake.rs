//! Coalesced wake-ups: a busy room wakes its streams at most once per [`WAKE_EVERY`] for messages and per [`PRESENCE_EVERY`] for presence.
//!
//! Each wake-up of a room costs every waiting stream a poll, an HTTP/2
//! frame and a `writev` on its connection, however many messages it
//! carries, so under a steady load of small commits that cost dominates
//! the fan-out. A room that was woken less than [`WAKE_EVERY`] ago
//! therefore does not wake its streams at once for the next publish: the
//! room is queued, and [`Rooms::wake_deferred`] wakes it when the interval
//! is over, so the streams take every message published meanwhile in one
//! look. A room that has been quiet for the interval is woken at once, so
//! a lone message gains no latency; under load a message waits at most
//! [`WAKE_EVERY`] more (rooms are woken in the order they are due).
//!
//! Presence events are coalesced the same way over the longer
//! [`PRESENCE_EVERY`]: a join or leave costs one delivery to every other
//! stream of the room, so users joining one after another would otherwise
//! cost O(members) wake-ups and writes each. A room whose presence went out
//! less than its interval ago ([`PRESENCE_EVERY`], longer for a room of
//! over 200 streams: [`presence_interval`]) queues the next change (unless a
//! message wake-up is already queued, which takes it along); every stream
//! then receives the changes of the interval in one write. Revocations and
//! shutdown wake at once (and take anything queued with them).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Room, RoomState, Rooms};

/// The shortest interval between two wake-ups of a room for messages.
pub const WAKE_EVERY: Duration = Duration::from_millis(2);

/// The shortest interval between two wake-ups of a room for presence
/// changes alone: how late a `member_joined` or `member_left` can be in a
/// room of up to 200 streams.
pub const PRESENCE_EVERY: Duration = Duration::from_millis(20);

/// How much each of a room's streams lengthens its presence interval:
/// waking n streams costs O(n) (a poll, a frame and a `writev` each, 6–25
/// µs on the 2-core machine of docs/benchmarks.md), so a large room's
/// presence wake-ups are spaced to keep their cost within a quarter of a
/// core: 100 ms for 1,000 streams, 1 s for 10,000.
const PRESENCE_EVERY_PER_STREAM: Duration = Duration::from_micros(100);

/// The longest presence interval, however large the room.
const PRESENCE_EVERY_MAX: Duration = Duration::from_secs(5);

/// The presence interval of a room with `streams` streams.
pub(super) fn presence_interval(streams: usize) -> Duration {
    let streams = u32::try_from(streams).unwrap_or(u32::MAX);
    PRESENCE_EVERY_PER_STREAM
        .saturating_mul(streams)
        .clamp(PRESENCE_EVERY, PRESENCE_EVERY_MAX)
}

/// Rooms waiting for their deferred wake-up.
#[derive(Debug, Default)]
pub(super) struct Deferred {
    queue: Mutex<Queue>,
    /// Woken when the queue gains a room.
    queued: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    /// Whether [`Rooms::wake_deferred`] runs: until it does, and once it
    /// has ended, every publish wakes at once.
    running: bool,
    /// Rooms to wake, by when due and then in the order queued, each with
    /// whether it waits for presence (intervals differ by kind and, for
    /// presence, by the room's size: queue order is not due order).
    /// Unbounded in type but not in size: a room is queued for messages
    /// only while its [`RoomState::wake_queued`] is unset and for presence
    /// only while its [`RoomState::presence_queued`] is, so this holds each
    /// live room at most twice.
    rooms: BTreeMap<(Instant, u64), (Arc<Room>, bool)>,
    /// The next entry's tie-breaker.
    order: u64,
}

impl Queue {
    /// When the first queued room is due.
    fn next_due(&self) -> Option<Instant> {
        self.rooms.first_key_value().map(|((due, _), _)| *due)
    }

    /// Takes a room due by `now` (any queued room if `None`), and whether
    /// it was queued for presence.
    fn pop_due(&mut self, now: Option<Instant>) -> Option<(Arc<Room>, bool)> {
        let due = self.next_due()?;
        if now.is_some_and(|now| due > now) {
            return None;
        }
        self.rooms.pop_first().map(|(_, entry)| entry)
    }
}

impl Deferred {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `room`'s wake-up (for presence or for messages) at `due`;
    /// returns false, queuing nothing, when the task does not run.
    fn defer(&self, due: Instant, room: &Arc<Room>, presence: bool) -> bool {
        let mut queue = self.lock();
        if !queue.running {
            return false;
        }
        queue.order += 1;
        let order = queue.order;
        queue.rooms.insert((due, order), (room.clone(), presence));
        drop(queue);
        self.queued.notify_one();
        true
    }
}

impl Rooms {
    /// Decides how `room`'s streams learn of newly published messages:
    /// returns true to wake them at once, false when a deferred wake-up
    /// (queued now or before) will. Called with the room's state locked
    /// (lock order: a room's state, then the queue).
    pub(super) fn wake_for_messages(&self, room: &Arc<Room>, state: &mut RoomState) -> bool {
        if state.wake_queued {
            // That wake-up takes these messages too.
            return false;
        }
        let now = Instant::now();
        if let Some(due) = state.woken_at.map(|at| at + WAKE_EVERY)
            && due > now
            && self.deferred.defer(due, room, false)
        {
            state.wake_queued = true;
            return false;
        }
        state.woken_at = Some(now);
        true
    }

    /// Decides how `room`'s streams learn of a presence event just pushed
    /// into its ring: returns true to wake them at once, false when a
    /// queued wake-up will. Called with the room's state locked.
    pub(super) fn wake_for_presence(&self, room: &Arc<Room>, state: &mut RoomState) -> bool {
        if state.wake_queued || state.presence_queued {
            // That wake-up takes this event too.
            return false;
        }
        let now = Instant::now();
        let every = presence_interval(state.streams);
        if let Some(due) = state.presence_woken_at.map(|at| at + every)
            && due > now
            && self.deferred.defer(due, room, true)
        {
            state.presence_queued = true;
            return false;
        }
        state.presence_woken_at = Some(now);
        state.woken_at = Some(now);
        true
    }

    /// The task that wakes the rooms whose wake-up a publish deferred, each
    /// when its interval is over, until `stop` (then it wakes whatever is
    /// still queued). Publishes defer from this call on.
    pub fn wake_deferred(
        self: Arc<Self>,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        self.deferred.lock().running = true;
        async move {
            loop {
                let next = self.deferred.lock().next_due();
                let wait = async {
                    match next {
                        // A room queued meanwhile may be due sooner (a
                        // message's interval is shorter than presence's,
                        // and presence intervals differ by room): look
                        // again whenever one is queued.
                        Some(due) => tokio::select! {
                            () = tokio::time::sleep_until(due) => {}
                            () = self.deferred.queued.notified() => {}
                        },
                        None => self.deferred.queued.notified().await,
                    }
                };
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = wait => {}
                }
                self.wake_due(Some(Instant::now()));
            }
            self.deferred.lock().running = false;
            self.wake_due(None);
        }
    }

    /// Wakes the queued rooms due by `now` (all of them if `None`).
    fn wake_due(&self, now: Option<Instant>) {
        loop {
            let popped = self.deferred.lock().pop_due(now);
            let Some((room, presence)) = popped else {
                return;
            };
            {
                let mut state = room.lock();
                let now = Instant::now();
                if presence {
                    state.presence_queued = false;
                    state.presence_woken_at = Some(now);
                } else {
                    state.wake_queued = false;
                }
                state.woken_at = Some(now);
            }
            room.notify.notify_waiters();
        }
    }
}
