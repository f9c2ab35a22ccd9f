//! Per-user rates: one token bucket per user for sends (`CHAT_USER_SEND_RATE`, `CHAT_USER_SEND_BURST`), for joins (`CHAT_USER_JOIN_RATE`, `CHAT_USER_JOIN_BURST`) and for reads (`CHAT_USER_READ_RATE`, `CHAT_USER_READ_BURST`).
//!
//! Buckets are governor's keyed rate limiter (GCRA, the token bucket's
//! exact equivalent: one timestamp per user). A user's entry is created by
//! their first call and removed by [`prune`] once their bucket is full again
//! (after at most burst / rate seconds without calling), so memory holds
//! only users who called recently. Limits are per node.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// How often full buckets are removed.
pub const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// What a rate limits, as its refusal names it.
#[derive(Debug, Clone, Copy)]
pub struct Limited {
    /// The settings, named in every refusal so a client's developer knows
    /// which one they hit.
    rate_setting: &'static str,
    burst_setting: &'static str,
    /// What the user does too often: "sends more than {rate} messages".
    verb: &'static str,
    noun: &'static str,
}

/// SendMessage calls.
pub const SENDS: Limited = Limited {
    rate_setting: "CHAT_USER_SEND_RATE",
    burst_setting: "CHAT_USER_SEND_BURST",
    verb: "sends",
    noun: "messages",
};

/// JoinRoom calls (resumes included): each can make a public room one of
/// the user's rooms (a stored row), so a client inventing room names is
/// held to this pace.
pub const JOINS: Limited = Limited {
    rate_setting: "CHAT_USER_JOIN_RATE",
    burst_setting: "CHAT_USER_JOIN_BURST",
    verb: "opens",
    noun: "JoinRoom streams",
};

/// ListRooms, ListHistory, ListMembers and MarkRead calls, together: each
/// reads storage (MarkRead writes a marker), so one user calling them in a
/// loop would take database time from everyone else.
pub const READS: Limited = Limited {
    rate_setting: "CHAT_USER_READ_RATE",
    burst_setting: "CHAT_USER_READ_BURST",
    verb: "makes",
    noun: "ListRooms, ListHistory, ListMembers and MarkRead calls",
};

/// One limit of every user; a no-op when turned off.
#[derive(Debug)]
pub struct UserRate {
    limiter: Option<DefaultKeyedRateLimiter<Arc<str>>>,
    rate: u32,
    burst: u32,
    what: Limited,
}

impl UserRate {
    /// `rate` calls per second with bursts of `burst`; either 0 turns the
    /// limit off.
    pub fn new(what: Limited, rate: u32, burst: u32) -> Self {
        let limiter = match (NonZeroU32::new(rate), NonZeroU32::new(burst)) {
            (Some(r), Some(b)) => Some(governor::RateLimiter::keyed(
                Quota::per_second(r).allow_burst(b),
            )),
            _ => None,
        };
        UserRate {
            limiter,
            rate,
            burst,
            what,
        }
    }

    /// Takes one token from `user`'s bucket, or refuses the call with
    /// RESOURCE_EXHAUSTED naming the limit.
    pub fn check(&self, user: &Arc<str>) -> Result<()> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(user).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let what = self.what;
            Error::ResourceExhausted(format!(
                "{}: this user {} more than {} {} per second ({} {} at once); retry in {} ms",
                what.rate_setting,
                what.verb,
                self.rate,
                what.noun,
                what.burst_setting,
                self.burst,
                wait.as_millis().max(1)
            ))
        })
    }

    /// Users with a bucket that is not full (for tests and metrics).
    #[cfg(test)]
    pub fn tracked_users(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| {
            l.retain_recent();
            l.len()
        })
    }
}

/// Removes full buckets every [`PRUNE_EVERY`] until `stop`.
pub async fn prune(rate: Arc<UserRate>, stop: CancellationToken) {
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
        let rate = UserRate::new(SENDS, 1, 3);
        let alice: Arc<str> = "alice".into();
        let bob: Arc<str> = "bob".into();
        for _ in 0..3 {
            rate.check(&alice).unwrap();
        }
        match rate.check(&alice) {
            Err(Error::ResourceExhausted(m)) => {
                assert!(m.starts_with("CHAT_USER_SEND_RATE"), "{m}");
                assert!(m.contains("CHAT_USER_SEND_BURST 3"), "{m}");
            }
            other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
        }
        rate.check(&bob).unwrap();
        assert_eq!(rate.tracked_users(), 2);
    }

    #[test]
    fn a_join_refusal_names_the_join_settings() {
        let rate = UserRate::new(JOINS, 10, 1);
        let alice: Arc<str> = "alice".into();
        rate.check(&alice).unwrap();
        match rate.check(&alice) {
            Err(Error::ResourceExhausted(m)) => assert!(
                m.starts_with("CHAT_USER_JOIN_RATE: this user opens more than 10 JoinRoom streams")
                    && m.contains("CHAT_USER_JOIN_BURST 1"),
                "{m}"
            ),
            other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
        }
    }

    #[test]
    fn a_read_refusal_names_the_read_settings() {
        let rate = UserRate::new(READS, 50, 1);
        let alice: Arc<str> = "alice".into();
        rate.check(&alice).unwrap();
        match rate.check(&alice) {
            Err(Error::ResourceExhausted(m)) => assert!(
                m.starts_with("CHAT_USER_READ_RATE: this user makes more than 50 ListRooms")
                    && m.contains("CHAT_USER_READ_BURST 1"),
                "{m}"
            ),
            other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
        }
    }

    #[test]
    fn zero_turns_it_off() {
        for (r, b) in [(0, 40), (20, 0)] {
            let rate = UserRate::new(JOINS, r, b);
            let user: Arc<str> = "u".into();
            for _ in 0..1000 {
                rate.check(&user).unwrap();
            }
            assert_eq!(rate.tracked_users(), 0);
        }
    }
}
