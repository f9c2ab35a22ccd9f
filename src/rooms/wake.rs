//! Coalesced wake-ups: a busy room wakes its streams for messages at most once per [`WAKE_EVERY`].
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
//! [`WAKE_EVERY`] more (twice that if the room ahead of it in the queue is
//! due later). Only message publishes are coalesced: presence, revocations
//! and shutdown wake at once (and take any queued messages with them).

use std::time::Duration;

use tokio::time::Instant;

use super::*;

/// The shortest interval between two wake-ups of a room for messages.
pub const WAKE_EVERY: Duration = Duration::from_millis(2);

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
    /// Rooms to wake and when, in the order they were deferred. Unbounded
    /// in type but not in size: a room is queued only while its
    /// [`RoomState::wake_queued`] is unset, so this holds each live room at
    /// most once.
    rooms: VecDeque<(Instant, Arc<Room>)>,
}

impl Deferred {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
        {
            let mut queue = self.deferred.lock();
            if queue.running {
                queue.rooms.push_back((due, room.clone()));
                drop(queue);
                state.wake_queued = true;
                self.deferred.queued.notify_one();
                return false;
            }
        }
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
                let next = self.deferred.lock().rooms.front().map(|(due, _)| *due);
                let wait = async {
                    match next {
                        Some(due) => tokio::time::sleep_until(due).await,
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
            let room = {
                let mut queue = self.deferred.lock();
                match queue.rooms.front() {
                    Some((due, _)) if now.is_none_or(|now| *due <= now) => {
                        queue.rooms.pop_front().map(|(_, room)| room)
                    }
                    _ => None,
                }
            };
            let Some(room) = room else { return };
            {
                let mut state = room.lock();
                state.wake_queued = false;
                state.woken_at = Some(Instant::now());
            }
            room.notify.notify_waiters();
        }
    }
}
