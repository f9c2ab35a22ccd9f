//! Ending never-ending response streams (health `Watch`) at shutdown.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use tonic::Status;
use tonic::body::Body;

/// Wraps a service whose response streams never end on their own (the
/// health service's `Watch`), ending each one with UNAVAILABLE when `token`
/// is cancelled. A connection's graceful shutdown waits for every open
/// stream, so without this one health watcher would hold shutdown for the
/// whole grace period.
#[derive(Debug, Clone)]
pub struct EndOnShutdown<S> {
    inner: S,
    token: tokio_util::sync::CancellationToken,
}

impl<S> EndOnShutdown<S> {
    pub fn new(inner: S, token: tokio_util::sync::CancellationToken) -> Self {
        EndOnShutdown { inner, token }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for EndOnShutdown<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for EndOnShutdown<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let token = self.token.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                Body::new(EndingBody {
                    inner: body,
                    cancelled: Box::pin(token.cancelled_owned()),
                    ended: false,
                })
            }))
        })
    }
}

struct EndingBody {
    inner: Body,
    cancelled: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    ended: bool,
}

impl HttpBody for EndingBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        // What the stream has ready (such as a last NOT_SERVING) goes out
        // first; the stream ends when it has nothing more right now.
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.cancelled.as_mut().poll(cx).is_ready() {
            self.ended = true;
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
            trailers.insert(
                "grpc-message",
                http::HeaderValue::from_static("server is shutting down"),
            );
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }
}
