//! Limits on what clients can make the server hold: connections and request
//! bodies.
//!
//! - [`incoming`] accepts connections only while a [`Semaphore`] permit is
//!   free; each connection holds its permit until it closes.
//! - [`EndOnShutdown`] ends never-ending response streams at shutdown.
//! - [`BodyLimitLayer`] ends a request with RESOURCE_EXHAUSTED as soon as
//!   a gRPC message in its body announces a length over the limit, or the
//!   body grows past it, before anything is buffered. (tonic's own check
//!   answers OUT_OF_RANGE, which is the wrong code for a client to act on.)

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// An accepted connection and the permit it holds while open.
#[derive(Debug)]
pub struct LimitedConn {
    stream: TcpStream,
    /// Released when the connection is dropped, letting another client in.
    _permit: OwnedSemaphorePermit,
}

impl Connected for LimitedConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for LimitedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedConn {
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

/// Connections from `listener`, at most `limit` open at once, with
/// TCP_NODELAY set (chat events are small and latency matters). Accept
/// errors (such as running out of file descriptors) are logged and retried
/// after a pause rather than ending the server.
pub fn incoming(
    listener: TcpListener,
    limit: Arc<Semaphore>,
) -> impl Stream<Item = io::Result<LimitedConn>> {
    futures_util::stream::unfold((listener, limit), |(listener, limit)| async move {
        let permit = match limit.clone().acquire_owned().await {
            Ok(permit) => permit,
            // The semaphore is never closed; end the stream if it were.
            Err(_) => return None,
        };
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "TCP_NODELAY not set");
                    }
                    let conn = LimitedConn {
                        stream,
                        _permit: permit,
                    };
                    return Some((Ok(conn), (listener, limit)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// Limits every request body to `max_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimitLayer {
    pub max_bytes: usize,
}

impl<S> tower::Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyLimit {
            inner,
            max_bytes: self.max_bytes,
        }
    }
}

/// See [`BodyLimitLayer`].
#[derive(Debug, Clone)]
pub struct BodyLimit<S> {
    inner: S,
    max_bytes: usize,
}

impl<S> tower::Service<http::Request<Body>> for BodyLimit<S>
where
    S: tower::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let max_bytes = self.max_bytes;
        self.inner.call(request.map(|body| {
            Body::new(LimitedBody {
                inner: body,
                remaining: max_bytes,
                max_bytes,
                prefix: [0; 5],
                prefix_len: 0,
                skip: 0,
            })
        }))
    }
}

struct LimitedBody {
    inner: Body,
    /// Bytes the body may still carry.
    remaining: usize,
    max_bytes: usize,
    /// The gRPC message prefix being read: a flag byte and a big-endian
    /// u32 length.
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to pass before the next prefix.
    skip: usize,
}

impl LimitedBody {
    fn too_large(&self) -> Status {
        Status::resource_exhausted(format!(
            "request is larger than the server's limit of {} bytes",
            self.max_bytes
        ))
    }

    /// Follows the gRPC framing through `data`; errs on a message whose
    /// announced length is over the limit.
    fn check_framing(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            data = &data[n..];
            if self.prefix_len == 5 {
                let len = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]);
                self.prefix_len = 0;
                self.skip = len as usize;
                if self.skip > self.max_bytes {
                    return Err(self.too_large());
                }
            }
        }
        Ok(())
    }
}

impl HttpBody for LimitedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            if data.len() > self.remaining {
                return Poll::Ready(Some(Err(self.too_large())));
            }
            self.remaining -= data.len();
            let data = data.clone();
            if let Err(status) = self.check_framing(&data) {
                return Poll::Ready(Some(Err(status)));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps a service whose response streams never end on their own (the
/// health service's `Watch`), ending each one with UNAVAILABLE when `token`
/// is cancelled. tonic's graceful shutdown waits for every open stream, so
/// without this one health watcher would hold shutdown for the whole grace
/// period.
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
