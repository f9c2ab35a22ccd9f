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
use crate::domain::{
    Changed, Identity, NewChange, NewMessage, RoomName, StoredMessage, now_micros,
};
use crate::error::{Error, Failure, Result};
use crate::rooms::{Durable, Rooms, encode_batch};
use crate::storage::{Appended, Store};

/// The most messages one transaction stores.
pub const MAX_BATCH: usize = 512;
/// Requests that may wait in one writer's channel, and again in its own
/// queue of requests not yet in a batch; senders beyond that wait for room
/// (at most `CHAT_DB_TIMEOUT`), which pushes back on clients instead of
/// growing memory.
const QUEUE_DEPTH: usize = 4 * MAX_BATCH;

struct WriteRequest {
    job: Job,
    /// When the sender handed it over; it expires `CHAT_DB_TIMEOUT` later.
    queued: Instant,
}

/// What a request asks the writer to store.
enum Job {
    /// A message: stored with others in a batch.
    Send {
        message: NewMessage,
        reply: oneshot::Sender<Result<StoredMessage>>,
    },
    /// A change of a message: stored alone, after its room's earlier
    /// requests and before its later ones.
    Change {
        change: NewChange,
        reply: oneshot::Sender<Result<Changed>>,
    },
}

impl WriteRequest {
    fn room(&self) -> &RoomName {
        match &self.job {
            Job::Send { message, .. } => &message.room,
            Job::Change { change, .. } => &change.room,
        }
    }

    /// Whether the caller has gone (its call was cancelled).
    fn abandoned(&self) -> bool {
        match &self.job {
            Job::Send { reply, .. } => reply.is_closed(),
            Job::Change { reply, .. } => reply.is_closed(),
        }
    }

