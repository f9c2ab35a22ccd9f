//! Public rooms becoming a user's on JoinRoom (ListRooms), written in
//! batches: the first joins of many users share one statement, so 100,000
//! users filling a room make a few hundred writes, not 100,000, and none
//! waits behind the others for a pooled connection until its deadline.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::Pair;
use crate::domain::now_micros;
use crate::error::{Error, Failure, Result};
use crate::storage::Store;

/// The most pairs one statement writes (2 parameters each, within
/// SQLite's 999).
const BATCH: usize = 400;
/// Pairs waiting for the writer: joins beyond wait to queue (each within
/// its deadline).
const QUEUE: usize = 4096;

/// One pair to write and who waits for it.
type Job = (Pair, oneshot::Sender<Result<()>>);

/// The sending end of the batch writer ([`run`]).
#[derive(Debug)]
pub(super) struct Owners {
    tx: mpsc::Sender<Job>,
    /// How long a join waits to queue and for its batch: the storage
    /// deadline, twice (its own batch may wait behind one other).
    wait: Duration,
}

impl Owners {
    pub(super) fn new(store: &Store) -> (Self, mpsc::Receiver<Job>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let wait = store.timeout() * 2;
        (Owners { tx, wait }, rx)
    }

    /// Writes `pair` with whatever else is waiting; resolves once stored.
    pub(super) async fn write(&self, pair: Pair) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        let work = async {
            self.tx
                .send((pair, reply))
                .await
                .map_err(|_| Error::ShuttingDown)?;
            answer.await.map_err(|_| Error::ShuttingDown)?
        };
        tokio::time::timeout(self.wait, work)
            .await
            .map_err(|_| Error::TimedOut("waiting for the rooms' owners to be written"))?
    }
}

/// Writes queued pairs in batches of up to [`BATCH`] until `stop` or until
/// every sender is gone.
pub(super) async fn run(store: Store, mut rx: mpsc::Receiver<Job>, stop: CancellationToken) {
    let mut jobs: Vec<Job> = Vec::with_capacity(BATCH);
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => 0,
            n = rx.recv_many(&mut jobs, BATCH) => n,
        };
        if received == 0 {
            return;
        }
        let pairs: Vec<(&str, &str)> = jobs
            .iter()
            .map(|((room, user), _)| (&**user, room.as_str()))
            .collect();
        let result = store.make_theirs(&pairs, now_micros()).await;
        drop(pairs);
        let failure = result.as_ref().err().map(|e| {
            let failure = e.failure().unwrap_or(Failure::Internal);
            crate::error::log_storage_failure(e, failure);
            failure
        });
        for (_, reply) in jobs.drain(..) {
            let _ = reply.send(match failure {
                None => Ok(()),
                Some(failure) => Err(Error::Reported(failure)),
            });
        }
    }
}
