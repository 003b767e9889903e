//! What the input log holds: each entry is one group commit of raw messages with the gateway
//! clock when they were taken in, or a clock tick. Replaying the entries after a checkpoint, in
//! order, drives the pipelines exactly as the live run did, so they emit the same records with the
//! same ids.

use serde::{Deserialize, Serialize};

/// The first bytes of an oversized payload kept for its dead letter.
pub const OVERSIZED_KEPT_BYTES: usize = 1024;

/// One input-log entry (postcard-encoded in the store).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LogEntry {
    /// Messages taken in together, at `received_ms` by the gateway clock.
    Messages {
        received_ms: i64,
        messages: Vec<Logged>,
    },
    /// Time passed with no messages: idle sources and processing-time windows move on.
    Tick { now_ms: i64 },
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let e = LogEntry::Messages {
            received_ms: 1_700_000_000_000,
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
