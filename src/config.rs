//! Command line and configuration: flags with environment fallbacks.
//!
//! A bad value stops start-up with clap's message, which names the flag and
//! (as its value name) the environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::logs::LogFormat;
use crate::storage::Synchronous;

mod cluster;
mod parse;
mod token;
mod webhooks;

use self::parse::{
    parse_cluster_name, parse_database_url, parse_db_timeout, parse_duration,
    parse_first_call_timeout, parse_origin, parse_presence_timeout,
};

pub use cluster::{CLUSTER_KEY_BYTES, ClusterKeys, ClusterSecurity, Secret};
pub use token::TokenArgs;
pub use webhooks::{WebhookArgs, Webhooks};

/// chatd: gRPC chat rooms with durable, gapless history.
#[derive(Debug, Parser)]
#[command(name = "chatd", version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

// Parsed once at start-up: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve chat.v1 (the default when no command is given).
    Serve(Config),
    /// Print a token signed with the server's secret.
    Token(TokenArgs),
    /// Print a fresh CHAT_CLUSTER_KEY (32 random bytes, base64) and exit.
    ClusterKey,
}

/// `CHAT_ROOM_CREATION`: who may bring a room into existence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RoomCreation {
    /// A user's first send to a room creates it (public), as does the
    /// backend's CreateRoom.
    #[default]
    Anyone,
    /// Only AdminService.CreateRoom creates rooms: an app whose backend
    /// owns the rooms, so that no user can squat a name (say a private
    /// room's) by sending to it first.
    Backend,
}

