//! REST: the v0.5.0 routes with grpc-gateway's JSON mapping (see
//! `gateway::request` for how bodies and query parameters are read).
//! Unknown body fields and query parameters are discarded, as grpc-gateway
//! v2 did; a known field of the wrong type is a 400 naming it.
//!
//! `GET /api/events/stream` writes one JSON object per line
//! (`{"result": Event}`, or `{"error": {...}}` when it ends on an error), or
//! Server-Sent Events when the client accepts `text/event-stream`; an SSE
//! client that reconnects with `Last-Event-ID` resumes after that event.

use super::{measured, metadata, status};
use crate::gateway::{self as gw, Gateway, methods};
use crate::model::{AtSeq, Error, Event, Result, json};
use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, RawQuery, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use std::sync::Arc;

type Api = State<Arc<Gateway>>;
type RecordPath = Path<(String, String, String)>;

pub fn routes(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route(
            "/api/state/ref/{domain}/{type}/{key}",
            post(set).get(get_state).delete(del).patch(edit),
        )
        .route("/api/state/ref/{domain}/{type}/{key}/revert", post(revert))
        .route("/api/state/search", get(search_states))
        .route("/api/events/search", get(search_events))
        .route("/api/events/stream", get(stream))
        .route("/api/events/ref/{id}", get(get_event))
        .route("/api/catalog", get(catalog))
        .route("/api/events/ack", post(ack))
        .route("/api/events/parked", post(parked))
        .with_state(gateway)
}

/// A gateway result as a REST response: JSON on success, grpc-gateway's
/// error body and HTTP status otherwise.
fn respond<T>(result: Result<T>, to_json: impl FnOnce(&T) -> Value) -> Response {
    match result {
        Ok(out) => (StatusCode::OK, axum::Json(to_json(&out))).into_response(),
        Err(e) => error_response(&e),
    }
}

pub(crate) fn error_response(e: &Error) -> Response {
    let mut response = (status::http_status_of(e), axum::Json(status::error_body(e))).into_response();
    if let Error::Unauthenticated { reason, .. } = e {
        // RFC 6750: a request without a token gets the bare challenge.
        let challenge = if *reason == crate::model::TokenRefusal::Missing {
            "Bearer"
        } else {
            "Bearer error=\"invalid_token\""
        };
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, http::HeaderValue::from_static(challenge));
    }
    response
}

/// A request body as read (within STATEGATE_MAX_MESSAGE_BYTES) or why it
/// could not be: handlers take the rejection so it becomes an error in the
/// API's envelope, after the token was checked.
type BodyBytes = std::result::Result<Bytes, BytesRejection>;

/// Reads a JSON object body; an empty body is an empty object.
fn body(bytes: &BodyBytes) -> Result<Map<String, Value>> {
    let bytes = match bytes {
        Ok(b) => b,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(Error::TooLarge(
                "the request body is larger than this gateway accepts (STATEGATE_MAX_MESSAGE_BYTES)".into(),
            ));
        }
        Err(r) => return Err(Error::invalid("body", r.body_text())),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    json::check_value_count("body", bytes)?;
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(Error::invalid(
            "body",
            format!("must be a JSON object, got {}", crate::model::query::type_name(&other)),
        )),
        Err(e) => Err(Error::invalid("body", format!("not valid JSON: {e}"))),
    }
}

/// Query parameters as a JSON object of strings (booleans where the
/// request has a boolean field), read by the same rules as a body.
fn query_map(raw: Option<&str>) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_decode(&s.replace('+', " "))
                .ok_or_else(|| Error::invalid(k, "is not valid percent-encoded UTF-8"))
        };
        let (k, v) = (decode(k)?, decode(v)?);
        let value = match (k.as_str(), v.as_str()) {
            ("sortDescending" | "sort_descending" | "sort.reverse", "true" | "1") => Value::Bool(true),
            ("sortDescending" | "sort_descending" | "sort.reverse", "false" | "0" | "") => Value::Bool(false),
            _ => Value::String(v),
        };
        // A repeated field takes the parameter once per value.
        if k == "kinds" {
            if let Value::Array(list) = out.entry("kinds").or_insert_with(|| Value::Array(vec![])) {
                list.push(value);
            }
            continue;
        }
        // A field of a message field, as grpc-gateway names it: `sort.field`.
        if let Some(sub) = k.strip_prefix("sort.") {
            if let Value::Object(sort) = out.entry("sort").or_insert_with(|| Value::Object(Map::new())) {
                sort.insert(sub.to_owned(), value);
            }
            continue;
        }
        out.insert(k, value);
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Builds a request from JSON fields plus the path's record parts. Fields
/// the request does not have are discarded, as grpc-gateway v2 (v0.5.0's
/// REST layer) discarded unknown body fields and query parameters, so a
/// client sending a newer or older message keeps working; a known field of
/// the wrong type is an error naming that field.
fn request<T: DeserializeOwned>(mut fields: Map<String, Value>, record: Option<(String, String, String)>) -> Result<T> {
    if let Some((domain, ty, key)) = record {
        fields.insert("domain".into(), domain.into());
        fields.insert("type".into(), ty.into());
        fields.insert("key".into(), key.into());
    }
    serde_path_to_error::deserialize(Value::Object(fields)).map_err(|e| {
        let field = match e.path().to_string() {
            p if p == "." || p == "?" => "request".to_owned(),
            p => p,
        };
        Error::invalid(field, e.into_inner().to_string())
    })
}

