//! Committed messages between nodes: NATS as the fast path, PostgreSQL polling as the floor.
//!
//! - After a batch commits, the writer hands each room's encoded messages
//!   to [`Publisher::send`] (never waiting: a full queue drops the
//!   notification), and one task publishes them on the room's subject.
//! - [`follow_rooms`] subscribes to the rooms that have streams on this
//!   node, and only those (interest-based), and pushes what arrives into
//!   the room's ring ([`Rooms::publish_encoded`]). Streams deliver exactly
//!   once and in seq order whatever arrives, twice or out of order.
//! - Nothing is believed past what it proves: a notice must open (sealed
//!   for its subject with the cluster key), and every entry must be a
//!   message of this room with the entry's seq. A notice that jumps the
//!   room more than [`AHEAD_SLACK`] seqs past the newest it knows is
//!   checked against storage first: entries beyond the stored last seq
//!   are dropped (counted as invalid), so a room's last seq and its
//!   streams only move to committed seqs.
//! - NATS core is at most once, so [`poll_storage`] reads, in one query,
//!   the newest stored seq of every live room every [`super::POLL_CONNECTED`]
//!   (every [`super::POLL_DISCONNECTED`] while NATS is down, and at once after a
//!   reconnection) and publishes locally what the room has not seen. So no
//!   stream waits longer than that for a committed message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Cluster;
use super::presence::Presence;
use crate::domain::{RoomName, SEQ_MAX, StoredEvent};
use crate::error::Result;
use crate::proto::{JoinRoomResponse, join_room_response::Event};
use crate::rooms::Rooms;
use crate::storage::Store;

/// Batches waiting to be published; beyond that notifications are dropped
/// (the other nodes' pollers deliver those messages).
const PUBLISH_QUEUE: usize = 1024;
/// The most bytes of encoded messages one notification carries (NATS
/// refuses payloads over its max_payload, 1 MiB by default).
const NOTICE_BYTES: usize = 256 * 1024;
/// The most messages the poller reads for one room at a time: the newest
/// ones; streams further behind catch up from storage on their own.
const POLL_PAGE: u32 = 256;
/// How far past the newest seq a room knows a notice may go without a
/// look at storage: a legitimate notice is rarely further ahead (the room's
/// own ring and the poll keep it close), a forged one is refused.
pub const AHEAD_SLACK: u64 = 4096;

/// One message in a notification: its seq and its encoded
/// `JoinRoomResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct Entry {
    #[prost(uint64, tag = "1")]
    seq: u64,
    #[prost(bytes = "bytes", tag = "2")]
    event: Bytes,
}

/// A notification of committed messages of one room, in seq order.
#[derive(Clone, PartialEq, prost::Message)]
struct CommittedNotice {
    #[prost(message, repeated, tag = "1")]
    entries: Vec<Entry>,
}

/// A room's share of a committed batch, each message encoded once.
pub type RoomBatch = (RoomName, Vec<(u64, Bytes)>);

/// The writer's handle: queues notifications without ever waiting.
#[derive(Clone, Debug)]
pub struct Publisher {
    tx: mpsc::Sender<Vec<RoomBatch>>,
}

impl Publisher {
    /// Queues a committed batch for the other nodes; drops it when the
    /// queue is full (NATS slow or down): they read it from storage then.
    pub fn send(&self, batch: Vec<RoomBatch>) {
        if self.tx.try_send(batch).is_err() {
            tracing::debug!("notification queue full; the other nodes poll storage for it");
        }
    }
}

