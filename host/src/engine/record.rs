//! `weir run --record-input FILE`: the input exactly as the engine took it, in the format
//! `weir replay` reads, so that a live session can be replayed and compared (the demo's end
//! check does): every message with the gateway clock it was received at (one batch, one
//! `received_ms`), every tick of the clock with no input (`{"tick": ms}`), and every hot swap
//! and rollback at the point between batches where it happened.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use serde_json::json;

use super::input::LogEntry;

/// Writes replay lines; errors are logged once and recording stops (the run goes on).
#[derive(Debug)]
pub struct InputRecorder {
    out: Option<BufWriter<File>>,
    path: std::path::PathBuf,
}

impl InputRecorder {
    pub fn create(path: &Path) -> anyhow::Result<InputRecorder> {
        let file = File::create(path)
            .with_context(|| format!("cannot create {} (--record-input)", path.display()))?;
        Ok(InputRecorder {
            out: Some(BufWriter::new(file)),
            path: path.to_owned(),
        })
    }

    /// An entry the engine is about to apply.
    pub fn entry(&mut self, entry: &LogEntry) {
        match entry {
            LogEntry::Messages {
                received_ms,
                messages,
            } => {
                for m in messages {
                    let mut line = json!({ "topic": m.topic, "received_ms": received_ms });
                    match serde_json::from_slice::<serde_json::Value>(&m.payload) {
                        // Only when the bytes are exactly what re-serializing gives back.
                        Ok(v) if serde_json::to_vec(&v).ok().as_deref() == Some(&m.payload[..]) => {
                            line["payload"] = v
                        }
                        _ => {
                            line["payload_base64"] = base64::engine::general_purpose::STANDARD
                                .encode(&m.payload)
                                .into()
                        }
                    }
                    self.line(&line);
                }
            }
            LogEntry::Tick { now_ms } => self.line(&json!({ "tick": now_ms })),
        }
    }

    /// A swap of `step` to the plugin at `path`, between the entries before and after it.
    pub fn swap(&mut self, pipeline: &str, step: &str, path: &Path) {
        self.line(&json!({ "swap": { "pipeline": pipeline, "step": step, "plugin": path } }));
    }

    pub fn rollback(&mut self, pipeline: &str, step: &str) {
        self.line(&json!({ "rollback": { "pipeline": pipeline, "step": step } }));
    }

    pub fn flush(&mut self) {
        if let Some(out) = &mut self.out
            && let Err(e) = out.flush()
        {
            self.failed(e);
        }
    }

    fn line(&mut self, line: &serde_json::Value) {
        if let Some(out) = &mut self.out
            && let Err(e) = writeln!(out, "{line}")
        {
            self.failed(e);
        }
    }

    fn failed(&mut self, e: std::io::Error) {
        tracing::error!(path = %self.path.display(), error = %e, "recording the input failed; recording stops");
        self.out = None;
    }
}