    /// Answers UNAVAILABLE without storing anything.
    fn expire(self) {
        let unavailable = Error::Reported(Failure::Unavailable);
        match self.job {
            Job::Send { reply, .. } => drop(reply.send(Err(unavailable))),
            Job::Change { reply, .. } => drop(reply.send(Err(unavailable))),
        }
    }
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
        let (reply, answer) = oneshot::channel();
        self.queue(Job::Send { message, reply }).await?;
        answer.await.map_err(|_| Error::WriterGone)?
    }

    /// Stores `change` (numbered after the room's earlier sends and
    /// changes) and returns the message after it. Delivery to the room has
    /// happened by then.
    pub async fn change(&self, change: NewChange) -> Result<Changed> {
        let (reply, answer) = oneshot::channel();
        self.queue(Job::Change { change, reply }).await?;
        answer.await.map_err(|_| Error::WriterGone)?
    }

    /// Hands `job` to its room's writer, waiting at most `CHAT_DB_TIMEOUT`
    /// for room in the queue.
    async fn queue(&self, job: Job) -> Result<()> {
        let request = WriteRequest {
            job,
            queued: Instant::now(),
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        request.room().hash(&mut hasher);
        let shard = &self.shards[(hasher.finish() % self.shards.len() as u64) as usize];
        match tokio::time::timeout(self.max_wait, shard.send(request)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::ShuttingDown),
            Err(_) => Err(Error::TimedOut("waiting for the writer's queue")),
        }
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
            busy.extend(batch.rooms());
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
            r.expire();
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

/// What one storage call writes.
enum Batch {
    /// Messages of rooms with nothing in flight.
    Sends(Vec<(NewMessage, oneshot::Sender<Result<StoredMessage>>)>),
    /// One change, alone.
    Change(NewChange, oneshot::Sender<Result<Changed>>),
}

impl Batch {
    /// The rooms it touches (with repeats).
    fn rooms(&self) -> Vec<RoomName> {
        match self {
            Batch::Sends(sends) => sends.iter().map(|(m, _)| m.room.clone()).collect(),
            Batch::Change(change, _) => vec![change.room.clone()],
        }
    }
}

/// The next batch: waiting sends, in arrival order, of rooms with no batch
/// in flight, up to [`MAX_BATCH`]; or, when the first request it can take
/// is a change, that change alone. Callers that gave up (cancelled calls)
/// are dropped: their requests need not be stored. A room's later requests
/// never overtake its earlier ones: once one of its requests stays behind,
/// the rest of the room's stay too.
fn take_batch(pending: &mut VecDeque<WriteRequest>, busy: &HashSet<RoomName>) -> Option<Batch> {
    let mut sends = Vec::new();
    let mut change = None;
    let mut behind: HashSet<RoomName> = HashSet::new();
    let mut rest = VecDeque::with_capacity(pending.len());
    for r in pending.drain(..) {
        if r.abandoned() {
            continue;
        }
        let free = !busy.contains(r.room()) && !behind.contains(r.room());
        match r.job {
            Job::Send { message, reply } if free && change.is_none() && sends.len() < MAX_BATCH => {
                sends.push((message, reply));
            }
            Job::Change { change: c, reply } if free && change.is_none() && sends.is_empty() => {
                change = Some((c, reply));
            }
            job => {
                let r = WriteRequest { job, ..r };
                behind.insert(r.room().clone());
                rest.push_back(r);
            }
        }
    }
    *pending = rest;
    match change {
        Some((c, reply)) => Some(Batch::Change(c, reply)),
        None => (!sends.is_empty()).then_some(Batch::Sends(sends)),
    }
}

/// A batch that has been stored, or not.
struct Done {
    /// The rooms it touched (with repeats), now free for their next batch.
    rooms: Vec<RoomName>,
    outcome: Outcome,
    /// How long storing it took.
    took: Duration,
}

/// What storing a [`Batch`] gave, with whom to answer.
enum Outcome {
    Sends {
        replies: Vec<oneshot::Sender<Result<StoredMessage>>>,
        /// Who sent each message, in batch order: their typing ends and
        /// their read marker moves (kept from the requests, so that no
        /// identity is rebuilt from the stored strings).
        senders: Vec<Identity>,
        stored: Result<Vec<Appended>>,
    },
    Change {
        reply: oneshot::Sender<Result<Changed>>,
        /// Boxed: a change's outcome is larger than a batch's.
        changed: Box<Result<Changed>>,
    },
}

async fn store_batch(store: Store, batch: Batch) -> Done {
    let rooms = batch.rooms();
    let started = std::time::Instant::now();
    let outcome = match batch {
        Batch::Sends(sends) => {
            let (messages, replies): (Vec<NewMessage>, Vec<_>) = sends.into_iter().unzip();
            let stored = store.append(&messages, now_micros()).await;
            let senders = messages.into_iter().map(|m| m.sender).collect();
            Outcome::Sends {
                replies,
                senders,
                stored,
            }
        }
        Batch::Change(change, reply) => {
            let changed = Box::new(store.change(&change, now_micros()).await);
            Outcome::Change { reply, changed }
        }
    };
    let took = started.elapsed();
    tracing::debug!(
        size = rooms.len(),
        took_us = took.as_micros() as u64,
        "stored a batch"
    );
    Done {
        rooms,
        outcome,
        took,
    }
}

/// Delivers durable events of one storage call: to the local streams, and
/// with `bus` to the other nodes of the cluster.
fn deliver<T: Durable>(events: &[&T], rooms: &Rooms, bus: Option<&Publisher>) {
    match bus {
        None => rooms.publish(events),
        Some(bus) => {
            // Encoded once, for the local streams and the other nodes alike.
            let batch = encode_batch(events);
            for (room, encoded) in &batch {
                rooms.publish_encoded(room, encoded);
            }
            if !batch.is_empty() {
                bus.send(batch);
            }
        }
    }
}

/// Publishes what was stored and answers the callers; a failed storage
/// call is logged here, once, and its callers get the already-logged
/// failure. A change refused by the rules (the caller's error, not
/// storage's) goes back to its caller as it is.
fn finish(done: Done, rooms: &Rooms, bus: Option<&Publisher>) {
    match done.outcome {
        Outcome::Sends {
            replies,
            senders,
            stored,
        } => match stored {
            Ok(appended) => {
                let fresh: Vec<&StoredMessage> = appended
                    .iter()
                    .filter(|a| a.fresh)
                    .map(|a| &a.message)
                    .collect();
                rooms
                    .metrics()
                    .batch_stored(appended.len(), fresh.len(), done.took);
                deliver(&fresh, rooms, bus);
                for (a, sender) in appended.iter().zip(&senders) {
                    // A message ends its sender's typing and moves their
                    // read marker.
                    if a.fresh {
                        rooms.end_typing(&a.message.room, &sender.user_id);
                        rooms.read_marker(&a.message.room, sender, a.message.seq);
                    }
                }
                for (reply, a) in replies.into_iter().zip(appended) {
                    // The sender may have gone; the message is stored anyway.
                    let _ = reply.send(Ok(a.message));
                }
            }
            Err(e) => {
                let failure = logged(&e, replies.len());
                for reply in replies {
                    let _ = reply.send(Err(Error::Reported(failure)));
                }
            }
        },
        Outcome::Change { reply, changed } => match *changed {
            Ok(changed) => {
                if let Some(event) = &changed.event {
                    deliver(&[event], rooms, bus);
                }
                let _ = reply.send(Ok(changed));
            }
            Err(e) if e.failure().is_none() => {
                let _ = reply.send(Err(e));
            }
            Err(e) => {
                let failure = logged(&e, 1);
                let _ = reply.send(Err(Error::Reported(failure)));
            }
        },
    }
}

/// Logs a failed storage call of `size` requests, once, and returns how
/// it failed.
fn logged(e: &Error, size: usize) -> Failure {
    let failure = e.failure().unwrap_or(Failure::Internal);
    match failure {
        Failure::Internal => tracing::error!(error = %e, size, "storing a batch failed"),
        Failure::Unavailable | Failure::Full => {
            tracing::warn!(error = %e, size, ?failure, "storing a batch failed")
        }
    }
    failure
}