/// Starts the publishing task; it ends when every [`Publisher`] is gone
/// or at `stop`.
pub fn spawn_publisher(
    cluster: &Cluster,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> Publisher {
    let (tx, mut rx) = mpsc::channel::<Vec<RoomBatch>>(PUBLISH_QUEUE);
    let cluster = cluster.clone();
    tracker.spawn(async move {
        loop {
            let batch = tokio::select! {
                () = stop.cancelled() => return,
                batch = rx.recv() => match batch {
                    Some(batch) => batch,
                    None => return,
                },
            };
            for (room, messages) in batch {
                let subject = cluster.room_subject(&room, "m");
                for payload in notices(&messages) {
                    let published = tokio::select! {
                        () = stop.cancelled() => return,
                        published = cluster.publish(subject.clone(), &payload) => published,
                    };
                    if let Err(e) = published {
                        tracing::debug!(error = %e, "publishing a notification failed");
                    }
                }
            }
        }
    });
    Publisher { tx }
}

/// Encoded notifications of at most about [`NOTICE_BYTES`] each.
fn notices(messages: &[(u64, Bytes)]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut notice = CommittedNotice::default();
    let mut bytes = 0;
    for (seq, event) in messages {
        if bytes > 0 && bytes + event.len() > NOTICE_BYTES {
            out.push(Bytes::from(std::mem::take(&mut notice).encode_to_vec()));
            bytes = 0;
        }
        bytes += event.len();
        notice.entries.push(Entry {
            seq: *seq,
            event: event.clone(),
        });
    }
    if !notice.entries.is_empty() {
        out.push(Bytes::from(notice.encode_to_vec()));
    }
    out
}

/// Ends the following of rooms that are no longer live here; the live
/// rooms.
fn unfollow_gone(
    rooms: &Rooms,
    presence: &Presence,
    followed: &mut HashMap<RoomName, CancellationToken>,
) -> Vec<RoomName> {
    let live: Vec<RoomName> = rooms.live().into_iter().map(|(name, _)| name).collect();
    followed.retain(|room, token| {
        let keep = live.contains(room);
        if !keep {
            token.cancel();
            presence.forget(room);
        }
        keep
    });
    live
}

/// Keeps one subscription per room with streams on this node (two during
/// a key rotation): subscribes when a room entry appears, unsubscribes when
/// it goes, and has the presence of new room entries synced. Each room has
/// a task of its own (on `tracker`), ended with its room or at `stop`.
pub async fn follow_rooms(
    cluster: Cluster,
    rooms: Arc<Rooms>,
    store: Store,
    presence: Arc<Presence>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let mut followed: HashMap<RoomName, CancellationToken> = HashMap::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = rooms.changed() => {}
            // Retries a subscription that failed.
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let live = unfollow_gone(&rooms, &presence, &mut followed);
        let mut added = Vec::new();
        for room in live {
            if followed.contains_key(&room) {
                continue;
            }
            let Some(subscribers) = subscribe_room(&cluster, &room).await else {
                tracing::debug!(room = %room, "subscribing failed; retrying");
                continue;
            };
            let token = stop.child_token();
            followed.insert(room.clone(), token.clone());
            let follower = Follower {
                room: room.clone(),
                cluster: cluster.clone(),
                rooms: rooms.clone(),
                store: store.clone(),
                presence: presence.clone(),
            };
            tracker.spawn(follower.run(subscribers, token));
            added.push(room);
        }
        // New room entries (and entries made again since the last look)
        // ask the other nodes for their members.
        presence.request_sync(rooms.take_unsynced());
        if !added.is_empty() {
            // Once the server has the subscriptions, what was committed
            // before them is in storage: read it, so that a first joiner
            // does not wait for the next poll.
            cluster.flush().await;
            if let Err(e) = deliver_from_storage(&rooms, &store, Some(&added)).await {
                tracing::debug!(error = %e, "reading new rooms' last seqs failed");
            }
        }
    }
    for token in followed.values() {
        token.cancel();
    }
}

/// Subscribes to every subject of `room`, or to none.
async fn subscribe_room(cluster: &Cluster, room: &RoomName) -> Option<Vec<async_nats::Subscriber>> {
    let mut subscribers = Vec::new();
    for subject in cluster.room_subscriptions(room) {
        subscribers.push(cluster.subscribe(subject).await.ok()?);
    }
    Some(subscribers)
}

