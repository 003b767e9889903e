//! A plugin's stdout and stderr: lines go to weir's log, and the last few KiB are kept so that a
//! trap can be reported with what the plugin printed before it (a panic message, say).

use std::sync::{Arc, Mutex};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// How much of a plugin's output is kept for error reports.
const TAIL_BYTES: usize = 4096;

/// A plugin's output stream. Writes never fail and never block.
#[derive(Clone, Debug)]
pub(crate) struct GuestOutput {
    plugin: Arc<str>,
    tail: Arc<Mutex<Vec<u8>>>,
}

impl GuestOutput {
    pub(crate) fn new(plugin: Arc<str>) -> Self {
        GuestOutput {
            plugin,
            tail: Arc::default(),
        }
    }

    /// Takes what the plugin printed since the last call, as text.
    pub(crate) fn take(&self) -> String {
        let bytes = std::mem::take(&mut *self.tail.lock().expect("guest output lock"));
        String::from_utf8_lossy(&bytes).trim_end().to_owned()
    }

    fn append(&self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            tracing::debug!(plugin = %self.plugin, "{line}");
        }
        let mut tail = self.tail.lock().expect("guest output lock");
        tail.extend_from_slice(bytes);
        if tail.len() > TAIL_BYTES {
            let excess = tail.len() - TAIL_BYTES;
            tail.drain(..excess);
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(tokio::io::sink())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}