fn event_json(e: &Event) -> Value {
    json::event(e)
}

async fn set(State(gw): Api, Path(rec): RecordPath, headers: HeaderMap, bytes: BodyBytes) -> Response {
    let call = async {
        let md = metadata(&gw, &headers);
        gw.verify_token(methods::STATE_SET, &md).await?;
        let req: gw::SetRequest = request(body(&bytes)?, Some(rec))?;
        gw.set(md, req).await
    };
    respond(measured(gw.metrics(), methods::STATE_SET, call).await, event_json)
}

async fn get_state(State(gw): Api, Path(rec): RecordPath, RawQuery(q): RawQuery, headers: HeaderMap) -> Response {
    let call = async {
        let req: gw::RefRequest = request(query_map(q.as_deref())?, Some(rec))?;
        let read = gw.get(metadata(&gw, &headers), req).await?;
        Ok(AtSeq { value: read.value.into_state()?, seq: read.seq })
    };
    respond(measured(gw.metrics(), methods::STATE_GET, call).await, |read| {
        let mut state = json::state(&read.value);
        state["sequence"] = read.seq.to_string().into();
        state
    })
}

async fn del(State(gw): Api, Path(rec): RecordPath, RawQuery(q): RawQuery, headers: HeaderMap) -> Response {
    let call = async {
        let req: gw::RefRequest = request(query_map(q.as_deref())?, Some(rec))?;
        gw.del(metadata(&gw, &headers), req).await
    };
    respond(measured(gw.metrics(), methods::STATE_DEL, call).await, event_json)
}

/// `PATCH`: the body is the merge patch itself (`body: "patch"`); other
/// fields come as query parameters.
async fn edit(State(gw): Api, Path(rec): RecordPath, RawQuery(q): RawQuery, headers: HeaderMap, bytes: BodyBytes) -> Response {
    let call = async {
        let md = metadata(&gw, &headers);
        gw.verify_token(methods::STATE_EDIT, &md).await?;
        let mut fields = query_map(q.as_deref())?;
        fields.insert("patch".into(), Value::Object(body(&bytes)?));
        let req: gw::EditRequest = request(fields, Some(rec))?;
        gw.edit(md, req).await
    };
    respond(measured(gw.metrics(), methods::STATE_EDIT, call).await, event_json)
}

async fn revert(State(gw): Api, Path(rec): RecordPath, headers: HeaderMap, bytes: BodyBytes) -> Response {
    let call = async {
        let md = metadata(&gw, &headers);
        gw.verify_token(methods::STATE_REVERT, &md).await?;
        let req: gw::RevertRequest = request(body(&bytes)?, Some(rec))?;
        gw.revert(md, req).await
    };
    respond(measured(gw.metrics(), methods::STATE_REVERT, call).await, event_json)
}

async fn search_states(State(gw): Api, RawQuery(q): RawQuery, headers: HeaderMap) -> Response {
    let call = async {
        let req: gw::SearchStatesRequest = request(query_map(q.as_deref())?, None)?;
        gw.search_states(metadata(&gw, &headers), req).await
    };
    respond(measured(gw.metrics(), methods::STATE_SEARCH, call).await, |read| {
        json!({
            "stateValues": read.value.iter().map(json::state).collect::<Vec<_>>(),
            "sequence": read.seq.to_string(),
        })
    })
}

async fn search_events(State(gw): Api, RawQuery(q): RawQuery, headers: HeaderMap) -> Response {
    let call = async {
        let req: gw::SearchEventsRequest = request(query_map(q.as_deref())?, None)?;
        gw.search_events(metadata(&gw, &headers), req).await
    };
    respond(measured(gw.metrics(), methods::EVENT_SEARCH, call).await, |events| {
        json!({ "events": events.iter().map(json::event).collect::<Vec<_>>() })
    })
}

async fn get_event(State(gw): Api, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let call = gw.get_event(metadata(&gw, &headers), gw::EventRefRequest { id });
    respond(measured(gw.metrics(), methods::EVENT_GET, call).await, event_json)
}

async fn catalog(State(gw): Api, RawQuery(q): RawQuery, headers: HeaderMap) -> Response {
    let call = async {
        let req: gw::CatalogRequest = request(query_map(q.as_deref())?, None)?;
        gw.catalog(metadata(&gw, &headers), req).await
    };
    respond(measured(gw.metrics(), methods::CATALOG_LIST, call).await, json::catalog)
}

