//! The admin API's HTTP/1.1 server, on hyper: its limits, the connection slots, and the routes.
//!
//! Each connection carries one request (keep-alive is off). hyper reads the head (at most
//! [`MAX_HEAD_BYTES`], within [`HEADER_TIMEOUT`]); the routes check everything the head says
//! (method, path, `Origin`, the token, the content type, the `Content-Length`) before a byte of
//! the body is read, and read a body only when it is announced within [`MAX_BODY_BYTES`]
//! (`http_body_util::Limited`). A connection that has not sent its whole request within
//! [`REQUEST_TIMEOUT`] of connecting is closed.
//!
//! Slots: at most [`MAX_CONNECTIONS`] connections are open. When all are taken, a new one takes
//! the slot of the oldest connection that is still sending its request, which is closed; only
//! when every slot holds a request being answered does a new connection wait. So hundreds of
//! clients that connect and send nothing (or half a head) cost a few slots' worth of memory and
//! never keep a real request waiting.

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use super::plugin_dirs::PluginDirs;
use super::token::Token;
use super::{
    ChangeError, Control, HEADER_TIMEOUT, MAX_BODY_BYTES, MAX_CONNECTIONS, MAX_HEAD_BYTES,
    Prometheus, REQUEST_TIMEOUT, Settings,
};
use crate::fsutil::elide;

/// How long, after an early refusal (401, 403, 415...), the server still reads and discards an
/// announced body of at most [`MAX_BODY_BYTES`], so that closing does not reset the connection
/// and lose the answer.
const LINGER: Duration = Duration::from_secs(1);

/// The longest pipeline or step name a change may carry.
const MAX_NAME_BYTES: usize = 256;

const JSON: &str = "application/json";

type Answer = Response<Full<Bytes>>;

/// What every connection shares.
struct Shared {
    token: Option<Token>,
    plugin_dirs: PluginDirs,
    control: Arc<dyn Control>,
    slots: Slots,
    counts: Counts,
}

/// The server's own counters.
#[derive(Default)]
struct Counts {
    /// Answers, by status code (those in [`CODES`], then any other).
    answers: [AtomicU64; CODES.len() + 1],
    /// Connections closed to free their slot, and for not sending their request in time.
    displaced: AtomicU64,
    timed_out: AtomicU64,
}

/// The status codes the server answers with.
const CODES: [u16; 13] = [
    200, 400, 401, 403, 404, 405, 409, 411, 413, 415, 431, 500, 503,
];

impl Counts {
    fn answered(&self, status: StatusCode) {
        let i = CODES
            .iter()
            .position(|c| *c == status.as_u16())
            .unwrap_or(CODES.len());
        self.answers[i].fetch_add(1, Relaxed);
    }
}

/// Serves until `shutdown` turns true (or its sender is dropped). The caller binds `listener`, so
/// that a bad address is an error at start, naming it.
pub async fn serve(
    listener: TcpListener,
    settings: Settings,
    control: Arc<dyn Control>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        token: settings.token.as_deref().map(Token::new),
        plugin_dirs: PluginDirs::new(&settings.plugin_dirs),
        control,
        slots: Slots::default(),
        counts: Counts::default(),
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(false)
        .max_buf_size(MAX_HEAD_BYTES);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return Ok(());
                }
                continue;
            }
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin.
                tracing::debug!(error = %e, "admin API: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = tokio::select! {
            slot = Slots::admit(&shared) => slot,
            _ = shutdown.changed() => return Ok(()),
        };
        let service = {
            let shared = shared.clone();
            let conn = slot.conn.clone();
            hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                let conn = conn.clone();
                async move {
                    let answer = route(request, &shared, &conn).await;
                    shared.counts.answered(answer.status());
                    Ok::<_, Infallible>(answer)
                }
            })
        };
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            let deadline = tokio::time::sleep(REQUEST_TIMEOUT);
            tokio::pin!(deadline);
            let mut deadline_passed = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "admin API connection");
                        }
                        break;
                    }
                    () = slot.conn.displace.notified() => {
                        shared.counts.displaced.fetch_add(1, Relaxed);
                        break;
                    }
                    () = &mut deadline, if !deadline_passed => {
                        if !slot.conn.request_read.load(Relaxed) {
                            shared.counts.timed_out.fetch_add(1, Relaxed);
                            break;
                        }
                        deadline_passed = true;
                    }
                }
            }
            drop(slot);
        });
    }
}

/// The open connections, oldest first.
#[derive(Default)]
struct Slots {
    open: Mutex<Vec<Arc<Conn>>>,
    /// A slot was freed.
    freed: Notify,
}

/// One connection, as the slots see it.
#[derive(Default)]
struct Conn {
    /// Its request has been read (head, and the body if any): it is answered to the end, and
    /// not displaced.
    request_read: AtomicBool,
    /// Notified to close it.
    displace: Notify,
}

/// A connection's slot, freed on drop.
struct Slot {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .shared
            .slots
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        open.retain(|c| !Arc::ptr_eq(c, &self.conn));
        drop(open);
        self.shared.slots.freed.notify_one();
    }
}