/// Everything `chatd serve` reads.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to serve gRPC and grpc-web on (one port).
    #[arg(
        long = "addr",
        env = "CHAT_ADDR",
        value_name = "CHAT_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub addr: SocketAddr,

    /// Where history lives: postgres://… (or postgresql://…) for
    /// PostgreSQL, sqlite://PATH for SQLite. Unset: SQLite at
    /// `<data dir>/chat.db`.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        value_parser = parse_database_url
    )]
    pub database_url: Option<String>,

    /// NATS server(s) to join a cluster through, e.g. nats://127.0.0.1:4222
    /// (comma separated; nats://user:pass@host, nats://token@host and
    /// tls://host work). Unset: a single node, no NATS needed.
    #[arg(
        long = "nats-url",
        env = "CHAT_NATS_URL",
        value_name = "CHAT_NATS_URL",
        hide_env_values = true
    )]
    pub nats_url: Option<String>,

    /// The cluster's name: every node with the same database, NATS and name
    /// is one chat service. It prefixes every NATS subject, so two clusters
    /// can share one NATS.
    #[arg(
        long = "cluster-name",
        env = "CHAT_CLUSTER_NAME",
        value_name = "CHAT_CLUSTER_NAME",
        default_value = "chatd",
        value_parser = parse_cluster_name
    )]
    pub cluster_name: String,

    /// Cluster only: how long a node that stopped answering (killed, cut
    /// off) still counts its users as members; after it they leave the
    /// room on every other node, with one member_left each.
    #[arg(
        long = "presence-timeout",
        env = "CHAT_PRESENCE_TIMEOUT",
        value_name = "CHAT_PRESENCE_TIMEOUT",
        default_value = "10s",
        value_parser = parse_presence_timeout
    )]
    pub presence_timeout: Duration,

    #[command(flatten)]
    pub cluster_security: ClusterSecurity,

    #[command(flatten)]
    pub webhooks: WebhookArgs,

    /// SQLite only: `full` fsyncs every commit before acknowledging it
    /// (survives power loss); `normal` survives a crash of chatd but may
    /// lose the last commits on power loss.
    #[arg(
        long = "sqlite-synchronous",
        env = "CHAT_SQLITE_SYNCHRONOUS",
        value_name = "CHAT_SQLITE_SYNCHRONOUS",
        value_enum,
        default_value_t = Synchronous::Full
    )]
    pub sqlite_synchronous: Synchronous,

    #[command(flatten)]
    pub secret: SecretArgs,

    /// Accept tokens without an `exp` claim, which never expire. Off by
    /// default: a leaked token without `exp` would be good forever.
    #[arg(
        long = "jwt-allow-no-exp",
        env = "CHAT_JWT_ALLOW_NO_EXP",
        value_name = "CHAT_JWT_ALLOW_NO_EXP",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub jwt_allow_no_exp: bool,

    /// Largest text message, in bytes of UTF-8.
    #[arg(
        long = "max-message-bytes",
        env = "CHAT_MAX_MESSAGE_BYTES",
        value_name = "CHAT_MAX_MESSAGE_BYTES",
        default_value_t = 4096,
        value_parser = clap::value_parser!(u32).range(1..=1_048_576)
    )]
    pub max_message_bytes: u32,

    /// Allowed browser origins for grpc-web, comma separated; unset allows
    /// any origin (auth is a bearer header, not a cookie).
    #[arg(
        long = "cors-origins",
        env = "CHAT_CORS_ORIGINS",
        value_name = "CHAT_CORS_ORIGINS",
        value_delimiter = ',',
        value_parser = parse_origin
    )]
    pub cors_origins: Vec<String>,

    /// Largest request body a call may send, in bytes; larger calls get
    /// RESOURCE_EXHAUSTED. Must leave room for the largest message.
    #[arg(
        long = "max-request-bytes",
        env = "CHAT_MAX_REQUEST_BYTES",
        value_name = "CHAT_MAX_REQUEST_BYTES",
        default_value_t = 65_536,
        value_parser = clap::value_parser!(u32).range(1024..=16_777_216)
    )]
    pub max_request_bytes: u32,

    /// Most handshaken client connections open at once; further clients
    /// wait for a free slot after their handshake.
    #[arg(
        long = "max-connections",
        env = "CHAT_MAX_CONNECTIONS",
        value_name = "CHAT_MAX_CONNECTIONS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_connections: u32,

    /// How long a handshaken connection has to make its first
    /// authenticated call (one whose bearer token verified); then it is
    /// closed (GOAWAY). Health checks and reflection need no token and do
    /// not count, so a connection used only for them is closed too.
    #[arg(
        long = "first-call-timeout",
        env = "CHAT_FIRST_CALL_TIMEOUT",
        value_name = "CHAT_FIRST_CALL_TIMEOUT",
        default_value = "10s",
        value_parser = parse_first_call_timeout
    )]
    pub first_call_timeout: Duration,

    /// Most concurrent calls (HTTP/2 streams) on one connection.
    #[arg(
        long = "max-streams-per-connection",
        env = "CHAT_MAX_STREAMS_PER_CONNECTION",
        value_name = "CHAT_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_streams_per_connection: u32,

    /// HTTP/2 keepalive ping interval; idle peers that do not answer within
    /// the keepalive timeout are disconnected.
    #[arg(
        long = "keepalive-interval",
        env = "CHAT_KEEPALIVE_INTERVAL",
        value_name = "CHAT_KEEPALIVE_INTERVAL",
        default_value = "30s",
        value_parser = parse_duration
    )]
    pub keepalive_interval: Duration,

    /// How long a keepalive ping may go unanswered.
    #[arg(
        long = "keepalive-timeout",
        env = "CHAT_KEEPALIVE_TIMEOUT",
        value_name = "CHAT_KEEPALIVE_TIMEOUT",
        default_value = "10s",
        value_parser = parse_duration
    )]
    pub keepalive_timeout: Duration,

    /// How long a new connection may take to complete its handshake (the
    /// HTTP/2 preface and first frame, or an HTTP/1.1 request head) before
    /// it is closed. Only handshaken connections count against
    /// CHAT_MAX_CONNECTIONS, so silent sockets cannot lock clients out.
    #[arg(
        long = "handshake-timeout",
        env = "CHAT_HANDSHAKE_TIMEOUT",
        value_name = "CHAT_HANDSHAKE_TIMEOUT",
        default_value = "5s",
        value_parser = parse_duration
    )]
    pub handshake_timeout: Duration,

    /// Most connections not holding a slot at once (in their handshake, or
    /// handshaken and waiting for a slot); with CHAT_MAX_CONNECTIONS they
    /// bound file descriptors. Accepting waits while all are taken.
    #[arg(
        long = "max-pending-connections",
        env = "CHAT_MAX_PENDING_CONNECTIONS",
        value_name = "CHAT_MAX_PENDING_CONNECTIONS",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_pending_connections: u32,

    /// Most connections open at once from one client IP address; more are
    /// closed at once. 0 means no limit (the default: behind a load
    /// balancer every connection comes from its address).
    #[arg(
        long = "max-connections-per-ip",
        env = "CHAT_MAX_CONNECTIONS_PER_IP",
        value_name = "CHAT_MAX_CONNECTIONS_PER_IP",
        default_value_t = 0
    )]
    pub max_connections_per_ip: u32,

    /// How long a request body may take to arrive whole; a slower request
    /// ends with DEADLINE_EXCEEDED and its buffered bytes are freed. It
    /// never cuts a response stream.
    #[arg(
        long = "request-body-timeout",
        env = "CHAT_REQUEST_BODY_TIMEOUT",
        value_name = "CHAT_REQUEST_BODY_TIMEOUT",
        default_value = "10s",
        value_parser = parse_duration
    )]
    pub request_body_timeout: Duration,

    /// Database connections in the pool.
    #[arg(
        long = "db-pool-size",
        env = "CHAT_DB_POOL_SIZE",
        value_name = "CHAT_DB_POOL_SIZE",
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(2..=1000)
    )]
    pub db_pool_size: u32,

    /// The deadline of every database call: waiting for a pooled
    /// connection plus the statement (PostgreSQL's statement_timeout and
    /// lock_timeout, SQLite's busy timeout are set below it). A call that
    /// misses it fails with UNAVAILABLE; a send waits at most this long in
    /// its writer's queue too, so it is answered within twice this.
    #[arg(
        long = "db-timeout",
        env = "CHAT_DB_TIMEOUT",
        value_name = "CHAT_DB_TIMEOUT",
        default_value = "4s",
        value_parser = parse_db_timeout
    )]
    pub db_timeout: Duration,

    /// Threads that run connections and calls; 0 means one per CPU. On a
    /// machine shared with other busy processes fewer threads can deliver
    /// more (see docs/benchmarks.md).
    #[arg(
        long = "worker-threads",
        env = "CHAT_WORKER_THREADS",
        value_name = "CHAT_WORKER_THREADS",
        default_value_t = 0,
        value_parser = clap::value_parser!(u32).range(0..=1024)
    )]
    pub worker_threads: u32,

    /// Writer tasks; rooms are spread over them and each commits its own
    /// batches. One gives the largest batches, which measured fastest on
    /// two cores.
    #[arg(
        long = "writers",
        env = "CHAT_WRITERS",
        value_name = "CHAT_WRITERS",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=64)
    )]
    pub writers: u32,

    /// Events buffered per room for its streams; a stream that falls further
    /// behind is caught up from history.
    #[arg(
        long = "room-buffer",
        env = "CHAT_ROOM_BUFFER",
        value_name = "CHAT_ROOM_BUFFER",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(16..=1_048_576)
    )]
    pub room_buffer: u32,

    /// Bytes of encoded events buffered per room, on top of the slot limit:
    /// what one live room may pin in memory (at least its newest event is
    /// kept). A stream further behind is caught up from history.
    #[arg(
        long = "room-buffer-bytes",
        env = "CHAT_ROOM_BUFFER_BYTES",
        value_name = "CHAT_ROOM_BUFFER_BYTES",
        default_value_t = 1_048_576,
        value_parser = clap::value_parser!(u32).range(4096..)
    )]
    pub room_buffer_bytes: u32,

    /// Most JoinRoom streams one user may have open at once, over all
    /// connections; further joins get RESOURCE_EXHAUSTED.
    #[arg(
        long = "user-max-streams",
        env = "CHAT_USER_MAX_STREAMS",
        value_name = "CHAT_USER_MAX_STREAMS",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub user_max_streams: u32,

    /// Response bytes one user's calls may make the server hold before the
    /// client reads them (ListHistory pages and JoinRoom catch-up pages). A
    /// ListHistory over it gets RESOURCE_EXHAUSTED; a catch-up waits.
    #[arg(
        long = "user-buffer-bytes",
        env = "CHAT_USER_BUFFER_BYTES",
        value_name = "CHAT_USER_BUFFER_BYTES",
        default_value_t = 64 * 1_048_576,
        value_parser = clap::value_parser!(u32).range(8_388_608..)
    )]
    pub user_buffer_bytes: u32,

    /// Address to serve Prometheus metrics on (`GET /metrics`); unset: no
    /// metrics are kept and nothing more listens.
    #[arg(
        long = "metrics-addr",
        env = "CHAT_METRICS_ADDR",
        value_name = "CHAT_METRICS_ADDR"
    )]
    pub metrics_addr: Option<SocketAddr>,

    /// Log line format: `text` for people, `json` (one object per line)
    /// for log collectors.
    #[arg(
        long = "log-format",
        env = "CHAT_LOG_FORMAT",
        value_name = "CHAT_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,

    /// Messages per second one user may send (a token bucket refilled at
    /// this rate); a send over it gets RESOURCE_EXHAUSTED and is not
    /// stored. 0 turns the limit off. Per node.
    #[arg(
        long = "user-send-rate",
        env = "CHAT_USER_SEND_RATE",
        value_name = "CHAT_USER_SEND_RATE",
        default_value_t = 20
    )]
    pub user_send_rate: u32,

    /// Messages one user may send at once before CHAT_USER_SEND_RATE
    /// applies (the bucket's size). 0 turns the limit off.
    #[arg(
        long = "user-send-burst",
        env = "CHAT_USER_SEND_BURST",
        value_name = "CHAT_USER_SEND_BURST",
        default_value_t = 40
    )]
    pub user_send_burst: u32,

    /// JoinRoom streams per second one user may open (resumes included; a
    /// token bucket refilled at this rate); a join over it gets
    /// RESOURCE_EXHAUSTED. 0 turns the limit off. Per node.
    #[arg(
        long = "user-join-rate",
        env = "CHAT_USER_JOIN_RATE",
        value_name = "CHAT_USER_JOIN_RATE",
        default_value_t = 10
    )]
    pub user_join_rate: u32,

    /// JoinRoom streams one user may open at once before
    /// CHAT_USER_JOIN_RATE applies (the bucket's size; by default as many
    /// as CHAT_USER_MAX_STREAMS, so a client can reopen all its streams at
    /// once). 0 turns the limit off.
    #[arg(
        long = "user-join-burst",
        env = "CHAT_USER_JOIN_BURST",
        value_name = "CHAT_USER_JOIN_BURST",
        default_value_t = 100
    )]
    pub user_join_burst: u32,

    /// ListRooms, ListHistory, ListMembers and MarkRead calls per second
    /// one user may make, together (a token bucket refilled at this rate);
    /// a call over it gets RESOURCE_EXHAUSTED. 0 turns the limit off. Per
    /// node.
    #[arg(
        long = "user-read-rate",
        env = "CHAT_USER_READ_RATE",
        value_name = "CHAT_USER_READ_RATE",
        default_value_t = 50
    )]
    pub user_read_rate: u32,

    /// Such calls one user may make at once before CHAT_USER_READ_RATE
    /// applies (the bucket's size). 0 turns the limit off.
    #[arg(
        long = "user-read-burst",
        env = "CHAT_USER_READ_BURST",
        value_name = "CHAT_USER_READ_BURST",
        default_value_t = 200
    )]
    pub user_read_burst: u32,

    /// Who creates rooms: `anyone` (a room exists once a user sends to it
    /// or the backend creates it) or `backend` (only AdminService.CreateRoom
    /// creates rooms; joins, sends and MarkRead to any other room are
    /// NOT_FOUND).
    #[arg(
        long = "room-creation",
        env = "CHAT_ROOM_CREATION",
        value_name = "CHAT_ROOM_CREATION",
        value_enum,
        default_value_t = RoomCreation::Anyone
    )]
    pub room_creation: RoomCreation,

    /// PEM file with the server's certificate chain; with CHAT_TLS_KEY the
    /// port speaks TLS only. Reloaded when the files change or on SIGHUP.
    #[arg(long = "tls-cert", env = "CHAT_TLS_CERT", value_name = "CHAT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM file with the private key of CHAT_TLS_CERT.
    #[arg(long = "tls-key", env = "CHAT_TLS_KEY", value_name = "CHAT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// A JWKS document (file path, or http:// / https:// URL) with the
    /// identity provider's keys: RS256, ES256 and EdDSA tokens are checked
    /// against the key their `kid` names. A URL is fetched again every 5
    /// minutes and when an unknown `kid` arrives (at most once per 10 s).
    #[arg(long = "jwt-jwks", env = "CHAT_JWT_JWKS", value_name = "CHAT_JWT_JWKS")]
    pub jwt_jwks: Option<String>,

    /// On SIGINT / SIGTERM, how long in-flight calls get to finish.
    #[arg(
        long = "shutdown-grace",
        env = "CHAT_SHUTDOWN_GRACE",
        value_name = "CHAT_SHUTDOWN_GRACE",
        default_value = "5s",
        value_parser = parse_duration
    )]
    pub shutdown_grace: Duration,
}

