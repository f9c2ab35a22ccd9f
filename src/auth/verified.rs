//! Tokens verified recently, so that a client calling again with the same
//! token skips the signature check and the JSON decoding (about a quarter
//! of chatd's instructions per SendMessage when every call verified).
//!
//! Only HS256 tokens are kept: chatd's secret does not change while it
//! runs, so a token that verified once verifies again until its `exp`,
//! which every hit checks against the clock (and `nbf`) with the same
//! leeway as verification. Tokens signed with an identity provider's keys
//! are never kept: the provider may remove a key, and its tokens must stop
//! working then. Refusals are never kept. The key is the whole token, so
//! a hit is exactly a token that verified.
//!
//! Bounded: two generations of [`ENTRIES`] tokens of at most
//! [`MAX_TOKEN_BYTES`] each (a full generation becomes the old one and the
//! older is dropped; a hit in the old one moves it to the new one).

use std::collections::HashMap;
use std::sync::Mutex;

use super::CLOCK_LEEWAY_SECS;
use crate::domain::Identity;

/// Tokens per generation.
pub(super) const ENTRIES: usize = 8192;
/// Longer tokens are verified on every call, not kept.
pub(super) const MAX_TOKEN_BYTES: usize = 1024;

/// What a verified token said, and until when it holds.
#[derive(Clone, Debug)]
pub(super) struct Verified {
    pub(super) identity: Identity,
    /// Its `exp` (seconds since 1970); `None`: it has none (allowed by
    /// `CHAT_JWT_ALLOW_NO_EXP`).
    pub(super) exp: Option<u64>,
    /// Its `nbf`, if any.
    pub(super) nbf: Option<u64>,
}

impl Verified {
    /// Whether verification would accept it again at `now` (seconds since
    /// 1970), as far as time goes: `exp` and `nbf` with the leeway.
    fn holds_at(&self, now: u64) -> bool {
        let before_exp = self
            .exp
            .is_none_or(|exp| exp.saturating_add(CLOCK_LEEWAY_SECS) > now);
        let after_nbf = self
            .nbf
            .is_none_or(|nbf| nbf <= now.saturating_add(CLOCK_LEEWAY_SECS));
        before_exp && after_nbf
    }
}

#[derive(Debug, Default)]
struct Generations {
    current: HashMap<Box<str>, Verified>,
    previous: HashMap<Box<str>, Verified>,
}

/// The cache of verified tokens; see the module doc.
#[derive(Debug, Default)]
pub(super) struct VerifiedTokens {
    inner: Mutex<Generations>,
}

impl VerifiedTokens {
    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // A cache: a panic elsewhere cannot leave it wrong in a way that
        // matters (entries are whole or absent).
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The identity of `token` when it verified before and still holds at
    /// `now`; an entry that no longer holds is dropped.
    pub(super) fn get(&self, token: &str, now: u64) -> Option<Identity> {
        let mut g = self.lock();
        if let Some(v) = g.current.get(token) {
            if v.holds_at(now) {
                return Some(v.identity.clone());
            }
            g.current.remove(token);
            return None;
        }
        let (key, v) = g.previous.remove_entry(token)?;
        if !v.holds_at(now) {
            return None;
        }
        let identity = v.identity.clone();
        insert(&mut g, key, v);
        Some(identity)
    }

    /// Keeps `token`, which just verified, unless it is too long.
    pub(super) fn insert(&self, token: &str, verified: Verified) {
        if token.len() > MAX_TOKEN_BYTES {
            return;
        }
        insert(&mut self.lock(), token.into(), verified);
    }
}

fn insert(g: &mut Generations, key: Box<str>, verified: Verified) {
    if g.current.len() >= ENTRIES && !g.current.contains_key(&key) {
        g.previous = std::mem::take(&mut g.current);
    }
    g.current.insert(key, verified);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(exp: Option<u64>, nbf: Option<u64>) -> Verified {
        Verified {
            identity: Identity {
                user_id: "u".into(),
                display_name: "U".into(),
                admin: false,
            },
            exp,
            nbf,
        }
    }

    #[test]
    fn a_kept_token_holds_until_exp_with_the_leeway() {
        let cache = VerifiedTokens::default();
        cache.insert("t", verified(Some(100), Some(50)));
        assert!(cache.get("t", 100).is_some());
        assert!(cache.get("t", 104).is_some());
        // Past exp + leeway: dropped, and verification decides again.
        assert!(cache.get("t", 105).is_none());
        assert!(cache.get("t", 10).is_none(), "dropped once expired");
        cache.insert("n", verified(None, Some(50)));
        assert!(cache.get("n", 44).is_none(), "before nbf - leeway");
        cache.insert("n", verified(None, Some(50)));
        assert!(cache.get("n", u64::MAX).is_some());
        assert!(cache.get("other", 0).is_none());
    }

    #[test]
    fn long_tokens_are_not_kept_and_generations_are_bounded() {
        let cache = VerifiedTokens::default();
        let long = "x".repeat(MAX_TOKEN_BYTES + 1);
        cache.insert(&long, verified(None, None));
        assert!(cache.get(&long, 0).is_none());
        for i in 0..=(2 * ENTRIES) {
            cache.insert(&i.to_string(), verified(None, None));
        }
        let g = cache.lock();
        assert!(g.current.len() <= ENTRIES && g.previous.len() <= ENTRIES);
        drop(g);
        assert!(cache.get("0", 0).is_none(), "the oldest generation is gone");
        assert!(cache.get(&(2 * ENTRIES).to_string(), 0).is_some());
    }
}