impl Slots {
    /// A slot for a new connection: a free one, or that of the oldest connection still sending
    /// its request (which is closed); waits only while every slot serves a request.
    async fn admit(shared: &Arc<Shared>) -> Slot {
        loop {
            let freed = shared.slots.freed.notified();
            {
                let mut open = shared.slots.open.lock().unwrap_or_else(|e| e.into_inner());
                let room = open.len() < MAX_CONNECTIONS;
                let displaced = if room {
                    None
                } else {
                    open.iter()
                        .position(|c| !c.request_read.load(Relaxed))
                        .map(|i| open.remove(i))
                };
                if room || displaced.is_some() {
                    if let Some(old) = displaced {
                        old.displace.notify_one();
                    }
                    let conn = Arc::new(Conn::default());
                    open.push(conn.clone());
                    return Slot {
                        shared: shared.clone(),
                        conn,
                    };
                }
            }
            freed.await;
        }
    }
}

/// An answer with a body.
fn answer(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Answer {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_answer(status: u16, value: &Value) -> Answer {
    answer(status, JSON, value.to_string())
}

fn error(status: u16, message: impl Into<String>) -> Answer {
    json_answer(status, &json!({ "error": message.into() }))
}

/// Runs `f` on a blocking thread (the control's methods may block).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

async fn route(request: Request<Incoming>, shared: &Arc<Shared>, conn: &Conn) -> Answer {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    if parts.method == Method::POST {
        match path.as_str() {
            "/plugins/swap" => return change(parts, body, shared, conn, Change::Swap).await,
            "/plugins/rollback" => {
                return change(parts, body, shared, conn, Change::Rollback).await;
            }
            "/plugins/promote" => return change(parts, body, shared, conn, Change::Promote).await,
            "/plugins/discard" => return change(parts, body, shared, conn, Change::Discard).await,
            _ => {}
        }
    }
    // Nothing else reads a body.
    drop(body);
    conn.request_read.store(true, Relaxed);
    let control = shared.control.clone();
    match (&parts.method, path.as_str()) {
        (&Method::GET, "/health") => answer(200, "text/plain; charset=utf-8", "ok\n"),
        (&Method::GET, "/metrics") => {
            let shared = shared.clone();
            match blocking(move || metrics(&shared)).await {
                Some(text) => answer(200, Prometheus::CONTENT_TYPE, text),
                None => error(500, "the metrics could not be gathered; see weir's log"),
            }
        }
        (&Method::GET, "/status") => match blocking(move || control.status()).await {
            Some(v) => json_answer(200, &v),
            None => error(500, "the status could not be gathered; see weir's log"),
        },
        (&Method::GET, "/plugins") => match blocking(move || control.plugins()).await {
            Some(v) => json_answer(200, &v),
            None => error(500, "the plugins could not be listed; see weir's log"),
        },
        (&Method::GET, "/plugins/shadow") => match blocking(move || control.shadows()).await {
            Some(Ok(v)) => json_answer(200, &v),
            Some(Err(e)) => error(503, e.to_string()),
            None => error(500, "the shadows could not be listed; see weir's log"),
        },
        (
            _,
            "/health" | "/metrics" | "/status" | "/plugins" | "/plugins/swap" | "/plugins/rollback"
            | "/plugins/shadow" | "/plugins/promote" | "/plugins/discard",
        ) => error(405, format!("method not allowed: {} {path}", parts.method)),
        _ => error(404, format!("no such endpoint: {}", elide(&path, 100))),
    }
}

/// The control's metrics and the server's own, as text.
fn metrics(shared: &Shared) -> String {
    let mut p = Prometheus::new();
    shared.control.metrics(&mut p);
    let c = &shared.counts;
    for (i, n) in c.answers.iter().enumerate() {
        let n = n.load(Relaxed);
        if n > 0 {
            let code = CODES.get(i).map_or("other".to_owned(), u16::to_string);
            p.counter(
                "weir_admin_answers_total",
                "Admin API answers, by HTTP status",
                &[("code", &code)],
                n as f64,
            );
        }
    }
    let open = shared.slots.open.lock().map_or(0, |o| o.len());
    p.gauge(
        "weir_admin_connections",
        "Admin API connections open",
        &[],
        open as f64,
    );
    for (reason, n) in [("displaced", &c.displaced), ("timed_out", &c.timed_out)] {
        p.counter(
            "weir_admin_connections_closed_total",
            "Admin API connections closed before their request was read: displaced by a new one when every slot was taken, or not sent in time",
            &[("reason", reason)],
            n.load(Relaxed) as f64,
        );
    }
    p.render()
}

/// Whether the request says its body is JSON.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(JSON))
}

/// What a change request asks for.
#[derive(Clone, Copy, PartialEq)]
enum Change {
    /// A swap (or, with `"shadow": true`, a candidate in the shadow).
    Swap,
    Rollback,
    Promote,
    Discard,
}

/// A change: everything in the head is checked before the body is read.
async fn change(
    parts: Parts,
    body: Incoming,
    shared: &Arc<Shared>,
    conn: &Conn,
    kind: Change,
) -> Answer {
    let announced = body.size_hint().exact();
    let refuse = |body: Incoming, status: u16, message: &str| {
        conn.request_read.store(true, Relaxed);
        linger(body);
        error(status, message)
    };
    if parts.headers.contains_key(header::ORIGIN) {
        return refuse(
            body,
            403,
            "changes are not accepted from web pages (the request has an Origin)",
        );
    }
    if let Some(token) = &shared.token {
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        if !token.authorizes(given) {
            return refuse(
                body,
                401,
                "a token is required: send `Authorization: Bearer <token>` (the token is [admin] \
                 token_file's first line, or WEIR_ADMIN_TOKEN)",
            );
        }
    }
    if !is_json(&parts.headers) {
        return refuse(
            body,
            415,
            "the body must be JSON, sent as `Content-Type: application/json`",
        );
    }
    if parts.headers.contains_key(header::TRANSFER_ENCODING) {
        return refuse(body, 411, "send the body with a Content-Length");
    }
    if let Some(n) = announced
        && n > MAX_BODY_BYTES
    {
        // Not read: the connection closes after the answer.
        conn.request_read.store(true, Relaxed);
        return error(
            413,
            format!(
                "the request body is {n} bytes, over the {} KiB the admin API reads",
                MAX_BODY_BYTES / 1024
            ),
        );
    }
    // The connection's deadline (REQUEST_TIMEOUT) bounds this read.
    let bytes = match Limited::new(body, MAX_BODY_BYTES as usize).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            conn.request_read.store(true, Relaxed);
            return error(400, format!("the request body could not be read: {e}"));
        }
    };
    conn.request_read.store(true, Relaxed);
    let request: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return error(400, format!("the body is not JSON: {e}")),
    };
    let field = |k: &str| request[k].as_str().map(str::to_owned);
    let (Some(pipeline), Some(step)) = (field("pipeline"), field("step")) else {
        return error(400, "\"pipeline\" and \"step\" are required (strings)");
    };
    for (name, value) in [("pipeline", &pipeline), ("step", &step)] {
        if value.len() > MAX_NAME_BYTES {
            return error(
                400,
                format!(
                    "\"{name}\" is {} bytes, longer than any {name} name: {}",
                    value.len(),
                    elide(value, 40)
                ),
            );
        }
    }
    let control = shared.control.clone();
    let result = if kind == Change::Swap {
        let shadow = match &request["shadow"] {
            Value::Null | Value::Bool(false) => false,
            Value::Bool(true) => true,
            _ => return error(400, "\"shadow\" must be true or false"),
        };
        let Some(file) = field("path") else {
            return error(400, "\"path\" (the .wasm file, absolute) is required");
        };
        let sha256 = match &request["sha256"] {
            Value::Null => None,
            Value::String(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(h.to_ascii_lowercase())
            }
            other => {
                let shown = other
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_owned);
                return error(
                    400,
                    format!(
                        "\"sha256\" must be the plugin's SHA-256 as 64 hex digits (as `weir \
                         plugin check` prints it), not {}",
                        elide(&shown, 80)
                    ),
                );
            }
        };
        let dirs = shared.plugin_dirs.clone();
        let resolved = blocking(move || dirs.resolve(&file)).await;
        let path = match resolved {
            Some(Ok(path)) => path,
            Some(Err(refused)) => return error(refused.status(), refused.to_string()),
            None => return error(500, "the path could not be checked; see weir's log"),
        };
        if shadow {
            blocking(move || control.shadow(&pipeline, &step, &path, sha256.as_deref())).await
        } else {
            blocking(move || control.swap(&pipeline, &step, &path, sha256.as_deref())).await
        }
    } else {
        blocking(move || match kind {
            Change::Promote => control.promote(&pipeline, &step),
            Change::Discard => control.discard(&pipeline, &step),
            _ => control.rollback(&pipeline, &step),
        })
        .await
    };
    match result {
        Some(Ok(report)) => json_answer(200, &report),
        Some(Err(e @ ChangeError::Unknown(_))) => error(404, e.to_string()),
        Some(Err(e @ ChangeError::Refused(_))) => error(409, e.to_string()),
        Some(Err(e @ ChangeError::Busy(_))) => error(503, e.to_string()),
        None => error(500, "the change failed unexpectedly; see weir's log"),
    }
}

/// Reads and discards an announced body of at most [`MAX_BODY_BYTES`] for up to [`LINGER`],
/// after an early answer: closing with unread data would reset the connection, and the client
/// could lose the answer. A larger (or unannounced) body is not waited for.
fn linger(mut body: Incoming) {
    if body.is_end_stream() || body.size_hint().exact().is_none_or(|n| n > MAX_BODY_BYTES) {
        return;
    }
    tokio::spawn(async move {
        let _ = tokio::time::timeout(LINGER, async {
            while let Some(Ok(_)) = body.frame().await {}
        })
        .await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_are_recognised() {
        let with = |t: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(t).unwrap());
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(!with("text/plain"));
        assert!(!with("application/jsonx"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