/// Where the signing secret comes from, and the claims every token must
/// carry.
#[derive(Debug, Clone, Args)]
pub struct SecretArgs {
    /// HS256 secret for bearer tokens (at least 16 bytes). When unset, the
    /// server generates one on first start and keeps it in
    /// `<data dir>/jwt-secret` (mode 0600); `chatd token` reads it there
    /// and never creates one.
    #[arg(
        long = "jwt-secret",
        env = "CHAT_JWT_SECRET",
        value_name = "CHAT_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,

    /// When set, every token's `iss` claim must equal it (`chatd token`
    /// puts it into the tokens it mints).
    #[arg(
        long = "jwt-issuer",
        env = "CHAT_JWT_ISSUER",
        value_name = "CHAT_JWT_ISSUER"
    )]
    pub jwt_issuer: Option<String>,

    /// When set, every token's `aud` claim must name it (`chatd token` puts
    /// it into the tokens it mints).
    #[arg(
        long = "jwt-audience",
        env = "CHAT_JWT_AUDIENCE",
        value_name = "CHAT_JWT_AUDIENCE"
    )]
    pub jwt_audience: Option<String>,

    /// Directory for chatd's own files: the generated secret and the
    /// default SQLite database. Created with mode 0700 when missing.
    #[arg(
        long = "data-dir",
        env = "CHAT_DATA_DIR",
        value_name = "CHAT_DATA_DIR",
        default_value = "./chatd-data"
    )]
    pub data_dir: PathBuf,
}

impl Config {
    /// Checks that hold between settings; the message names them.
    pub fn validate(&self) -> Result<(), String> {
        // A text message of the maximum size, its other fields and framing
        // must fit in a request.
        let needed = u64::from(self.max_message_bytes) + 512;
        if u64::from(self.max_request_bytes) < needed {
            return Err(format!(
                "CHAT_MAX_REQUEST_BYTES ({}) must be at least CHAT_MAX_MESSAGE_BYTES + 512 ({needed})",
                self.max_request_bytes
            ));
        }
        if self.keepalive_interval.is_zero() || self.keepalive_timeout.is_zero() {
            return Err(
                "CHAT_KEEPALIVE_INTERVAL and CHAT_KEEPALIVE_TIMEOUT must be above zero".into(),
            );
        }
        if self.handshake_timeout.is_zero() || self.request_body_timeout.is_zero() {
            return Err(
                "CHAT_HANDSHAKE_TIMEOUT and CHAT_REQUEST_BODY_TIMEOUT must be above zero".into(),
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("CHAT_TLS_CERT and CHAT_TLS_KEY must be set together (or neither)".into());
        }
        self.validate_cluster()?;
        self.webhooks().map(|_| ())
    }
}

#[cfg(test)]
mod tests;
