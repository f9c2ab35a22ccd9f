//! Building and running the server: services, layers, limits and shutdown.
//!
//! [`Application::build`] does everything that can fail at start-up (secret,
//! migrations, binding) and exposes the bound address, so tests bind port 0
//! and ask. [`Application::run_until`] serves until its shutdown future
//! resolves, then shuts down in order:
//!
//! 1. health turns NOT_SERVING and no new connection is accepted;
//! 2. every JoinRoom stream ends with UNAVAILABLE (a graceful shutdown of
//!    the connections would wait for them forever);
//! 3. in-flight calls finish, the writers drain their queues, and every task
//!    chatd spawned has ended, or the grace period is over: one deadline,
//!    `CHAT_SHUTDOWN_GRACE` after the signal, bounds all of shutdown.
//!
//! Connections are accepted by [`crate::connections`] and served by
//! chatd's own serve loop (`serve/mod.rs`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::body::Body;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::access::Access;
use crate::admin::AdminApi;
use crate::auth::{
    Authenticator, CLOCK_LEEWAY_SECS, Keys, SecretSource, TokenPolicy, load_or_generate_secret,
};
use crate::cluster::Cluster;
use crate::cluster::bus::{Publisher, follow_rooms, poll_storage, spawn_publisher};
use crate::cluster::nodes::{self, Directory};
use crate::cluster::presence::{self, Presence};
use crate::cluster::revocations;
use crate::config::Config;
use crate::connections::{ConnLimits, incoming};
use crate::error::{Error, Result};
use crate::limits::BodyLimitLayer;
use crate::metrics::Metrics;
use crate::metrics::grpc::GrpcMetricsLayer;
use crate::proto::server::admin_service_server::AdminServiceServer;
use crate::proto::{self, server::chat_service_server::ChatServiceServer};
use crate::rate::{JOINS, READS, SENDS, UserRate};
use crate::rooms::Rooms;
use crate::serve::{ServeOptions, serve};
use crate::service::ChatApi;
use crate::shutdown::EndOnShutdown;
use crate::storage::{Location, ServeLock, Store};
use crate::writer::Writer;

/// How often health re-checks a database that works (sooner when a call
/// fails as unavailable).
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// How often health re-checks a database that does not work, and the least
/// time between two checks.
const HEALTH_RECHECK: Duration = Duration::from_secs(1);
/// The service name health reports for ChatService.
const CHAT_SERVICE: &str = "chat.v1.ChatService";

/// A started, not yet serving, chatd.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    config: Config,
    keys: Arc<Keys>,
    /// Token keys and TLS (`CHAT_JWT_JWKS`, `CHAT_TLS_*`), kept fresh by tasks.
    secure: crate::secure::Secure,
    store: Store,
    /// Held while this node serves: no second single node on its database.
    serve_lock: ServeLock,
    /// Off unless `CHAT_METRICS_ADDR` is set; then also its listener.
    metrics: Metrics,
    metrics_listener: Option<(TcpListener, SocketAddr)>,
    /// Whether the secret is chatd's own (generated or kept in the data
    /// directory), so the chat page's address may carry a token.
    own_secret: bool,
}

