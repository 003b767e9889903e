//! Ingest dedup: a sensor that resends a message (the same message id, or without a configured id
//! field the same topic and payload) within the horizon is counted and dropped once.
//!
//! A message is identified by 16 bytes of a sha256 of its topic and id (or payload). The set is
//! bounded by the horizon (by receive time) and by a maximum number of entries (the oldest are
//! forgotten first, counted). Its changes since the last checkpoint are kept so a checkpoint
//! writes only what changed, not the whole set.

use std::collections::{HashMap, VecDeque};

use sha2::{Digest, Sha256};

use crate::config::Dedup;

pub use crate::store::{Fingerprint, SeenChanges};

/// The messages a pipeline has seen within its horizon.
#[derive(Debug)]
pub struct SeenSet {
    config: Dedup,
    seen: HashMap<Fingerprint, i64>,
    /// In the order seen.
    order: VecDeque<(i64, Fingerprint)>,
    changes: SeenChanges,
    /// Whether changes are kept for checkpoints (not in a replay, which has none: they would
    /// only grow).
    tracked: bool,
    /// Entries forgotten because the set was full, since start.
    pub evictions: u64,
}

impl SeenSet {
    pub fn new(config: Dedup) -> Self {
        SeenSet {
            config,
            seen: HashMap::new(),
            order: VecDeque::new(),
            changes: SeenChanges {
                forget_before_ms: i64::MIN,
                ..SeenChanges::default()
            },
            tracked: true,
            evictions: 0,
        }
    }

    /// Stops keeping changes for checkpoints (a run with no store).
    pub fn untrack(&mut self) {
        self.tracked = false;
        self.changes = SeenChanges::default();
    }

    pub fn enabled(&self) -> bool {
        !self.config.horizon.is_zero()
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// A message's fingerprint: its topic with the configured id field's value when the payload
    /// is JSON and has it, otherwise its topic and payload.
    pub fn fingerprint(&self, topic: &str, payload: &[u8]) -> Fingerprint {
        let mut h = Sha256::new();
        h.update(topic.as_bytes());
        h.update([0]);
        let id = self.config.field.as_deref().and_then(|field| {
            let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
            match v.get(field)? {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            }
        });
        match id {
            Some(id) => {
                h.update(b"id\0");
                h.update(id.as_bytes());
            }
            None => {
                h.update(b"payload\0");
                h.update(payload);
            }
        }
        h.finalize()[..16].try_into().expect("16 bytes")
    }

    /// Whether the message was seen within the horizon before `received_ms`; if not, it is
    /// remembered.
    pub fn check(&mut self, fingerprint: Fingerprint, received_ms: i64) -> bool {
        if !self.enabled() {
            return false;
        }
        self.expire(received_ms);
        if self.seen.contains_key(&fingerprint) {
            return true;
        }
        if self.order.len() >= self.config.max_entries
            && let Some((t, f)) = self.order.pop_front()
        {
            self.seen.remove(&f);
            if self.tracked {
                self.changes.evicted.push((t, f));
            }
            self.evictions += 1;
        }
        self.seen.insert(fingerprint, received_ms);
        self.order.push_back((received_ms, fingerprint));
        if self.tracked {
            self.changes.added.push((received_ms, fingerprint));
        }
        false
    }

    fn expire(&mut self, now_ms: i64) {
        let horizon_ms = i64::try_from(self.config.horizon.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms.saturating_sub(horizon_ms);
        while let Some(&(t, f)) = self.order.front() {
            if t >= cutoff {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&f) == Some(&t) {
                self.seen.remove(&f);
            }
        }
        self.changes.forget_before_ms = self.changes.forget_before_ms.max(cutoff);
    }

    /// The changes since the last call, for a checkpoint.
    pub fn take_changes(&mut self) -> SeenChanges {
        let forget = self.changes.forget_before_ms;
        let mut changes = std::mem::take(&mut self.changes);
        changes.added.retain(|&(t, _)| t >= forget);
        self.changes.forget_before_ms = forget;
        changes
    }

    /// Continues from entries saved by earlier checkpoints (any order).
    pub fn restore(&mut self, mut entries: Vec<(i64, Fingerprint)>) {
        entries.sort();
        self.seen.clear();
        self.order.clear();
        for (t, f) in entries {
            self.seen.insert(f, t);
            self.order.push_back((t, f));
        }
        self.changes = SeenChanges {
            forget_before_ms: i64::MIN,
            ..SeenChanges::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn set(field: Option<&str>, horizon_s: u64, max: usize) -> SeenSet {
        SeenSet::new(Dedup {
            field: field.map(str::to_owned),
            horizon: Duration::from_secs(horizon_s),
            max_entries: max,
        })
    }

    #[test]
    fn a_resend_within_the_horizon_is_a_duplicate_and_after_it_is_not() {
        let mut s = set(None, 10, 100);
        let f = s.fingerprint("t", b"{\"a\":1}");
        assert!(!s.check(f, 0));
        assert!(s.check(f, 9_999));
        assert!(!s.check(f, 10_001), "forgotten after the horizon");
        assert_ne!(f, s.fingerprint("u", b"{\"a\":1}"), "the topic counts");
    }

    #[test]
    fn the_id_field_identifies_messages_when_there_is_one() {
        let s = set(Some("msg_id"), 10, 100);
        assert_eq!(
            s.fingerprint("t", br#"{"msg_id": 7, "v": 1}"#),
            s.fingerprint("t", br#"{"msg_id": 7, "v": 2}"#)
        );
        assert_ne!(
            s.fingerprint("t", br#"{"v": 1}"#),
            s.fingerprint("t", br#"{"v": 2}"#),
            "without the field, the payload identifies"
        );
    }

    #[test]
    fn a_full_set_forgets_its_oldest_and_says_so() {
        let mut s = set(None, 1000, 2);
        let fs: Vec<_> = (0..3).map(|i| s.fingerprint("t", &[i])).collect();
        for (i, f) in fs.iter().enumerate() {
            assert!(!s.check(*f, i as i64));
        }
        assert_eq!(s.len(), 2);
        assert_eq!(s.evictions, 1);
        let c = s.take_changes();
        assert_eq!(c.added.len(), 3);
        assert_eq!(c.evicted, vec![(0, fs[0])]);
        assert!(!s.check(fs[0], 4), "evicted, so not a duplicate any more");
    }

    #[test]
    fn restored_entries_still_catch_resends() {
        let mut s = set(None, 60, 100);
        let f = s.fingerprint("t", b"x");
        s.check(f, 1_000);
        let saved = s.take_changes().added;
        let mut t = set(None, 60, 100);
        t.restore(saved);
        assert!(t.check(f, 2_000));
    }

    #[test]
    fn a_zero_horizon_turns_dedup_off() {
        let mut s = set(None, 0, 100);
        let f = s.fingerprint("t", b"x");
        assert!(!s.check(f, 0));
        assert!(!s.check(f, 0));
    }
}