/// One room's subscriptions and what they feed.
struct Follower {
    room: RoomName,
    cluster: Cluster,
    rooms: Arc<Rooms>,
    store: Store,
    presence: Arc<Presence>,
}

impl Follower {
    /// Pushes what arrives into the room, until `stop`.
    async fn run(self, subscribers: Vec<async_nats::Subscriber>, stop: CancellationToken) {
        let mut messages = futures_util::stream::select_all(subscribers);
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => break,
                message = messages.next() => match message {
                    Some(message) => message,
                    None => break,
                },
            };
            let Some(opened) = self.cluster.open(&message) else {
                continue;
            };
            match message.subject.rsplit('.').next() {
                Some("m") => self.notice(opened.payload).await,
                Some("p") => self.presence.receive(&self.room, opened),
                Some(kind @ ("t" | "r")) => {
                    if let Err(why) =
                        super::ephemeral::receive(&self.rooms, &self.room, kind, opened.payload)
                    {
                        self.cluster.invalid(|| why);
                    }
                }
                _ => self
                    .cluster
                    .invalid(|| "a message on an unknown room subject".into()),
            }
        }
        // Dropping the subscribers unsubscribes.
    }

    /// Delivers a notice's messages once they are proven: messages of this
    /// room, and not beyond what storage holds when far ahead.
    async fn notice(&self, payload: Bytes) {
        let Some(mut messages) = checked_notice(&self.room, payload) else {
            self.cluster
                .invalid(|| "a notice whose entries are not messages of its room".into());
            return;
        };
        let newest = messages.last().map_or(0, |(seq, _)| *seq);
        let known = self.rooms.known_last_seq(&self.room);
        if known.is_none_or(|known| newest > known.saturating_add(AHEAD_SLACK)) {
            let stored = match self.store.last_seq(&self.room).await {
                Ok(stored) => stored,
                Err(e) => {
                    // Unconfirmed: left to the poll.
                    tracing::debug!(room = %self.room, error = %e, "checking a notice against storage failed");
                    return;
                }
            };
            let before = messages.len();
            messages.retain(|(seq, _)| *seq <= stored);
            if messages.len() < before {
                self.cluster.invalid(|| {
                    format!(
                        "a notice of {} messages beyond the room's stored last seq",
                        before - messages.len()
                    )
                });
            }
        }
        self.rooms.publish_encoded(&self.room, &messages);
    }
}

/// A notice's entries if every one is a durable event of `room` (a
/// message, an edit, a deletion, a reaction change) with the entry's seq,
/// in ascending seq order; `None` otherwise.
fn checked_notice(room: &RoomName, payload: Bytes) -> Option<Vec<(u64, Bytes)>> {
    let notice = CommittedNotice::decode(payload).ok()?;
    if notice.entries.is_empty() {
        return None;
    }
    let mut messages = Vec::with_capacity(notice.entries.len());
    let mut previous = 0;
    for entry in notice.entries {
        if entry.seq <= previous || entry.seq > SEQ_MAX {
            return None;
        }
        let ok = match JoinRoomResponse::decode(entry.event.clone()).ok()?.event {
            Some(Event::Message(m)) => m.seq == entry.seq && m.room == room.as_str(),
            Some(Event::MessageEdited(e)) => e.seq == entry.seq && e.message_seq < e.seq,
            Some(Event::MessageDeleted(e)) => e.seq == entry.seq && e.message_seq < e.seq,
            Some(Event::ReactionChanged(e)) => e.seq == entry.seq && e.message_seq < e.seq,
            _ => false,
        };
        if !ok {
            return None;
        }
        previous = entry.seq;
        messages.push((entry.seq, entry.event));
    }
    Some(messages)
}