impl Application {
    /// Loads the secret, runs migrations and binds `config.addr`.
    pub async fn build(config: Config) -> Result<Self> {
        config.validate().map_err(Error::Config)?;
        crate::cluster::check_settings(&config).await?;
        let (secret, source) =
            load_or_generate_secret(config.secret.jwt_secret.as_deref(), &config.secret.data_dir)?;
        match &source {
            SecretSource::Env => tracing::info!("token secret from CHAT_JWT_SECRET"),
            SecretSource::File(path) => {
                tracing::info!(path = %path.display(), "token secret from file")
            }
            SecretSource::Generated(path) => {
                tracing::info!(path = %path.display(), "generated a token secret (kept, mode 0600)")
            }
        }
        let data_dir = std::path::absolute(&config.secret.data_dir)
            .unwrap_or_else(|_| config.secret.data_dir.clone());
        tracing::info!(path = %data_dir.display(), "data directory (CHAT_DATA_DIR)");
        let policy = TokenPolicy {
            allow_no_exp: config.jwt_allow_no_exp,
            issuer: config.secret.jwt_issuer.clone(),
            audience: config.secret.jwt_audience.clone(),
        };
        tracing::info!(
            exp_required = !policy.allow_no_exp,
            leeway_secs = CLOCK_LEEWAY_SECS,
            "tokens: HS256, `exp` and `nbf` checked"
        );
        let secure = crate::secure::Secure::load(&config).await?;
        let keys = secure.keys(Keys::with_policy(&secret, policy));
        let location = Location::parse(config.database_url.as_deref(), &config.secret.data_dir)
            .map_err(|e| Error::Config(format!("DATABASE_URL: {e}")))?;
        if let (Some(_), Location::Sqlite(path)) = (&config.nats_url, &location) {
            return Err(Error::Config(format!(
                "CHAT_NATS_URL is set but DATABASE_URL selects SQLite ({}): an embedded file \
                 cannot be shared; a cluster needs PostgreSQL (DATABASE_URL=postgres://…)",
                path.display()
            )));
        }
        let cluster = config
            .nats_url
            .as_ref()
            .map(|_| config.cluster_name.as_str());
        let serve_lock = ServeLock::take(&location, cluster, config.db_timeout).await?;
        let store = Store::open(
            location,
            config.db_pool_size as usize,
            config.sqlite_synchronous,
            config.db_timeout,
        )?;
        store.migrate().await?;
        let sqlite_db = match store.location() {
            Location::Sqlite(path) => Some(path.as_path()),
            Location::Postgres(_) => None,
        };
        crate::files::warn_if_exposed(source.path(), sqlite_db);
        let listener = TcpListener::bind(config.addr).await.map_err(|e| {
            Error::Config(format!("CHAT_ADDR: cannot listen on {}: {e}", config.addr))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Config(format!("CHAT_ADDR: {e}")))?;
        let (metrics, metrics_listener) = crate::metrics::exporter::bind(&config).await?;
        Ok(Application {
            listener,
            addr,
            config,
            keys: Arc::new(keys),
            secure,
            store,
            serve_lock,
            metrics,
            metrics_listener,
            own_secret: !matches!(source, SecretSource::Env),
        })
    }

    /// Where `/metrics` is served, when `CHAT_METRICS_ADDR` is set (with
    /// the real port when the configured one was 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|(_, addr)| *addr)
    }

    /// The address the server listens on (with the real port when the
    /// configured one was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The keys tokens are signed with.
    pub fn keys(&self) -> Arc<Keys> {
        self.keys.clone()
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let Application {
            listener,
            addr,
            config,
            keys,
            secure,
            store,
            serve_lock,
            metrics,
            metrics_listener,
            own_secret,
        } = self;
        let (backend, data) = store.location().describe();
        let tracker = TaskTracker::new();
        let streams_end = CancellationToken::new();
        let rooms = Arc::new(Rooms::new(&config).with_metrics(metrics.clone()));
        // Ends the cluster tasks and the metrics listener once the server
        // has stopped (the writers may still publish while they drain).
        let cluster_stop = CancellationToken::new();
        tracker.spawn(rooms.clone().wake_deferred(cluster_stop.clone()));
        let cluster = match &config.nats_url {
            Some(url) => {
                Some(start_cluster(&config, url, &rooms, &store, &tracker, &cluster_stop).await?)
            }
            None => None,
        };
        let access = Arc::new(Access::new(
            store.clone(),
            rooms.clone(),
            config.room_creation,
        ));
        if let Some((cluster, _, _)) = &cluster {
            revocations::spawn(cluster, &access, &store, &tracker, &cluster_stop);
        }
        let writer = Writer::spawn(
            store.clone(),
            rooms.clone(),
            config.writers as usize,
            cluster.as_ref().map(|(_, publisher, _)| publisher.clone()),
            &tracker,
        );
        let metrics_url = metrics_listener.map(|(listener, at)| {
            let sources = crate::metrics::Sources {
                store: store.clone(),
                link: cluster.as_ref().map(|(c, _, _)| c.link.clone()),
            };
            tracker.spawn(crate::metrics::exporter::serve(
                listener,
                metrics.clone(),
                sources,
                cluster_stop.clone(),
            ));
            format!("http://{at}/metrics")
        });

        let (health, health_service) = tonic_health::server::health_reporter();
        set_health(&health, ServingStatus::Serving).await;
        tracker.spawn(watch_database(
            store.clone(),
            health.clone(),
            streams_end.clone(),
        ));
        let tls = secure.spawn(&tracker, &streams_end);
        let rates = user_rates(&config, &tracker, &streams_end);
        let api = ChatApi {
            rooms: rooms.clone(),
            writer,
            store,
            max_message_bytes: config.max_message_bytes as usize,
            shutdown: streams_end.clone(),
            presence: cluster.as_ref().map(|(_, _, presence)| presence.clone()),
            access: access.clone(),
            send_rate: rates.send,
            join_rate: rates.join,
            read_rate: rates.read,
        };
        let health_service = EndOnShutdown::new(health_service, streams_end.clone());
        let routes = routes(&config, api, AdminApi { access }, &keys, health_service)?;
        let service = http_service(routes, &config, &metrics);

        let signal = shutdown_begins(shutdown, health, streams_end.clone(), rooms);
        let incoming = incoming(listener, conn_limits(&config), tls, metrics.clone());
        log_serving(
            addr,
            backend,
            &data,
            metrics_url,
            own_secret.then_some(&*keys),
            config.log_format,
        );
        let signalled = serve(incoming, service, serve_options(&config), signal).await;
        // When the server stopped without a signal, the grace counts from now.
        let end = signalled.unwrap_or_else(Instant::now) + config.shutdown_grace;
        // Every ChatApi clone (and with it every writer handle) is gone once
        // every connection has closed, so the writers drain and end.
        streams_end.cancel();
        cluster_stop.cancel();
        wind_down(end, tracker, cluster.map(|(cluster, _, _)| cluster)).await;
        // Another chatd may serve this database from now on.
        drop(serve_lock);
        tracing::info!("chatd stopped");
        Ok(())
    }
}

