//! chatd's own accept and serve loop, in place of tonic's `Server`.
//!
//! [`serve`] takes connections from [`crate::net::incoming`] and
//! serves each with hyper's HTTP/1.1-or-HTTP/2 connection (hyper-util's
//! `auto` builder, configured as tonic's server configured it) in a task of
//! its own. Connection tasks and hyper's per-stream tasks belong to one
//! task tracker, and every request goes through [`calls::Calls`]. Owning
//! each connection lets chatd close it:
//!
//! - **first call**: a connection that has made no authenticated call (one
//!   whose bearer token verified) within `CHAT_FIRST_CALL_TIMEOUT` of
//!   getting its slot is asked to go away: HTTP/2 GOAWAY, or HTTP/1.1 closes
//!   after its current response. Health checks and reflection need no
//!   token and do not count.
//! - **evicted**: [`crate::net`] asked it to give its slot up to a
//!   new client.
//! - Either way, a connection still open [`FORCE_CLOSE_AFTER`] later is
//!   closed unless an authenticated call of its is still in flight (a
//!   health `Watch` stream or a client that ignores GOAWAY does not hold it
//!   open).
//! - **shutdown**: at the signal the listener closes, connections without
//!   a slot close at once and the others get GOAWAY; whatever is still open
//!   when the grace is over is closed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{Request, Response};
use http_body::Body as HttpBody;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::body::Body;
use tonic::codegen::StdError;

use super::accept::Conn;
use super::calls::Calls;
use super::slots::Connection;
use crate::metrics::ConnClosed;

/// How long a connection chatd asked to go away may take to close before
/// it is closed (unless an authenticated call of its is in flight).
const FORCE_CLOSE_AFTER: Duration = Duration::from_secs(1);
/// How long an HTTP/1.1 connection may take to send a request head after
/// its first (the first is bounded by `CHAT_HANDSHAKE_TIMEOUT`): hyper's
/// default, which tonic's server used.
const HTTP1_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connections closed at the end of the grace may take to end
/// their tasks (they end when next polled).
const CLOSE_WAIT: Duration = Duration::from_millis(250);

/// How connections are served.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServeOptions {
    /// HTTP/2 keepalive ping interval (`CHAT_KEEPALIVE_INTERVAL`).
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered (`CHAT_KEEPALIVE_TIMEOUT`).
    pub keepalive_timeout: Duration,
    /// Concurrent calls per connection (`CHAT_MAX_STREAMS_PER_CONNECTION`).
    pub max_streams: u32,
    /// `CHAT_FIRST_CALL_TIMEOUT`.
    pub first_call_timeout: Duration,
    /// `CHAT_SHUTDOWN_GRACE`: from the signal to the last connection closed.
    pub grace: Duration,
}

/// What every connection task shares.
struct Shared {
    http: auto::Builder<Spawner>,
    first_call_timeout: Duration,
    /// Shutdown began: go away gracefully.
    drain: CancellationToken,
    /// The grace is over: close now.
    kill: CancellationToken,
}

/// Serves `incoming` with `service` until `signal` resolves (with when
/// shutdown began), then shuts the connections down within the grace.
/// Returns when the last connection has closed, with the signal's time.
pub(crate) async fn serve<S, B>(
    incoming: impl Stream<Item = Conn>,
    service: S,
    options: ServeOptions,
    signal: impl Future<Output = Instant>,
) -> Option<Instant>
where
    S: tower::Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<StdError>,
    B: HttpBody<Data = Bytes> + Default + Send + 'static,
    B::Error: Into<StdError>,
{
    let tracker = TaskTracker::new();
    let shared = Arc::new(Shared {
        http: http_builder(&options, &tracker),
        first_call_timeout: options.first_call_timeout,
        drain: CancellationToken::new(),
        kill: CancellationToken::new(),
    });
    let signalled = {
        tokio::pin!(incoming);
        tokio::pin!(signal);
        loop {
            tokio::select! {
                at = &mut signal => break Some(at),
                conn = incoming.next() => match conn {
                    Some(conn) => {
                        tracker.spawn(connection(conn, service.clone(), shared.clone()));
                    }
                    None => break None,
                },
            }
        }
        // Dropping `incoming` here closes the listener.
    };
    drop(service);
    shared.drain.cancel();
    tracker.close();
    let deadline = signalled.unwrap_or_else(Instant::now) + options.grace;
    if tokio::time::timeout_at(deadline, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?options.grace,
            "calls still open after the grace period; closing them"
        );
        shared.kill.cancel();
        if tokio::time::timeout(CLOSE_WAIT, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still closing after the grace period");
        }
    }
    signalled
}

