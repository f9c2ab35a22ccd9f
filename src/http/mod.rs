//! What sits between hyper and tonic: the layers every request passes, the
//! chat page, and the one reader of gRPC framing they share.
//!
//! - `frames.rs`: follows gRPC's 5-byte message prefixes through a body.
//! - `body_limit.rs`: request size and body deadline.
//! - `event_body.rs`: JoinRoom's events framed in buffers freed once sent.
//! - `hold_until_sent.rs`: a response's bytes stay charged to its user
//!   until sent.
//! - `end_on_shutdown.rs`: never-ending response streams end at shutdown.
//! - `grpc_metrics.rs`: counts every gRPC call into the metrics.
//! - `page.rs`: the chat page, served by GET on the gRPC port.
//! - `cors.rs`: CORS for grpc-web.

mod body_limit;
mod cors;
mod end_on_shutdown;
mod event_body;
mod frames;
mod grpc_metrics;
mod hold_until_sent;
mod page;

pub(crate) use self::body_limit::BodyLimitLayer;
pub(crate) use self::cors::cors;
pub(crate) use self::end_on_shutdown::EndOnShutdown;
pub(crate) use self::grpc_metrics::GrpcMetricsLayer;
pub(crate) use self::hold_until_sent::HoldUntilSentLayer;
pub(crate) use self::page::{PageLayer, log_page_address};