/// Resolves when `shutdown` does, with when, once health says NOT_SERVING
/// and every JoinRoom stream and health watch is ending: the connections'
/// graceful shutdown then has only short calls to wait for.
async fn shutdown_begins(
    shutdown: impl Future<Output = ()>,
    health: HealthReporter,
    streams_end: CancellationToken,
    rooms: Arc<Rooms>,
) -> Instant {
    shutdown.await;
    let at = Instant::now();
    tracing::info!("shutting down");
    set_health(&health, ServingStatus::NotServing).await;
    streams_end.cancel();
    rooms.close();
    at
}

/// Waits, until `end`, for the background tasks (the writers drain) and
/// then for the NATS connection to drain.
async fn wind_down(end: Instant, tracker: TaskTracker, cluster: Option<Cluster>) {
    tracker.close();
    if tokio::time::timeout_at(end, tracker.wait()).await.is_err() {
        tracing::warn!("background tasks still running after the grace period");
    }
    if let Some(cluster) = cluster {
        // Still within the grace: shutdown never takes longer.
        if tokio::time::timeout_at(end, cluster.close()).await.is_err() {
            tracing::warn!("NATS connection not drained within the grace period");
        }
    }
}

/// The gRPC services by path: health (its watches end at shutdown),
/// reflection v1 and v1alpha, and ChatService and AdminService behind the
/// token check.
fn routes(
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
/// chat page, CORS, grpc-web, the gRPC metrics, the request body limits and
/// the per-user response budget.
fn http_service(
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
        .layer(crate::web::PageLayer)
        .layer(cors(&config.cors_origins))
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(GrpcMetricsLayer::new(metrics))
        .layer(BodyLimitLayer {
            max_bytes: config.max_request_bytes as usize,
            timeout: config.request_body_timeout,
        })
        .layer(crate::quota::HoldUntilSentLayer)
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
        tracker.spawn(crate::rate::prune(limit.clone(), stop.clone()));
        limit
    };
    UserRates {
        send: rate(SENDS, config.user_send_rate, config.user_send_burst),
        join: rate(JOINS, config.user_join_rate, config.user_join_burst),
        read: rate(READS, config.user_read_rate, config.user_read_burst),
    }
}

fn conn_limits(config: &Config) -> ConnLimits {
    ConnLimits {
        max_connections: config.max_connections as usize,
        max_pending: config.max_pending_connections as usize,
        max_per_ip: config.max_connections_per_ip as usize,
        handshake_timeout: config.handshake_timeout,
    }
}

fn serve_options(config: &Config) -> ServeOptions {
    ServeOptions {
        keepalive_interval: config.keepalive_interval,
        keepalive_timeout: config.keepalive_timeout,
        max_streams: config.max_streams_per_connection,
        first_call_timeout: config.first_call_timeout,
        grace: config.shutdown_grace,
    }
}

/// The start-up lines that say where everything is.
fn log_serving(
    addr: SocketAddr,
    backend: &str,
    data: &str,
    metrics_url: Option<String>,
    page_keys: Option<&Keys>,
    log_format: crate::logs::LogFormat,
) {
    tracing::info!(%addr, "chatd is serving gRPC and grpc-web");
    tracing::info!("history is stored in {backend} at {data}");
    if let Some(url) = metrics_url {
        tracing::info!(%url, "Prometheus metrics (CHAT_METRICS_ADDR)");
    }
    tracing::info!(
        "mint a token with `chatd token <user-id> [--name NAME]` (in a checkout: `cargo run --release -- token <user-id>`), then call with `authorization: Bearer <token>`"
    );
    crate::web::log_page_address(addr, page_keys, log_format);
}

