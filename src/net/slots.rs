//! The `CHAT_MAX_CONNECTIONS` slots, the connections holding them, and which
//! one gives its slot up when a new client finds none free.
//!
//! Every accepted connection gets a [`Connection`] handle: its calls in
//! flight, when it was last active, whether it made an authenticated call,
//! and whether chatd asked it to go away. The serve loop puts the handle
//! into every request's extensions (the token check marks it, a layer counts
//! the calls) and watches it to close the connection.
//!
//! [`Slots`] keeps the handles of the connections that hold a slot. When a
//! handshaken connection finds every slot taken, [`Slots::evict_idlest`]
//! asks one of them with no call in flight to go away: one that never made
//! an authenticated call if there is one, else the one idle longest. Its
//! slot then goes to the first waiting client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;

use crate::metrics::{ConnClosed, Metrics};

/// What one closed connection is counted as freeing, towards the allocator
/// trim ([`crate::alloc::note_freed`]): about what an idle HTTP/2
/// connection holds (buffers, HTTP/2 state, its task).
const CONNECTION_FREES: usize = 32 * 1024;

/// Microseconds since the first call, for the activity timestamps (an
/// atomic cannot hold an `Instant`; u64 microseconds last 584,000 years).
fn now_micros() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// One accepted connection as its calls and the slot logic see it. Shared
/// by the connection's task, its requests' extensions and, while it holds a
/// slot, [`Slots`]; every field is an atomic, so calls only bump counters.
#[derive(Debug)]
pub struct Connection {
    /// Unique per server: the key in [`Slots`].
    id: u64,
    /// The client's address, taken at accept (what tonic's server put into
    /// requests as `TcpConnectInfo`).
    peer: Option<SocketAddr>,
    /// Requests whose response has not ended yet: a connection with one is
    /// never evicted.
    in_flight: AtomicU32,
    /// When a call last started or ended, or the connection got its slot
    /// ([`now_micros`]): the idlest connection is evicted first.
    last_active: AtomicU64,
    /// Whether a call presented a token that verified: only such a call
    /// lets a connection keep its slot past `CHAT_FIRST_CALL_TIMEOUT`.
    authenticated: AtomicBool,
    /// Whether it holds a slot.
    established: AtomicBool,
    /// Why chatd asked it to go away: 1 + a [`ConnClosed`], or 0.
    closing: AtomicU8,
    /// Wakes the connection's task when it gets its slot or is evicted.
    wake: Notify,
    /// Counts the connections chatd closes.
    metrics: Metrics,
}

impl Connection {
    /// The client's address, when the socket knew it.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Notes that a call with a verified token arrived on this connection.
    pub(crate) fn mark_authenticated(&self) {
        // Read first: the common case writes nothing to the shared line.
        if !self.authenticated.load(Ordering::Relaxed) {
            self.authenticated.store(true, Ordering::Relaxed);
        }
    }

