//! A bare gRPC caller over one HTTP/2 connection (the `h2` crate), for
//! load that must cost its generator little: each call sends a body
//! encoded once (`Bytes`, shared) and reads the answer's frames, with no
//! tonic channel, tower buffer or message decoding in between.
//!
//! The open-loop scenario needs this. It shares the two cores with the
//! gateway it measures, and a tonic client's `Channel` hands every request
//! through a buffer task, then encodes and decodes the messages. With tonic
//! clients, the rows at 75 % of what h2load reaches measured p50 282 ms
//! for `Get` while the gateway used 0.65 of the two cores: the rest went
//! to the bench's own clients, and the rows measured their queue. h2load
//! itself cannot replace it: it counts a call's latency from when it went
//! out, not from when it was due.
//!
//! A call's outcome is the gRPC status of its trailers (or of its headers,
//! for a trailers-only answer): `0` is success, anything else is an error
//! naming the status and message.

use anyhow::{Context, Result, anyhow, bail};
use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use std::net::SocketAddr;

/// One HTTP/2 connection to a gRPC server.
#[derive(Clone)]
pub struct H2Caller {
    send: SendRequest<Bytes>,
    /// `http://<addr>`, which each call's path follows.
    base: String,
}

/// The streams' and the connection's receive windows.
const WINDOW: u32 = 1 << 20;

/// A request body in gRPC framing: the 5-byte prefix (uncompressed, its
/// length) and the message.
pub fn grpc_body(msg: &impl prost::Message) -> Bytes {
    let mut framed = BytesMut::with_capacity(5 + msg.encoded_len());
    framed.put_u8(0);
    framed.put_u32(msg.encoded_len() as u32);
    msg.encode(&mut framed).expect("a BytesMut grows as needed");
    framed.freeze()
}

impl H2Caller {
    /// Connects and runs the connection on the current runtime.
    pub async fn connect(addr: SocketAddr) -> Result<H2Caller> {
        let tcp = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        // Windows of 1 MiB, as hyper's and tonic's own: with h2's default
        // 64 KiB connection window, h2 closes the connection when more than
        // about 140 small DATA frames wait unread (its budget against
        // floods of them is half the window), which an overloaded
        // generator reaches.
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .handshake(tcp)
            .await
            .with_context(|| format!("HTTP/2 handshake with {addr}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let base = format!("http://{addr}");
        Ok(H2Caller { send, base })
    }

    /// Calls `path` (`/package.Service/Method`) with `body` (see
    /// [`grpc_body`]) and reads the whole answer; `Ok` when its gRPC status
    /// is 0.
    pub async fn call(&self, path: &str, body: Bytes) -> Result<()> {
        let mut send = self.send.clone().ready().await.context("the connection is gone")?;
        let mut request = http::Request::new(());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = http::Uri::try_from([self.base.as_str(), path].concat())?;
        let headers = request.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        let (response, mut stream) = send.send_request(request, false)?;
        stream.send_data(body, true)?;
        let response = response.await?;
        if response.status() != http::StatusCode::OK {
            bail!("HTTP status {}", response.status());
        }
        // A trailers-only answer (an error before any message) carries its
        // status in the headers.
        if let Some(status) = response.headers().get("grpc-status") {
            return grpc_status(status, response.headers().get("grpc-message"));
        }
        let mut answer = response.into_body();
        while let Some(chunk) = answer.data().await {
            let chunk = chunk?;
            let _ = answer.flow_control().release_capacity(chunk.len());
        }
        let trailers = answer.trailers().await?.ok_or_else(|| anyhow!("the answer ended without trailers"))?;
        let status = trailers.get("grpc-status").ok_or_else(|| anyhow!("trailers without grpc-status"))?;
        grpc_status(status, trailers.get("grpc-message"))
    }
}

fn grpc_status(status: &http::HeaderValue, message: Option<&http::HeaderValue>) -> Result<()> {
    if status.as_bytes() == b"0" {
        return Ok(());
    }
    let message = message.map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned()).unwrap_or_default();
    bail!("grpc-status {}: {message}", String::from_utf8_lossy(status.as_bytes()))
}

/// A gateway for a test: on loopback, auth off, its data in a temp dir
/// (kept while the returned guard lives).
#[cfg(test)]
pub(crate) async fn test_gateway() -> (stategate::server::Running, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let mut config = stategate::config::Config::defaults();
    config.auth.auth_disabled = true;
    config.bind = "127.0.0.1".into();
    config.port = 0;
    config.ops_port = Some(0);
    config.data_dir = data.path().to_path_buf();
    (stategate::server::start(config).await.unwrap(), data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_framed_with_its_length() {
        let msg = stategate::proto::StateRef { domain: "d".into(), r#type: "t".into(), key: "k".into(), ..Default::default() };
        let body = grpc_body(&msg);
        assert_eq!(body[0], 0, "uncompressed");
        assert_eq!(u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize, body.len() - 5);
        assert_eq!(prost::Message::decode(&body[5..]), Ok(msg));
    }

    /// Against a gateway: a Set and a Get succeed, a Get of a record that
    /// does not exist fails with its gRPC status, and a call to a method
    /// that does not exist fails too.
    #[tokio::test]
    async fn calls_answer_with_their_grpc_status() {
        use stategate::proto as pb;
        let (gateway, _data) = test_gateway().await;
        let caller = H2Caller::connect(gateway.addr).await.unwrap();
        let values = stategate::api::convert::json_to_struct(serde_json::json!({"n": 1}).as_object().unwrap().clone());
        let state = pb::State { domain: "d".into(), r#type: "t".into(), key: "k".into(), values: Some(values), ..Default::default() };
        caller.call("/stategate.StateService/Set", grpc_body(&state)).await.unwrap();
        let get = |key: &str| grpc_body(&pb::StateRef { domain: "d".into(), r#type: "t".into(), key: key.into(), ..Default::default() });
        caller.call("/stategate.StateService/Get", get("k")).await.unwrap();
        let missing = caller.call("/stategate.StateService/Get", get("absent")).await.unwrap_err().to_string();
        assert!(missing.starts_with("grpc-status 5:"), "{missing}");
        let unknown = caller.call("/stategate.StateService/Nothing", get("k")).await.unwrap_err().to_string();
        assert!(unknown.starts_with("grpc-status 12:"), "{unknown}");
        gateway.shutdown().await;
    }
}
