//! The gRPC metrics layer: counts every call passing through, gRPC and
//! grpc-web alike, into the series of `metrics/grpc.rs` (see there for
//! what is counted when).
//!
//! [`GrpcMetricsLayer`] sits inside tonic-web, so a grpc-web call reaches
//! it already translated to gRPC and is counted under the same names.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::Either;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tonic::Status;
use tonic::body::Body;

use super::frames::Frames;
use crate::metrics::Metrics;
use crate::metrics::grpc::{CANCELED, MethodMetrics, UNKNOWN, status_code};

/// Counts every gRPC call passing through (see the module doc); passes
/// everything straight through when metrics are off.
#[derive(Clone, Debug)]
pub struct GrpcMetricsLayer {
    metrics: Metrics,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: &Metrics) -> Self {
        GrpcMetricsLayer {
            metrics: metrics.clone(),
        }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`GrpcMetricsLayer`].
#[derive(Clone, Debug)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Metrics,
}

type Counted<E> = Pin<Box<dyn Future<Output = Result<http::Response<Body>, E>> + Send>>;

impl<S> tower::Service<http::Request<Body>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Counted<S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if !self.metrics.is_on() {
            return Either::Left(self.inner.call(request));
        }
        // Other requests (a page, a probe) are not gRPC calls.
        let is_grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if !is_grpc {
            return Either::Left(self.inner.call(request));
        }
        let Some(method) = self.metrics.grpc_method(request.uri().path()) else {
            return Either::Left(self.inner.call(request));
        };
        method.started.inc();
        let received = method.received.clone();
        let request = request.map(|body| {
            Body::new(CountedRequest {
                inner: body,
                frames: Frames::default(),
                received,
            })
        });
        let call = Call {
            method,
            started: Instant::now(),
            done: false,
        };
        let response = self.inner.call(request);
        Either::Right(Box::pin(async move {
            let mut call = call;
            let response = response.await?;
            if let Some(code) = status_code(response.headers()) {
                // Trailers-only: the call is over.
                call.finish(code);
                return Ok(response);
            }
            Ok(response.map(|body| {
                Body::new(CountedResponse {
                    inner: body,
                    frames: Frames::default(),
                    call,
                })
            }))
        }))
    }
}

/// One call in flight; counts as `Canceled` if dropped before its status.
struct Call {
    method: Arc<MethodMetrics>,
    started: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: usize) {
        if !self.done {
            self.done = true;
            self.method.handled(code).inc();
            self.method
                .seconds
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(CANCELED);
    }
}

struct CountedRequest {
    inner: Body,
    frames: Frames,
    received: Counter,
}

impl HttpBody for CountedRequest {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let this = &mut *self;
            let n = this.frames.count_starts(data);
            if n > 0 {
                this.received.inc_by(n);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

struct CountedResponse {
    inner: Body,
    frames: Frames,
    call: Call,
}

impl HttpBody for CountedResponse {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let this = &mut *self;
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = this.frames.count_starts(data);
                    if n > 0 {
                        this.call.method.sent.inc_by(n);
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    this.call.finish(status_code(trailers).unwrap_or(UNKNOWN));
                }
            }
            Poll::Ready(Some(Err(status))) => this.call.finish(status.code() as usize),
            // A gRPC body always ends with trailers.
            Poll::Ready(None) => this.call.finish(UNKNOWN),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
