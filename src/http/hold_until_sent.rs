//! Unsent response bytes stay charged to their user until hyper has handed
//! them on: [`HoldUntilSentLayer`] moves a response's [`HeldCharge`] from
//! its extensions into its body, which gives it back when dropped. The same
//! layer frames JoinRoom's events (`event_body.rs`): both take what the
//! service left in the response's extensions.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;

use crate::limits::quota::HeldCharge;

/// Moves a response's [`HeldCharge`] from its extensions into its body.
#[derive(Debug, Clone, Copy, Default)]
pub struct HoldUntilSentLayer;

impl<S> tower::Layer<S> for HoldUntilSentLayer {
    type Service = HoldUntilSent<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HoldUntilSent { inner }
    }
}

/// See [`HoldUntilSentLayer`].
#[derive(Debug, Clone)]
pub struct HoldUntilSent<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for HoldUntilSent<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<
        Box<dyn std::future::Future<Output = std::result::Result<Self::Response, S::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = super::event_body::frame_events(response.await?);
            Ok(match response.extensions_mut().remove::<HeldCharge>() {
                None => response,
                Some(charge) => response.map(|inner| {
                    Body::new(ChargedBody {
                        inner,
                        _charge: charge,
                    })
                }),
            })
        })
    }
}

/// A response body that keeps its charge until it is dropped.
struct ChargedBody {
    inner: Body,
    _charge: HeldCharge,
}

impl HttpBody for ChargedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