async fn ack(State(gw): Api, headers: HeaderMap, bytes: BodyBytes) -> Response {
    let call = async {
        let md = metadata(&gw, &headers);
        gw.verify_token(methods::EVENT_ACK, &md).await?;
        let req: gw::AckRequest = request(body(&bytes)?, None)?;
        gw.ack(md, req).await
    };
    respond(measured(gw.metrics(), methods::EVENT_ACK, call).await, |out| {
        json!({ "applied": out.applied, "unknown": out.unknown })
    })
}

async fn parked(State(gw): Api, headers: HeaderMap, bytes: BodyBytes) -> Response {
    let call = async {
        let md = metadata(&gw, &headers);
        gw.verify_token(methods::EVENT_PARKED, &md).await?;
        let req: gw::ParkedRequest = request(body(&bytes)?, None)?;
        gw.parked(md, req).await
    };
    respond(measured(gw.metrics(), methods::EVENT_PARKED, call).await, |(parked, replayed)| {
        json!({
            "parked": parked.iter().map(|(e, n)| json!({"event": json::event(e), "deliveries": n.to_string()})).collect::<Vec<_>>(),
            "replayed": replayed,
        })
    })
}

/// A streamed event as proto3 JSON, with the stream's resume point.
fn stream_event(e: &crate::hub::SharedEvent) -> Value {
    let mut v = json::event(e);
    if let Some(resume) = e.resume_after {
        v["resumeAfter"] = resume.to_string().into();
    }
    v
}

async fn stream(State(gw): Api, RawQuery(q): RawQuery, headers: HeaderMap) -> Response {
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let call = async {
        let mut req: gw::StreamRequest = request(query_map(q.as_deref())?, None)?;
        if let Some(last) = headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
            // A group resumes at its own position, not after an event.
            if req.after_event_id.is_empty() && req.group.is_empty() {
                req.after_event_id = last.to_owned();
            }
        }
        gw.stream(metadata(&gw, &headers), req).await
    };
    let events = match measured(gw.metrics(), methods::EVENT_STREAM, call).await {
        Ok(events) => events,
        Err(e) => return error_response(&e),
    };
    let (content_type, frames) = if sse {
        let frames = events.map(|item| {
            Ok::<_, std::convert::Infallible>(Bytes::from(match item {
                Ok(e) => format!("id: {}\nevent: event\ndata: {}\n\n", e.id, stream_event(&e)),
                Err(e) => format!("event: error\ndata: {}\n\n", status::error_body(&e)),
            }))
        });
        ("text/event-stream", frames.boxed())
    } else {
        let frames = events.map(|item| {
            let line = match item {
                Ok(e) => json!({ "result": stream_event(&e) }),
                Err(e) => json!({ "error": status::error_body(&e) }),
            };
            Ok::<_, std::convert::Infallible>(Bytes::from(format!("{line}\n")))
        });
        ("application/x-ndjson", frames.boxed())
    };
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(frames))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        let m = query_map(Some("domain=a%20b&query_string=%7B%22x%22%3A1%7D&sort_descending=true&limit=5")).unwrap();
        assert_eq!(m["domain"], json!("a b"));
        assert_eq!(m["query_string"], json!("{\"x\":1}"));
        assert_eq!(m["sort_descending"], json!(true));
        let m = query_map(Some("sort.field=values.n&sort.reverse=1")).unwrap();
        assert_eq!(m["sort"], json!({"field": "values.n", "reverse": true}));
        assert!(query_map(Some("domain=%ff")).is_err());
        assert!(query_map(Some("domain=%4")).is_err());
    }

    #[test]
    fn unknown_fields_are_discarded_and_wrong_types_named() {
        let m = query_map(Some("domain=d&type=t&limit=5&bogus=1&queryStrng=x")).unwrap();
        let r: gw::SearchStatesRequest = request(m, None).unwrap();
        assert_eq!((r.domain.as_str(), r.limit), ("d", 5));
        let body = json!({"values": {"a": 1}, "extra": {"nested": true}, "expectedVersion": "2"});
        let r: gw::SetRequest = request(body.as_object().unwrap().clone(), Some(("d".into(), "t".into(), "k".into()))).unwrap();
        assert_eq!((r.key.as_str(), r.expected_version), ("k", Some(2)));
        let e = request::<gw::SearchStatesRequest>(query_map(Some("limit=x")).unwrap(), None).unwrap_err().to_string();
        assert!(e.contains("limit"), "{e}");
        let body = json!({"values": "not an object"});
        let e = request::<gw::SetRequest>(body.as_object().unwrap().clone(), None).unwrap_err().to_string();
        assert!(e.contains("values"), "{e}");
        let e = request::<gw::SearchStatesRequest>(query_map(Some("sortDescending=maybe")).unwrap(), None).unwrap_err().to_string();
        assert!(e.contains("sortDescending"), "{e}");
    }
}
