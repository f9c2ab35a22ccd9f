//! The one error type of chatd and its mapping to gRPC statuses.
//!
//! Handlers return [`Error`]; the conversion into [`tonic::Status`] at the
//! service boundary is the only place that decides what a client sees. Storage
//! and internal details are logged with `tracing` (once: see
//! [`Error::Reported`] and [`log_storage_failure`]) and never sent.
//!
//! Storage errors arrive classified into a [`Failure`] (storage maps its
//! database's errors at its boundary): what a client should do about them
//! (retry later, or not), read by [`Error::failure`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic::{Code, Status};

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed; `field` names it for the client.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },

    /// A request field is well formed but points past what exists.
    #[error("{field}: {reason}")]
    OutOfRange { field: &'static str, reason: String },

    /// The caller's token is missing, malformed, forged or expired.
    #[error("{0}")]
    Unauthenticated(String),

    /// The caller is known but may not do this here (a private room
    /// without a grant, AdminService without an admin token); the text
    /// names the room or the rule.
    #[error("{0}")]
    PermissionDenied(String),

    /// A request names something that does not exist; `field` names it.
    #[error("{field}: {reason}")]
    NotFound { field: &'static str, reason: String },

    /// The request is valid but the state it meets refuses it (another
    /// visibility than the room's, a grant on a public room).
    #[error("{field}: {reason}")]
    FailedPrecondition { field: &'static str, reason: String },

    /// The server is too busy to take the request now.
    #[error("{0}")]
    ResourceExhausted(String),

    /// The client's own deadline (its `grpc-timeout`) passed before the
    /// call was answered; the call was dropped.
    #[error("the call's deadline (grpc-timeout) passed before it was answered")]
    ClientDeadline,

    /// The server is shutting down and takes no new work.
    #[error("server is shutting down")]
    ShuttingDown,

    /// A query failed. Storage classifies it where it happens (the only
    /// module that knows the database's errors): what it means for the
    /// client, and whether the connection it ran on is lost.
    #[error("database query failed: {source}")]
    Database {
        failure: Failure,
        lost: bool,
        source: BoxError,
    },

    /// No database connection could be had.
    #[error("database pool failed: {0}")]
    Pool(BoxError),

    /// A database call missed its deadline (`CHAT_DB_TIMEOUT`); says which
    /// step.
    #[error("database call timed out {0}")]
    TimedOut(&'static str),

    /// A storage failure that was already logged where it happened (a failed
    /// batch is logged once, not once per request): the client gets the
    /// failure's status and nothing is logged again.
    #[error("storage failed ({0:?}); logged where it happened")]
    Reported(Failure),

    /// The write path's answer never came (its task ended).
    #[error("the writer stopped before answering")]
    WriterGone,

    /// Anything else that is our fault, with its cause for the logs.
    #[error("internal error: {0}")]
    Internal(String),

    /// A bad setting or a start-up failure; the text names the setting.
    #[error("{0}")]
    Config(String),
}

/// The cause of a storage error, kept for the logs.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a storage failure means for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The database cannot be reached or cannot serve now (down, hung,
    /// restarting, locked, overloaded): retry later. UNAVAILABLE.
    Unavailable,
    /// The database's disk is full: writes fail until an operator frees
    /// space; reads still work. UNAVAILABLE too (a retry later succeeds
    /// once space is freed), with its own message and log line.
    Full,
    /// Our bug or a schema that does not match: retrying will not help.
    /// INTERNAL.
    Internal,
}

impl Error {
    /// A malformed request field.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    /// For errors of storage or of the write path, what they mean for the
    /// client; `None` for everything else (client errors, config).
    pub fn failure(&self) -> Option<Failure> {
        match self {
            Error::Pool(_) | Error::TimedOut(_) | Error::WriterGone | Error::ShuttingDown => {
                Some(Failure::Unavailable)
            }
            Error::Reported(f) => Some(*f),
            Error::Database { failure, .. } => Some(*failure),
            Error::Internal(_) => Some(Failure::Internal),
            _ => None,
        }
    }

    /// Whether the client should retry later (UNAVAILABLE).
    pub fn is_unavailable(&self) -> bool {
        matches!(self.failure(), Some(Failure::Unavailable | Failure::Full))
    }

    /// Whether this error means the connection it happened on is gone or in
    /// an unknown state and must not go back to the pool.
    pub fn loses_connection(&self) -> bool {
        match self {
            Error::TimedOut(_) => true,
            Error::Database { lost, .. } => *lost,
            _ => false,
        }
    }
}

/// Logs a storage failure that has not been logged yet. Unavailable
/// conditions are logged at most once per [`LOG_EVERY`] with the number of
/// the others: an outage hits every call and every stream at once, and one
/// line says as much as thousands. Internal errors are always logged.
pub fn log_storage_failure(err: &Error, failure: Failure) {
    match failure {
        Failure::Internal => tracing::error!(error = %err, "internal error"),
        Failure::Unavailable | Failure::Full => {
            if let Some(suppressed) = THROTTLE.allow() {
                tracing::warn!(error = %err, suppressed, "storage unavailable");
            }
        }
    }
}

/// At most one "storage unavailable" line per this interval.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A log rate limiter: one line per [`LOG_EVERY`], counting the rest.
struct Throttle {
    /// Milliseconds since [`Throttle::epoch`] of the last line, plus one (0:
    /// never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

static THROTTLE: Throttle = Throttle {
    last: AtomicU64::new(0),
    suppressed: AtomicU64::new(0),
};

impl Throttle {
    fn epoch() -> Instant {
        static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }

    /// `Some(lines suppressed since the last one)` when a line may be
    /// logged now.
    fn allow(&self) -> Option<u64> {
        let now = Self::epoch().elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64;
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let failure = err.failure();
        match err {
            Error::InvalidArgument { .. } => Status::invalid_argument(err.to_string()),
            Error::OutOfRange { .. } => Status::out_of_range(err.to_string()),
            Error::Unauthenticated(msg) => Status::unauthenticated(msg),
            Error::PermissionDenied(msg) => Status::permission_denied(msg),
            Error::NotFound { .. } => Status::not_found(err.to_string()),
            Error::FailedPrecondition { .. } => Status::failed_precondition(err.to_string()),
            Error::ResourceExhausted(msg) => Status::resource_exhausted(msg),
            Error::ShuttingDown => Status::unavailable("server is shutting down; retry shortly"),
            Error::ClientDeadline => Status::deadline_exceeded(err.to_string()),
            Error::Config(_) => {
                tracing::error!(error = %err, "internal error");
                Status::internal("internal error")
            }
            _ => {
                let failure = failure.unwrap_or(Failure::Internal);
                if !matches!(err, Error::Reported(_)) {
                    log_storage_failure(&err, failure);
                }
                status_of(failure)
            }
        }
    }
}

/// The status a client gets for a storage failure; no internals in it.
fn status_of(failure: Failure) -> Status {
    match failure {
        Failure::Unavailable => {
            Status::new(Code::Unavailable, "storage is unavailable; retry shortly")
        }
        Failure::Full => Status::new(Code::Unavailable, "storage is full; retry later"),
        Failure::Internal => Status::internal("internal error"),
    }
}

/// Shorthand for results in chatd.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn database(failure: Failure, lost: bool) -> Error {
        Error::Database {
            failure,
            lost,
            source: "database or disk is full".into(),
        }
    }

    #[test]
    fn statuses_hide_internals() {
        let status = Status::from(database(Failure::Full, false));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("database or disk"));
        let status = Status::from(Error::Reported(Failure::Unavailable));
        assert_eq!(status.code(), Code::Unavailable);
        let status = Status::from(Error::Internal("x".into()));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
    }

    #[test]
    fn lost_connections() {
        assert!(Error::TimedOut("x").loses_connection());
        assert!(database(Failure::Unavailable, true).loses_connection());
        assert!(!database(Failure::Unavailable, false).loses_connection());
    }
}
