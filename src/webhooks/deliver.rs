//! One delivery: the signed POST of one claimed event, and what becomes of the event after it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use standardwebhooks::{HEADER_WEBHOOK_ID, HEADER_WEBHOOK_SIGNATURE, HEADER_WEBHOOK_TIMESTAMP};

use super::body::bodies_of;
use crate::config::Webhooks;
use crate::domain::now_micros;
use crate::metrics::{Metrics, WebhookOutcome};
use crate::storage::{OutboxRow, Store};

/// The wait before the first retry; it doubles with each failed try.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two tries.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// The most bytes of an answer read (and dropped) so that its connection
/// can be kept; a longer answer costs its connection.
const ANSWER_BYTES: usize = 64 * 1024;

/// What every delivery shares.
pub(super) struct Dispatcher {
    pub(super) store: Store,
    pub(super) client: reqwest::Client,
    pub(super) signer: standardwebhooks::Webhook,
    pub(super) settings: Webhooks,
    pub(super) metrics: Metrics,
    /// Whether the receiver is failing, and when that was last logged:
    /// failures and recoveries are logged at most once a minute each, not
    /// once per event.
    pub(super) health: Mutex<Health>,
    /// Events dropped past CHAT_WEBHOOK_MAX_AGE since the last log line
    /// about them (logged together, not one line per event).
    pub(super) dropped: AtomicU64,
}

/// The receiver's state as the log tells it.
#[derive(Default)]
pub(super) struct Health {
    failing: bool,
    logged_failing: Option<Instant>,
    logged_working: Option<Instant>,
}

/// How often each of "failing" and "works again" may be logged.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// A claim: its value (only it may delete or reschedule the rows) and
/// when its lease ends by this node's monotonic clock (measured from before
/// the claim was asked for, so never later than the lease in storage).
#[derive(Clone, Copy)]
pub(super) struct Claim {
    pub(super) value: i64,
    pub(super) lease_ends: Instant,
}

/// Why a try failed, for the log.
enum Failed {
    Status(reqwest::StatusCode),
    Request(reqwest::Error),
    Sign(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Status(status) => write!(f, "the receiver answered {status}"),
            Failed::Request(e) if e.is_timeout() => f.write_str("the request timed out"),
            Failed::Request(e) if e.is_connect() => write!(f, "cannot connect: {e}"),
            Failed::Request(e) => write!(f, "the request failed: {e}"),
            Failed::Sign(e) => write!(f, "signing failed: {e}"),
        }
    }
}

/// The wait after the `attempts`-th failed try: 1 s, 2 s, 4 s … 5 min,
/// less up to a tenth at random so that events that failed together do
/// not all come back at once.
pub(super) fn backoff(attempts: u32) -> Duration {
    let doubled = BACKOFF_FIRST.saturating_mul(1u32 << attempts.saturating_sub(1).min(16));
    let wait = doubled.min(BACKOFF_MAX);
    let mut r = [0u8; 2];
    let _ = getrandom::fill(&mut r);
    wait - wait.mul_f64(f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX) / 10.0)
}

/// The webhook-id of an event: the same on every try, unique per event
/// (the outbox never reuses an id; the commit time keeps ids of a
/// database made again apart).
fn webhook_id(row: &OutboxRow) -> String {
    format!("evt_{}_{}", row.created_micros, row.id)
}

impl Dispatcher {
    /// Delivers the events of `rows`, claimed with `claim`, concurrently:
    /// deletes those answered 2xx (and those past the maximum age, or
    /// gone), reschedules the others with backoff. A batch that can no
    /// longer finish within its lease gives its claim up unsent.
    pub(super) async fn deliver(self: Arc<Self>, rows: Vec<OutboxRow>, claim: Claim) -> usize {
        let count = rows.len();
        let ids = |rows: &[OutboxRow]| rows.iter().map(|r| r.id).collect::<Vec<_>>();
        let max_age = i64::try_from(self.settings.max_age.as_micros()).unwrap_or(i64::MAX);
        let now = now_micros();
        let (old, rows): (Vec<OutboxRow>, Vec<OutboxRow>) = rows
            .into_iter()
            .partition(|r| now.saturating_sub(r.created_micros) > max_age);
        for _ in &old {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.metrics.webhook(WebhookOutcome::Dropped);
        }
        let mut done = ids(&old);
        // Reading and sending must end before the lease does: a POST starts
        // only with its whole timeout (and a margin for the delete) left.
        let last_start = claim.lease_ends - self.settings.timeout.mul_f64(1.1);
        let read = tokio::time::timeout_at(last_start, bodies_of(&self.store, &rows)).await;
        let bodies = match read {
            Ok(Ok(bodies)) if bodies.len() == rows.len() && Instant::now() < last_start => bodies,
            Ok(Err(e)) => {
                self.failed(&format!("reading the events failed: {e}"));
                self.finish(&done, claim).await;
                self.retry(&rows, claim).await;
                return count;
            }
            // Too late to send within the lease: another claim sends them.
            _ => {
                self.finish(&done, claim).await;
                self.release(&ids(&rows), claim).await;
                return count;
            }
        };
        let (sent, failed) = self.send_all(&rows, bodies).await;
        done.extend(sent);
        self.finish(&done, claim).await;
        if let Some((_, why)) = failed.first() {
            self.failed(&why.to_string());
            let failed: Vec<OutboxRow> = failed.into_iter().map(|(r, _)| r.clone()).collect();
            self.retry(&failed, claim).await;
        } else if !done.is_empty() {
            self.working();
        }
        count
    }

