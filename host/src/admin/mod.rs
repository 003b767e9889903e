//! The admin API: a small HTTP/1.1 server on the address `[admin] listen` names (loopback,
//! `127.0.0.1:9464`, by default), and the client `weir status` and `weir plugin list|swap|rollback`
//! use ([`client`]).
//!
//! - `GET /health`: `ok`.
//! - `GET /metrics`: Prometheus text format (`text/plain; version=0.0.4`).
//! - `GET /status`, `GET /plugins`: JSON (what `weir status` and `weir plugin list` show).
//! - `POST /plugins/swap` `{"pipeline", "step", "path", "sha256"?}` and `POST /plugins/rollback`
//!   `{"pipeline", "step"}`: hot swaps; the answer is the engine's report, or
//!   `{"error": "..."}` with 404 (unknown pipeline or step) or 409 (refused: the reason).
//!
//! Security model:
//! - Reading (`/health`, `/metrics`, `/status`, `/plugins`) is open to whoever reaches the
//!   address, which is why it defaults to loopback; bind it elsewhere only on a trusted network.
//! - Anything that changes state needs the token when one is set (`[admin] token_file`'s first
//!   line, or the `WEIR_ADMIN_TOKEN` environment variable) as `Authorization: Bearer <token>`,
//!   compared in constant time; without a token, changes are open to whoever reaches the address.
//! - Changes must be `Content-Type: application/json` and carry no `Origin` header, so that a web
//!   page in a browser on the gateway cannot post one (a cross-site request with JSON needs a
//!   CORS preflight, which this server never grants).
//! - A swap names a file on the gateway, which weir loads (with its sha256 checked when given):
//!   the token guards what code runs.
//! - Requests are limited to 64 KiB and must arrive within 10 s; one request per connection, at
//!   most 64 connections at a time.

pub mod client;

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The largest request accepted.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// How long a client has to send its whole request.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How many connections are served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 64;

/// What the admin API asks of a running weir. Implemented by the engine. All methods are called
/// on tokio's blocking threads (`spawn_blocking`); a swap may take a few seconds.
pub trait Control: Send + Sync + 'static {
    /// Pipelines: name, guarantee, watermark per source, open windows, keys, outbox depth and
    /// bytes, uplink state, last checkpoint. Free-form JSON that `weir status` renders.
    fn status(&self) -> Value;
    /// One object per plugin step: `{"pipeline", "step", "plugin" (file), "sha256", "world",
    /// "version" (contract version), "calls", "errors", "time_ms", "limit_hits",
    /// "quarantined_until_ms" (or null), "previous_sha256" (or null)}`.
    fn plugins(&self) -> Value;
    /// Prometheus metrics, already in the text exposition format (see [`Prometheus`]).
    fn metrics(&self) -> String;
    /// Swaps the plugin of a step: blocks until the engine switched (or refused). Ok: a JSON
    /// report (old and new sha256, pause...). Err: why, shown to the user; an Err starting with
    /// "unknown" (pipeline or step) answers 404, any other 409.
    fn swap(
        &self,
        pipeline: &str,
        step: &str,
        path: &Path,
        sha256: Option<&str>,
    ) -> Result<Value, String>;
    /// Swaps back to the version that ran before the last swap.
    fn rollback(&self, pipeline: &str, step: &str) -> Result<Value, String>;
}

/// Serves until `shutdown` turns true (or its sender is dropped). The caller binds `listener`, so
/// that a bad address is an error at start, naming it.
pub async fn serve(
    listener: TcpListener,
    token: Option<String>,
    control: Arc<dyn Control>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let token: Option<Arc<str>> = token.map(Arc::from);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            accepted = async {
                let slot = slots.clone().acquire_owned().await;
                (slot, listener.accept().await)
            } => {
                let (Ok(slot), Ok((stream, _))) = accepted else {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                let control = control.clone();
                let token = token.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, token.as_deref(), control).await {
                        tracing::debug!(error = %e, "admin connection");
                    }
                    drop(slot);
                });
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return Ok(());
                }
            }
        }
    }
}

