//! Webhooks: every committed event, POSTed to the app's backend in the Standard Webhooks format, from the outbox in storage.
//!
//! Events enter the outbox in the transactions that commit them (see
//! `storage/outbox.rs`), so an acknowledged send has its webhook stored
//! even if chatd is killed the next instant. Here, on every node:
//!
//! - [`dispatch`] claims due events (at most [`IN_FLIGHT`] in flight per
//!   node) for a lease of 1.6 × `CHAT_WEBHOOK_TIMEOUT` (by the database's
//!   clock), and delivers each claim's batch (`deliver.rs`): the events
//!   read in one go, one signed POST each, concurrently; 2xx answers delete
//!   their events in one statement, any other outcome schedules the next
//!   try with backoff (1 s doubling to 5 min). A POST starts only while its
//!   whole timeout still fits in the lease (by this node's clock, from
//!   before the claim): a batch that is late gives its claim up unsent. It
//!   looks at once after this node commits events, and every
//!   [`poll_interval`] for the others' events, retries and the events of
//!   a node that died mid-delivery (its lease runs out).
//! - [`watch_backlog`] reads the backlog for the metrics.
//!
//! Nothing of the backlog is held in memory beyond the events in flight.

mod body;
mod deliver;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::deliver::{Claim, Dispatcher, Health};
use crate::config::Webhooks;
use crate::domain::now_micros;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::storage::Store;

/// Requests in flight per node: events are delivered concurrently, each
/// on a kept-alive connection from a pool of this many.
pub const IN_FLIGHT: usize = 32;
/// How often the backlog is read for the metrics.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// How long a claim holds its events: reading them and a request (which
/// ends within the timeout) fit in it, so while its node lives no other
/// node takes an event over.
fn lease(settings: &Webhooks) -> Duration {
    settings.timeout.mul_f64(1.6)
}

/// How often a node looks for due events it did not commit: a fifth of
/// the timeout (at most a second), so that a dead node's events are taken
/// over within 1.6 × + 0.2 × the timeout, under the promised 2 ×.
fn poll_interval(settings: &Webhooks) -> Duration {
    (settings.timeout / 5).clamp(Duration::from_millis(25), Duration::from_secs(1))
}

/// Starts delivery and the backlog reading on `tracker`; both end at
/// `stop` (delivery once its requests in flight have ended; shutdown
/// waits for them at most its grace, and an event whose answer is lost
/// is sent again after its lease).
pub fn spawn(
    settings: Webhooks,
    store: &Store,
    metrics: &Metrics,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(IN_FLIGHT)
        .user_agent(concat!("chatd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Config(format!("CHAT_WEBHOOK_URL: {e}")))?;
    let signer = standardwebhooks::Webhook::from_bytes(settings.secret.clone())
        .map_err(|e| Error::Config(format!("CHAT_WEBHOOK_SECRET: {e}")))?;
    let dispatcher = Arc::new(Dispatcher {
        store: store.clone(),
        client,
        signer,
        settings,
        metrics: metrics.clone(),
        health: Mutex::new(Health::default()),
        dropped: AtomicU64::new(0),
    });
    tracker.spawn(dispatch(dispatcher.clone(), stop.clone()));
    tracker.spawn(watch_backlog(dispatcher, stop.clone()));
    Ok(())
}

/// A random positive claim (0 is "none").
fn new_claim() -> i64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    ((u64::from_le_bytes(bytes) >> 1) | 1) as i64
}

/// Claims due events and delivers them, at most [`IN_FLIGHT`] at once,
/// a batch per claim. At `stop` it claims no more and lets the batches in
/// flight end (each within its lease; shutdown waits at most its grace).
async fn dispatch(d: Arc<Dispatcher>, stop: CancellationToken) {
    let poll = poll_interval(&d.settings);
    let lease = lease(&d.settings);
    let lease_micros = i64::try_from(lease.as_micros()).unwrap_or(i64::MAX);
    let mut running: JoinSet<usize> = JoinSet::new();
    let mut in_flight = 0usize;
    let mut claims_failing = false;
    loop {
        while let Some(ended) = running.try_join_next() {
            in_flight -= ended.unwrap_or(0);
        }
        // Batches of at most half the slots, so that one is sent while the
        // next is read; a claim once a quarter of the slots are free.
        let free = IN_FLIGHT.saturating_sub(in_flight).min(IN_FLIGHT / 2);
        let mut full = free < IN_FLIGHT / 4;
        if !full {
            let claim = Claim {
                value: new_claim(),
                lease_ends: Instant::now() + lease,
            };
            let claimed = tokio::select! {
                () = stop.cancelled() => break,
                claimed = d.store.claim_outbox(lease_micros, claim.value, free as i64) => claimed,
            };
            match claimed {
                Ok(rows) => {
                    claims_failing = false;
                    // A whole batch: more may be due; look again at once
                    // if slots are left, else when a batch ends.
                    full = rows.len() == free && IN_FLIGHT - in_flight - rows.len() < IN_FLIGHT / 4;
                    let more = rows.len() == free && !full;
                    if !rows.is_empty() {
                        in_flight += rows.len();
                        running.spawn(d.clone().deliver(rows, claim));
                    }
                    if more {
                        continue;
                    }
                }
                Err(e) => {
                    if !claims_failing {
                        tracing::warn!(error = %e, "reading the webhook outbox failed; retrying");
                    }
                    claims_failing = true;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            // Saturated: look again as soon as a batch ends.
            Some(ended) = running.join_next(), if full => in_flight -= ended.unwrap_or(0),
            () = d.store.outbox_changed(), if !full => {}
            () = tokio::time::sleep(poll) => {}
        }
    }
    while running.join_next().await.is_some() {}
}

/// Reads the backlog every [`BACKLOG_EVERY`] for the metrics, and logs
/// the events dropped since the last reading.
async fn watch_backlog(d: Arc<Dispatcher>, stop: CancellationToken) {
    loop {
        let read = tokio::select! {
            () = stop.cancelled() => return,
            read = d.store.outbox_backlog() => read,
        };
        if let Ok((waiting, oldest)) = read {
            let age = oldest.map_or(0, |at| (now_micros() - at).max(0) / 1_000_000);
            d.metrics.webhook_backlog(waiting, age);
        }
        let dropped = d.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                max_age = ?d.settings.max_age,
                "webhook events dropped: still undelivered past CHAT_WEBHOOK_MAX_AGE"
            );
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(BACKLOG_EVERY) => {}
        }
    }
}
