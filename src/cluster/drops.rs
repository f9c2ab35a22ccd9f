//! What a node refuses from NATS: counted by reason, logged at most once per [`LOG_EVERY`] per reason.
//!
//! Anyone who can publish on NATS can make a node refuse messages, so
//! refusals must not flood the log: each reason logs one line per
//! [`LOG_EVERY`] with the number of refusals since the last line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics::{Metrics, NatsDrop};

/// The least time between two log lines of one reason.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// One reason's log throttle.
#[derive(Debug, Default)]
struct Throttle {
    /// When the next line may be logged, ms since the epoch.
    next_ms: AtomicU64,
    /// Refusals not yet logged.
    pending: AtomicU64,
}

impl Throttle {
    /// Counts one refusal; returns how many to report when a line is due.
    fn due(&self, now_ms: u64) -> Option<u64> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms < next {
            return None;
        }
        let every = LOG_EVERY.as_millis() as u64;
        self.next_ms
            .compare_exchange(next, now_ms + every, Ordering::AcqRel, Ordering::Relaxed)
            .ok()?;
        Some(self.pending.swap(0, Ordering::AcqRel))
    }
}

/// Counts and logs what this node drops.
#[derive(Debug, Default)]
pub(crate) struct Drops {
    metrics: Metrics,
    /// By [`NatsDrop`] as index.
    throttles: [Throttle; 3],
}

/// Milliseconds since the Unix epoch on this node's clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Drops {
    pub(crate) fn new(metrics: Metrics) -> Self {
        Drops {
            metrics,
            throttles: Default::default(),
        }
    }

    /// Counts a dropped message; logs `what` (with the count since the
    /// last line) when this reason's line is due.
    pub(crate) fn record(&self, reason: NatsDrop, what: impl FnOnce() -> String) {
        self.metrics.nats_dropped(reason);
        if let Some(count) = self.throttles[reason as usize].due(now_ms()) {
            tracing::warn!(
                reason = reason.label(),
                dropped = count,
                "dropped NATS messages: {}",
                what()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_carries_the_count() {
        let t = Throttle::default();
        assert_eq!(t.due(1_000), Some(1));
        assert_eq!(t.due(1_001), None);
        assert_eq!(t.due(5_000), None);
        assert_eq!(t.due(11_000), Some(3));
        assert_eq!(t.due(11_001), None);
    }
}
