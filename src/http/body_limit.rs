//! Limits on what a request body can make the server hold.
//!
//! [`BodyLimitLayer`] ends a request
//!
//! - with RESOURCE_EXHAUSTED as soon as a gRPC message in its body
//!   announces a length over the limit, or the body grows past it, before
//!   anything is buffered (tonic's own check answers OUT_OF_RANGE, which is
//!   the wrong code for a client to act on);
//! - with UNIMPLEMENTED when a message in its body is marked compressed
//!   (chatd takes no compression; tonic would answer INTERNAL, which
//!   blames the server for the client's message), and INVALID_ARGUMENT for
//!   a flag byte gRPC does not define;
//! - with DEADLINE_EXCEEDED when its body has not arrived whole within the
//!   request body deadline, so that a body that never finishes does not
//!   hold its buffered bytes (or its call) forever. Every chat.v1 and
//!   health method takes one request message, and tonic reads such a body
//!   to its end before the handler runs, so the deadline covers exactly the
//!   wait for the request; a server-streaming response (JoinRoom, Watch)
//!   is never cut by it. Reflection streams requests, so there the deadline
//!   ends with the first whole message.
//!
//! The layer sits inside tonic-web, so grpc-web bodies reach it already
//! translated to gRPC framing.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Sleep;
use tonic::Status;
use tonic::body::Body;

use super::frames::{Event, Frames};

/// Limits every request body to `max_bytes`, and its first message to
/// `timeout`.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimitLayer {
    pub max_bytes: usize,
    pub timeout: Duration,
}

impl<S> tower::Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyLimit {
            inner,
            max_bytes: self.max_bytes,
            timeout: self.timeout,
        }
    }
}

/// See [`BodyLimitLayer`].
#[derive(Debug, Clone)]
pub struct BodyLimit<S> {
    inner: S,
    max_bytes: usize,
    timeout: Duration,
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
        let (max_bytes, timeout) = (self.max_bytes, self.timeout);
        // Reflection is the one service whose requests are streams.
        let whole_body = !request.uri().path().starts_with("/grpc.reflection.");
        self.inner.call(request.map(|body| {
            Body::new(LimitedBody {
                inner: body,
                remaining: max_bytes,
                max_bytes,
                frames: Frames::default(),
                whole_body,
                deadline: Some(Box::pin(tokio::time::sleep(timeout))),
                timeout,
                failed: false,
            })
        }))
    }
}

struct LimitedBody {
    inner: Body,
    /// Bytes the body may still carry.
    remaining: usize,
    max_bytes: usize,
    /// Where the body stands in the gRPC framing.
    frames: Frames,
    /// Whether the deadline covers the whole body (true) or only its first
    /// message.
    whole_body: bool,
    /// When the body (or its first message) must be complete by; None once
    /// it is.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The request body deadline, for the message that names it.
    timeout: Duration,
    /// Whether an error ended the body; nothing is read after it.
    failed: bool,
}

impl LimitedBody {
    fn too_large(&self) -> Status {
        Status::resource_exhausted(format!(
            "request is larger than the server's limit of {} bytes",
            self.max_bytes
        ))
    }

    fn too_slow(&self) -> Status {
        Status::deadline_exceeded(format!(
            "the request did not arrive whole within {:?} (CHAT_REQUEST_BODY_TIMEOUT)",
            self.timeout
        ))
    }

    /// Follows the gRPC framing through `data`; errs on a message whose
    /// announced length is over the limit. Ends the deadline once a whole
    /// message has passed.
    fn check_framing(&mut self, data: &[u8]) -> Result<(), Status> {
        let mut frames = std::mem::take(&mut self.frames);
        let checked = frames.feed(data, |event| match event {
            Event::Start { flag, len } => self.check_start(flag, len),
            Event::End => {
                self.message_done();
                Ok(())
            }
        });
        self.frames = frames;
        checked
    }

    /// Refuses a compressed message, an undefined flag byte or a length
    /// over the limit.
    fn check_start(&self, flag: u8, len: u32) -> Result<(), Status> {
        match flag {
            0 => {}
            // A request with `grpc-encoding` is answered by tonic
            // (UNIMPLEMENTED: chatd takes no compression) before its body
            // is read; without one, tonic would call the flag an INTERNAL
            // error, which is the client's.
            1 => {
                return Err(Status::unimplemented(
                    "compressed messages are not supported: send them uncompressed (compressed flag 0, no grpc-encoding)",
                ));
            }
            flag => {
                return Err(Status::invalid_argument(format!(
                    "malformed gRPC message: flag byte {flag:#04x} (0 for an uncompressed message)"
                )));
            }
        }
        if len as usize > self.max_bytes {
            return Err(self.too_large());
        }
        Ok(())
    }

    fn message_done(&mut self) {
        if !self.whole_body {
            self.deadline = None;
        }
    }

    fn fail(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.failed = true;
        self.deadline = None;
        Poll::Ready(Some(Err(status)))
    }
}

impl HttpBody for LimitedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Pending => {
                if let Some(deadline) = &mut self.deadline
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    let status = self.too_slow();
                    return self.fail(status);
                }
                return Poll::Pending;
            }
            other => {
                // The body ended (or failed): nothing more to wait for.
                self.deadline = None;
                return other;
            }
        };
        if let Some(data) = frame.data_ref() {
            if data.len() > self.remaining {
                let status = self.too_large();
                return self.fail(status);
            }
            self.remaining -= data.len();
            let data = data.clone();
            if let Err(status) = self.check_framing(&data) {
                return self.fail(status);
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
