//! The gRPC server metrics of go-grpc-prometheus, counted by a tower layer for gRPC and grpc-web alike.
//!
//! [`GrpcMetricsLayer`] sits inside tonic-web, so a grpc-web call reaches
//! it already translated to gRPC and is counted under the same names. Per
//! call it counts
//!
//! - `grpc_server_started_total` when the request arrives;
//! - `grpc_server_msg_received_total` / `grpc_server_msg_sent_total`, one
//!   per gRPC message of the request / response body (it follows the
//!   5-byte message prefixes as the bytes pass);
//! - `grpc_server_handled_total` and `grpc_server_handling_seconds` when
//!   the call ends: with the `grpc-status` of a trailers-only response, of
//!   the trailers at the end of the body, or of an error the body ends
//!   with. A response dropped before its status went out (the client
//!   cancelled or went away, or the connection was closed at the end of
//!   the shutdown grace) counts as `Canceled`, as go-grpc-prometheus
//!   counts a cancelled context.
//!
//! Labels are bounded: the methods are read once from the descriptor sets
//! of the services chatd serves, and any other path counts under
//! `grpc_service="unknown", grpc_method="unknown", grpc_type="unknown"`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::Either;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use prost::Message as _;
use tonic::Status;
use tonic::body::Body;

use super::Metrics;

/// go-grpc-prometheus's default buckets (Prometheus's DefBuckets), seconds.
const HANDLING_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// gRPC status codes as go-grpc-prometheus spells them, by number.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const CANCELED: usize = 1;
const UNKNOWN: usize = 2;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
}

/// The families, and each known method's handles into them.
pub(super) struct GrpcMetrics {
    /// By path (`/package.Service/Method`).
    methods: HashMap<String, Arc<MethodMetrics>>,
    unknown: Arc<MethodMetrics>,
}

/// One method's series: atomics once created, so a call takes no lock
/// besides the histogram's.
struct MethodMetrics {
    labels: MethodLabels,
    started: Counter,
    received: Counter,
    sent: Counter,
    seconds: Histogram,
    handled_family: Family<HandledLabels, Counter>,
    /// By code number, created at a code's first use.
    handled: [OnceLock<Counter>; 17],
}

impl MethodMetrics {
    fn handled(&self, code: usize) -> &Counter {
        let code = code.min(CODES.len() - 1);
        self.handled[code].get_or_init(|| {
            self.handled_family.get_or_create_owned(&HandledLabels {
                grpc_type: self.labels.grpc_type,
                grpc_service: self.labels.grpc_service.clone(),
                grpc_method: self.labels.grpc_method.clone(),
                grpc_code: CODES[code],
            })
        })
    }
}

impl GrpcMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let started: Family<MethodLabels, Counter> = Family::default();
        let handled: Family<HandledLabels, Counter> = Family::default();
        let received: Family<MethodLabels, Counter> = Family::default();
        let sent: Family<MethodLabels, Counter> = Family::default();
        let seconds: Family<MethodLabels, Histogram> =
            Family::new_with_constructor(|| Histogram::new(HANDLING_BUCKETS));
        registry.register(
            "grpc_server_started",
            "Total number of RPCs started on the server",
            started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure",
            handled.clone(),
        );
        registry.register(
            "grpc_server_msg_received",
            "Total number of RPC stream messages received on the server",
            received.clone(),
        );
        registry.register(
            "grpc_server_msg_sent",
            "Total number of gRPC stream messages sent by the server",
            sent.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server",
            seconds.clone(),
        );
        let method = |labels: MethodLabels| {
            Arc::new(MethodMetrics {
                started: started.get_or_create_owned(&labels),
                received: received.get_or_create_owned(&labels),
                sent: sent.get_or_create_owned(&labels),
                seconds: seconds.get_or_create_owned(&labels),
                handled_family: handled.clone(),
                handled: Default::default(),
                labels,
            })
        };
        let methods = known_methods()
            .into_iter()
            .map(|(path, labels)| (path, method(labels)))
            .collect();
        let unknown = method(MethodLabels {
            grpc_type: "unknown",
            grpc_service: "unknown".into(),
            grpc_method: "unknown".into(),
        });
        GrpcMetrics { methods, unknown }
    }

    fn method(&self, path: &str) -> &Arc<MethodMetrics> {
        self.methods.get(path).unwrap_or(&self.unknown)
    }
}

