//! The metrics listener: `GET /metrics` on `CHAT_METRICS_ADDR`, 404 for anything else.
//!
//! One HTTP/1.1 request per connection (no keep-alive). The listener always
//! accepts, so connections that say nothing cannot keep a scraper out:
//!
//! - a connection has 2 s to send its request head and 30 s in all;
//! - at most 256 are open at once: past that, the oldest that has not sent
//!   its request head yet is closed;
//! - at most 16 scrapes are rendered at once, the others wait for their
//!   turn (within their deadline).
//!
//! The task and its connections end at shutdown.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::{Metrics, Sources};

/// Connections open at once; past it the oldest silent one is closed.
const MAX_CONNECTIONS: usize = 256;
/// Scrapes rendered at once.
const MAX_RENDERING: usize = 16;
/// Time a connection has to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a connection may stay open, its response included.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// The content type of the OpenMetrics text format, which Prometheus reads.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What every connection shares.
struct Shared {
    metrics: Metrics,
    sources: Sources,
    /// Bounds the scrapes rendered at once.
    rendering: Semaphore,
}

/// An open connection, in accept order.
struct Open {
    task: AbortHandle,
    /// Set once its request head has arrived: it is no longer silent.
    spoke: Arc<AtomicBool>,
}

/// Serves `/metrics` on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    sources: Sources,
    stop: CancellationToken,
) {
    let shared = Arc::new(Shared {
        metrics,
        sources,
        rendering: Semaphore::new(MAX_RENDERING),
    });
    // Dropping the set aborts the connections still open.
    let mut connections = JoinSet::new();
    let mut open = VecDeque::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let spoke = Arc::new(AtomicBool::new(false));
                    let task = connections.spawn(connection(stream, shared.clone(), spoke.clone()));
                    open.push_back(Open { task, spoke });
                    make_room(&mut open);
                }
                Err(e) => {
                    // Out of file descriptors, most likely: pause, do not spin.
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            },
        }
    }
    connections.shutdown().await;
}

/// Forgets connections that ended and, while more than [`MAX_CONNECTIONS`]
/// are open, closes the oldest that has not sent its request head.
fn make_room(open: &mut VecDeque<Open>) {
    open.retain(|o| !o.task.is_finished());
    while open.len() > MAX_CONNECTIONS {
        let Some(silent) = open.iter().position(|o| !o.spoke.load(Ordering::Acquire)) else {
            // Every one is being answered: they end by their deadline.
            return;
        };
        if let Some(o) = open.remove(silent) {
            o.task.abort();
        }
    }
}

async fn connection(stream: TcpStream, shared: Arc<Shared>, spoke: Arc<AtomicBool>) {
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            spoke.store(true, Ordering::Release);
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(respond(&request, &shared).await) }
        });
    let served = http1::Builder::new()
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(CONNECTION_DEADLINE, served).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection failed"),
        Err(_) => tracing::debug!("metrics connection closed at its deadline"),
    }
}

fn plain(status: http::StatusCode, text: &'static str) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn respond<B>(request: &hyper::Request<B>, shared: &Shared) -> hyper::Response<Full<Bytes>> {
    if request.method() != http::Method::GET || request.uri().path() != "/metrics" {
        return plain(
            http::StatusCode::NOT_FOUND,
            "not found: metrics are at GET /metrics\n",
        );
    }
    // The semaphore is never closed.
    let Ok(_turn) = shared.rendering.acquire().await else {
        return plain(http::StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    };
    match shared.metrics.render(&shared.sources) {
        Some(Ok(text)) => {
            let mut response = hyper::Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(CONTENT_TYPE),
            );
            response
        }
        Some(Err(_)) => {
            tracing::error!("encoding the metrics failed");
            plain(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "encoding the metrics failed\n",
            )
        }
        None => plain(http::StatusCode::NOT_FOUND, "metrics are off\n"),
    }
}

/// Metrics as `config` asks: off without `CHAT_METRICS_ADDR`, else on with
/// their listener bound (and its address, with the real port).
pub async fn bind(
    config: &crate::config::Config,
) -> crate::error::Result<(Metrics, Option<(TcpListener, std::net::SocketAddr)>)> {
    let Some(addr) = config.metrics_addr else {
        return Ok((Metrics::off(), None));
    };
    let cannot = |e: std::io::Error| {
        crate::error::Error::Config(format!("CHAT_METRICS_ADDR: cannot listen on {addr}: {e}"))
    };
    let listener = TcpListener::bind(addr).await.map_err(cannot)?;
    let bound = listener.local_addr().map_err(cannot)?;
    let metrics = Metrics::new(config.nats_url.is_some());
    Ok((metrics, Some((listener, bound))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn past_the_bound_the_oldest_silent_connections_are_closed() {
        let mut tasks = JoinSet::new();
        let mut open = VecDeque::new();
        for i in 0..MAX_CONNECTIONS + 3 {
            let task = tasks.spawn(std::future::pending::<()>());
            // The first two are being answered: they stay.
            let spoke = Arc::new(AtomicBool::new(i < 2));
            open.push_back(Open { task, spoke });
        }
        let ids: Vec<tokio::task::Id> = open.iter().map(|o| o.task.id()).collect();
        make_room(&mut open);
        assert_eq!(open.len(), MAX_CONNECTIONS);
        // Only the closed ones ever finish.
        let mut closed = Vec::new();
        for _ in 0..3 {
            let Some(Err(e)) = tasks.join_next_with_id().await else {
                panic!("a task ended without being closed");
            };
            closed.push(ids.iter().position(|&id| id == e.id()).unwrap());
        }
        closed.sort();
        assert_eq!(closed, [2, 3, 4]);
    }
}
