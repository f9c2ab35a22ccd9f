//! What every connection serves: the gRPC routes behind the token check,
//! inside the HTTP layers, and the settings of connections.

use std::convert::Infallible;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::body::Body;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic_health::pb::health_server::{Health, HealthServer};

use super::wire::Tasks;
use crate::access::Access;
use crate::api::{AdminApi, Authenticator, ChatApi};
use crate::auth::Keys;
use crate::cluster::presence::Presence;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::http::{
    BodyLimitLayer, EndOnShutdown, GrpcMetricsLayer, HoldUntilSentLayer, PageLayer, cors,
};
use crate::limits::rate::{JOINS, READS, SENDS, UserRate};
use crate::metrics::Metrics;
use crate::net::{ConnLimits, ServeOptions};
use crate::proto::server::admin_service_server::AdminServiceServer;
use crate::proto::{self, server::chat_service_server::ChatServiceServer};
use crate::rooms::Rooms;
use crate::storage::Store;
use crate::writer::Writer;

/// The gRPC services by path: health (its watches end at shutdown),
/// reflection v1 and v1alpha, and ChatService and AdminService behind the
/// token check.
pub(super) fn routes(
    config: &Config,
    api: ChatApi,
    admin: AdminApi,
    keys: &Arc<Keys>,
    health: EndOnShutdown<HealthServer<impl Health>>,
) -> Result<Routes> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;
    let admin =
        InterceptedService::new(AdminServiceServer::new(admin), Authenticator(keys.clone()));
    // The body limit layer answers first; tonic's own limit stays as a
    // second guard (it reserves what a message announces).
    let max_request = config.max_request_bytes as usize;
    let chat = InterceptedService::new(
        ChatServiceServer::new(api).max_decoding_message_size(max_request + 5),
        Authenticator(keys.clone()),
    );
    Ok(Routes::new(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(chat)
        .add_service(admin)
        .prepare())
}

/// What every connection serves: `routes` inside, outermost first, the
/// chat page, CORS, grpc-web, the gRPC metrics, the request body limits,
/// the per-user response budget (and JoinRoom's framing).
pub(super) fn http_service(
    routes: Routes,
    config: &Config,
    metrics: &Metrics,
) -> impl tower::Service<
    http::Request<Body>,
    Response = http::Response<Body>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::ServiceBuilder::new()
        .layer(PageLayer)
        .layer(cors(&config.cors_origins))
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(GrpcMetricsLayer::new(metrics))
        .layer(BodyLimitLayer {
            max_bytes: config.max_request_bytes as usize,
            timeout: config.request_body_timeout,
        })
        .layer(HoldUntilSentLayer)
        .service(routes)
}

/// The per-user send and join rates, each pruned by a task until `stop`.
/// Each user's rates, one token bucket per user and limit.
struct UserRates {
    send: Arc<UserRate>,
    join: Arc<UserRate>,
    read: Arc<UserRate>,
}

/// The per-user rates of `config`, with their pruning tasks on `tracker`
/// (ending at `stop`).
fn user_rates(config: &Config, tracker: &TaskTracker, stop: &CancellationToken) -> UserRates {
    let rate = |what, rate, burst| {
        let limit = Arc::new(UserRate::new(what, rate, burst));
        tracker.spawn(crate::limits::rate::prune(limit.clone(), stop.clone()));
        limit
    };
    UserRates {
        send: rate(SENDS, config.user_send_rate, config.user_send_burst),
        join: rate(JOINS, config.user_join_rate, config.user_join_burst),
        read: rate(READS, config.user_read_rate, config.user_read_burst),
    }
}

pub(super) fn conn_limits(config: &Config) -> ConnLimits {
    ConnLimits {
        max_connections: config.max_connections as usize,
        max_pending: config.max_pending_connections as usize,
        max_per_ip: config.max_connections_per_ip as usize,
        handshake_timeout: config.handshake_timeout,
    }
}

pub(super) fn serve_options(config: &Config) -> ServeOptions {
    ServeOptions {
        keepalive_interval: config.keepalive_interval,
        keepalive_timeout: config.keepalive_timeout,
        max_streams: config.max_streams_per_connection,
        first_call_timeout: config.first_call_timeout,
        grace: config.shutdown_grace,
    }
}

/// ChatService over the wired parts, with the per-user rates (their
/// pruning tasks on `tasks`).
pub(super) fn chat_api(
    config: &Config,
    rooms: Arc<Rooms>,
    writer: Writer,
    store: Store,
    presence: Option<Arc<Presence>>,
    access: Arc<Access>,
    tasks: &Tasks,
) -> ChatApi {
    let rates = user_rates(config, &tasks.tracker, &tasks.streams_end);
    ChatApi {
        rooms,
        writer,
        store,
        max_message_bytes: config.max_message_bytes as usize,
        shutdown: tasks.streams_end.clone(),
        presence,
        access,
        send_rate: rates.send,
        join_rate: rates.join,
        read_rate: rates.read,
    }
}
