//! What the serve loop adds to every request of a connection ([`Calls`]).
//!
//! - The connection's [`Connection`] handle goes into the request's
//!   extensions, where the token check marks the connection authenticated
//!   (tonic copies them into `tonic::Request`'s extensions). It replaces the
//!   `TcpConnectInfo` tonic's server put there; the client's address is
//!   [`Connection::peer`].
//! - The request counts as a call in flight on the connection from its
//!   arrival until its response body ends or is dropped, so that a
//!   connection with an open JoinRoom stream is never evicted.
//! - A `grpc-timeout` header bounds the wait for the response head, as
//!   tonic's server did: past it the call ends with DEADLINE_EXCEEDED
//!   (tonic answered CANCELLED) and its handler is dropped.
//!
//! Per call this costs an `Arc` clone, two atomic counts and the extension
//! tonic's server inserted too; the future and body are wrappers, not boxes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tonic::Status;
use tonic::body::Body;

use super::slots::Connection;
use crate::error::Error;

/// Wraps a connection's service; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Calls<S> {
    inner: S,
    connection: Arc<Connection>,
}

impl<S> Calls<S> {
    pub(crate) fn new(inner: S, connection: Arc<Connection>) -> Self {
        Calls { inner, connection }
    }
}

impl<S, B, ReqBody> tower::Service<Request<ReqBody>> for Calls<S>
where
    S: tower::Service<Request<Body>, Response = Response<B>>,
    B: Default,
    ReqBody: HttpBody<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = Response<CallBody<B>>;
    type Error = S::Error;
    type Future = CallFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let deadline = grpc_timeout(request.headers()).map(tokio::time::sleep);
        let call = InFlight::start(&self.connection);
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(self.connection.clone());
        CallFuture {
            inner: self.inner.call(request),
            deadline,
            call: Some(call),
        }
    }
}

/// One call in flight on a connection, until dropped.
#[derive(Debug)]
struct InFlight(Arc<Connection>);

impl InFlight {
    fn start(connection: &Arc<Connection>) -> Self {
        connection.call_started();
        InFlight(connection.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.call_ended();
    }
}

pin_project! {
    /// The response of a call: the inner service's, or DEADLINE_EXCEEDED
    /// once the client's `grpc-timeout` has passed.
    pub(crate) struct CallFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        deadline: Option<Sleep>,
        call: Option<InFlight>,
    }
}

impl<F, B, E> Future for CallFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<CallBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            let call = this.call.take();
            return Poll::Ready(
                result.map(|response| response.map(|inner| CallBody { inner, call })),
            );
        }
        if let Some(deadline) = this.deadline.as_pin_mut() {
            ready!(deadline.poll(cx));
            let call = this.call.take();
            let response = Status::from(Error::ClientDeadline).into_http::<B>();
            return Poll::Ready(Ok(response.map(|inner| CallBody { inner, call })));
        }
        Poll::Pending
    }
}

pin_project! {
    /// A response body that keeps its call in flight until it ends or is
    /// dropped.
    pub(crate) struct CallBody<B> {
        #[pin]
        inner: B,
        call: Option<InFlight>,
    }
}

impl<B: HttpBody> HttpBody for CallBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            // Ended, or failed: the call is over.
            this.call.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The `grpc-timeout` of a request (gRPC over HTTP/2: at most 8 digits and
/// a unit, `H`, `M`, `S`, `m`, `u` or `n`); None when absent or malformed.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    // to_str succeeded: the value is ASCII, so any index is a boundary.
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        grpc_timeout(&headers)
    }

    #[test]
    fn grpc_timeouts_parse_as_the_protocol_says() {
        assert_eq!(parse("3H"), Some(Duration::from_secs(3 * 3600)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse("99999999m"), Some(Duration::from_millis(99_999_999)));
        assert_eq!(parse("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "100000000S", "10s", "1.5S", "-1S", "10"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }
}