    /// POSTs every event of `rows` that has a body, concurrently: the ids
    /// done with (answered 2xx, or gone from history) and the rows that
    /// failed, with why.
    async fn send_all<'a>(
        &self,
        rows: &'a [OutboxRow],
        bodies: Vec<Option<Vec<u8>>>,
    ) -> (Vec<i64>, Vec<(&'a OutboxRow, Failed)>) {
        let tries = rows.iter().zip(bodies).map(|(row, body)| async move {
            let outcome = match body {
                // Gone from history: nothing to send.
                None => Ok(false),
                Some(body) => self.post(row, body).await.map(|()| true),
            };
            (row, outcome)
        });
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for (row, outcome) in futures_util::future::join_all(tries).await {
            match outcome {
                Ok(sent) => {
                    if sent {
                        self.metrics.webhook(WebhookOutcome::Delivered);
                    }
                    done.push(row.id);
                }
                Err(why) => failed.push((row, why)),
            }
        }
        (done, failed)
    }

    /// Takes delivered (or dropped) events out of the outbox.
    async fn finish(&self, ids: &[i64], claim: Claim) {
        if let Err(e) = self.store.outbox_delivered(ids, claim.value).await {
            // They stay, and are sent again once the lease runs out: at
            // least once.
            tracing::debug!(error = %e, "removing delivered webhook events failed");
        }
    }

    /// Gives the claim of `ids` up, unsent.
    async fn release(&self, ids: &[i64], claim: Claim) {
        if let Err(e) = self.store.outbox_release(ids, claim.value).await {
            tracing::debug!(error = %e, "releasing webhook events failed; their lease runs out");
        }
    }

    /// Schedules the next try of each of `rows` after its backoff.
    async fn retry(&self, rows: &[OutboxRow], claim: Claim) {
        for row in rows {
            self.metrics.webhook(WebhookOutcome::Retried);
            let tries = u32::try_from(row.attempts).unwrap_or(0).saturating_add(1);
            let wait = i64::try_from(backoff(tries).as_micros()).unwrap_or(i64::MAX);
            let due = now_micros().saturating_add(wait);
            if let Err(e) = self.store.outbox_retry(row.id, claim.value, due).await {
                // The lease runs out and the event is tried again then.
                tracing::debug!(error = %e, "rescheduling a webhook event failed");
            }
        }
    }

    /// A try failed: logged when the receiver was working, at most once
    /// a minute.
    fn failed(&self, why: &str) {
        let mut health = lock(&self.health);
        let quiet = health
            .logged_failing
            .is_some_and(|t| t.elapsed() < LOG_EVERY);
        if !health.failing && !quiet {
            tracing::warn!(url = %self.settings.url, "webhook deliveries failing ({why}); retrying with backoff");
            health.logged_failing = Some(Instant::now());
        }
        health.failing = true;
    }

    /// Tries succeeded: logged when the receiver was failing, at most once
    /// a minute.
    fn working(&self) {
        let mut health = lock(&self.health);
        let quiet = health
            .logged_working
            .is_some_and(|t| t.elapsed() < LOG_EVERY);
        if health.failing && !quiet {
            tracing::info!("webhook deliveries work again");
            health.logged_working = Some(Instant::now());
        }
        health.failing = false;
    }

    /// One signed POST of `row`'s event.
    async fn post(&self, row: &OutboxRow, body: Vec<u8>) -> Result<(), Failed> {
        let id = webhook_id(row);
        let timestamp = now_micros() / 1_000_000;
        let signature = self
            .signer
            .sign(&id, timestamp, &body)
            .map_err(|e| Failed::Sign(e.to_string()))?;
        let answer = self
            .client
            .post(self.settings.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(HEADER_WEBHOOK_ID, id)
            .header(HEADER_WEBHOOK_TIMESTAMP, timestamp.to_string())
            .header(HEADER_WEBHOOK_SIGNATURE, signature)
            .body(body)
            .send()
            .await
            .map_err(Failed::Request)?;
        let status = answer.status();
        drain(answer).await;
        if status.is_success() {
            Ok(())
        } else {
            Err(Failed::Status(status))
        }
    }
}

fn lock(health: &Mutex<Health>) -> MutexGuard<'_, Health> {
    // Only log bookkeeping: a panic elsewhere cannot leave it wrong in a
    // way that matters.
    health
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads what is left of an answer, up to [`ANSWER_BYTES`], so that the
/// connection goes back to the pool.
async fn drain(mut answer: reqwest::Response) {
    let mut read = 0;
    while let Ok(Some(chunk)) = answer.chunk().await {
        read += chunk.len();
        if read > ANSWER_BYTES {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_second_to_five_minutes() {
        let near = |tries: u32, secs: f64| {
            let got = backoff(tries).as_secs_f64();
            assert!(got <= secs && got >= secs * 0.9, "try {tries}: {got} s");
        };
        near(1, 1.0);
        near(2, 2.0);
        near(3, 4.0);
        near(9, 256.0);
        near(10, 300.0);
        near(1000, 300.0);
    }
}
