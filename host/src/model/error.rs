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

    /// The caller's credential was refused; `reason` says why, for metrics
    /// and the `WWW-Authenticate` challenge.
    #[error("unauthenticated: {message}")]
    Unauthenticated { reason: TokenRefusal, message: String },

    /// The caller may not do this; `reason` says who decided.
    #[error("permission denied: {message}")]
    PermissionDenied { reason: Denial, message: String },

    /// A limit was reached (rate, concurrent streams, a slow consumer).
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),

    /// A backend (storage, channel, wasm guest) cannot serve the call now;
    /// the client may retry.
    #[error("unavailable: {0}")]
    Unavailable(String),

    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),

    /// A request larger than the gateway accepts
    /// (STATEGATE_MAX_MESSAGE_BYTES): gRPC `OUT_OF_RANGE`, HTTP 413.
    #[error("too large: {0}")]
    TooLarge(String),

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

    pub fn denied(reason: Denial, message: impl Into<String>) -> Self {
        Error::PermissionDenied {
            reason,
            message: message.into(),
        }
    }

    pub fn unavailable(what: impl std::fmt::Display) -> Self {
        Error::Unavailable(what.to_string())
    }

    /// The same error, its message followed by `(where_)`: the place a
    /// backend error happened, added without repeating the error's kind.
    pub fn at(self, where_: impl std::fmt::Display) -> Self {
        match self {
            Error::Unavailable(m) => Error::Unavailable(format!("{m} ({where_})")),
            Error::Internal(m) => Error::Internal(format!("{m} ({where_})")),
            Error::DeadlineExceeded(m) => Error::DeadlineExceeded(format!("{m} ({where_})")),
            other => other,
        }
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
            Error::Unauthenticated { .. } => "unauthenticated",
            Error::PermissionDenied { .. } => "permission_denied",
            Error::ResourceExhausted(_) => "resource_exhausted",
            Error::Unavailable(_) => "unavailable",
            Error::DeadlineExceeded(_) => "deadline_exceeded",
            Error::TooLarge(_) => "too_large",
            Error::Internal(_) => "internal",
        }
    }
}

/// Why a token was refused: the client-facing message (which never holds
/// key material) and the `reason` label of `auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    Missing,
    Malformed,
    Algorithm,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    Claims,
}

impl TokenRefusal {
    pub const ALL: [TokenRefusal; 10] = [
        TokenRefusal::Missing,
        TokenRefusal::Malformed,
        TokenRefusal::Algorithm,
        TokenRefusal::UnknownKey,
        TokenRefusal::BadSignature,
        TokenRefusal::Expired,
        TokenRefusal::NotYetValid,
        TokenRefusal::Issuer,
        TokenRefusal::Audience,
        TokenRefusal::Claims,
    ];

    pub fn label(self) -> &'static str {
        match self {
            TokenRefusal::Missing => "missing",
            TokenRefusal::Malformed => "malformed",
            TokenRefusal::Algorithm => "algorithm",
            TokenRefusal::UnknownKey => "unknown_key",
            TokenRefusal::BadSignature => "bad_signature",
            TokenRefusal::Expired => "expired",
            TokenRefusal::NotYetValid => "not_yet_valid",
            TokenRefusal::Issuer => "issuer",
            TokenRefusal::Audience => "audience",
            TokenRefusal::Claims => "claims",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            TokenRefusal::Missing => "no bearer token (expected the header `authorization: Bearer <JWT>`)",
            TokenRefusal::Malformed => "the token is not a well-formed JWT",
            TokenRefusal::Algorithm => "the token's algorithm is not accepted",
            TokenRefusal::UnknownKey => "the token's key id (kid) is not known",
            TokenRefusal::BadSignature => "the token's signature does not verify",
            TokenRefusal::Expired => "the token has expired",
            TokenRefusal::NotYetValid => "the token is not valid yet (nbf)",
            TokenRefusal::Issuer => "the token's issuer is not accepted",
            TokenRefusal::Audience => "the token's audience is not accepted",
            TokenRefusal::Claims => "the token's claims are invalid",
        }
    }

    /// The error carrying this refusal and its standard message.
    pub fn error(self) -> Error {
        Error::Unauthenticated {
            reason: self,
            message: self.message().to_owned(),
        }
    }
}

/// Who refused a call: the `reason` label of `policy_denials_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// A Rego policy's `allow` was not true (or no policy allows anything:
    /// deny by default).
    Policy,
    /// A Rego policy failed to evaluate; the call is denied and it is logged.
    PolicyError,
    /// A tenant's wasm policy hook denied.
    Hook,
    /// A wasm guest used a capability it was not granted.
    NotGranted,
    /// A browser rule (`api::browser`): a foreign origin or host name while
    /// authentication is off.
    Browser,
}

impl Denial {
    pub fn label(self) -> &'static str {
        match self {
            Denial::Policy | Denial::Hook => "denied",
            Denial::PolicyError => "evaluation_error",
            Denial::NotGranted => "not_granted",
            Denial::Browser => "browser",
        }
    }
}

/// A configuration value that cannot work, named by its variable and its
/// flag (`STATEGATE_MAX_STREAMS (--max-streams): must be at least 1`), so
/// whoever set it either way finds it.
#[derive(Debug, thiserror::Error)]
#[error("{variable} ({}): {problem}", flag_of(variable))]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl ConfigError {
    pub fn new(variable: &'static str, problem: impl Into<String>) -> Self {
        ConfigError {
            variable,
            problem: problem.into(),
        }
    }

    /// The command-line flag of the variable.
    pub fn flag(&self) -> String {
        flag_of(self.variable)
    }
}

/// Settings whose flag is not their variable renamed (lists take plurals).
const FLAG_EXCEPTIONS: [(&str, &str); 2] =
    [("STATEGATE_JWT_ISSUER", "--jwt-issuers"), ("STATEGATE_JWT_AUDIENCE", "--jwt-audiences")];

/// `STATEGATE_MAX_STREAMS` → `--max-streams`: a setting's flag is its
/// variable's name that way, but for `FLAG_EXCEPTIONS` (a test in `config`
/// holds every flag to this).
pub fn flag_of(variable: &str) -> String {
    if let Some((_, flag)) = FLAG_EXCEPTIONS.iter().find(|(v, _)| *v == variable) {
        return (*flag).to_owned();
    }
    let name = variable.strip_prefix("STATEGATE_").unwrap_or(variable);
    format!("--{}", name.to_ascii_lowercase().replace('_', "-"))
}

