//! What the engine applies, one entry at a time: a group of raw messages with the gateway clock
//! when they were taken in, a clock tick, and (from `weir replay` input) a watermark marker, a
//! hot swap or a rollback. The live loop writes the first two to the input log before it
//! applies them; recovery replays them from there; `weir replay` reads all of them from its
//! input (`replay::parse_line`) and `weir run --record-input` writes them there. Applying the
//! same entries in the same order (`Core::apply`) gives the same records with the same ids, and
//! so does any other cut of the same messages into entries.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The first bytes of an oversized payload kept for its dead letter.
pub const OVERSIZED_KEPT_BYTES: usize = 1024;

/// One entry (postcard-encoded in the input log).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LogEntry {
    /// Messages taken in together, at `received_ms` by the gateway clock. `None` only in
    /// `weir replay` input that carries no receive time: then each event is judged by the newest
    /// event time before it (`GatewayClock::EventTime`), and ingest dedup does not apply.
    Messages {
        received_ms: Option<i64>,
        messages: Vec<Logged>,
    },
    /// Time passed with no messages: idle sources and processing-time windows move on.
    Tick { now_ms: i64 },
    /// Every pipeline's watermark moves to `watermark_ms` (a replay time marker).
    Watermark { watermark_ms: i64 },
    /// A hot swap of a plugin step to the component at `plugin` (`weir replay` input; a live swap
    /// is preceded by a checkpoint, so the input log never holds one).
    Swap {
        pipeline: String,
        step: String,
        plugin: PathBuf,
    },
    /// A step back to the version before its last swap.
    Rollback { pipeline: String, step: String },
    /// A new version of a pipeline's reference table, as the live engine read it from the file
    /// when it changed (logged whole, so recovery uses the same version at the same point).
    Table { pipeline: String, content: Vec<u8> },
}

/// A message as logged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Logged {
    pub topic: String,
    /// The payload; of an oversized message, only its first [`OVERSIZED_KEPT_BYTES`].
    pub payload: Vec<u8>,
    /// The payload's size, when it was over `max_message_bytes`.
    pub oversized: Option<u64>,
}

impl LogEntry {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("log entries serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<LogEntry, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// The messages it holds.
    pub fn messages(&self) -> usize {
        match self {
            LogEntry::Messages { messages, .. } => messages.len(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let e = LogEntry::Messages {
            received_ms: Some(1_700_000_000_000),
            messages: vec![Logged {
                topic: "farm/a/sensors/s1".into(),
                payload: b"{\"t\":1}".to_vec(),
                oversized: None,
            }],
        };
        assert_eq!(LogEntry::decode(&e.encode()).unwrap(), e);
        let t = LogEntry::Tick { now_ms: 5 };
        assert_eq!(LogEntry::decode(&t.encode()).unwrap(), t);
    }
}
