//! chatd's integration tests, one binary: a real chatd (in process or the
//! binary) on loopback, a real PostgreSQL database or SQLite file per test,
//! a real NATS for the cluster, tonic and raw HTTP clients.
//!
//! A module per concern; what they share is in `helpers` (compiled once):
//!
//! - `chat`: join, send, history, validation, the server, grpc-web, the binary.
//! - `tokens`: what a token must carry, `chatd token`, files on disk.
//! - `access`: private rooms, AdminService, ListRooms, MarkRead, revocations,
//!   on one node and on a cluster (`access::cluster`).
//! - `sanctions`: bans and mutes (AdminService), on one node and on a
//!   cluster (`sanctions::cluster`).
//! - `cluster`: several nodes over NATS and one PostgreSQL; `cluster::storage`:
//!   several processes on one database.
//! - `cluster_attack`: forged, replayed and overheard cluster traffic.
//! - `database`: storage faults (the fault proxy, locks, a full disk).
//! - `connections`: hostile and broken connections.
//! - `memory`: memory bounded whatever one client does.
//! - `metrics`: Prometheus metrics and JSON logs.
//! - `web`: the chat page on the gRPC port.
//! - `nginx`: docs/nginx/chatd.conf in front of three nodes.
//! - `secure`: rate limits, identity providers, TLS.
//! - `webhooks`: signed webhooks from the outbox, on one node and a cluster.

#[macro_use]
mod helpers;

mod access;
mod chat;
mod cluster;
mod cluster_attack;
mod connections;
mod database;
mod memory;
mod metrics;
mod nginx;
mod sanctions;
mod secure;
mod tokens;
mod web;
mod webhooks;
