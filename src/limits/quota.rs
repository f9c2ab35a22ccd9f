//! Per-user quotas: what one user may make the server hold (open JoinRoom streams, unsent response bytes).
//!
//! - [`Quotas::open_stream`] counts a user's open JoinRoom streams against
//!   `CHAT_USER_MAX_STREAMS`.
//! - [`Quotas::try_charge`] and [`Quotas::charge`] take bytes from the
//!   user's budget of unsent responses (`CHAT_USER_BUFFER_BYTES`): a
//!   ListHistory page or a JoinRoom catch-up page is charged before it is
//!   read and stays charged until it has left the server (for a unary call,
//!   until its response body is dropped: see `http::HoldUntilSentLayer`).
//!
//! - [`Quotas::read_slot`] lets at most [`READS_PER_USER`] of a user's
//!   storage reads (JoinRoom catch-up pages, ListHistory, ListRooms) run at
//!   once: the database's connections are shared by everyone, so one user
//!   resuming a hundred streams from the start of a long history takes
//!   turns instead of holding the pool while other users' sends wait.
//!
//! A user's entry exists only while something of theirs is charged or
//! open, so the map does not grow with every user ever seen.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// The per-user limits and the users that currently use some of them.
#[derive(Debug)]
pub struct Quotas {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Users with open streams or charged bytes. Never held across `.await`.
    users: Mutex<HashMap<Arc<str>, Arc<UserState>>>,
    max_streams: usize,
    max_bytes: u32,
}

/// How many storage reads of one user run at once; the others wait their
/// turn (a user's 100 resuming streams read their catch-up pages two at a
/// time, leaving the rest of the connection pool to other users).
pub const READS_PER_USER: usize = 2;

#[derive(Debug)]
struct UserState {
    /// Permits are bytes of unsent responses.
    bytes: Arc<Semaphore>,
    /// Open JoinRoom streams.
    streams: AtomicUsize,
    /// Permits are storage reads running now ([`READS_PER_USER`]).
    reads: Arc<Semaphore>,
}

impl Quotas {
    pub fn new(max_streams: usize, max_bytes: u32) -> Self {
        Quotas {
            inner: Arc::new(Inner {
                users: Mutex::new(HashMap::new()),
                max_streams: max_streams.max(1),
                max_bytes: max_bytes.max(1),
            }),
        }
    }

    /// Counts one more open JoinRoom stream of `user`, or refuses it with
    /// RESOURCE_EXHAUSTED when the user has `CHAT_USER_MAX_STREAMS` open.
    pub fn open_stream(&self, user: &Arc<str>) -> Result<StreamSlot> {
        let user = self.inner.user(user);
        let max = self.inner.max_streams;
        let counted = user
            .state
            .streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        match counted {
            Ok(_) => Ok(StreamSlot(user)),
            Err(_) => Err(Error::ResourceExhausted(format!(
                "CHAT_USER_MAX_STREAMS: this user already has {max} JoinRoom streams open"
            ))),
        }
    }

    /// Charges `bytes` to `user` now, or refuses with RESOURCE_EXHAUSTED
    /// when the user's unsent responses already hold the budget.
    pub fn try_charge(&self, user: &Arc<str>, bytes: usize) -> Result<Charge> {
        let user = self.inner.user(user);
        let n = self.clamp(bytes);
        match user.state.bytes.clone().try_acquire_many_owned(n) {
            Ok(permit) => Ok(Charge {
                permit,
                _user: user,
            }),
            Err(_) => Err(over_budget(self.inner.max_bytes)),
        }
    }

    /// Charges `bytes` to `user`, waiting until the user's earlier
    /// responses have been sent if the budget is used up.
    pub async fn charge(&self, user: &Arc<str>, bytes: usize) -> Result<Charge> {
        let user = self.inner.user(user);
        let n = self.clamp(bytes);
        match user.state.bytes.clone().acquire_many_owned(n).await {
            Ok(permit) => Ok(Charge {
                permit,
                _user: user,
            }),
            // The semaphore is never closed.
            Err(_) => Err(Error::Internal("a user's byte budget was closed".into())),
        }
    }

