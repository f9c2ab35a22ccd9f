//! Per-user bounds: what one user may make the server hold or do.
//!
//! - `quota.rs`: open JoinRoom streams and unsent response bytes (held
//!   until the client reads).
//! - `rate.rs`: send, join and read rates (token buckets per user).

pub(crate) mod quota;
pub(crate) mod rate;
