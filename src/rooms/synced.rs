//! Cluster only: a room's first joins wait (bounded) for the other nodes' members, so `joined` lists them.
//!
//! A room entry created on a cluster node starts [`Synced::Pending`]: the
//! node does not know yet who is in the room on other nodes. The cluster
//! takes it ([`Rooms::take_unsynced`]), asks every live node and hands the
//! answers to the room ([`Rooms::set_remote`]), then marks it synced
//! ([`Rooms::mark_synced`]). A join waits for that at most [`SYNC_WAIT`]
//! before it builds its `joined`; past it the join goes on, and members
//! the answers bring later arrive as `member_joined`. On a single node a
//! room is synced from the start.

use std::sync::Arc;
use std::time::Duration;

use super::{Room, Rooms};
use crate::domain::RoomName;

/// The longest a join waits for the other nodes' members of a room the
/// node has just started following.
pub const SYNC_WAIT: Duration = Duration::from_millis(500);

/// Whether a room knows the other nodes' members.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Synced {
    /// Nobody asked yet.
    #[default]
    Pending,
    /// The other nodes were asked; their answers are on the way.
    Asked,
    /// The answers are in (or the wait was given up).
    Done,
}

impl Rooms {
    /// Cluster only: the live rooms whose presence nobody has asked for
    /// yet, now marked asked.
    pub fn take_unsynced(&self) -> Vec<RoomName> {
        let rooms: Vec<Arc<Room>> = self.map().rooms.values().cloned().collect();
        rooms
            .into_iter()
            .filter(|room| {
                let mut state = room.lock();
                let pending = state.synced == Synced::Pending;
                if pending {
                    state.synced = Synced::Asked;
                }
                pending
            })
            .map(|room| room.name.clone())
            .collect()
    }

    /// The other nodes' members of `room` are known (or no longer waited
    /// for): joins waiting for them go on.
    pub fn mark_synced(&self, name: &RoomName) {
        if let Some(room) = self.get(name) {
            room.lock().synced = Synced::Done;
            room.synced.notify_waiters();
        }
    }

    /// Waits until `room` is synced, at most [`SYNC_WAIT`].
    pub(super) async fn wait_synced(&self, room: &Room) {
        let deadline = tokio::time::Instant::now() + SYNC_WAIT;
        loop {
            let notified = room.synced.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if room.lock().synced == Synced::Done {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::debug!(room = %room.name, "the other nodes' members did not all come in time; joining without them");
                return;
            }
        }
    }
}