    /// Waits until fewer than [`READS_PER_USER`] storage reads of `user`
    /// run, and counts one more until the slot is dropped.
    pub async fn read_slot(&self, user: &Arc<str>) -> Result<ReadSlot> {
        let user = self.inner.user(user);
        match user.state.reads.clone().acquire_owned().await {
            Ok(permit) => Ok(ReadSlot {
                _permit: permit,
                _user: user,
            }),
            // The semaphore is never closed.
            Err(_) => Err(Error::Internal("a user's read slots were closed".into())),
        }
    }

    fn clamp(&self, bytes: usize) -> u32 {
        u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.inner.max_bytes)
    }

    /// How many users have something open or charged (for tests).
    #[cfg(test)]
    pub fn active_users(&self) -> usize {
        self.inner.lock().len()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<UserState>>> {
        self.users
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn user(self: &Arc<Self>, id: &Arc<str>) -> UserRef {
        let mut users = self.lock();
        let state = users
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(UserState {
                    bytes: Arc::new(Semaphore::new(self.max_bytes as usize)),
                    streams: AtomicUsize::new(0),
                    reads: Arc::new(Semaphore::new(READS_PER_USER)),
                })
            })
            .clone();
        UserRef {
            quotas: self.clone(),
            id: id.clone(),
            state,
        }
    }
}

/// A handle on a user's entry; the entry is removed when the last handle
/// goes. Handles are only made under the map's lock (never cloned), so the
/// count checked in `drop` cannot grow behind its back.
#[derive(Debug)]
struct UserRef {
    quotas: Arc<Inner>,
    id: Arc<str>,
    state: Arc<UserState>,
}

impl Drop for UserRef {
    fn drop(&mut self) {
        let mut users = self.quotas.lock();
        // The map's reference and ours: nobody else uses the entry.
        if Arc::strong_count(&self.state) == 2
            && users
                .get(&self.id)
                .is_some_and(|s| Arc::ptr_eq(s, &self.state))
        {
            users.remove(&self.id);
        }
    }
}

/// What one closed stream (with its room) is counted as freeing, towards
/// [`crate::alloc::TRIM_AFTER_BYTES`]: a generous estimate of a stream's cost.
const STREAM_FREES: usize = 16 * 1024;

/// One open JoinRoom stream of a user; dropping it frees the slot.
#[derive(Debug)]
pub struct StreamSlot(UserRef);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.state.streams.fetch_sub(1, Ordering::AcqRel);
        crate::alloc::note_freed(STREAM_FREES);
    }
}

/// The refusal of a charge over a user's budget, naming the limit.
fn over_budget(max_bytes: u32) -> Error {
    Error::ResourceExhausted(format!(
        "CHAT_USER_BUFFER_BYTES: too many unread responses: this user's calls hold {max_bytes} bytes the client has not read yet; read them first"
    ))
}

/// One storage read of a user running ([`Quotas::read_slot`]).
#[derive(Debug)]
pub struct ReadSlot {
    _permit: OwnedSemaphorePermit,
    _user: UserRef,
}

/// Bytes charged to a user's budget; dropping it gives them back.
#[derive(Debug)]
pub struct Charge {
    permit: OwnedSemaphorePermit,
    _user: UserRef,
}

impl Drop for Charge {
    fn drop(&mut self) {
        crate::alloc::note_freed(self.permit.num_permits());
    }
}

impl Charge {
    /// Gives back what is charged beyond `bytes` (once the real size of a
    /// page is known).
    pub fn shrink_to(&mut self, bytes: usize) {
        let keep = bytes.max(1);
        let held = self.permit.num_permits();
        if held > keep {
            drop(self.permit.split(held - keep));
        }
    }

