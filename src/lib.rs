//! chatd: gRPC chat rooms with durable, gapless history.
//!
//! The modules, from the top down; each imports only modules listed below
//! it:
//!
//! - `server/`: [`Application`] builds, wires, routes, serves and shuts
//!   down in order, each a named step: `mod.rs` (build and run),
//!   `wire.rs` (rooms, cluster, access, writers, metrics listener),
//!   `route.rs` (services and layers), `health.rs`, `shutdown.rs`.
//! - `api/`: chat.v1.ChatService (`chat.rs`) and AdminService (`admin.rs`),
//!   proto to domain and back, behind the token check (`authenticate.rs`).
//! - `http/`: what sits between hyper and tonic: the one reader of gRPC
//!   framing (`frames.rs`), the request body limits (`body_limit.rs`),
//!   unsent bytes held until sent (`hold_until_sent.rs`), JoinRoom's
//!   events framed in buffers freed once sent (`event_body.rs`), streams ended at
//!   shutdown (`end_on_shutdown.rs`), the gRPC metrics layer
//!   (`grpc_metrics.rs`), the chat page (`page.rs`) and CORS (`cors.rs`).
//! - `net/`: connections: accepting (slots, the per-IP limit), the
//!   handshake deadline, TLS, and chatd's own serve loop (hyper's HTTP/1.1
//!   and HTTP/2 per connection, the first-call deadline, GOAWAY).
//! - `webhooks/`: the app backend's webhooks: claims events from the
//!   outbox in storage (leases, so one node sends each), builds each body
//!   (`body.rs`: proto3 JSON of `chat.v1.Event`) and POSTs it signed as
//!   Standard Webhooks says (`deliver.rs`), with backoff and a maximum age.
//! - `writer.rs`: the write path; stores waiting sends as atomic batches
//!   (group commit), and changes of messages (edits, deletions, reactions)
//!   one at a time in the same order, and publishes after commit.
//! - [`cluster`]: cluster mode over NATS (`CHAT_NATS_URL`): committed
//!   messages and their changes between nodes with a PostgreSQL poll as
//!   the floor, cluster-wide presence, typing and read markers
//!   (`ephemeral.rs`), revocations of access and sanctions.
//! - `rooms/`: the registry of live rooms: fan-out through a bounded ring,
//!   this node's members, typing flags and read markers (`ephemeral.rs`,
//!   live only), coalesced wake-ups, and the per-stream reader that
//!   guarantees exactly-once, gapless delivery of every durable event.
//! - `access/`: may this caller do this here? `mod.rs`: private rooms,
//!   grants and their revocation, admin tokens; `sanctions.rs`: bans and
//!   mutes (the checks, their cache, AdminService's calls); `cache.rs`: the
//!   bounded two-generation map behind every access cache; `owners.rs`:
//!   public rooms joined become the users', written in batches. Cached on the
//!   send path. It ends streams through its `Streams` trait, which the
//!   room registry implements.
//! - [`auth`]: who is calling: bearer tokens (HS256, or the identity
//!   provider's keys in `jwks.rs`), the HS256 tokens verified recently
//!   (`verified.rs`) and the secret file (`secret.rs`).
//! - `metrics/`: Prometheus metrics (`CHAT_METRICS_ADDR`): the registry
//!   and the `/metrics` listener; it renders readings handed to it (pool,
//!   NATS state) and imports neither storage nor cluster.
//! - [`config`]: flags with environment fallbacks (clap).
//! - `storage/`: PostgreSQL or SQLite through diesel-async; the only
//!   module that knows SQL or which backend runs, and the only one that
//!   sees database errors (`failure.rs` classifies them at the boundary);
//!   `changes.rs` stores edits, deletions and reactions as events and
//!   reads messages and changes back in seq order; `outbox.rs` is the
//!   webhook outbox every committing transaction writes to. Every call has a
//!   deadline (`CHAT_DB_TIMEOUT`).
//! - `limits/`: per-user bounds: open streams and unsent bytes
//!   (`quota.rs`), send, join and read rates (`rate.rs`).
//! - `domain.rs`: types that parse client input once (`RoomName::parse`,
//!   ...). [`proto`]: the generated chat.v1 types and the pre-encoded
//!   stream item. `error.rs`: the one error type and its gRPC statuses.
//! - `files.rs` (files created 0600 / 0700), [`logs`] (text or JSON),
//!   `alloc.rs` (giving freed memory back to the system).
//!
//! Only what the binary, the tests and the bench use is public.

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
mod webhooks;
mod writer;

pub use error::{Error, Result};
pub use server::Application;
