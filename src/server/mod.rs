//! Building and running the server: services, layers, limits and shutdown.
//!
//! Each step is named: [`Application::build`] loads the secret and the
//! token keys, opens storage and binds; [`Application::run_until`] wires
//! the parts that serve (`wire.rs`), starts health (`health.rs`), routes
//! (`route.rs`), serves, and shuts down (`shutdown.rs`).
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
//! Connections are accepted by [`crate::net`] and served by
//! chatd's own serve loop (`net/serve.rs`).

mod health;
mod route;
mod shutdown;
mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use self::route::{chat_api, conn_limits, http_service, routes, serve_options};
use self::shutdown::{shutdown_begins, stop_after};
use self::wire::{Core, Tasks, serve_metrics, wire};
use crate::api::AdminApi;
use crate::auth::jwks::Jwks;
use crate::auth::{CLOCK_LEEWAY_SECS, Keys, SecretSource, TokenPolicy, load_or_generate_secret};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::http::EndOnShutdown;
use crate::metrics::Metrics;
use crate::net::tls::Tls;
use crate::net::{incoming, serve};
use crate::storage::{Location, ServeLock, Store};

/// A started, not yet serving, chatd.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    config: Config,
    keys: Arc<Keys>,
    /// The identity provider's keys (`CHAT_JWT_JWKS`), kept fresh by a task.
    jwks: Option<Arc<Jwks>>,
    /// TLS (`CHAT_TLS_*`), its certificate kept fresh by a task.
    tls: Option<Tls>,
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
        let (secret, source) = load_secret(&config)?;
        let (keys, jwks, tls) = token_keys(&config, &secret).await?;
        let (store, serve_lock) = open_storage(&config).await?;
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
            jwks,
            tls,
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
        let app = self;
        let (backend, data) = app.store.location().describe();
        let tasks = Tasks::new();
        let core = wire(&app.config, &app.store, &app.metrics, &tasks).await?;
        let metrics_url = serve_metrics(
            app.metrics_listener,
            &app.metrics,
            &app.store,
            core.cluster.as_ref(),
            &tasks,
        );
        let (health, health_service) = health::start(&app.store, &tasks).await;
        start_refreshes(app.jwks, app.tls.as_ref(), &tasks);
        let Core {
            rooms,
            cluster,
            access,
            writer,
        } = core;
        let api = chat_api(
            &app.config,
            rooms.clone(),
            writer,
            app.store,
            cluster.as_ref().map(|parts| parts.presence.clone()),
            access.clone(),
            &tasks,
        );
        let routes = routes(
            &app.config,
            api,
            AdminApi { access },
            &app.keys,
            EndOnShutdown::new(health_service, tasks.streams_end.clone()),
        )?;
        let service = http_service(routes, &app.config, &app.metrics);

        let signal = shutdown_begins(shutdown, health, tasks.streams_end.clone(), rooms);
        let conns = conn_limits(&app.config);
        let incoming = incoming(app.listener, conns, app.tls, app.metrics.clone());
        log_serving(
            app.addr,
            backend,
            &data,
            metrics_url,
            app.own_secret.then_some(&*app.keys),
            app.config.log_format,
        );
        let signalled = serve(incoming, service, serve_options(&app.config), signal).await;
        let cluster = cluster.map(|parts| parts.cluster);
        stop_after(signalled, app.config.shutdown_grace, tasks, cluster).await;
        // Another chatd may serve this database from now on.
        drop(app.serve_lock);
        tracing::info!("chatd stopped");
        Ok(())
    }
}

/// The token secret, from `CHAT_JWT_SECRET`, the data directory or newly
/// generated there; says which, and where the data directory is.
fn load_secret(config: &Config) -> Result<(Vec<u8>, SecretSource)> {
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
    Ok((secret, source))
}

/// The keys tokens are checked with (the secret's, and the identity
/// provider's when `CHAT_JWT_JWKS` is set), the JWKS and the TLS to keep
/// fresh.
async fn token_keys(
    config: &Config,
    secret: &[u8],
) -> Result<(Keys, Option<Arc<Jwks>>, Option<Tls>)> {
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
    let jwks = crate::auth::load_jwks(config).await?;
    let tls = crate::net::tls::load_configured(config)?;
    let keys = match &jwks {
        Some(jwks) => Keys::with_policy(secret, policy).with_jwks(jwks.clone()),
        None => Keys::with_policy(secret, policy),
    };
    Ok((keys, jwks, tls))
}

/// Takes the database's serve lock, opens the store and runs migrations.
async fn open_storage(config: &Config) -> Result<(Store, ServeLock)> {
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
    if config.webhooks().map_err(Error::Config)?.is_some() {
        store.enable_outbox();
    }
    Ok((store, serve_lock))
}

/// Starts the JWKS refresh and the certificate watch, both ending with the
/// streams.
fn start_refreshes(jwks: Option<Arc<Jwks>>, tls: Option<&Tls>, tasks: &Tasks) {
    if let Some(jwks) = jwks {
        tasks
            .tracker
            .spawn(crate::auth::jwks::refresh(jwks, tasks.streams_end.clone()));
    }
    if let Some(tls) = tls {
        tasks.tracker.spawn(crate::net::tls::watch(
            tls.clone(),
            tasks.streams_end.clone(),
        ));
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
    crate::http::log_page_address(addr, page_keys, log_format);
}
