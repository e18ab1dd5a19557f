//! The client's `grpc-timeout`: a gRPC call (grpc-web included) ends with
//! `DEADLINE_EXCEEDED` when its deadline passes. A unary call whose answer
//! has not begun by then gets that status instead; a server stream that is
//! still open gets it as its trailers and ends, releasing its slot, as the
//! gRPC spec asks of servers (tonic's own timeout layer bounds only the
//! start of a response, and is not in this stack anyway).

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use futures::future::{BoxFuture, Either};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Layer of the gRPC services: a call with a `grpc-timeout` gets the
/// deadline above; one without goes on as it came. A plain tower service,
/// not `axum::middleware::from_fn`: that clones and boxes the inner
/// service and boxes a future for every call, and every gRPC call passes
/// here (BENCHMARKS.md session 29).
pub fn layer<S>() -> impl tower::Layer<S, Service = Deadline<S>> + Clone {
    tower::layer::layer_fn(|inner| Deadline { inner })
}

/// The service [`layer`] wraps the gRPC services in.
#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S: super::HttpService> tower::Service<Request> for Deadline<S> {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The gRPC services are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Some(timeout) = request.headers().get("grpc-timeout").and_then(|v| parse(v.to_str().ok()?)) else {
            return Either::Left(self.inner.call(request));
        };
        let deadline = Instant::now() + timeout;
        let call = self.inner.call(request);
        Either::Right(Box::pin(async move {
            Ok(match tokio::time::timeout_at(deadline, call).await {
                Ok(Ok(response)) => response.map(|body| {
                    Body::new(Bounded {
                        body: Some(body),
                        deadline: Box::pin(tokio::time::sleep_until(deadline)),
                        timeout,
                    })
                }),
                Ok(Err(never)) => match never {},
                Err(_) => exceeded(timeout).into_http::<Body>(),
            })
        }))
    }
}

fn exceeded(timeout: Duration) -> tonic::Status {
    tonic::Status::deadline_exceeded(format!("the call's deadline (grpc-timeout {timeout:?}) passed"))
}

/// `grpc-timeout`: 1 to 8 digits and a unit (H M S m u n). A malformed
/// value is ignored, as if absent.
fn parse(text: &str) -> Option<Duration> {
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A response body that ends with `DEADLINE_EXCEEDED` trailers when the
/// deadline passes before it ended by itself.
struct Bounded {
    /// `None` once the deadline's trailers were sent (the inner body, a
    /// stream holding its slots, is dropped then).
    body: Option<Body>,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl http_body::Body for Bounded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let Some(body) = self.body.as_mut() else { return Poll::Ready(None) };
        // What the call already produced goes first.
        if let Poll::Ready(frame) = Pin::new(body).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.deadline.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.body = None;
        let mut trailers = http::HeaderMap::new();
        if exceeded(self.timeout).add_header(&mut trailers).is_ok() {
            return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.as_ref().map(|b| b.size_hint()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_as_the_grpc_spec_writes_them() {
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "2", "2s", "123456789S", "-1S", "1.5S"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
