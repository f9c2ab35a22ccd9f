//! Connections, from the socket to hyper: chatd accepts and serves them
//! itself rather than through tonic's `Server`.
//!
//! - `accept.rs`: accepting (the pending cap, the per-IP limit, slots that
//!   only handshaken connections hold; the idlest gives its slot up when
//!   all are taken); `handshake.rs`: the handshake deadline; `slots.rs`:
//!   the slots and each connection's shared state.
//! - `tls.rs`: the rustls acceptor whose certificate is swapped on reload.
//! - `serve.rs`: the serve loop: hyper's HTTP/1.1 and HTTP/2 per
//!   connection, the first-call deadline, GOAWAY, shutdown; `calls.rs`:
//!   counting each connection's calls in flight.

mod accept;
mod calls;
mod handshake;
mod serve;
mod slots;
pub(crate) mod tls;

pub(crate) use self::accept::{ConnLimits, incoming};
pub(crate) use self::serve::{ServeOptions, serve};
pub(crate) use self::slots::Connection;
