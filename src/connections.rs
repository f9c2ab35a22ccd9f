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
//!   any further bytes are read, waiting while all are taken, and keeps it
//!   until it closes. (An HTTP/2 handshake is read no further than its
//!   end, so no request gets in without a slot; an HTTP/1.1 head is the
//!   first request itself, so its handler may start, but its body waits.) Only handshaken connections hold slots, so sockets
//!   that never finish their handshake cannot fill them.
//! - With a per-IP limit, a connection from an address that already has
//!   that many open is closed at once.
//! - With TLS ([`crate::tls`]), the TLS handshake comes first and counts
//!   against the same deadline; the HTTP handshake is followed in the
//!   decrypted bytes.

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
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::tls::{Io, Tls};

/// The HTTP/2 client connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The largest first HTTP/2 frame a handshake may carry: the protocol's
/// default SETTINGS_MAX_FRAME_SIZE, which the client may not exceed before
/// it has seen the server's settings.
const MAX_FIRST_FRAME: usize = 16_384;
/// The largest HTTP/1.1 request head (request line and headers) a
/// handshake may carry.
pub const MAX_HTTP1_HEAD: usize = 64 * 1024;

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
    slots: Arc<Semaphore>,
    pending: Arc<Semaphore>,
    per_ip: Option<PerIp>,
    handshake_timeout: Duration,
    tls: Option<Tls>,
}

