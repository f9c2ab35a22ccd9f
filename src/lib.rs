//! chatd: gRPC chat rooms with durable, gapless history.
//!
//! A request flows through these modules:
//!
//! - [`config`]: flags with environment fallbacks (clap).
//! - [`server`]: [`server::Application`] builds the services and layers
//!   (gRPC and grpc-web on one port, CORS, reflection, health), runs them,
//!   and shuts down in order.
//! - [`web`]: the chat page (built from `web/`, embedded), served by GET
//!   on the same port, and its address in the start-up log.
//! - [`connections`]: accepting connections: the handshake deadline, slots
//!   only handshaken connections hold (the idlest one gives its slot up
//!   when all are taken), and the per-IP limit.
//! - `serve`: chatd's own serve loop: hyper's HTTP/1.1 and HTTP/2 per
//!   connection, the first-call deadline, GOAWAY, shutdown.
//! - [`limits`]: the request body limits (size and deadline).
//! - [`shutdown`]: ending never-ending response streams at shutdown.
//! - [`auth`]: bearer tokens (HS256, or the identity provider's keys), the
//!   interceptor that turns them into an [`domain::Identity`], and the
//!   secret file.
//! - [`jwks`]: an identity provider's keys (JWKS from a file or URL), kept
//!   fresh by an owned task.
//! - [`tls`]: the rustls acceptor whose certificate is swapped on reload.
//! - [`secure`]: loads JWKS and TLS at start-up and starts their tasks.
//! - [`files`]: chatd's files and directories on disk, created 0600 / 0700.
//! - [`service`]: chat.v1.ChatService, converting proto to domain and back.
//! - [`admin`]: chat.v1.AdminService (the app backend's API), the same way.
//! - [`access`]: may this caller do this here? Private rooms, grants and
//!   their revocation, admin tokens; cached on the send path.
//! - [`domain`]: types that parse client input once (`RoomName::parse`, ...).
//! - [`writer`]: the write path; stores waiting sends as atomic batches
//!   (group commit; several at once, never two for one room) and publishes
//!   after commit.
//! - [`rooms`]: the registry of live rooms: fan-out through a ring bounded in
//!   slots and bytes (wake-ups of a busy room, for messages and for
//!   presence, coalesced; on a cluster, messages put back in seq order),
//!   presence, and the per-stream reader that guarantees exactly-once,
//!   gapless delivery.
//! - [`quota`]: per-user limits: open JoinRoom streams and unsent response
//!   bytes (ListHistory and catch-up pages), held until the client reads.
//! - [`rate`]: the per-user send and join rates (token buckets per user).
//! - [`storage`]: PostgreSQL or SQLite through diesel-async; the only
//!   module that knows SQL or which backend runs. Every call has a deadline
//!   (`CHAT_DB_TIMEOUT`). Its `guard` holds the lock that keeps a second
//!   single node off the same database.
//! - [`cluster`]: cluster mode over NATS (`CHAT_NATS_URL`): committed
//!   messages between nodes with a PostgreSQL poll as the floor,
//!   cluster-wide presence, and revocations of access.
//! - [`proto`]: the generated chat.v1 types and the pre-encoded stream item.
//! - [`metrics`]: Prometheus metrics (`CHAT_METRICS_ADDR`): the registry,
//!   the gRPC metrics layer and the `/metrics` listener.
//! - [`logs`]: log output, text or JSON (`CHAT_LOG_FORMAT`).
//! - [`error`]: the one error type, the classification of storage errors
//!   (retry or not), and the mapping to gRPC statuses, logged once.

mod access;
mod alloc;
mod api;
pub mod auth;
pub mod cluster;
pub mod config;
mod domain;
mod error;
mod files;
mod http;
mod limits;
pub mod logs;
mod metrics;
mod net;
pub mod proto;
mod rooms;
mod server;
mod storage;
mod writer;

pub use error::{Error, Result};
pub use server::Application;
