//! The admin API: a small HTTP/1.1 server on the address `[admin] listen` names (loopback by
//! default).
//!
//! - `GET /health`: `ok`.
//! - `GET /metrics`: Prometheus text format.
//! - `GET /status`, `GET /plugins`: JSON (what `weir status` and `weir plugin list` show).
//! - `POST /plugins/swap` `{"pipeline", "step", "path", "sha256"?}` and `POST /plugins/rollback`
//!   `{"pipeline", "step"}`: hot swaps.
//!
//! Security model: reading is open to whoever reaches the address, which is why it defaults to
//! loopback. Anything that changes state needs the token (`[admin] token_file`, or the
//! `WEIR_ADMIN_TOKEN` environment variable) as `Authorization: Bearer <token>` when one is set.
//! Requests are limited to 64 KiB; one request per connection.

pub mod client;

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The largest request accepted.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// What the admin API asks of a running weir.
pub trait Control: Send + Sync + 'static {
    fn status(&self) -> Value;
    fn plugins(&self) -> Value;
    fn metrics(&self) -> String;
    fn swap(
        &self,
        pipeline: &str,
        step: &str,
        path: &Path,
        sha256: Option<&str>,
    ) -> Result<Value, String>;
    fn rollback(&self, pipeline: &str, step: &str) -> Result<Value, String>;
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    token: Option<String>,
    control: Arc<dyn Control>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let token: Option<Arc<str>> = token.map(Arc::from);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let control = control.clone();
                let token = token.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, token.as_deref(), control).await {
                        tracing::debug!(error = %e, "admin connection");
                    }
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
        body,
    })
}

/// Whether `given` (an Authorization header) carries `token`, compared in constant time.
fn authorized(token: Option<&str>, given: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    let Some(given) = given.and_then(|g| g.strip_prefix("Bearer ")) else {
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
    let (status, content_type, body) = match read_request(&mut stream).await {
        Ok(request) => respond(request, token, control).await,
        Err((status, message)) => (status, JSON, json!({ "error": message }).to_string()),
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
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
            if !authorized(token, request.authorization.as_deref()) {
                let e = "a token is required: send `Authorization: Bearer <token>` (the token is \
                         [admin] token_file's first line, or WEIR_ADMIN_TOKEN)";
                return (401, JSON, json!({ "error": e }).to_string());
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

/// A Prometheus text-format builder: counters and gauges with labels; HELP and TYPE once per
/// family.
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
    fn the_token_must_match_exactly() {
        assert!(authorized(None, None));
        assert!(authorized(Some("s3cret"), Some("Bearer s3cret")));
        assert!(!authorized(Some("s3cret"), Some("Bearer s3cre")));
        assert!(!authorized(Some("s3cret"), Some("s3cret")));
        assert!(!authorized(Some("s3cret"), None));
    }
}
