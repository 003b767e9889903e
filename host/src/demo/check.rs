//! The demo's end check: what reached the cloud against `weir replay --keep-open` of the input
//! weir recorded (`weir run --record-input`), record by record.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde_json::Value;

use super::cloud::Received;
use crate::config::Config;

/// Records by id: topic and payload.
pub type Records = BTreeMap<String, (String, Value)>;

/// How the delivered records compare with the replayed ones.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// Distinct records delivered, and the repeats dropped by id (and of those, any whose
    /// content differed from the first copy).
    pub delivered: usize,
    pub repeats: usize,
    pub repeats_differing: usize,
    /// Records the replay computes.
    pub replayed: usize,
    /// Replayed but never delivered; delivered but not replayed; delivered with the same id but
    /// another topic or payload. A few ids of each, for the report.
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    pub different: Vec<String>,
}

impl Comparison {
    /// Every record delivered exactly once after dedup by id, and the same as the replay.
    pub fn passed(&self) -> bool {
        self.delivered > 0
            && self.repeats_differing == 0
            && self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.different.is_empty()
    }
}

/// Compares what arrived with what the replay computes.
pub fn compare(received: &Received, want: &Records) -> Comparison {
    let mut c = Comparison {
        delivered: received.records.len(),
        repeats: received.repeats,
        repeats_differing: received.repeats_differing,
        replayed: want.len(),
        ..Comparison::default()
    };
    for (id, record) in want {
        match received.records.get(id) {
            None => c.missing.push(id.clone()),
            Some(got) if got != record => c.different.push(id.clone()),
            Some(_) => {}
        }
    }
    c.unexpected = received
        .records
        .keys()
        .filter(|id| !want.contains_key(*id))
        .cloned()
        .collect();
    c.unexpected.sort();
    c
}

/// `weir replay --keep-open` of `recording`: every record by id, as the cloud receives it (the
/// `output` tag dropped, the topic apart).
pub fn replay(config: &Config, recording: &Path) -> anyhow::Result<Records> {
    let file = std::fs::File::open(recording)
        .with_context(|| format!("cannot open the recording {}", recording.display()))?;
    let mut out = Vec::new();
    crate::replay::run_with(
        config,
        &mut std::io::BufReader::new(file),
        &mut out,
        crate::replay::Options {
            flush_at_end: false,
            ..crate::replay::Options::default()
        },
    )
    .with_context(|| format!("weir replay of {}", recording.display()))?;
    let mut records = BTreeMap::new();
    for line in String::from_utf8(out)?.lines() {
        let mut v: Value = serde_json::from_str(line)?;
        let map = v
            .as_object_mut()
            .context("a replayed record is an object")?;
        map.remove("output");
        let topic = map
            .remove("topic")
            .and_then(|t| t.as_str().map(str::to_owned))
            .context("a replayed record has a topic")?;
        let id = map["id"]
            .as_str()
            .context("a replayed record has an id")?
            .to_owned();
        records.insert(id, (topic, v));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(id: &str, n: i64) -> (String, (String, Value)) {
        (
            id.to_owned(),
            ("farm/a/agg".to_owned(), json!({ "id": id, "count": n })),
        )
    }

    #[test]
    fn every_kind_of_mismatch_fails_the_check() {
        let want: Records = [record("a", 1), record("b", 2), record("c", 3)].into();
        let mut got = Received {
            records: [record("a", 1), record("b", 2), record("c", 3)].into(),
            repeats: 4,
            ..Received::default()
        };
        let c = compare(&got, &want);
        assert!(c.passed(), "repeats with the same content are fine: {c:?}");
        assert_eq!((c.delivered, c.repeats, c.replayed), (3, 4, 3));

        got.records.remove("c");
        got.records.insert("b".into(), record("b", 5).1);
        got.records.insert("d".into(), record("d", 4).1);
        let c = compare(&got, &want);
        assert!(!c.passed());
        assert_eq!(c.missing, ["c"]);
        assert_eq!(c.different, ["b"]);
        assert_eq!(c.unexpected, ["d"]);

        let empty = compare(&Received::default(), &Records::new());
        assert!(!empty.passed(), "nothing delivered is not a pass");
    }
}
