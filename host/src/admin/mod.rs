//! The admin API: an HTTP/1.1 server (hyper) on the address `[admin] listen` names (loopback,
//! `127.0.0.1:9464`, by default), and the client `weir status` and `weir plugin
//! list|swap|rollback` use ([`client`]).
//!
//! - `GET /health`: `ok`.
//! - `GET /metrics`: Prometheus metrics, in the OpenMetrics text format ([`Prometheus`]).
//! - `GET /status`, `GET /plugins`: JSON (what `weir status` and `weir plugin list` show).
//!   Both answer within about a second even while the engine thread is busy: `/status` then
//!   says `"engine": "busy"` and shows what the metrics know.
//! - `POST /plugins/swap` `{"pipeline", "step", "path", "sha256"?}` and `POST /plugins/rollback`
//!   `{"pipeline", "step"}`: hot swaps; the answer is the engine's report, or `{"error": "..."}`
//!   with 400 (a malformed request), 403 (a file outside the plugin directories), 404 (unknown
//!   pipeline or step), 409 (refused: the reason) or 503 (the engine did not take it in time;
//!   nothing changed).
//!
//! Security model:
//! - Reading (`/health`, `/metrics`, `/status`, `/plugins`) is open to whoever reaches the
//!   address, which is why it defaults to loopback; a config that listens elsewhere must set a
//!   token (validation refuses it otherwise).
//! - Anything that changes state needs the token when one is set (`[admin] token_file`'s first
//!   line, or the `WEIR_ADMIN_TOKEN` environment variable) as `Authorization: Bearer <token>`,
//!   checked from the request head before a byte of the body is read, and compared as SHA-256
//!   digests in constant time ([`token`]).
//! - Changes must be `Content-Type: application/json` and carry no `Origin` header, so that a web
//!   page in a browser on the gateway cannot post one (a cross-site request with JSON needs a
//!   CORS preflight, which this server never grants).
//! - A swap loads only a regular file inside the plugin directories (`[admin] plugin_dirs`; by
//!   default those of the plugins the config names), after resolving `..` and symlinks
//!   ([`plugin_dirs`]), with its sha256 checked when the request pins one.
//!
//! Limits ([`server`]): a body of at most [`MAX_BODY_BYTES`] (a larger `Content-Length` is
//! refused before anything is read), a request head within [`HEADER_TIMEOUT`] and the whole
//! request within [`REQUEST_TIMEOUT`], one request per connection, at most [`MAX_CONNECTIONS`]
//! connections; when they are all taken, a new one displaces the oldest that has not finished
//! sending its request, so idle or half-sent connections never keep a real request waiting.
//! Connections closed that way are counted (`weir_admin_connections_closed_total`).

pub mod client;
pub mod plugin_dirs;
mod prometheus;
mod server;
pub mod token;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

pub use self::prometheus::Prometheus;
pub use self::server::serve;

/// The largest request body accepted.
pub const MAX_BODY_BYTES: u64 = 64 * 1024;

/// The largest request head (request line and headers) accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// How long a client has to send its request head once it connected.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client has to send its whole request (head and body) once it connected.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How many connections are served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// How the admin API runs.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The token changes need; `None`: none (the API must then stay on loopback).
    pub token: Option<String>,
    /// The directories a swap may load a plugin from.
    pub plugin_dirs: Vec<PathBuf>,
}

/// Why a swap or rollback did not happen. The message is shown to the user as it is.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// No such pipeline or step (404).
    #[error("{0}")]
    Unknown(String),
    /// Refused: the file, its pin, its world, its init... (409).
    #[error("{0}")]
    Refused(String),
    /// The engine did not take the change in time, or weir is stopping; nothing changed (503).
    #[error("{0}")]
    Busy(String),
}

/// What the admin API asks of a running weir. Implemented by the engine. All methods are called
/// on tokio's blocking threads (`spawn_blocking`); `status`, `plugins` and `metrics` must answer
/// within about a second whatever the engine is doing; a swap may take a few seconds.
pub trait Control: Send + Sync + 'static {
    /// Pipelines: name, guarantee, watermark per source, open windows, keys, outbox depth and
    /// bytes, uplink state, last checkpoint; `"engine": "busy"` when the engine thread did not
    /// answer in time (then without the pipelines). Free-form JSON that `weir status` renders.
    fn status(&self) -> Value;
    /// One object per plugin step: `{"pipeline", "step", "plugin" (file), "sha256", "world",
    /// "version" (contract version), "calls", "errors", "time_ms", "limit_hits",
    /// "quarantined_until_ms" (or null), "previous_sha256" (or null)}`.
    fn plugins(&self) -> Value;
    /// Adds the metrics to `out`.
    fn metrics(&self, out: &mut Prometheus);
    /// Swaps the plugin of a step to the file at `path` (already checked to be a regular file in
    /// a plugin directory), refused unless its sha256 is `sha256` when given (64 hex digits).
    /// Blocks until the engine switched (or refused). Ok: a JSON report (old and new sha256,
    /// pause...).
    fn swap(
        &self,
        pipeline: &str,
        step: &str,
        path: &Path,
        sha256: Option<&str>,
    ) -> Result<Value, ChangeError>;
    /// Swaps back to the version that ran before the last swap.
    fn rollback(&self, pipeline: &str, step: &str) -> Result<Value, ChangeError>;
    /// Starts the file at `path` (checked as for [`Control::swap`]) as a candidate in the shadow
    /// of a step: it runs beside the live version on the same batches, on a copy of its state,
    /// and emits nothing.
    fn shadow(
        &self,
        pipeline: &str,
        step: &str,
        path: &Path,
        sha256: Option<&str>,
    ) -> Result<Value, ChangeError>;
    /// The shadows' reports: live vs candidate, per step with a candidate.
    fn shadows(&self) -> Result<Value, ChangeError>;
    /// Makes the candidate in a step's shadow live, with the state it built.
    fn promote(&self, pipeline: &str, step: &str) -> Result<Value, ChangeError>;
    /// Drops the candidate in a step's shadow.
    fn discard(&self, pipeline: &str, step: &str) -> Result<Value, ChangeError>;
}
