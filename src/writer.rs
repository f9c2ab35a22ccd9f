//! The write path: group commit, then fan-out.
//!
//! SendMessage hands its validated message to a writer task (one by
//! default; with several, chosen by room) and waits for the answer. A writer
//! gathers waiting requests into batches of up to [`MAX_BATCH`] and stores
//! each atomically (one statement on PostgreSQL, one transaction on
//! SQLite), then publishes the fresh messages to the room registry and
//! answers each sender. One commit per batch instead of per message is what
//! lets throughput grow with load.
//!
//! A writer runs several batches at once on separate connections
//! ([`Store::concurrent_batches`]), but never two that touch the same room:
//! a room with a batch in flight waits, the others go ahead. So one slow
//! room (a lock held on its counter row) does not stall the rest, and each
//! room's messages are still committed and published in seq order.
//!
//! Deadlines: a request waits at most `CHAT_DB_TIMEOUT` to be taken into a
//! batch (else it gets UNAVAILABLE and is not stored), and the batch itself
//! has the store's deadline; so every send is answered within twice
//! `CHAT_DB_TIMEOUT`. A failed batch is logged once, not once per request.

use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::cluster::bus::Publisher;
use crate::domain::{NewMessage, RoomName, StoredMessage, now_micros};
use crate::error::{Error, Failure, Result};
use crate::rooms::{Rooms, encode_batch};
use crate::storage::{Appended, Store};

/// The most messages one transaction stores.
pub const MAX_BATCH: usize = 512;
/// Requests that may wait in one writer's channel, and again in its own
/// queue of requests not yet in a batch; senders beyond that wait for room
/// (at most `CHAT_DB_TIMEOUT`), which pushes back on clients instead of
/// growing memory.
const QUEUE_DEPTH: usize = 4 * MAX_BATCH;

struct WriteRequest {
    message: NewMessage,
    reply: oneshot::Sender<Result<StoredMessage>>,
    /// When the sender handed it over; it expires `CHAT_DB_TIMEOUT` later.
    queued: Instant,
}

/// The handle SendMessage uses. Cloning it is cheap; the writer tasks end
/// once every handle is dropped and their queues are drained.
#[derive(Clone)]
pub struct Writer {
    shards: Arc<[mpsc::Sender<WriteRequest>]>,
    /// How long a request may wait for its writer (`CHAT_DB_TIMEOUT`).
    max_wait: Duration,
}

impl Writer {
    /// Starts `shards` writer tasks on `tracker`.
    /// With `bus`, each committed batch is also published to the other
    /// nodes of the cluster.
    pub fn spawn(
        store: Store,
        rooms: Arc<Rooms>,
        shards: usize,
        bus: Option<Publisher>,
        tracker: &TaskTracker,
    ) -> Self {
        let max_wait = store.timeout();
        let shards: Vec<_> = (0..shards.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
                tracker.spawn(run(rx, store.clone(), rooms.clone(), bus.clone()));
                tx
            })
            .collect();
        Writer {
            shards: shards.into(),
            max_wait,
        }
    }

    /// Stores `message` and returns it as stored (or as first stored, for a
    /// retried idempotency key). Delivery to the room has happened by then.
    pub async fn send(&self, message: NewMessage) -> Result<StoredMessage> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        message.room.hash(&mut hasher);
        let shard = &self.shards[(hasher.finish() % self.shards.len() as u64) as usize];
        let (reply, answer) = oneshot::channel();
        let request = WriteRequest {
            message,
            reply,
            queued: Instant::now(),
        };
        match tokio::time::timeout(self.max_wait, shard.send(request)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Error::ShuttingDown),
            Err(_) => return Err(Error::TimedOut("waiting for the writer's queue")),
        }
        answer.await.map_err(|_| Error::WriterGone)?
    }
}

/// One writer: gathers requests, runs batches, finishes them in order of
/// completion (per room, in seq order since a room has one batch at most
/// in flight).
async fn run(
    mut rx: mpsc::Receiver<WriteRequest>,
    store: Store,
    rooms: Arc<Rooms>,
    bus: Option<Publisher>,
) {
    let max_wait = store.timeout();
    let concurrency = store.concurrent_batches().max(1);
    let mut pending: VecDeque<WriteRequest> = VecDeque::new();
    let mut busy: HashSet<RoomName> = HashSet::new();
    let mut running = FuturesUnordered::new();
    let mut incoming = Vec::with_capacity(MAX_BATCH);
    let mut open = true;
    loop {
        expire(&mut pending, max_wait);
        while running.len() < concurrency {
            let Some(batch) = take_batch(&mut pending, &busy) else {
                break;
            };
            busy.extend(batch.iter().map(|r| r.message.room.clone()));
            running.push(store_batch(store.clone(), batch));
        }
        if !open && pending.is_empty() && running.is_empty() {
            return;
        }
        // The oldest waiting request is at the front (arrival order).
        let expiry = pending
            .front()
            .map_or_else(|| Instant::now() + max_wait, |r| r.queued + max_wait);
        tokio::select! {
            n = rx.recv_many(&mut incoming, MAX_BATCH), if open && pending.len() < QUEUE_DEPTH => {
                if n == 0 {
                    open = false;
                } else {
                    pending.extend(incoming.drain(..));
                }
            }
            Some(done) = running.next(), if !running.is_empty() => {
                for room in &done.rooms {
                    busy.remove(room);
                }
                finish(done, &rooms, bus.as_ref());
            }
            () = tokio::time::sleep_until(expiry), if !pending.is_empty() => {}
        }
    }
}

