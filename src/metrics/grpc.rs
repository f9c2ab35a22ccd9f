//! The gRPC server metrics of go-grpc-prometheus: their registration and
//! each method's series. The tower layer that counts every call, gRPC and
//! grpc-web alike, is `http/grpc_metrics.rs`; per call it counts
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
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use prost::Message as _;

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
/// The code numbers of Cancelled and Unknown.
pub(crate) const CANCELED: usize = 1;
pub(crate) const UNKNOWN: usize = 2;

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
pub(crate) struct MethodMetrics {
    labels: MethodLabels,
    pub(crate) started: Counter,
    pub(crate) received: Counter,
    pub(crate) sent: Counter,
    pub(crate) seconds: Histogram,
    handled_family: Family<HandledLabels, Counter>,
    /// By code number, created at a code's first use.
    handled: [OnceLock<Counter>; 17],
}

impl MethodMetrics {
    pub(crate) fn handled(&self, code: usize) -> &Counter {
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

    pub(super) fn method(&self, path: &str) -> &Arc<MethodMetrics> {
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

/// The `grpc-status` in `headers` (or trailers), as a code number.
pub(crate) fn status_code(headers: &http::HeaderMap) -> Option<usize> {
    let value = headers.get("grpc-status")?;
    let code = std::str::from_utf8(value.as_bytes())
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&c| c < CODES.len())
        .unwrap_or(UNKNOWN);
    Some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

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