/// Connects to NATS and starts the cluster tasks on `tracker`: the
/// publisher of committed batches, the interest-based subscriptions, the
/// storage poller, the node directory and presence (with its syncs and the
/// answers to other nodes' syncs). All end at `stop`.
async fn start_cluster(
    config: &Config,
    url: &str,
    rooms: &Arc<Rooms>,
    store: &Store,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> Result<(Cluster, Publisher, Arc<Presence>)> {
    let cluster = Cluster::connect(config, url, rooms.metrics().clone()).await?;
    let publisher = spawn_publisher(&cluster, tracker, stop.clone());
    let directory = Arc::new(Directory::new(config.presence_timeout));
    tracker.spawn(nodes::run(cluster.clone(), directory.clone(), stop.clone()));
    let (presence, syncs) = Presence::new(
        cluster.clone(),
        rooms.clone(),
        directory,
        config.presence_timeout,
    );
    let presence = Arc::new(presence);
    let (changes_tx, changes) = tokio::sync::mpsc::channel(presence::CHANGES_QUEUE);
    rooms.watch_presence(changes_tx);
    tracker.spawn(presence::run(presence.clone(), changes, stop.clone()));
    tracker.spawn(presence::run_syncs(presence.clone(), syncs, stop.clone()));
    tracker.spawn(presence::serve_requests(presence.clone(), stop.clone()));
    tracker.spawn(follow_rooms(
        cluster.clone(),
        rooms.clone(),
        store.clone(),
        presence.clone(),
        tracker.clone(),
        stop.clone(),
    ));
    tracker.spawn(rooms.clone().fill_gaps(store.clone(), stop.clone()));
    tracker.spawn(poll_storage(
        cluster.clone(),
        rooms.clone(),
        store.clone(),
        stop.clone(),
    ));
    Ok((cluster, publisher, presence))
}

/// Sets the status of both the whole server ("") and ChatService.
async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(CHAT_SERVICE, status).await;
}

/// Reports NOT_SERVING while the database does not answer or writes
/// cannot succeed, with one log line per change.
///
/// Checks every [`HEALTH_INTERVAL`], at once when a call fails as
/// unavailable, and every [`HEALTH_RECHECK`] while not serving. A check is
/// `SELECT 1` (each with the store's deadline, so a hung database counts as
/// down), plus a committed probe write while the writer reports that writes
/// fail (a full disk still answers `SELECT 1`).
async fn watch_database(store: Store, health: HealthReporter, stop: CancellationToken) {
    let mut serving = true;
    loop {
        let wait = async {
            if serving {
                tokio::select! {
                    () = tokio::time::sleep(HEALTH_INTERVAL) => {}
                    () = store.failed() => {}
                }
            }
            // Not serving: the pause after the last check was enough.
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = wait => {}
        }
        let check = async {
            store.ping().await?;
            if store.writes_failing() {
                store.probe_write().await?;
            }
            Ok::<(), Error>(())
        };
        let checked = tokio::select! {
            () = stop.cancelled() => return,
            checked = check => checked,
        };
        match (&checked, serving) {
            (Err(e), true) => {
                serving = false;
                tracing::warn!(
                    error = %e,
                    "database unavailable: health is NOT_SERVING until it answers and takes writes again"
                );
                set_health(&health, ServingStatus::NotServing).await;
            }
            (Ok(()), false) => {
                serving = true;
                tracing::info!("database answers and takes writes again: health is SERVING");
                set_health(&health, ServingStatus::Serving).await;
            }
            _ => {}
        }
        // At most one check per HEALTH_RECHECK, however many calls fail.
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(HEALTH_RECHECK) => {}
        }
    }
}

/// CORS for grpc-web: the allowed origins, the grpc-web request headers plus
/// `authorization`, and the gRPC status headers exposed to scripts.
fn cors(origins: &[String]) -> CorsLayer {
    use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName};
    let allow_origin = if origins.is_empty() {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| http::HeaderValue::from_str(o).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([http::Method::POST])
        .allow_headers([
            AUTHORIZATION,
            CONTENT_TYPE,
            HeaderName::from_static("x-grpc-web"),
            HeaderName::from_static("x-user-agent"),
            HeaderName::from_static("grpc-timeout"),
        ])
        .expose_headers([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
        ])
        .max_age(Duration::from_secs(24 * 60 * 60))
}
