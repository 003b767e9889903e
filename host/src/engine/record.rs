//! `weir run --record-input FILE`: the input exactly as the engine took it, in the format
//! `weir replay` reads, so that a live session can be replayed and compared (the demo's end
//! check does): every message with the gateway clock it was received at (one batch, one
//! `received_ms`), every tick of the clock with no input (`{"tick": ms}`), and every hot swap
//! and rollback at the point between batches where it happened.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context as _;

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

    /// An entry the engine is about to apply, in the lines `weir replay` reads
    /// ([`crate::replay::entry_lines`]): oversized messages and messages no pipeline takes
    /// included, as the engine took them.
    pub fn entry(&mut self, entry: &LogEntry) {
        for line in crate::replay::entry_lines(entry) {
            self.line(&line);
        }
    }

    /// A swap of `step` to the plugin at `path`, between the entries before and after it.
    pub fn swap(&mut self, pipeline: &str, step: &str, path: &Path) {
        self.entry(&LogEntry::Swap {
            pipeline: pipeline.to_owned(),
            step: step.to_owned(),
            plugin: path.to_owned(),
        });
    }

    pub fn rollback(&mut self, pipeline: &str, step: &str) {
        self.entry(&LogEntry::Rollback {
            pipeline: pipeline.to_owned(),
            step: step.to_owned(),
        });
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
