//! The write path: group commit, then fan-out.
//!
//! SendMessage hands its validated message to a writer task (one by
//! default; with several, chosen by room) and waits for the answer. A writer
//! takes every request waiting in its queue (up to [`MAX_BATCH`]), stores
//! them all atomically (one statement on PostgreSQL, one transaction on
//! SQLite), then publishes the fresh ones to the room registry and answers
//! each sender. One commit per batch instead of per message is what lets
//! throughput grow with load; since a room always goes to the same writer,
//! its messages are committed and published in seq order.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::domain::{NewMessage, StoredMessage};
use crate::error::{Error, Result};
use crate::rooms::Rooms;
use crate::storage::Store;

/// The most messages one transaction stores.
pub const MAX_BATCH: usize = 512;
/// Requests that may wait in one writer's queue; senders beyond that wait
/// for room, which pushes back on clients instead of growing memory.
const QUEUE_DEPTH: usize = 4 * MAX_BATCH;

struct WriteRequest {
    message: NewMessage,
    reply: oneshot::Sender<Result<StoredMessage>>,
}

/// The handle SendMessage uses. Cloning it is cheap; the writer tasks end
/// once every handle is dropped and their queues are drained.
#[derive(Clone)]
pub struct Writer {
    shards: Arc<[mpsc::Sender<WriteRequest>]>,
}

impl Writer {
    /// Starts `shards` writer tasks on `tracker`.
    pub fn spawn(store: Store, rooms: Arc<Rooms>, shards: usize, tracker: &TaskTracker) -> Self {
        let shards: Vec<_> = (0..shards.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
                tracker.spawn(run(rx, store.clone(), rooms.clone()));
                tx
            })
            .collect();
        Writer {
            shards: shards.into(),
        }
    }

    /// Stores `message` and returns it as stored (or as first stored, for a
    /// retried idempotency key). Delivery to the room has happened by then.
    pub async fn send(&self, message: NewMessage) -> Result<StoredMessage> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        message.room.hash(&mut hasher);
        let shard = &self.shards[(hasher.finish() % self.shards.len() as u64) as usize];
        let (reply, answer) = oneshot::channel();
        shard
            .send(WriteRequest { message, reply })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::WriterGone)?
    }
}

async fn run(mut rx: mpsc::Receiver<WriteRequest>, store: Store, rooms: Arc<Rooms>) {
    let mut batch: Vec<WriteRequest> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Senders that gave up (cancelled calls) need not be stored.
        batch.retain(|r| !r.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let (messages, replies): (Vec<NewMessage>, Vec<_>) =
            batch.drain(..).map(|r| (r.message, r.reply)).unzip();
        let started = std::time::Instant::now();
        let stored = store.append(&messages, now_micros()).await;
        tracing::debug!(
            size = messages.len(),
            took_us = started.elapsed().as_micros() as u64,
            "stored a batch"
        );
        match stored {
            Ok(appended) => {
                let fresh: Vec<&StoredMessage> = appended
                    .iter()
                    .filter(|a| a.fresh)
                    .map(|a| &a.message)
                    .collect();
                rooms.publish(&fresh);
                for (reply, a) in replies.into_iter().zip(appended) {
                    // The sender may have gone; the message is stored anyway.
                    let _ = reply.send(Ok(a.message));
                }
            }
            Err(e) => {
                let unavailable = e.is_unavailable();
                tracing::warn!(error = ?e, size = replies.len(), "storing a batch failed");
                for reply in replies {
                    let err = if unavailable {
                        Error::Unavailable
                    } else {
                        Error::Internal("storing a batch failed".into())
                    };
                    let _ = reply.send(Err(err));
                }
            }
        }
    }
}

/// Now, in microseconds since the Unix epoch: the precision storage keeps.
fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
