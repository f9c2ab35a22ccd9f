//! The metrics listener: `GET /metrics` on `CHAT_METRICS_ADDR`, 404 for anything else.
//!
//! One HTTP/1.1 request per connection (no keep-alive), at most
//! [`MAX_CONNECTIONS`] at once (further ones wait in the listen backlog),
//! each with [`HEADER_TIMEOUT`] to send its request and [`CONNECTION_DEADLINE`]
//! in all. The task and its connections end at shutdown.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Metrics, Sources};

/// Scrapes served at once.
const MAX_CONNECTIONS: usize = 16;
/// Time a connection has to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection may stay open, its response included.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// The content type of the OpenMetrics text format, which Prometheus reads.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `/metrics` on `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    sources: Sources,
    stop: CancellationToken,
) {
    let sources = std::sync::Arc::new(sources);
    // Dropping the set aborts the connections still open.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept(), if connections.len() < MAX_CONNECTIONS => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, metrics.clone(), sources.clone()));
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

async fn connection(stream: TcpStream, metrics: Metrics, sources: std::sync::Arc<Sources>) {
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let response = respond(&request, &metrics, &sources);
            async move { Ok::<_, Infallible>(response) }
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

fn respond<B>(
    request: &hyper::Request<B>,
    metrics: &Metrics,
    sources: &Sources,
) -> hyper::Response<Full<Bytes>> {
    let plain = |status: http::StatusCode, text: &'static str| {
        let mut response = hyper::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    if request.method() != http::Method::GET || request.uri().path() != "/metrics" {
        return plain(
            http::StatusCode::NOT_FOUND,
            "not found: metrics are at GET /metrics\n",
        );
    }
    match metrics.render(sources) {
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
) -> crate::Result<(Metrics, Option<(TcpListener, std::net::SocketAddr)>)> {
    let Some(addr) = config.metrics_addr else {
        return Ok((Metrics::off(), None));
    };
    let cannot = |e: std::io::Error| {
        crate::Error::Config(format!("CHAT_METRICS_ADDR: cannot listen on {addr}: {e}"))
    };
    let listener = TcpListener::bind(addr).await.map_err(cannot)?;
    let bound = listener.local_addr().map_err(cannot)?;
    let metrics = Metrics::new(config.nats_url.is_some());
    Ok((metrics, Some((listener, bound))))
}
