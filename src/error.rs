//! The one error type of chatd and its mapping to gRPC statuses.
//!
//! Handlers return [`Error`]; the conversion into [`tonic::Status`] at the
//! service boundary is the only place that decides what a client sees. Storage
//! and internal details are logged with `tracing` there and never sent.

use diesel::result::DatabaseErrorKind;
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

    /// The server is too busy to take the request now.
    #[error("{0}")]
    ResourceExhausted(String),

    /// The server is shutting down and takes no new work.
    #[error("server is shutting down")]
    ShuttingDown,

    /// A query failed.
    #[error("database query failed")]
    Database(#[from] diesel::result::Error),

    /// No database connection could be had.
    #[error("database pool failed")]
    Pool(#[from] diesel_async::pooled_connection::deadpool::PoolError),

    /// Storage could not be reached; the details were logged where it
    /// happened.
    #[error("storage unavailable")]
    Unavailable,

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

impl Error {
    /// A malformed request field.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    /// Whether the database could not be reached (as opposed to a query the
    /// database refused): these become UNAVAILABLE and are worth a retry.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Pool(_) | Error::Unavailable | Error::ShuttingDown | Error::WriterGone => true,
            Error::Database(e) => is_connection_error(e),
            _ => false,
        }
    }
}

/// Diesel errors that mean "the connection is gone", not "the query is bad".
fn is_connection_error(e: &diesel::result::Error) -> bool {
    matches!(
        e,
        diesel::result::Error::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _
        ) | diesel::result::Error::BrokenTransactionManager
    )
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let unavailable = err.is_unavailable();
        match err {
            Error::InvalidArgument { .. } => Status::invalid_argument(err.to_string()),
            Error::OutOfRange { .. } => Status::out_of_range(err.to_string()),
            Error::Unauthenticated(msg) => Status::unauthenticated(msg),
            Error::ResourceExhausted(msg) => Status::resource_exhausted(msg),
            Error::ShuttingDown => Status::unavailable("server is shutting down; retry shortly"),
            other if unavailable => {
                tracing::warn!(error = ?other, "storage unavailable");
                Status::new(Code::Unavailable, "storage is unavailable; retry shortly")
            }
            other => {
                tracing::error!(error = ?other, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// Shorthand for results in chatd.
pub type Result<T, E = Error> = std::result::Result<T, E>;
