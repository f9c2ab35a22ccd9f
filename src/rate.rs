//! The per-user send rate: one token bucket per user (`CHAT_USER_SEND_RATE`, `CHAT_USER_SEND_BURST`).
//!
//! Buckets are governor's keyed rate limiter (GCRA, the token bucket's
//! exact equivalent: one timestamp per user). A user's entry is created by
//! their first send and removed by [`prune`] once their bucket is full again
//! (after at most burst / rate seconds without sending), so memory holds
//! only users who sent recently. Limits are per node.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// How often full buckets are removed.
pub const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// The send limit of every user; a no-op when turned off.
#[derive(Debug)]
pub struct SendRate {
    limiter: Option<DefaultKeyedRateLimiter<Arc<str>>>,
    rate: u32,
    burst: u32,
}

impl SendRate {
    /// `rate` sends per second with bursts of `burst`; either 0 turns the
    /// limit off.
    pub fn new(rate: u32, burst: u32) -> Self {
        let limiter = match (NonZeroU32::new(rate), NonZeroU32::new(burst)) {
            (Some(r), Some(b)) => Some(governor::RateLimiter::keyed(
                Quota::per_second(r).allow_burst(b),
            )),
            _ => None,
        };
        SendRate {
            limiter,
            rate,
            burst,
        }
    }

    /// Takes one token from `user`'s bucket, or refuses the send with
    /// RESOURCE_EXHAUSTED naming the limit.
    pub fn check(&self, user: &Arc<str>) -> Result<()> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(user).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Error::ResourceExhausted(format!(
                "CHAT_USER_SEND_RATE: this user sends more than {} messages per second \
                 (CHAT_USER_SEND_BURST {} at once); retry in {} ms",
                self.rate,
                self.burst,
                wait.as_millis().max(1)
            ))
        })
    }

    /// Users with a bucket that is not full (for tests and metrics).
    pub fn tracked_users(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| {
            l.retain_recent();
            l.len()
        })
    }
}

/// Removes full buckets every [`PRUNE_EVERY`] until `stop`.
pub async fn prune(rate: Arc<SendRate>, stop: CancellationToken) {
    let Some(limiter) = &rate.limiter else {
        return;
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PRUNE_EVERY) => {}
        }
        limiter.retain_recent();
        limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refused_and_other_users_unaffected() {
        let rate = SendRate::new(1, 3);
        let alice: Arc<str> = "alice".into();
        let bob: Arc<str> = "bob".into();
        for _ in 0..3 {
            rate.check(&alice).unwrap();
        }
        match rate.check(&alice) {
            Err(Error::ResourceExhausted(m)) => {
                assert!(m.starts_with("CHAT_USER_SEND_RATE"), "{m}")
            }
            other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
        }
        rate.check(&bob).unwrap();
        assert_eq!(rate.tracked_users(), 2);
    }

    #[test]
    fn zero_turns_it_off() {
        for (r, b) in [(0, 40), (20, 0)] {
            let rate = SendRate::new(r, b);
            let user: Arc<str> = "u".into();
            for _ in 0..1000 {
                rate.check(&user).unwrap();
            }
            assert_eq!(rate.tracked_users(), 0);
        }
    }
}