/// Compares the live rooms with storage every [`super::POLL_CONNECTED`] (every
/// [`super::POLL_DISCONNECTED`] while NATS is down, at once after a reconnection)
/// and delivers what the rooms have not seen.
pub async fn poll_storage(
    cluster: Cluster,
    rooms: Arc<Rooms>,
    store: Store,
    stop: CancellationToken,
) {
    let mut failing = false;
    loop {
        let interval = if cluster.link.is_connected() {
            super::POLL_CONNECTED
        } else {
            super::POLL_DISCONNECTED
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
            () = cluster.link.reconnected() => {}
        }
        let polled = tokio::select! {
            () = stop.cancelled() => return,
            polled = deliver_from_storage(&rooms, &store, None) => polled,
        };
        match (polled, failing) {
            (Err(e), false) => {
                failing = true;
                tracing::warn!(error = %e, "polling storage for other nodes' messages failed");
            }
            (Ok(()), true) => {
                failing = false;
                tracing::info!("polling storage for other nodes' messages works again");
            }
            _ => {}
        }
    }
}

/// Reads the stored last seq of the live rooms (or of `only`) in one query
/// and publishes locally, for each room storage is ahead in, its newest
/// messages (at most [`POLL_PAGE`]; streams further behind catch up from
/// storage when they see the gap).
pub async fn deliver_from_storage(
    rooms: &Rooms,
    store: &Store,
    only: Option<&[RoomName]>,
) -> Result<()> {
    let seen: Vec<(RoomName, u64)> = rooms
        .live()
        .into_iter()
        .filter(|(room, _)| only.is_none_or(|only| only.contains(room)))
        .filter_map(|(room, last)| last.map(|last| (room, last)))
        .collect();
    if seen.is_empty() {
        return Ok(());
    }
    let names: Vec<RoomName> = seen.iter().map(|(room, _)| room.clone()).collect();
    let stored = store.last_seqs(&names).await?;
    for (room, seen) in seen {
        let Some(&last) = stored.get(&room) else {
            continue;
        };
        if last <= seen {
            continue;
        }
        let after = seen.max(last.saturating_sub(u64::from(POLL_PAGE)));
        let (missed, _) = store.read_events(&room, after, POLL_PAGE).await?;
        tracing::debug!(room = %room, count = missed.len(), "delivering messages from storage");
        if only.is_none() {
            // A hole the notifications left (or a notification slower than
            // the poll): storage fills it.
            rooms.metrics().notifications_missed(missed.len() as u64);
        }
        let missed: Vec<&StoredEvent> = missed.iter().collect();
        rooms.publish(&missed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    fn event(room: &str, seq: u64) -> Bytes {
        let message = proto::Message {
            room: room.into(),
            seq,
            ..Default::default()
        };
        let response = JoinRoomResponse {
            event: Some(Event::Message(message)),
        };
        Bytes::from(response.encode_to_vec())
    }

    fn encoded(entries: &[(u64, Bytes)]) -> Bytes {
        let notice = CommittedNotice {
            entries: entries
                .iter()
                .map(|(seq, event)| Entry {
                    seq: *seq,
                    event: event.clone(),
                })
                .collect(),
        };
        Bytes::from(notice.encode_to_vec())
    }

    #[test]
    fn only_messages_of_the_room_with_their_seq_pass() {
        let room = RoomName::parse("lobby").unwrap();
        let good = encoded(&[(1, event("lobby", 1)), (2, event("lobby", 2))]);
        assert_eq!(checked_notice(&room, good).map(|m| m.len()), Some(2));
        for bad in [
            encoded(&[]),
            encoded(&[(1, event("other", 1))]),
            encoded(&[(2, event("lobby", 1))]),
            encoded(&[(SEQ_MAX + 1, event("lobby", SEQ_MAX + 1))]),
            encoded(&[(SEQ_MAX, Bytes::new())]),
            encoded(&[(2, event("lobby", 2)), (1, event("lobby", 1))]),
            Bytes::from_static(b"\xff\xff"),
        ] {
            assert!(checked_notice(&room, bad).is_none());
        }
    }
}
