//! webhook-sink: a webhook receiver for benchmarks that answers every
//! request at once (204) and counts them.
//!
//! ```sh
//! webhook-sink 127.0.0.1:8099                 # prints the count and rate every second
//! webhook-sink 127.0.0.1:8099 --expect 100000 # exits once 100,000 were answered
//! ```
//!
//! It reads each body whole but checks no signature (the tests do that,
//! with the Standard Webhooks library): it measures how fast chatd sends.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8099".into());
    let expect: Option<u64> = match (args.next().as_deref(), args.next()) {
        (Some("--expect"), Some(n)) => Some(n.parse()?),
        (None, _) => None,
        _ => return Err("usage: webhook-sink [ADDR] [--expect N]".into()),
    };
    let listener = TcpListener::bind(&addr).await?;
    println!("webhook-sink listening on {addr}");
    let count = Arc::new(AtomicU64::new(0));
    let first: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    let reporter = tokio::spawn(report(count.clone(), first.clone(), expect));
    let serve = async {
        loop {
            let (stream, _) = listener.accept().await?;
            let count = count.clone();
            let first = first.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let count = count.clone();
                    let first = first.clone();
                    async move {
                        first.get_or_init(Instant::now);
                        let _ = request.into_body().collect().await;
                        count.fetch_add(1, Ordering::Relaxed);
                        let mut answer = Response::new(Empty::<Bytes>::new());
                        *answer.status_mut() = StatusCode::NO_CONTENT;
                        Ok::<_, Infallible>(answer)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    };
    tokio::select! {
        served = serve => served?,
        _ = reporter => {}
    }
    Ok(())
}

/// Prints the count and the rate every second; with `expect`, the total
/// rate once that many were answered, then ends.
async fn report(
    count: Arc<AtomicU64>,
    first: Arc<std::sync::OnceLock<Instant>>,
    expect: Option<u64>,
) {
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = count.load(Ordering::Relaxed);
        let since = first.get().map_or(0.0, |t| t.elapsed().as_secs_f64());
        println!("{since:7.1} s  {now:>9} answered  {:>7}/s", now - last);
        last = now;
        if expect.is_some_and(|n| now >= n) {
            println!(
                "{now} answered in {since:.2} s from the first: {:.0}/s",
                now as f64 / since.max(1e-9)
            );
            return;
        }
    }
}