/// hyper's HTTP/1.1 and HTTP/2 connection builder, set up as tonic's
/// server set it up (`serve_internal`): a timer for both (HTTP/1.1 enforces
/// its header read timeout only with one), the HTTP/2 keepalive and the
/// streams per connection. Unlike tonic, hyper's default limit on streams
/// the server resets for errors (1,024) stays on.
fn http_builder(options: &ServeOptions, tracker: &TaskTracker) -> auto::Builder<Spawner> {
    let mut builder = auto::Builder::new(Spawner(tracker.clone()));
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HTTP1_HEADER_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(options.max_streams)
        .keep_alive_interval(options.keepalive_interval)
        .keep_alive_timeout(options.keepalive_timeout);
    builder
}

/// Runs hyper's per-stream tasks on the serve loop's tracker, so that they
/// are owned and waited for like the connections.
#[derive(Clone)]
struct Spawner(TaskTracker);

impl<F> hyper::rt::Executor<F> for Spawner
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        drop(self.0.spawn(future));
    }
}

/// Serves one connection until it closes, closing it when [`Watch`] says.
async fn connection<S, B>(conn: Conn, service: S, shared: Arc<Shared>)
where
    S: tower::Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<StdError>,
    B: HttpBody<Data = Bytes> + Default + Send + 'static,
    B::Error: Into<StdError>,
{
    let mut watch = Watch::new(conn.connection().clone(), shared.first_call_timeout);
    let service = TowerToHyperService::new(Calls::new(service, watch.connection.clone()));
    let served = shared.http.serve_connection(TokioIo::new(conn), service);
    tokio::pin!(served);
    loop {
        let step = tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    let peer = watch.connection.peer();
                    tracing::debug!(error = %e, ?peer, "connection failed");
                }
                return;
            }
            () = watch.connection.woken() => watch.woken(),
            () = at(watch.first_call_due()) => watch.first_call_passed(),
            () = at(watch.force_at) => watch.force_due(),
            () = shared.drain.cancelled(), if !watch.draining => watch.drain(),
            () = shared.kill.cancelled() => Step::Close,
        };
        match step {
            Step::Wait => {}
            Step::GoAway => served.as_mut().graceful_shutdown(),
            Step::Close => {
                tracing::debug!(peer = ?watch.connection.peer(), "connection closed by chatd");
                return;
            }
        }
    }
}

/// Sleeps until `deadline`; never resolves without one.
async fn at(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What a connection's task does next.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Wait,
    /// Shut down gracefully (HTTP/2 GOAWAY).
    GoAway,
    /// Close now.
    Close,
}

/// Where a connection is with its first authenticated call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FirstCall {
    /// It has no slot yet: the clock has not started.
    NoSlot,
    /// It must have made one by then.
    Due(Instant),
    /// Checked: it had.
    Checked,
}

/// A connection's state as its task sees it: the rules of the module docs.
struct Watch {
    connection: Arc<Connection>,
    first_call_timeout: Duration,
    first_call: FirstCall,
    /// When it is closed if still open, once asked to go away.
    force_at: Option<Instant>,
    going_away: bool,
    draining: bool,
}

impl Watch {
    fn new(connection: Arc<Connection>, first_call_timeout: Duration) -> Self {
        Watch {
            connection,
            first_call_timeout,
            first_call: FirstCall::NoSlot,
            force_at: None,
            going_away: false,
            draining: false,
        }
    }

    fn first_call_due(&self) -> Option<Instant> {
        match self.first_call {
            FirstCall::Due(at) => Some(at),
            _ => None,
        }
    }

    /// The connection got its slot (the first-call clock starts), or was
    /// asked to go away.
    fn woken(&mut self) -> Step {
        if self.first_call == FirstCall::NoSlot && self.connection.is_established() {
            self.first_call = FirstCall::Due(Instant::now() + self.first_call_timeout);
        }
        if self.connection.closing().is_some() {
            return self.go_away();
        }
        Step::Wait
    }

    fn first_call_passed(&mut self) -> Step {
        self.first_call = FirstCall::Checked;
        if self.connection.is_authenticated() {
            return Step::Wait;
        }
        if self.connection.close(ConnClosed::FirstCall) {
            tracing::debug!(
                peer = ?self.connection.peer(),
                "no authenticated call within CHAT_FIRST_CALL_TIMEOUT: closing the connection"
            );
        }
        self.go_away()
    }

    fn go_away(&mut self) -> Step {
        if self.going_away {
            return Step::Wait;
        }
        self.going_away = true;
        self.force_at = Some(Instant::now() + FORCE_CLOSE_AFTER);
        Step::GoAway
    }

    /// Asked to go away a while ago and still open.
    fn force_due(&mut self) -> Step {
        self.force_at = None;
        if self.connection.calls_in_flight() == 0 || !self.connection.is_authenticated() {
            Step::Close
        } else {
            Step::Wait
        }
    }

    /// Shutdown: a connection without a slot has no call to finish.
    fn drain(&mut self) -> Step {
        self.draining = true;
        if !self.connection.is_established() {
            return Step::Close;
        }
        if self.going_away {
            return Step::Wait;
        }
        self.going_away = true;
        Step::GoAway
    }
}