    pub(crate) fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Relaxed)
    }

    pub(crate) fn is_established(&self) -> bool {
        self.established.load(Ordering::Acquire)
    }

    /// A request arrived: it is in flight until [`Self::call_ended`].
    pub(crate) fn call_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.last_active.store(now_micros(), Ordering::Relaxed);
    }

    /// A request's response ended or was dropped.
    pub(crate) fn call_ended(&self) {
        self.last_active.store(now_micros(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn calls_in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Why chatd asked this connection to go away, if it did.
    pub(crate) fn closing(&self) -> Option<ConnClosed> {
        match self.closing.load(Ordering::Acquire) {
            1 => Some(ConnClosed::FirstCall),
            2 => Some(ConnClosed::Evicted),
            _ => None,
        }
    }

    /// Asks the connection to go away for `reason` and counts it; false
    /// when it was asked before (it is going away already).
    pub(crate) fn close(&self, reason: ConnClosed) -> bool {
        let asked = self
            .closing
            .compare_exchange(0, 1 + reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if asked {
            self.metrics.connection_closed(reason);
            self.wake.notify_one();
        }
        asked
    }

    /// Resolves when the connection got its slot or was asked to go away
    /// since the last call (a wake-up before it is awaited is kept).
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }
}

/// The slots, and the connections that hold one.
#[derive(Debug)]
pub(crate) struct Slots {
    permits: Arc<Semaphore>,
    /// Connections holding a slot, by id. A std mutex: held to insert,
    /// remove, or scan for [`Slots::evict_idlest`], never across an await.
    open: Mutex<HashMap<u64, Arc<Connection>>>,
    next_id: AtomicU64,
    metrics: Metrics,
}

impl Slots {
    pub(crate) fn new(max_connections: usize, metrics: Metrics) -> Self {
        Slots {
            permits: Arc::new(Semaphore::new(max_connections)),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Connection>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The handle of a connection just accepted from `peer`.
    pub(crate) fn connection(&self, peer: Option<SocketAddr>) -> Arc<Connection> {
        Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            peer,
            in_flight: AtomicU32::new(0),
            last_active: AtomicU64::new(now_micros()),
            authenticated: AtomicBool::new(false),
            established: AtomicBool::new(false),
            closing: AtomicU8::new(0),
            wake: Notify::new(),
            metrics: self.metrics.clone(),
        })
    }

    /// A free slot for `conn`, if there is one.
    pub(crate) fn try_take(self: &Arc<Self>, conn: &Arc<Connection>) -> Option<Slot> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(self.hold(permit, conn))
    }

    /// Waits for a slot (FIFO: the first waiter gets the first freed slot).
    pub(crate) fn waiter(&self) -> PollSemaphore {
        PollSemaphore::new(self.permits.clone())
    }

    /// Makes `permit` `conn`'s slot: registers it and wakes its task.
    pub(crate) fn hold(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        conn: &Arc<Connection>,
    ) -> Slot {
        conn.last_active.store(now_micros(), Ordering::Relaxed);
        conn.established.store(true, Ordering::Release);
        self.lock().insert(conn.id, conn.clone());
        self.metrics.connection_open(true);
        conn.wake.notify_one();
        Slot {
            _permit: permit,
            slots: self.clone(),
            id: conn.id,
        }
    }

    /// Asks the connection holding a slot that is the best to give it up to
    /// go away; false when every one has a call in flight (or is going away
    /// already). Best: no call in flight, never authenticated, then the
    /// oldest last activity.
    pub(crate) fn evict_idlest(&self) -> bool {
        let open = self.lock();
        let idlest = open
            .values()
            .filter(|c| c.calls_in_flight() == 0 && c.closing.load(Ordering::Acquire) == 0)
            .min_by_key(|c| (c.is_authenticated(), c.last_active.load(Ordering::Relaxed)));
        match idlest {
            Some(conn) => {
                tracing::debug!(
                    id = conn.id,
                    peer = ?conn.peer,
                    "every slot taken: evicting the idlest connection"
                );
                conn.close(ConnClosed::Evicted)
            }
            None => false,
        }
    }

    /// Connections holding a slot (for tests).
    #[cfg(test)]
    fn holders(&self) -> usize {
        self.lock().len()
    }
}

/// A slot held by a connection; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    slots: Arc<Slots>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().remove(&self.id);
        self.slots.metrics.connection_open(false);
        crate::alloc::note_freed(CONNECTION_FREES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_idlest_connection_without_calls_is_evicted_first() {
        let slots = Arc::new(Slots::new(3, Metrics::off()));
        let conns: Vec<_> = (0..3).map(|_| slots.connection(None)).collect();
        let held: Vec<_> = conns.iter().map(|c| slots.try_take(c).unwrap()).collect();
        assert!(slots.try_take(&slots.connection(None)).is_none());
        // 0: authenticated, idle longest; 1: never authenticated; 2: busy.
        conns[0].mark_authenticated();
        conns[0].last_active.store(0, Ordering::Relaxed);
        conns[2].call_started();
        assert!(slots.evict_idlest());
        assert_eq!(conns[1].closing(), Some(ConnClosed::Evicted));
        // Asked once; the next eviction takes the next best.
        assert!(slots.evict_idlest());
        assert_eq!(conns[0].closing(), Some(ConnClosed::Evicted));
        assert!(!slots.evict_idlest(), "the busy one stays");
        assert_eq!(conns[2].closing(), None);
        conns[2].call_ended();
        assert!(slots.evict_idlest());
        drop(held);
        assert_eq!(slots.holders(), 0);
        assert!(slots.try_take(&slots.connection(None)).is_some());
    }
}
