//! chatd: gRPC chat rooms with durable, gapless history.
//!
//! A request flows through these modules:
//!
//! - [`config`]: flags with environment fallbacks (clap).
//! - [`server`]: [`server::Application`] builds the tonic server (gRPC and
//!   grpc-web on one port, CORS, reflection, health), runs it, and shuts it
//!   down in order.
//! - [`limits`]: the connection limit, the request body limit, and ending
//!   never-ending response streams at shutdown.
//! - [`auth`]: HS256 bearer tokens, the interceptor that turns them into an
//!   [`domain::Identity`], and the secret file.
//! - [`service`]: chat.v1.ChatService, converting proto to domain and back.
//! - [`domain`]: types that parse client input once (`RoomName::parse`, ...).
//! - [`writer`]: the write path; stores waiting sends as atomic batches
//!   (group commit; several at once, never two for one room) and publishes
//!   after commit.
//! - [`rooms`]: the registry of live rooms: broadcast fan-out, presence, and
//!   the per-stream reader that guarantees exactly-once, gapless delivery.
//! - [`storage`]: PostgreSQL or SQLite through diesel-async; the only
//!   module that knows SQL or which backend runs. Every call has a deadline
//!   (`CHAT_DB_TIMEOUT`).
//! - [`proto`]: the generated chat.v1 types and the pre-encoded stream item.
//! - [`error`]: the one error type, the classification of storage errors
//!   (retry or not), and the mapping to gRPC statuses, logged once.

pub mod auth;
pub mod config;
pub mod domain;
pub mod error;
pub mod limits;
pub mod proto;
pub mod rooms;
pub mod server;
pub mod service;
pub mod storage;
pub mod writer;

pub use error::{Error, Result};
pub use server::Application;
