//! The one error type of the gateway. Providers, auth and the pipeline return
//! it; the API adapters map it to a gRPC status and an HTTP status in one place
//! (`api::status`), so every transport reports a failure the same way.

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Error, PartialEq)]
pub enum Error {
    /// The request is malformed; `field` names the offending field.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },

    #[error("{0} not found")]
    NotFound(String),

    /// An expected version did not match: nothing was written.
    #[error("version conflict on {record}: expected {expected}, current {current}")]
    VersionConflict {
        record: String,
        expected: String,
        current: String,
    },

    #[error("unauthenticated: {0}")]
    Unauthenticated(String),

    #[error("permission denied: {0}")]
    PermissionDenied(String),

    /// A limit was reached (rate, concurrent streams, a slow consumer).
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),

    /// A backend (storage, channel, wasm guest) cannot serve the call now;
    /// the client may retry.
    #[error("unavailable: {0}")]
    Unavailable(String),

    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),

    /// A bug or a corrupt store: never the client's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn unavailable(what: impl std::fmt::Display) -> Self {
        Error::Unavailable(what.to_string())
    }

    pub fn internal(what: impl std::fmt::Display) -> Self {
        Error::Internal(what.to_string())
    }

    /// A short stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidArgument { .. } => "invalid_argument",
            Error::NotFound(_) => "not_found",
            Error::VersionConflict { .. } => "version_conflict",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::PermissionDenied(_) => "permission_denied",
            Error::ResourceExhausted(_) => "resource_exhausted",
            Error::Unavailable(_) => "unavailable",
            Error::DeadlineExceeded(_) => "deadline_exceeded",
            Error::Internal(_) => "internal",
        }
    }
}