    /// Charges more, waiting for the user's budget, when a page turned out
    /// larger than charged (messages stored before the message limit was
    /// lowered can be larger than the current bound).
    pub async fn grow_to(&mut self, bytes: usize) -> Result<()> {
        let held = self.permit.num_permits();
        let max = self._user.quotas.max_bytes as usize;
        let want = bytes.min(max);
        if want <= held {
            return Ok(());
        }
        let more = u32::try_from(want - held).unwrap_or(u32::MAX);
        let extra = self
            ._user
            .state
            .bytes
            .clone()
            .acquire_many_owned(more)
            .await;
        match extra {
            Ok(extra) => {
                self.permit.merge(extra);
                Ok(())
            }
            // The semaphore is never closed.
            Err(_) => Err(Error::Internal("a user's byte budget was closed".into())),
        }
    }

    /// [`Self::grow_to`] without waiting: RESOURCE_EXHAUSTED naming the
    /// limit when the user's budget does not have the difference now.
    pub fn try_grow_to(&mut self, bytes: usize) -> Result<()> {
        let held = self.permit.num_permits();
        if bytes <= held {
            return Ok(());
        }
        let more = u32::try_from(bytes - held).unwrap_or(u32::MAX);
        match self._user.state.bytes.clone().try_acquire_many_owned(more) {
            Ok(extra) => {
                self.permit.merge(extra);
                Ok(())
            }
            Err(_) => Err(over_budget(self._user.quotas.max_bytes)),
        }
    }

    /// Bytes charged.
    pub fn bytes(&self) -> usize {
        self.permit.num_permits()
    }
}

/// A charge travelling with a unary response: put into the tonic
/// `Response`'s extensions by the handler, moved into the response body by
/// `http::HoldUntilSentLayer`, and given back when that body is dropped (when
/// hyper has handed the last data to HTTP/2 and asks for the trailers,
/// which it does only once the client's flow-control window has taken most
/// of the data), or when the call is abandoned.
#[derive(Debug, Clone)]
pub struct HeldCharge {
    _charge: Arc<Charge>,
}

impl HeldCharge {
    pub fn new(charge: Charge) -> Self {
        HeldCharge {
            _charge: Arc::new(charge),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_users_reads_take_turns_and_other_users_do_not_wait() {
        let quotas = Quotas::new(10, 1000);
        let alice: Arc<str> = "alice".into();
        let bob: Arc<str> = "bob".into();
        let mut held = Vec::new();
        for _ in 0..READS_PER_USER {
            held.push(quotas.read_slot(&alice).await.unwrap());
        }
        let waiting = quotas.read_slot(&alice);
        tokio::pin!(waiting);
        // Alice's next read waits while hers run; Bob's does not.
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        let _bob = tokio::time::timeout(std::time::Duration::from_secs(5), quotas.read_slot(&bob))
            .await
            .expect("bob's read does not wait for alice's")
            .unwrap();
        held.pop();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("alice's read runs once one of hers ended")
            .unwrap();
    }

    #[tokio::test]
    async fn streams_and_bytes_are_per_user_and_entries_go_when_unused() {
        let quotas = Quotas::new(2, 1000);
        let alice: Arc<str> = "alice".into();
        let bob: Arc<str> = "bob".into();
        let a1 = quotas.open_stream(&alice).unwrap();
        let _a2 = quotas.open_stream(&alice).unwrap();
        let err = quotas.open_stream(&alice).unwrap_err().to_string();
        assert!(err.contains("CHAT_USER_MAX_STREAMS"), "{err}");
        let _b1 = quotas.open_stream(&bob).unwrap();
        drop(a1);
        let _a3 = quotas.open_stream(&alice).unwrap();

        let mut c = quotas.try_charge(&alice, 900).unwrap();
        let err = quotas.try_charge(&alice, 200).unwrap_err().to_string();
        assert!(err.contains("CHAT_USER_BUFFER_BYTES"), "{err}");
        quotas.try_charge(&bob, 1000).unwrap();
        c.shrink_to(100);
        assert_eq!(c.bytes(), 100);
        let d = quotas.try_charge(&alice, 900).unwrap();
        drop((c, d));
        assert_eq!(quotas.active_users(), 2);
        drop((_a2, _a3, _b1));
        assert_eq!(quotas.active_users(), 0);
    }
}
