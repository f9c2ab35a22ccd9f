//! Cluster-wide presence: every node's local members merged per room.

use bytes::Bytes;

use crate::domain::RoomName;

/// Cluster-wide presence.
#[derive(Debug, Default)]
pub struct Presence {}

impl Presence {
    /// Forgets what other nodes said about `room` (no streams here any more).
    pub fn forget(&self, _room: &RoomName) {}

    /// Asks the other nodes for their members of newly followed rooms.
    pub async fn sync(&self, _rooms: &[RoomName]) {}

    /// Handles a presence message of `kind` for `room`.
    pub async fn receive(&self, _room: &RoomName, _kind: &str, _payload: Bytes) {}
}
