//! Database errors mapped at the storage boundary: each diesel or pool
//! error becomes an [`Error`] that carries its [`Failure`] (what a client
//! should do about it) and whether its connection is lost, so nothing
//! outside storage needs to know the database's errors.

use diesel::result::DatabaseErrorKind;
use diesel_async::pooled_connection::deadpool::PoolError;

use crate::error::{Error, Failure};

impl From<diesel::result::Error> for Error {
    fn from(e: diesel::result::Error) -> Self {
        Error::Database {
            failure: classify(&e),
            lost: connection_lost(&e),
            source: Box::new(e),
        }
    }
}

impl From<PoolError> for Error {
    fn from(e: PoolError) -> Self {
        Error::Pool(Box::new(e))
    }
}

/// Classifies a diesel error by what a client should do about it.
///
/// The limitation: diesel-async maps a PostgreSQL error to diesel's
/// [`DatabaseErrorKind`] (`Unknown` for most SQLSTATEs) and does not expose
/// the SQLSTATE itself (see diesel-async's `pg/error_helper.rs`); diesel's
/// SQLite backend likewise gives `Unknown` with `sqlite3_errmsg` for
/// everything but constraint violations. So besides the kinds, the server's
/// primary message is matched (PostgreSQL messages are English unless
/// `lc_messages` is changed; SQLite's are fixed).
///
/// Unknown server errors default to [`Failure::Unavailable`]: chatd's
/// statements are fixed and tested, so a server error that is neither a
/// typed kind (constraint violations: our bug) nor a known permanent one
/// (missing table, syntax, permission, corruption) is almost always
/// operational (a restart, failover, overload, resource limit), which a
/// retry later survives. Every send is safe to retry (idempotency keys) and
/// every read is idempotent, and each such error is still logged.
fn classify(e: &diesel::result::Error) -> Failure {
    use diesel::result::Error as D;
    match e {
        D::DatabaseError(kind, info) => classify_db(kind, info.message()),
        D::BrokenTransactionManager => Failure::Unavailable,
        D::RollbackErrorOnCommit { commit_error, .. } => classify(commit_error),
        _ => Failure::Internal,
    }
}

fn classify_db(kind: &DatabaseErrorKind, message: &str) -> Failure {
    use DatabaseErrorKind as K;
    match kind {
        // The connection is gone (IO error, closed socket, terminated
        // backend), a serialization failure, or a standby after failover
        // (25006 read_only_sql_transaction).
        K::ClosedConnection
        | K::UnableToSendCommand
        | K::SerializationFailure
        | K::ReadOnlyTransaction => Failure::Unavailable,
        // Constraint violations: our statements never cause them unless
        // something is wrong with us or the data.
        K::UniqueViolation
        | K::ForeignKeyViolation
        | K::NotNullViolation
        | K::CheckViolation
        | K::RestrictViolation
        | K::ExclusionViolation => Failure::Internal,
        _ => classify_message(message),
    }
}

/// Primary messages that mean a full disk: PostgreSQL 53100 disk_full
/// ("could not extend file ...: No space left on device", "could not write
/// to file ..."), SQLite SQLITE_FULL ("database or disk is full").
const FULL: &[&str] = &[
    "no space left on device",
    "database or disk is full",
    "disk full",
    "could not extend file",
    "quota exceeded",
];

/// Primary messages of errors that a retry will not fix: PostgreSQL 42xxx
/// (undefined table/column, syntax, permission: a schema or grant that does
/// not match this chatd), SQLite SQLITE_CORRUPT / SQLITE_NOTADB and schema
/// mismatches.
const PERMANENT: &[&str] = &[
    "does not exist",
    "syntax error",
    "permission denied",
    "must be owner",
    "no such table",
    "no such column",
    "malformed",
    "file is not a database",
    "has no column",
    "invalid input",
    "out of range",
];

