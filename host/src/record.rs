//! What pipelines emit and what goes upstream: a [`Record`] (its output, topic, deterministic
//! [`RecordId`] and JSON fields), and the [`WireRecord`] it becomes, serialized once, when it
//! enters the outbox or the at-most-once queue: the topic, the id and the payload bytes, the one
//! form the forwarder publishes on either path.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Which output a record goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Output {
    Main,
    Late,
    DeadLetter,
}

/// A record's deterministic id: 16 bytes, written as 32 lowercase hex characters. The first 8
/// are a time (a window's end, an event's time; big-endian, so ids sort by time), the last 8 the
/// start of a SHA-256 of what makes the record what it is. The same input gives the same ids.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecordId([u8; 16]);

impl RecordId {
    /// The length of the id's text.
    pub const TEXT_LEN: usize = 32;

    /// An id from its time part and a digest (its first 8 bytes are used).
    pub fn new(time: u64, digest: &[u8]) -> RecordId {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&time.to_be_bytes());
        let n = digest.len().min(8);
        bytes[8..8 + n].copy_from_slice(&digest[..n]);
        RecordId(bytes)
    }

    /// Reads an id's text (32 hex characters).
    pub fn parse(text: &str) -> Option<RecordId> {
        if text.len() != Self::TEXT_LEN {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(RecordId(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordId({self})")
    }
}

/// A record a pipeline emits: where it goes, its id and its fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub output: Output,
    /// The topic it is published to (from the output's template).
    pub topic: String,
    pub id: RecordId,
    /// Its fields, the id not among them: the payload is these and `"id"`.
    pub body: serde_json::Map<String, serde_json::Value>,
}

impl Record {
    /// The payload published upstream: the fields and the id, as one JSON object.
    pub fn payload(&self) -> Vec<u8> {
        serde_json::to_vec(&self.payload_json()).expect("JSON values serialize")
    }

    /// The payload as a JSON value.
    pub fn payload_json(&self) -> serde_json::Value {
        let mut body = self.body.clone();
        body.insert("id".into(), self.id.to_string().into());
        serde_json::Value::Object(body)
    }

    /// The record as one JSON object: `output`, `topic`, then its payload's fields (what
    /// `weir replay` prints).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = self.payload_json();
        v["output"] = serde_json::to_value(self.output).expect("outputs serialize");
        v["topic"] = self.topic.clone().into();
        v
    }

    /// The record as it goes upstream, serialized once.
    pub fn to_wire(&self) -> WireRecord {
        WireRecord {
            topic: self.topic.clone(),
            id: self.id,
            payload: self.payload(),
        }
    }
}

/// A record as it is published: the topic, the id (also sent as an MQTT 5 user property) and the
/// payload bytes. What the outbox stores and the at-most-once queue holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireRecord {
    pub topic: String,
    pub id: RecordId,
    pub payload: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_back_from_their_text_and_sort_by_time() {
        let a = RecordId::new(0x0000_018b_cfe6_0440, &[0xab; 32]);
        assert_eq!(a.to_string(), "0000018bcfe60440abababababababab");
        assert_eq!(RecordId::parse(&a.to_string()), Some(a));
        assert!(RecordId::new(1, &[0xff; 8]) < RecordId::new(2, &[0; 8]));
        assert_eq!(RecordId::parse("xyz"), None);
        assert_eq!(RecordId::parse(&"g".repeat(32)), None);
        assert_eq!(RecordId::parse(&"é".repeat(16)), None);
    }

    #[test]
    fn the_payload_is_the_fields_and_the_id() {
        let mut body = serde_json::Map::new();
        body.insert("key".into(), "s1".into());
        let r = Record {
            output: Output::Main,
            topic: "t".into(),
            id: RecordId::new(5, &[1; 8]),
            body,
        };
        assert_eq!(
            String::from_utf8(r.payload()).unwrap(),
            r#"{"id":"00000000000000050101010101010101","key":"s1"}"#
        );
        let wire = r.to_wire();
        assert_eq!((wire.topic.as_str(), wire.id), ("t", r.id));
        assert_eq!(r.to_json()["output"], "main");
    }
}
