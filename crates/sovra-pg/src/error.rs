//! Database errors classified by SQLSTATE, so that services map them to
//! their own statuses without matching on message text.

use tokio_postgres::error::SqlState;

/// What kind of failure a database error is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    UniqueViolation,
    ForeignKeyViolation,
    NotNullViolation,
    CheckViolation,
    InsufficientPrivilege,
    /// `22023`: for example a JWT role that does not exist.
    InvalidParameterValue,
    SerializationFailure,
    QueryCanceled,
    /// The server could not be reached or the connection broke.
    Connection,
    Other,
}

/// Whether PostgreSQL refused text it cannot store, such as a NUL character
/// (`22021`) or one the database encoding lacks (`22P05`): the client's
/// input, answered as a bad request.
pub fn is_bad_text(err: &tokio_postgres::Error) -> bool {
    err.code().is_some_and(|code| {
        *code == SqlState::CHARACTER_NOT_IN_REPERTOIRE
            || *code == SqlState::UNTRANSLATABLE_CHARACTER
    })
}

/// Classifies a driver error.
pub fn error_kind(err: &tokio_postgres::Error) -> ErrorKind {
    let Some(code) = err.code() else {
        return ErrorKind::Connection;
    };
    if *code == SqlState::UNIQUE_VIOLATION {
        ErrorKind::UniqueViolation
    } else if *code == SqlState::FOREIGN_KEY_VIOLATION {
        ErrorKind::ForeignKeyViolation
    } else if *code == SqlState::NOT_NULL_VIOLATION {
        ErrorKind::NotNullViolation
    } else if *code == SqlState::CHECK_VIOLATION {
        ErrorKind::CheckViolation
    } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        ErrorKind::InsufficientPrivilege
    } else if *code == SqlState::INVALID_PARAMETER_VALUE {
        ErrorKind::InvalidParameterValue
    } else if *code == SqlState::T_R_SERIALIZATION_FAILURE {
        ErrorKind::SerializationFailure
    } else if *code == SqlState::QUERY_CANCELED {
        ErrorKind::QueryCanceled
    } else if code.code().starts_with("08") || code.code().starts_with("57P") {
        ErrorKind::Connection
    } else {
        ErrorKind::Other
    }
}
