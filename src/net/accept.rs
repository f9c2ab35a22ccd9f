//! Accepting connections so that no client can lock the others out.
//!
//! [`incoming`] yields every accepted connection as a [`Conn`], which
//! watches the bytes the HTTP server reads (without holding them back):
//!
//! - Until its handshake is complete (HTTP/2: the 24-byte client preface
//!   and one whole frame, the client's SETTINGS; HTTP/1.1: the request head
//!   up to its blank line, at most [`MAX_HTTP1_HEAD`] bytes) a connection
//!   is *pending*. A pending connection that has not finished its handshake
//!   within the handshake deadline is closed. Pending connections hold one
//!   of `max_pending` permits, taken at accept, so that file descriptors
//!   stay bounded; accepting waits while all are taken.
//! - A handshaken connection takes one of `max_connections` slots before
//!   any further bytes are read, and keeps it until it closes. (An HTTP/2
//!   handshake is read no further than its end, so no request gets in
//!   without a slot; an HTTP/1.1 head is the first request itself, so its
//!   handler may start, but its body waits.) Only handshaken connections
//!   hold slots, so sockets that never finish their handshake cannot fill
//!   them.
//! - When every slot is taken, the handshaken connection first asks the
//!   idlest connection with no call in flight to go away (`slots.rs`: one
//!   eviction per waiting connection), then waits for the first freed slot.
//!   Connections whose calls are all in flight are never evicted.
//! - With a per-IP limit, a connection from an address that already has
//!   that many open is closed at once.
//! - With TLS ([`crate::net::tls`]), the TLS handshake comes first and counts
//!   against the same deadline; the HTTP handshake is followed in the
//!   decrypted bytes.
//!
//! Every connection carries a `Connection` handle, which the serve loop
//! (`serve/mod.rs`) watches and puts into its requests.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::PollSemaphore;

use super::handshake::Handshake;
use super::slots::{Connection, Slot, Slots};
use super::tls::{Io, Tls};
use crate::metrics::Metrics;

/// The limits [`incoming`] enforces.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Handshaken connections open at once.
    pub max_connections: usize,
    /// Connections still in their handshake at once.
    pub max_pending: usize,
    /// Connections open at once from one IP address; 0 means no limit.
    pub max_per_ip: usize,
    /// How long a connection may take to complete its handshake.
    pub handshake_timeout: Duration,
}

/// What every accepted connection shares.
struct Shared {
    slots: Arc<Slots>,
    pending: Arc<Semaphore>,
    per_ip: Option<PerIp>,
    handshake_timeout: Duration,
    tls: Option<Tls>,
}

/// Connections from `listener` under `limits`, with TCP_NODELAY set (chat
/// events are small and latency matters). Accept errors (such as running
/// out of file descriptors) are logged and retried after a pause rather
/// than ending the server. With `tls`, connections speak TLS only.
/// `metrics` counts the connections holding a slot and those evicted.
pub fn incoming(
    listener: TcpListener,
    limits: ConnLimits,
    tls: Option<Tls>,
    metrics: Metrics,
) -> impl Stream<Item = Conn> {
    let shared = Arc::new(Shared {
        slots: Arc::new(Slots::new(limits.max_connections, metrics)),
        pending: Arc::new(Semaphore::new(limits.max_pending)),
        per_ip: (limits.max_per_ip > 0).then(|| PerIp::new(limits.max_per_ip)),
        handshake_timeout: limits.handshake_timeout,
        tls,
    });
    futures_util::stream::unfold((listener, shared), |(listener, shared)| async move {
        // The semaphore is never closed; end the stream if it were.
        let pending = shared.pending.clone().acquire_owned().await.ok()?;
        let conn = accept(&listener, &shared, pending).await;
        Some((conn, (listener, shared)))
    })
}