/// Classifies a server error by its primary message; see [`classify`].
///
/// Known unavailable messages (they need no entry as they are the
/// default, listed here for the reader): PostgreSQL 57P01 "terminating
/// connection due to administrator command", 57P02/57P03 "the database
/// system is shutting down / starting up / in recovery mode", 57014
/// "canceling statement due to statement timeout", 55P03 "canceling
/// statement due to lock timeout", 53200/53300 "out of memory", "sorry, too
/// many clients already", 08xxx connection exceptions, 40P01 "deadlock
/// detected"; SQLite SQLITE_BUSY "database is locked", SQLITE_LOCKED
/// "database table is locked", SQLITE_IOERR "disk I/O error",
/// SQLITE_READONLY "attempt to write a readonly database", SQLITE_CANTOPEN
/// "unable to open database file".
fn classify_message(message: &str) -> Failure {
    let message = message.to_ascii_lowercase();
    if FULL.iter().any(|m| message.contains(m)) {
        Failure::Full
    } else if PERMANENT.iter().any(|m| message.contains(m)) {
        Failure::Internal
    } else {
        Failure::Unavailable
    }
}

/// Diesel errors after which the connection must be dropped, not pooled:
/// it is closed, or the server ended the session (57P01 and friends arrive
/// as a FATAL with the connection closing right after).
fn connection_lost(e: &diesel::result::Error) -> bool {
    match e {
        diesel::result::Error::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _,
        )
        | diesel::result::Error::BrokenTransactionManager => true,
        diesel::result::Error::DatabaseError(_, info) => {
            let m = info.message().to_ascii_lowercase();
            m.contains("terminating connection") || m.contains("shutting down")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(kind: DatabaseErrorKind, message: &str) -> diesel::result::Error {
        diesel::result::Error::DatabaseError(kind, Box::new(message.to_owned()))
    }

    #[test]
    fn classification() {
        use DatabaseErrorKind as K;
        let cases = [
            (
                K::Unknown,
                "terminating connection due to administrator command",
                Failure::Unavailable,
            ),
            (
                K::Unknown,
                "canceling statement due to statement timeout",
                Failure::Unavailable,
            ),
            (
                K::Unknown,
                "canceling statement due to lock timeout",
                Failure::Unavailable,
            ),
            (
                K::Unknown,
                "sorry, too many clients already",
                Failure::Unavailable,
            ),
            (
                K::Unknown,
                "the database system is starting up",
                Failure::Unavailable,
            ),
            (K::Unknown, "deadlock detected", Failure::Unavailable),
            (K::Unknown, "database is locked", Failure::Unavailable),
            (K::Unknown, "database or disk is full", Failure::Full),
            (
                K::Unknown,
                "could not extend file \"base/1/2\": No space left on device",
                Failure::Full,
            ),
            (
                K::Unknown,
                "relation \"messages\" does not exist",
                Failure::Internal,
            ),
            (
                K::Unknown,
                "database disk image is malformed",
                Failure::Internal,
            ),
            (
                K::UnableToSendCommand,
                "connection closed",
                Failure::Unavailable,
            ),
            (K::ClosedConnection, "", Failure::Unavailable),
            (
                K::SerializationFailure,
                "could not serialize access",
                Failure::Unavailable,
            ),
            (
                K::ReadOnlyTransaction,
                "cannot execute INSERT in a read-only transaction",
                Failure::Unavailable,
            ),
            (K::UniqueViolation, "duplicate key value", Failure::Internal),
            (
                K::CheckViolation,
                "violates check constraint",
                Failure::Internal,
            ),
        ];
        for (kind, message, want) in cases {
            assert_eq!(classify(&db(kind, message)), want, "{message}");
        }
        assert_eq!(
            classify(&diesel::result::Error::NotFound),
            Failure::Internal
        );
    }

    #[test]
    fn errors_carry_their_class() {
        let err = Error::from(db(DatabaseErrorKind::Unknown, "database or disk is full"));
        assert_eq!(err.failure(), Some(Failure::Full));
        assert!(err.is_unavailable());
        assert!(
            Error::from(db(
                DatabaseErrorKind::Unknown,
                "terminating connection due to administrator command"
            ))
            .loses_connection()
        );
        assert!(
            !Error::from(db(
                DatabaseErrorKind::Unknown,
                "canceling statement due to statement timeout"
            ))
            .loses_connection()
        );
    }
}