/// A parsed request.
#[derive(Debug, PartialEq)]
struct Request {
    method: String,
    path: String,
    authorization: Option<String>,
    content_type: Option<String>,
    origin: bool,
    body: Vec<u8>,
}

/// Reads one request: the head, then `Content-Length` bytes of body.
async fn read_request(stream: &mut TcpStream) -> Result<Request, (u16, String)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Err((413, "the request is over 64 KiB".into()));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| (400, e.to_string()))?;
        if n == 0 {
            return Err((400, "the connection closed mid-request".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| (400, "the request head is not UTF-8".to_owned()))?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    let (method, path) = match (first.next(), first.next()) {
        (Some(m), Some(p)) => (m.to_owned(), p.to_owned()),
        _ => return Err((400, "not an HTTP request".into())),
    };
    let mut length = 0usize;
    let mut authorization = None;
    let mut content_type = None;
    let mut origin = false;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => {
                    length = value
                        .parse()
                        .map_err(|_| (400, "bad Content-Length".to_owned()))?
                }
                "authorization" => authorization = Some(value.to_owned()),
                "content-type" => content_type = Some(value.to_ascii_lowercase()),
                "origin" => origin = true,
                "transfer-encoding" => {
                    return Err((411, "send the body with a Content-Length".into()));
                }
                _ => {}
            }
        }
    }
    if head_end + length > MAX_REQUEST_BYTES {
        // Read (a bounded amount of) the body anyway, so the client sees the answer rather than
        // a reset connection.
        let mut left = (head_end + length - buf.len()).min(1 << 20);
        let drain = async {
            while left > 0 {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
        return Err((413, "the request is over 64 KiB".into()));
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| (400, e.to_string()))?;
        if n == 0 {
            return Err((400, "the connection closed mid-body".into()));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Request {
        method,
        path,
        authorization,
        content_type,
        origin,
        body,
    })
}

/// Whether `given` (an Authorization header) carries `token`, compared in constant time.
fn authorized(token: Option<&str>, given: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    let Some(given) = given
        .and_then(|g| g.trim_start().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t)
    else {
        return false;
    };
    let (a, b) = (token.as_bytes(), given.trim().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn connection(
    mut stream: TcpStream,
    token: Option<&str>,
    control: Arc<dyn Control>,
) -> std::io::Result<()> {
    let request = tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream))
        .await
        .unwrap_or_else(|_| Err((408, "the request did not arrive in time".into())));
    let (status, content_type, body) = match request {
        Ok(request) => respond(request, token, control).await,
        Err((status, message)) => (status, JSON, json!({ "error": message }).to_string()),
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await?;
    // A lingering close: read what the client still sends (a body not read after an early
    // answer) until it closes, briefly, so that closing does not reset the connection and lose
    // the answer.
    let mut sink = [0u8; 4096];
    let mut left = MAX_REQUEST_BYTES;
    let drain = async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
    Ok(())
}

const JSON: &str = "application/json";

async fn respond(
    request: Request,
    token: Option<&str>,
    control: Arc<dyn Control>,
) -> (u16, &'static str, String) {
    let blocking = |f: Box<dyn FnOnce() -> Value + Send>| tokio::task::spawn_blocking(f);
    let path = request
        .path
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned();
    match (request.method.as_str(), path.as_str()) {
        ("GET", "/health") => (200, "text/plain", "ok\n".into()),
        ("GET", "/metrics") => {
            let c = control.clone();
            let text = tokio::task::spawn_blocking(move || c.metrics())
                .await
                .unwrap_or_default();
            (200, "text/plain; version=0.0.4", text)
        }
        ("GET", "/status") => {
            let c = control.clone();
            let v = blocking(Box::new(move || c.status()))
                .await
                .unwrap_or(Value::Null);
            (200, JSON, v.to_string())
        }
        ("GET", "/plugins") => {
            let c = control.clone();
            let v = blocking(Box::new(move || c.plugins()))
                .await
                .unwrap_or(Value::Null);
            (200, JSON, v.to_string())
        }
        ("POST", "/plugins/swap" | "/plugins/rollback") => {
            if request.origin {
                let e = "changes are not accepted from web pages (the request has an Origin)";
                return (403, JSON, json!({ "error": e }).to_string());
            }
            if !authorized(token, request.authorization.as_deref()) {
                let e = "a token is required: send `Authorization: Bearer <token>` (the token is \
                         [admin] token_file's first line, or WEIR_ADMIN_TOKEN)";
                return (401, JSON, json!({ "error": e }).to_string());
            }
            let json_body = request
                .content_type
                .as_deref()
                .is_some_and(|t| t.split(';').next().map(str::trim) == Some("application/json"));
            if !json_body {
                let e = "the body must be JSON, sent as `Content-Type: application/json`";
                return (415, JSON, json!({ "error": e }).to_string());
            }
            let body: Value = match serde_json::from_slice(&request.body) {
                Ok(v) => v,
                Err(e) => {
                    return (
                        400,
                        JSON,
                        json!({ "error": format!("the body is not JSON: {e}") }).to_string(),
                    );
                }
            };
            let field = |k: &str| body[k].as_str().map(str::to_owned);
            let (Some(pipeline), Some(step)) = (field("pipeline"), field("step")) else {
                return (
                    400,
                    JSON,
                    json!({ "error": "\"pipeline\" and \"step\" are required" }).to_string(),
                );
            };
            let swap = path == "/plugins/swap";
            let (file, sha256) = (field("path"), field("sha256"));
            if swap && file.is_none() {
                return (
                    400,
                    JSON,
                    json!({ "error": "\"path\" (the .wasm file) is required" }).to_string(),
                );
            }
            let c = control.clone();
            let result = tokio::task::spawn_blocking(move || {
                if swap {
                    c.swap(
                        &pipeline,
                        &step,
                        Path::new(&file.unwrap_or_default()),
                        sha256.as_deref(),
                    )
                } else {
                    c.rollback(&pipeline, &step)
                }
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match result {
                Ok(report) => (200, JSON, report.to_string()),
                Err(e) if e.starts_with("unknown") => {
                    (404, JSON, json!({ "error": e }).to_string())
                }
                Err(e) => (409, JSON, json!({ "error": e }).to_string()),
            }
        }
        (
            _,
            "/health" | "/metrics" | "/status" | "/plugins" | "/plugins/swap" | "/plugins/rollback",
        ) => (
            405,
            JSON,
            json!({ "error": "method not allowed" }).to_string(),
        ),
        _ => (
            404,
            JSON,
            json!({ "error": format!("no such endpoint: {path}") }).to_string(),
        ),
    }
}

/// A Prometheus text-format builder (exposition format 0.0.4): counters and gauges with labels;
/// HELP and TYPE once per family (samples of a family are kept together, in the order families
/// first appear); label values and HELP text escaped.
#[derive(Debug, Default)]
pub struct Prometheus {
    families: Vec<(String, String, &'static str, Vec<String>)>,
}

impl Prometheus {
    pub fn new() -> Self {
        Prometheus::default()
    }

    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(name, help, "counter", labels, value);
    }

    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(name, help, "gauge", labels, value);
    }

    fn add(
        &mut self,
        name: &str,
        help: &str,
        kind: &'static str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let labels = if labels.is_empty() {
            String::new()
        } else {
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| {
                    let v = v
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n");
                    format!("{k}=\"{v}\"")
                })
                .collect();
            format!("{{{}}}", inner.join(","))
        };
        let value = match value {
            v if v.is_nan() => "NaN".to_owned(),
            v if v == f64::INFINITY => "+Inf".to_owned(),
            v if v == f64::NEG_INFINITY => "-Inf".to_owned(),
            v => v.to_string(),
        };
        let sample = format!("{name}{labels} {value}");
        match self.families.iter_mut().find(|f| f.0 == name) {
            Some(f) => f.3.push(sample),
            None => self
                .families
                .push((name.to_owned(), help.to_owned(), kind, vec![sample])),
        }
    }

    pub fn render(self) -> String {
        let mut out = String::new();
        for (name, help, kind, samples) in self.families {
            let help = help.replace('\\', "\\\\").replace('\n', "\\n");
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for s in samples {
                out.push_str(&s);
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_help_and_type_once_per_family_and_escapes_labels() {
        let mut p = Prometheus::new();
        p.counter("weir_x_total", "Xs", &[("step", "a\"b")], 1.0);
        p.counter("weir_x_total", "Xs", &[("step", "c")], 2.5);
        p.gauge("weir_y", "Y", &[], 3.0);
        assert_eq!(
            p.render(),
            "# HELP weir_x_total Xs\n# TYPE weir_x_total counter\nweir_x_total{step=\"a\\\"b\"} 1\n\
             weir_x_total{step=\"c\"} 2.5\n# HELP weir_y Y\n# TYPE weir_y gauge\nweir_y 3\n"
        );
    }

    #[test]
    fn prometheus_escapes_help_and_backslashes_and_writes_special_values() {
        let mut p = Prometheus::new();
        p.gauge("g", "a\\b\nc", &[("path", "C:\\x\ny")], f64::NAN);
        p.gauge("g", "ignored: the first HELP stays", &[], f64::INFINITY);
        p.counter("c", "C", &[("a", "1"), ("b", "2")], f64::NEG_INFINITY);
        p.gauge("g", "", &[("k", "v")], -0.5);
        assert_eq!(
            p.render(),
            "# HELP g a\\\\b\\nc\n# TYPE g gauge\ng{path=\"C:\\\\x\\ny\"} NaN\ng +Inf\n\
             g{k=\"v\"} -0.5\n# HELP c C\n# TYPE c counter\nc{a=\"1\",b=\"2\"} -Inf\n"
        );
        assert_eq!(Prometheus::new().render(), "");
    }

    #[test]
    fn requests_are_parsed_with_their_token_content_type_and_body() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let send = |raw: &'static [u8]| async move {
                let mut c = TcpStream::connect(addr).await.unwrap();
                c.write_all(raw).await.unwrap();
                c
            };
            let _c = send(
                b"POST /plugins/swap?x=1 HTTP/1.1\r\nauthorization: Bearer t\r\n\
                  Content-Type: Application/JSON\r\ncontent-length: 4\r\n\r\n{}xyz",
            )
            .await;
            let (mut s, _) = listener.accept().await.unwrap();
            let r = read_request(&mut s).await.unwrap();
            assert_eq!(
                r,
                Request {
                    method: "POST".into(),
                    path: "/plugins/swap?x=1".into(),
                    authorization: Some("Bearer t".into()),
                    content_type: Some("application/json".into()),
                    origin: false,
                    body: b"{}xy".to_vec(),
                }
            );
            let _c = send(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").await;
            let (mut s, _) = listener.accept().await.unwrap();
            assert_eq!(read_request(&mut s).await.unwrap_err().0, 411);
            let _c = send(b"GET / HTTP/1.1\r\nContent-Length: many\r\n\r\n").await;
            let (mut s, _) = listener.accept().await.unwrap();
            assert_eq!(read_request(&mut s).await.unwrap_err().0, 400);
        });
    }

    #[test]
    fn the_token_must_match_exactly() {
        assert!(authorized(None, None));
        assert!(authorized(Some("s3cret"), Some("Bearer s3cret")));
        assert!(!authorized(Some("s3cret"), Some("Bearer s3cre")));
        assert!(!authorized(Some("s3cret"), Some("s3cret")));
        assert!(!authorized(Some("s3cret"), None));
        assert!(!authorized(Some("s3cret"), Some("Bearer ")));
        assert!(!authorized(Some("s3cret"), Some("Basic s3cret")));
        assert!(!authorized(Some("s3cret"), Some("Bearer s3cret2")));
        assert!(authorized(Some("s3cret"), Some("Bearer  s3cret ")));
        assert!(authorized(Some("s3cret"), Some("bearer s3cret")));
    }
}
