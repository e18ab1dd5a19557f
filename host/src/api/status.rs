//! The one mapping from `model::Error` to a gRPC status and an HTTP status.
//! HTTP codes follow grpc-gateway's mapping of gRPC codes, so REST clients of
//! v0.5.0 see the statuses they saw then.
//!
//! A message can quote names that a client chose (a record's key, a
//! consumer group's), and it often ends up on a terminal as it is (grpcurl,
//! curl, a log of failed calls): every message leaves through [`message`],
//! with the characters that would steer a terminal or reorder a line
//! written out (`model::printable`).

use crate::model::Error;
use crate::model::printable;
use http::StatusCode;
use tonic::Code;

pub fn grpc_code(e: &Error) -> Code {
    match e {
        Error::InvalidArgument { .. } => Code::InvalidArgument,
        Error::NotFound(_) => Code::NotFound,
        Error::VersionConflict { .. } => Code::Aborted,
        Error::Unauthenticated { .. } => Code::Unauthenticated,
        Error::PermissionDenied { .. } => Code::PermissionDenied,
        Error::ResourceExhausted(_) => Code::ResourceExhausted,
        Error::Unavailable(_) => Code::Unavailable,
        Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
        Error::TooLarge(_) => Code::OutOfRange,
        Error::Internal(_) => Code::Internal,
    }
}

pub fn grpc_code_name(e: &Error) -> &'static str {
    match grpc_code(e) {
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::NotFound => "NOT_FOUND",
        Code::Aborted => "ABORTED",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::Unavailable => "UNAVAILABLE",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::OutOfRange => "OUT_OF_RANGE",
        _ => "INTERNAL",
    }
}

pub fn to_status(e: Error) -> tonic::Status {
    if matches!(e, Error::Internal(_)) {
        tracing::error!(error = %e, "internal error");
    }
    tonic::Status::new(grpc_code(&e), message(&e))
}

/// The text a client is sent for `e`: its message, with the characters
/// that would steer a terminal or reorder a line escaped (line breaks and
/// tabs kept).
pub fn message(e: &Error) -> String {
    printable::owned(e.to_string(), printable::printable_message)
}

/// The HTTP status grpc-gateway uses for a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The HTTP status of an error: grpc-gateway's for its code, except a
/// request too large, which is 413 (grpc-gateway's 400 for `OUT_OF_RANGE`
/// would not tell a client that a smaller request would do).
pub fn http_status_of(e: &Error) -> StatusCode {
    match e {
        Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        e => http_status(grpc_code(e)),
    }
}

/// The JSON error body of the REST API, as grpc-gateway writes it.
pub fn error_body(e: &Error) -> serde_json::Value {
    serde_json::json!({
        "code": grpc_code(e) as i32,
        "message": message(e),
        "details": [],
    })
}
