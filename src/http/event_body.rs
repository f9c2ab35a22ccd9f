//! JoinRoom's response body, framed here rather than by tonic's encoder.
//!
//! tonic encodes a stream's messages into one buffer that lives as long as
//! the stream and keeps the size of the largest chunk it ever held: a
//! stream that once sent a 30 KB `joined` would keep 30 KB for good, 3 GB
//! for a room of 100,000 members. The events are encoded already
//! ([`EncodedEvent`]), so framing them is a 5-byte prefix each: this body
//! gathers the events that are ready (up to [`CHUNK_BYTES`]) into a buffer
//! of their own, which HTTP/2 frees once sent, and ends with the trailers
//! tonic sends (`grpc-status` 0, or the error's status and message).
//!
//! The service hands its events over as an [`EventSource`] in the
//! response's extensions; [`frame_events`] (called by the layer of
//! `hold_until_sent.rs`, which every response passes) swaps them in for
//! tonic's body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;

use crate::proto::{EncodedEvent, EventSource, EventStream};

/// The most a chunk gathers before it goes to HTTP/2 (tonic's own yield
/// threshold): what one stalled stream has waiting besides one event.
const CHUNK_BYTES: usize = 32 * 1024;
/// gRPC's message prefix: a flag byte (0: not compressed) and a
/// big-endian u32 length.
const PREFIX: usize = 5;
/// An event at least this large goes to HTTP/2 as it is (after its prefix)
/// rather than copied into a chunk: a `joined` or a page of a long
/// message's worth is not copied once per stream.
const SENT_AS_IS: usize = 4 * 1024;

/// `response` with its events framed, when it carries an [`EventSource`]
/// (JoinRoom); as it is otherwise.
pub(super) fn frame_events(mut response: http::Response<Body>) -> http::Response<Body> {
    let events = response
        .extensions_mut()
        .remove::<EventSource>()
        .and_then(|source| source.take());
    match events {
        None => response,
        Some(events) => response.map(|_tonic_body| {
            Body::new(EventBody {
                events: Some(events),
                as_is: None,
                trailers: None,
            })
        }),
    }
}

/// The framed events, then the trailers.
struct EventBody {
    /// `None` once the stream ended (its subscription is dropped at once,
    /// so its user leaves the room without waiting for the trailers).
    events: Option<EventStream>,
    /// A large event whose prefix went out last: it goes next, uncopied.
    as_is: Option<Bytes>,
    /// The trailers, once the events ended, until sent.
    trailers: Option<HeaderMap>,
}

impl EventBody {
    fn end(&mut self, status: &Status) {
        self.events = None;
        let mut trailers = HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.clear();
            trailers.insert("grpc-status", http::HeaderValue::from(13));
        }
        self.trailers = Some(trailers);
    }
}

/// Appends `event`'s prefix to `chunk`, and the event too unless it is
/// sent as it is (returned then).
fn put(chunk: &mut Option<BytesMut>, event: EncodedEvent) -> Option<Bytes> {
    let bytes = event.0;
    let as_is = bytes.len() >= SENT_AS_IS;
    let len = PREFIX + if as_is { 0 } else { bytes.len() };
    let chunk = chunk.get_or_insert_with(|| BytesMut::with_capacity(len));
    chunk.reserve(len);
    chunk.put_u8(0);
    // An event is far below 4 GiB (it fits the room's buffer).
    chunk.put_u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    if as_is {
        return Some(bytes);
    }
    chunk.extend_from_slice(&bytes);
    None
}

impl HttpBody for EventBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if let Some(bytes) = this.as_is.take() {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        let mut chunk: Option<BytesMut> = None;
        while let Some(events) = this.events.as_mut() {
            match futures_util::Stream::poll_next(events.as_mut(), cx) {
                Poll::Ready(Some(Ok(event))) => {
                    this.as_is = put(&mut chunk, event);
                    if this.as_is.is_some()
                        || chunk.as_ref().is_some_and(|c| c.len() >= CHUNK_BYTES)
                    {
                        break;
                    }
                }
                Poll::Ready(Some(Err(status))) => this.end(&status),
                Poll::Ready(None) => this.end(&Status::ok("")),
                Poll::Pending => break,
            }
        }
        if let Some(chunk) = chunk {
            return Poll::Ready(Some(Ok(Frame::data(chunk.freeze()))));
        }
        match this.trailers.take() {
            Some(trailers) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            None if this.events.is_none() => Poll::Ready(None),
            None => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.events.is_none() && self.as_is.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use http_body_util::BodyExt;

    fn event(bytes: &'static [u8]) -> Result<EncodedEvent, Status> {
        Ok(EncodedEvent(Bytes::from_static(bytes)))
    }

    async fn frames(events: Vec<Result<EncodedEvent, Status>>) -> (Vec<u8>, HeaderMap) {
        let body = EventBody {
            events: Some(futures_util::stream::iter(events).boxed()),
            as_is: None,
            trailers: None,
        };
        let collected = body.collect().await.expect("no body error");
        let trailers = collected.trailers().cloned().expect("trailers");
        (collected.to_bytes().to_vec(), trailers)
    }

    #[tokio::test]
    async fn events_are_framed_and_end_with_ok() {
        let (data, trailers) = frames(vec![event(b"ab"), event(b"")]).await;
        assert_eq!(data, [0, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0, 0]);
        assert_eq!(trailers["grpc-status"], "0");
    }

    #[tokio::test]
    async fn large_events_follow_their_prefix_uncopied() {
        static LARGE: [u8; SENT_AS_IS] = [7; SENT_AS_IS];
        let (data, trailers) = frames(vec![event(b"a"), event(&LARGE), event(b"b")]).await;
        let mut want = vec![0, 0, 0, 0, 1, b'a', 0, 0, 0, 0x10, 0];
        want.extend_from_slice(&LARGE);
        want.extend_from_slice(&[0, 0, 0, 0, 1, b'b']);
        assert_eq!(data, want);
        assert_eq!(trailers["grpc-status"], "0");
    }

    #[tokio::test]
    async fn an_error_ends_the_stream_after_what_came_before() {
        let (data, trailers) = frames(vec![
            event(b"x"),
            Err(Status::permission_denied("you are banned")),
            event(b"never"),
        ])
        .await;
        assert_eq!(data, [0, 0, 0, 0, 1, b'x']);
        assert_eq!(trailers["grpc-status"], "7");
        assert_eq!(trailers["grpc-message"], "you%20are%20banned");
    }
}