/// Answers UNAVAILABLE, without storing them, the requests that waited
/// longer than `max_wait` (their room's previous batch is slow).
fn expire(pending: &mut VecDeque<WriteRequest>, max_wait: Duration) {
    let now = Instant::now();
    // The oldest request is at the front: when it has time left, all have
    // (the common case, which then costs nothing).
    if pending
        .front()
        .is_none_or(|r| now.duration_since(r.queued) < max_wait)
    {
        return;
    }
    let before = pending.len();
    let mut kept = VecDeque::with_capacity(before);
    for r in pending.drain(..) {
        if now.duration_since(r.queued) >= max_wait {
            let _ = r.reply.send(Err(Error::Reported(Failure::Unavailable)));
        } else {
            kept.push_back(r);
        }
    }
    *pending = kept;
    let expired = before - pending.len();
    if expired > 0 {
        // Their room's slow batch is logged when it ends; this is detail.
        tracing::debug!(expired, "sends waited too long for their room's batch");
    }
}

/// The next batch: waiting requests, in arrival order, of rooms with no
/// batch in flight, up to [`MAX_BATCH`]. Senders that gave up (cancelled
/// calls) are dropped: they need not be stored. A room's later requests
/// never overtake its earlier ones: once one of its requests stays behind
/// (the batch is full), the room is in flight and the rest stay too.
fn take_batch(
    pending: &mut VecDeque<WriteRequest>,
    busy: &HashSet<RoomName>,
) -> Option<Vec<WriteRequest>> {
    let mut batch = Vec::new();
    let mut rest = VecDeque::with_capacity(pending.len());
    for r in pending.drain(..) {
        if r.reply.is_closed() {
            continue;
        }
        if batch.len() < MAX_BATCH && !busy.contains(&r.message.room) {
            batch.push(r);
        } else {
            rest.push_back(r);
        }
    }
    *pending = rest;
    (!batch.is_empty()).then_some(batch)
}

/// A batch that has been stored, or not.
struct Done {
    /// The rooms it touched (with repeats), now free for their next batch.
    rooms: Vec<RoomName>,
    replies: Vec<oneshot::Sender<Result<StoredMessage>>>,
    stored: Result<Vec<Appended>>,
    /// How long storing it took.
    took: Duration,
}

async fn store_batch(store: Store, batch: Vec<WriteRequest>) -> Done {
    let (messages, replies): (Vec<NewMessage>, Vec<_>) =
        batch.into_iter().map(|r| (r.message, r.reply)).unzip();
    let started = std::time::Instant::now();
    let stored = store.append(&messages, now_micros()).await;
    let took = started.elapsed();
    tracing::debug!(
        size = messages.len(),
        took_us = took.as_micros() as u64,
        "stored a batch"
    );
    Done {
        rooms: messages.into_iter().map(|m| m.room).collect(),
        replies,
        stored,
        took,
    }
}

/// Publishes a stored batch and answers its senders; a failed batch is
/// logged here, once, and its senders get the already-logged failure.
fn finish(done: Done, rooms: &Rooms, bus: Option<&Publisher>) {
    match done.stored {
        Ok(appended) => {
            let fresh: Vec<&StoredMessage> = appended
                .iter()
                .filter(|a| a.fresh)
                .map(|a| &a.message)
                .collect();
            rooms
                .metrics()
                .batch_stored(appended.len(), fresh.len(), done.took);
            match bus {
                None => rooms.publish(&fresh),
                Some(bus) => {
                    // Encoded once, for the local streams and the other
                    // nodes alike.
                    let batch = encode_batch(&fresh);
                    for (room, messages) in &batch {
                        rooms.publish_encoded(room, messages);
                    }
                    if !batch.is_empty() {
                        bus.send(batch);
                    }
                }
            }
            for (reply, a) in done.replies.into_iter().zip(appended) {
                // The sender may have gone; the message is stored anyway.
                let _ = reply.send(Ok(a.message));
            }
        }
        Err(e) => {
            let failure = e.failure().unwrap_or(Failure::Internal);
            let size = done.replies.len();
            match failure {
                Failure::Internal => tracing::error!(error = %e, size, "storing a batch failed"),
                Failure::Unavailable | Failure::Full => {
                    tracing::warn!(error = %e, size, ?failure, "storing a batch failed")
                }
            }
            for reply in done.replies {
                let _ = reply.send(Err(Error::Reported(failure)));
            }
        }
    }
}