/// Every method chatd serves, by path, from the descriptor sets of its
/// services (so a method added to the proto is counted without more code).
fn known_methods() -> Vec<(String, MethodLabels)> {
    let sets = [
        crate::proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut out = Vec::new();
    for set in sets {
        let set = match prost_types::FileDescriptorSet::decode(set) {
            Ok(set) => set,
            Err(e) => {
                tracing::warn!(error = %e, "a descriptor set does not decode; its methods count as unknown");
                continue;
            }
        };
        for file in &set.file {
            for service in &file.service {
                let service_name = match file.package() {
                    "" => service.name().to_owned(),
                    package => format!("{package}.{}", service.name()),
                };
                for m in &service.method {
                    let grpc_type = match (m.client_streaming(), m.server_streaming()) {
                        (false, false) => "unary",
                        (false, true) => "server_stream",
                        (true, false) => "client_stream",
                        (true, true) => "bidi_stream",
                    };
                    out.push((
                        format!("/{service_name}/{}", m.name()),
                        MethodLabels {
                            grpc_type,
                            grpc_service: service_name.clone(),
                            grpc_method: m.name().to_owned(),
                        },
                    ));
                }
            }
        }
    }
    out
}

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
        let Some(grpc) = self.metrics.grpc() else {
            return Either::Left(self.inner.call(request));
        };
        // Other requests (a page, a probe) are not gRPC calls.
        let is_grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if !is_grpc {
            return Either::Left(self.inner.call(request));
        }
        let method = grpc.method(request.uri().path()).clone();
        method.started.inc();
        let received = method.received.clone();
        let request = request.map(|body| {
            Body::new(CountedRequest {
                inner: body,
                messages: Messages::default(),
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
                    messages: Messages::default(),
                    call,
                })
            }))
        }))
    }
}

/// The `grpc-status` in `headers` (or trailers), as a code number.
fn status_code(headers: &http::HeaderMap) -> Option<usize> {
    let value = headers.get("grpc-status")?;
    let code = std::str::from_utf8(value.as_bytes())
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&c| c < CODES.len())
        .unwrap_or(UNKNOWN);
    Some(code)
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

/// Follows the gRPC message prefixes (a flag byte and a big-endian u32
/// length) through a body's bytes.
#[derive(Default)]
struct Messages {
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to pass.
    skip: u64,
}

impl Messages {
    /// How many messages start in `data`.
    fn count(&mut self, mut data: &[u8]) -> u64 {
        let mut started = 0;
        while !data.is_empty() {
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            data = &data[n..];
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                let [_, a, b, c, d] = self.prefix;
                self.skip = u64::from(u32::from_be_bytes([a, b, c, d]));
                started += 1;
            }
        }
        started
    }
}

struct CountedRequest {
    inner: Body,
    messages: Messages,
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
            let n = this.messages.count(data);
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
    messages: Messages,
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
                    let n = this.messages.count(data);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_counted_across_chunks() {
        let mut m = Messages::default();
        // Two messages of 3 and 0 bytes, then a third split everywhere.
        assert_eq!(m.count(&[0, 0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 0, 0]), 2);
        assert_eq!(m.count(&[0, 0]), 0);
        assert_eq!(m.count(&[0, 0, 2]), 1);
        assert_eq!(m.count(&[9]), 0);
        assert_eq!(m.count(&[9, 0, 0, 0, 0, 1]), 1);
    }

    #[test]
    fn every_chat_method_is_known_with_its_type() {
        let methods = known_methods();
        let find = |path: &str| {
            methods
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, l)| l.grpc_type)
        };
        assert_eq!(find("/chat.v1.ChatService/SendMessage"), Some("unary"));
        assert_eq!(find("/chat.v1.ChatService/JoinRoom"), Some("server_stream"));
        assert_eq!(find("/grpc.health.v1.Health/Watch"), Some("server_stream"));
        assert_eq!(
            find("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Some("bidi_stream")
        );
    }

    #[test]
    fn status_codes_are_spelled_as_go_grpc_prometheus() {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        assert_eq!(
            status_code(&headers).map(|c| CODES[c]),
            Some("InvalidArgument")
        );
        headers.insert("grpc-status", http::HeaderValue::from_static("99"));
        assert_eq!(status_code(&headers).map(|c| CODES[c]), Some("Unknown"));
        assert_eq!(
            CODES[tonic::Code::Unauthenticated as usize],
            "Unauthenticated"
        );
    }
}
