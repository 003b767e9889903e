//! The admin API's client (hyper, one request per connection, on a small runtime of its own):
//! what `weir status` and `weir plugin list|swap|rollback` use. Every step has a deadline, so a
//! weir that accepts but never answers is reported rather than waited on.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a question (`GET`) may take, answer included: the server answers within about a
/// second even when the engine is busy.
pub const GET_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a change (`POST`) may take: a swap loads, compiles and starts the new version first
/// (an interpreter-carrying component can take a while on a small gateway).
pub const POST_TIMEOUT: Duration = Duration::from_secs(300);
/// The largest answer read.
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

/// A response: status code, content type and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.body).with_context(|| {
            format!(
                "the admin API answered {}: {}",
                self.status,
                crate::fsutil::elide(self.body.trim(), 200)
            )
        })
    }
}

/// `GET path` from the admin API at `addr` (`host:port`).
pub fn get(addr: &str, path: &str) -> anyhow::Result<Response> {
    request(addr, Method::GET, path, None, None)
}

/// `POST path` with a JSON body, and the token (as `Authorization: Bearer`) if given.
pub fn post(
    addr: &str,
    path: &str,
    token: Option<&str>,
    body: &serde_json::Value,
) -> anyhow::Result<Response> {
    request(addr, Method::POST, path, token, Some(body.to_string()))
}

fn request(
    addr: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> anyhow::Result<Response> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the admin API client")?;
    let timeout = if method == Method::GET {
        GET_TIMEOUT
    } else {
        POST_TIMEOUT
    };
    let what = format!("{method} {path}");
    runtime.block_on(async {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow::anyhow!("no connection within {CONNECT_TIMEOUT:?}"))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .with_context(|| {
                format!(
                    "cannot reach weir's admin API at {addr}: is weir running, and is [admin] \
                     listen this address (--admin)?"
                )
            })?;
        tokio::time::timeout(timeout, exchange(stream, addr, method, path, token, body))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "weir's admin API at {addr} did not answer {what} within {} s",
                    timeout.as_secs()
                )
            })?
            .with_context(|| format!("{what} to weir's admin API at {addr}"))
    })
}

async fn exchange(
    stream: tokio::net::TcpStream,
    addr: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> anyhow::Result<Response> {
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr)
        .header(header::CONNECTION, "close");
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    if let Some(t) = token {
        let mut value = HeaderValue::from_str(&format!("Bearer {t}"))
            .context("the admin token is not valid in an HTTP header")?;
        value.set_sensitive(true);
        request = request.header(header::AUTHORIZATION, value);
    }
    let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
        .to_bytes();
    connection.abort();
    Ok(Response {
        status,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