/// Accepts the next connection that the per-IP limit lets in.
async fn accept(listener: &TcpListener, shared: &Shared, pending: OwnedSemaphorePermit) -> Conn {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ip_guard = match &shared.per_ip {
            None => None,
            Some(per_ip) => match per_ip.enter(peer.ip()) {
                Some(guard) => Some(guard),
                None => {
                    tracing::debug!(%peer, "closed: over CHAT_MAX_CONNECTIONS_PER_IP");
                    continue; // dropping the stream closes it
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let stream = match &shared.tls {
            Some(tls) => tls.accept(stream),
            None => Io::Plain(stream),
        };
        return Conn {
            stream,
            connection: shared.slots.connection(Some(peer)),
            state: State::Handshaking {
                progress: Handshake::Preface(0),
                deadline: Box::pin(tokio::time::sleep(shared.handshake_timeout)),
            },
            pending: Some(pending),
            slots: shared.slots.clone(),
            _ip: ip_guard,
        };
    }
}

/// Open connections per client address.
#[derive(Clone)]
struct PerIp {
    limit: usize,
    /// Addresses with at least one open connection, and how many. A std
    /// mutex: it is held only to bump a count, never across an await.
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIp {
    fn new(limit: usize) -> Self {
        PerIp {
            limit,
            open: Arc::default(),
        }
    }

    /// Counts a connection from `ip`, or None when `ip` is at the limit.
    fn enter(&self, ip: IpAddr) -> Option<IpGuard> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(IpGuard {
            per_ip: self.clone(),
            ip,
        })
    }
}

/// One open connection from `ip`; uncounted when dropped.
struct IpGuard {
    per_ip: PerIp,
    ip: IpAddr,
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        let mut open = self.per_ip.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// An accepted connection; see the module documentation.
pub struct Conn {
    stream: Io,
    /// What the serve loop and the calls know of this connection (its
    /// client's address is taken at accept: a TLS stream hides its socket).
    connection: Arc<Connection>,
    state: State,
    /// Bounds the connections not yet holding a slot; released once this
    /// one holds a slot.
    pending: Option<OwnedSemaphorePermit>,
    slots: Arc<Slots>,
    /// Counts this connection against its address while it is open.
    _ip: Option<IpGuard>,
}

enum State {
    /// The handshake is not complete yet.
    Handshaking {
        progress: Handshake,
        deadline: Pin<Box<Sleep>>,
    },
    /// Handshaken, waiting for a free slot before reading on.
    Waiting { permits: PollSemaphore },
    /// Handshaken and holding a slot until the connection closes.
    Established { _slot: Slot },
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Handshaking { .. } => "handshaking",
            State::Waiting { .. } => "waiting for a slot",
            State::Established { .. } => "established",
        };
        f.debug_struct("Conn")
            .field("stream", &self.stream)
            .field("state", &state)
            .finish()
    }
}

impl Conn {
    /// This connection's handle, for the serve loop and its requests.
    pub(crate) fn connection(&self) -> &Arc<Connection> {
        &self.connection
    }

    /// Called with the bytes of one read while handshaking: takes a slot
    /// once the handshake is complete, or, when every slot is taken, asks
    /// the idlest connection to give its slot up and waits for one.
    fn handshake_read(&mut self, data: &[u8]) -> io::Result<()> {
        let State::Handshaking { progress, .. } = &mut self.state else {
            return Ok(());
        };
        if !progress.feed(data)? {
            return Ok(());
        }
        self.state = match self.slots.try_take(&self.connection) {
            Some(slot) => {
                self.pending = None;
                State::Established { _slot: slot }
            }
            None => {
                self.slots.evict_idlest();
                State::Waiting {
                    permits: self.slots.waiter(),
                }
            }
        };
        Ok(())
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match &mut this.state {
            State::Established { .. } => {}
            State::Waiting { permits } => {
                let Some(permit) = ready!(permits.poll_acquire(cx)) else {
                    return Poll::Ready(Err(io::Error::other("connection limit closed")));
                };
                this.pending = None;
                this.state = State::Established {
                    _slot: this.slots.hold(permit, &this.connection),
                };
            }
            State::Handshaking { progress, deadline } => {
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "handshake not complete within CHAT_HANDSHAKE_TIMEOUT",
                    )));
                }
                match progress.wanted() {
                    // HTTP/2: read no further than the handshake's end, so
                    // that the requests after it wait for a slot.
                    Some(wanted) if wanted < buf.remaining() => {
                        let mut chunk = [0u8; 512];
                        let mut part = ReadBuf::new(&mut chunk[..wanted.min(512)]);
                        ready!(Pin::new(&mut this.stream).poll_read(cx, &mut part))?;
                        buf.put_slice(part.filled());
                        this.handshake_read(part.filled())?;
                    }
                    // HTTP/1.1: the head is the request; read as asked.
                    _ => {
                        let before = buf.filled().len();
                        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
                        this.handshake_read(&buf.filled()[before..])?;
                    }
                }
                return Poll::Ready(Ok(()));
            }
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
