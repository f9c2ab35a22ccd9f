//! One delivery: the signed POST of one claimed event, and what becomes of the event after it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use standardwebhooks::{HEADER_WEBHOOK_ID, HEADER_WEBHOOK_SIGNATURE, HEADER_WEBHOOK_TIMESTAMP};

use super::body::body_of;
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
    /// Whether the last try failed: a run of failures is logged once, and
    /// its end once.
    pub(super) failing: AtomicBool,
    /// Events dropped past CHAT_WEBHOOK_MAX_AGE since the last log line
    /// about them (logged together, not one line per event).
    pub(super) dropped: AtomicU64,
}

/// Why a try failed, for the log.
enum Failed {
    Status(reqwest::StatusCode),
    Request(reqwest::Error),
    Storage(crate::error::Error),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Status(status) => write!(f, "the receiver answered {status}"),
            Failed::Request(e) if e.is_timeout() => f.write_str("the request timed out"),
            Failed::Request(e) if e.is_connect() => write!(f, "cannot connect: {e}"),
            Failed::Request(e) => write!(f, "the request failed: {e}"),
            Failed::Storage(e) => write!(f, "reading the event failed: {e}"),
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
    /// Delivers `row`, claimed with `claim`: deletes it once the receiver
    /// answered 2xx, or drops it past the maximum age, or schedules the
    /// next try.
    pub(super) async fn deliver(self: Arc<Self>, row: OutboxRow, claim: i64) {
        let age = now_micros().saturating_sub(row.created_micros);
        if Duration::from_micros(u64::try_from(age).unwrap_or(0)) > self.settings.max_age {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.metrics.webhook(WebhookOutcome::Dropped);
            self.finish(&row, claim).await;
            return;
        }
        match self.try_once(&row).await {
            Ok(()) => {
                self.metrics.webhook(WebhookOutcome::Delivered);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("webhook deliveries work again");
                }
                self.finish(&row, claim).await;
            }
            Err(failed) => {
                self.metrics.webhook(WebhookOutcome::Retried);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        url = %self.settings.url,
                        "webhook deliveries failing ({failed}); retrying with backoff"
                    );
                }
                let tries = u32::try_from(row.attempts).unwrap_or(0).saturating_add(1);
                let wait = i64::try_from(backoff(tries).as_micros()).unwrap_or(i64::MAX);
                let due = now_micros().saturating_add(wait);
                if let Err(e) = self.store.outbox_retry(row.id, claim, due).await {
                    // The lease runs out and the event is tried again then.
                    tracing::debug!(error = %e, "rescheduling a webhook event failed");
                }
            }
        }
    }

    /// Takes `row` out of the outbox (delivered or dropped).
    async fn finish(&self, row: &OutboxRow, claim: i64) {
        if let Err(e) = self.store.outbox_delivered(row.id, claim).await {
            // It stays, and is sent again once the lease runs out: at
            // least once.
            tracing::debug!(error = %e, "removing a delivered webhook event failed");
        }
    }

    /// One signed POST of `row`'s event.
    async fn try_once(&self, row: &OutboxRow) -> Result<(), Failed> {
        let body = match body_of(&self.store, row).await {
            Ok(Some(body)) => body,
            // Nothing to send any more: as good as delivered.
            Ok(None) => return Ok(()),
            Err(e) => return Err(Failed::Storage(e)),
        };
        let id = webhook_id(row);
        let timestamp = now_micros() / 1_000_000;
        let signature = self
            .signer
            .sign(&id, timestamp, &body)
            .map_err(|e| Failed::Storage(crate::error::Error::Internal(e.to_string())))?;
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