/// Connections from `listener` under `limits`, with TCP_NODELAY set (chat
/// events are small and latency matters). Accept errors (such as running
/// out of file descriptors) are logged and retried after a pause rather
/// than ending the server. With `tls`, connections speak TLS only.
pub fn incoming(
    listener: TcpListener,
    limits: ConnLimits,
    tls: Option<Tls>,
) -> impl Stream<Item = io::Result<Conn>> {
    let shared = Arc::new(Shared {
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        pending: Arc::new(Semaphore::new(limits.max_pending)),
        per_ip: (limits.max_per_ip > 0).then(|| PerIp::new(limits.max_per_ip)),
        handshake_timeout: limits.handshake_timeout,
        tls,
    });
    futures_util::stream::unfold((listener, shared), |(listener, shared)| async move {
        // The semaphore is never closed; end the stream if it were.
        let pending = shared.pending.clone().acquire_owned().await.ok()?;
        let conn = accept(&listener, &shared, pending).await;
        Some((Ok(conn), (listener, shared)))
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
        let info = stream.connect_info();
        let stream = match &shared.tls {
            Some(tls) => tls.accept(stream),
            None => Io::Plain(stream),
        };
        return Conn {
            stream,
            info,
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
    /// The addresses, taken at accept (a TLS stream hides its socket).
    info: TcpConnectInfo,
    state: State,
    /// Bounds the connections not yet holding a slot; released once this
    /// one holds a slot.
    pending: Option<OwnedSemaphorePermit>,
    slots: Arc<Semaphore>,
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
    Waiting { slots: PollSemaphore },
    /// Handshaken and holding a slot until the connection closes.
    Established { _slot: OwnedSemaphorePermit },
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

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl Conn {
    /// Called with the bytes of one read while handshaking: takes a slot
    /// (or starts waiting for one) once the handshake is complete.
    fn handshake_read(&mut self, data: &[u8]) -> io::Result<()> {
        let State::Handshaking { progress, .. } = &mut self.state else {
            return Ok(());
        };
        if !progress.feed(data)? {
            return Ok(());
        }
        self.state = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => {
                self.pending = None;
                State::Established { _slot: slot }
            }
            Err(_) => State::Waiting {
                slots: PollSemaphore::new(self.slots.clone()),
            },
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
            State::Waiting { slots, .. } => {
                let Some(slot) = ready!(slots.poll_acquire(cx)) else {
                    return Poll::Ready(Err(io::Error::other("connection limit closed")));
                };
                this.pending = None;
                this.state = State::Established { _slot: slot };
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

/// How far a connection's handshake has come.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Handshake {
    /// Every byte so far matched the HTTP/2 preface; this many did.
    Preface(usize),
    /// HTTP/2 preface read; the first frame's 9-byte header so far.
    FrameHeader([u8; 9], usize),
    /// The first frame's payload bytes still to come.
    FramePayload(usize),
    /// HTTP/1: the head's length so far, and how much of "\r\n\r\n" its
    /// last bytes match.
    Http1 {
        len: usize,
        matched: usize,
    },
    Done,
}

impl Handshake {
    /// At most how many more bytes the handshake needs, when that is known
    /// (HTTP/2; an HTTP/1.1 head ends where its blank line is).
    fn wanted(&self) -> Option<usize> {
        match self {
            Handshake::Preface(n) => Some(PREFACE.len() - n),
            Handshake::FrameHeader(_, got) => Some(9 - got),
            Handshake::FramePayload(left) => Some(*left),
            Handshake::Http1 { .. } | Handshake::Done => None,
        }
    }

    /// Follows `data`, the next bytes read; true once the handshake is
    /// complete, an error when it cannot be.
    fn feed(&mut self, data: &[u8]) -> io::Result<bool> {
        let mut data = data;
        while !data.is_empty() && *self != Handshake::Done {
            let n = self.step(data)?;
            data = &data[n..];
        }
        Ok(*self == Handshake::Done)
    }

    /// Consumes a prefix of `data` (at least one byte) and returns its
    /// length.
    fn step(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Handshake::Preface(n) => {
                if data[0] == PREFACE[*n] {
                    *n += 1;
                    if *n == PREFACE.len() {
                        *self = Handshake::FrameHeader([0; 9], 0);
                    }
                    Ok(1)
                } else {
                    // Not HTTP/2: the bytes so far start an HTTP/1 head.
                    let seen = *n;
                    *self = Handshake::Http1 { len: 0, matched: 0 };
                    for &b in &PREFACE[..seen] {
                        self.http1_byte(b)?;
                    }
                    Ok(0)
                }
            }
            Handshake::FrameHeader(header, got) => {
                let n = (9 - *got).min(data.len());
                header[*got..*got + n].copy_from_slice(&data[..n]);
                *got += n;
                if *got == 9 {
                    let len = usize::from(header[0]) << 16
                        | usize::from(header[1]) << 8
                        | usize::from(header[2]);
                    if len > MAX_FIRST_FRAME {
                        return Err(invalid("first HTTP/2 frame too large"));
                    }
                    *self = if len == 0 {
                        Handshake::Done
                    } else {
                        Handshake::FramePayload(len)
                    };
                }
                Ok(n)
            }
            Handshake::FramePayload(left) => {
                let n = (*left).min(data.len());
                *left -= n;
                if *left == 0 {
                    *self = Handshake::Done;
                }
                Ok(n)
            }
            Handshake::Http1 { .. } => {
                for (i, &b) in data.iter().enumerate() {
                    self.http1_byte(b)?;
                    if *self == Handshake::Done {
                        return Ok(i + 1);
                    }
                }
                Ok(data.len())
            }
            Handshake::Done => Ok(data.len()),
        }
    }

    fn http1_byte(&mut self, b: u8) -> io::Result<()> {
        let Handshake::Http1 { len, matched } = self else {
            return Ok(());
        };
        *len += 1;
        if *len > MAX_HTTP1_HEAD {
            return Err(invalid("HTTP/1.1 request head too large"));
        }
        const END: &[u8; 4] = b"\r\n\r\n";
        *matched = if b == END[*matched] {
            *matched + 1
        } else if b == b'\r' {
            1
        } else {
            0
        };
        if *matched == END.len() {
            *self = Handshake::Done;
        }
        Ok(())
    }
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(chunks: &[&[u8]]) -> io::Result<bool> {
        let mut h = Handshake::Preface(0);
        let mut done = false;
        for chunk in chunks {
            done = h.feed(chunk)?;
        }
        Ok(done)
    }

    #[test]
    fn http2_needs_the_preface_and_one_whole_frame() {
        let settings = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        assert!(!feed_all(&[&PREFACE[..10]]).unwrap());
        assert!(!feed_all(&[PREFACE]).unwrap());
        assert!(!feed_all(&[PREFACE, &settings[..12]]).unwrap());
        assert!(feed_all(&[PREFACE, &settings]).unwrap());
        // Byte by byte, and with more bytes after the frame.
        let mut all = PREFACE.to_vec();
        all.extend_from_slice(&settings);
        let chunks: Vec<&[u8]> = all.chunks(1).collect();
        assert!(feed_all(&chunks).unwrap());
        all.extend_from_slice(b"more frames");
        assert!(feed_all(&[&all]).unwrap());
        // An empty SETTINGS frame is enough.
        assert!(feed_all(&[PREFACE, &[0, 0, 0, 4, 0, 0, 0, 0, 0]]).unwrap());
        assert!(feed_all(&[PREFACE, &[1, 0, 0, 4, 0, 0, 0, 0, 0]]).is_err());
    }

    #[test]
    fn http1_needs_the_whole_head() {
        let head = b"POST /chat.v1.ChatService/SendMessage HTTP/1.1\r\nhost: x\r\n\r\nbody";
        assert!(!feed_all(&[&head[..20]]).unwrap());
        assert!(!feed_all(&[&head[..58]]).unwrap());
        assert!(feed_all(&[&head[..]]).unwrap());
        let chunks: Vec<&[u8]> = head.chunks(3).collect();
        assert!(feed_all(&chunks).unwrap());
        // "PRI" that turns out not to be the preface is an HTTP/1 head.
        assert!(!feed_all(&[b"PRI * HTTP/1.1\r\n"]).unwrap());
        assert!(feed_all(&[b"PRI * HTTP/1.1\r\n", b"\r\n"]).unwrap());
        // Line feeds alone do not end a head.
        assert!(!feed_all(&[b"GET / HTTP/1.1\n\n\n\n"]).unwrap());
        let endless = vec![b'a'; MAX_HTTP1_HEAD + 1];
        assert!(feed_all(&[&endless]).is_err());
    }
}
