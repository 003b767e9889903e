//! Enrichment: joins events by key with a reference table (CSV with a header row, or a JSON
//! array of objects), e.g. sensor id → location, crop, calibration offset. The table is read when
//! the pipeline starts. A new version is applied as content ([`Enricher::replace`]), never read
//! here: the live engine watches the file and logs each new version as an input entry, so that
//! recovery and replay use the same versions at the same points. A version that does not parse
//! keeps the previous one in use (and says so in the log).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::batch::{Batch, Builder, Value};

/// What to do with an event whose key is not in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnMissing {
    /// Pass it on without the table's fields.
    Pass,
    /// Send it to the dead-letter output.
    DeadLetter,
}

/// A reference table and how events join it.
#[derive(Debug)]
pub struct Enricher {
    path: PathBuf,
    /// The table column matched against the event's key.
    on: String,
    /// The columns added to events.
    fields: Vec<String>,
    on_missing: OnMissing,
    rows: HashMap<String, Vec<Option<Value>>>,
    /// The version in use, as read from the file, and its sha256 (hex).
    content: Vec<u8>,
    sha256: String,
}

/// Events after enrichment, and those sent to the dead-letter output.
#[derive(Debug, Default)]
pub struct Enriched {
    pub events: Batch,
    /// Index (in the input) of each event kept.
    pub kept: Vec<usize>,
    /// Index (in the input) of each event without a match, when those go to dead letters.
    pub unmatched: Vec<usize>,
}

impl Enricher {
    /// Reads the table. Fails with a message naming the file when it cannot be read or lacks the
    /// `on` column or one of `fields`.
    pub fn open(
        path: &Path,
        on: &str,
        fields: Vec<String>,
        on_missing: OnMissing,
    ) -> Result<Enricher, String> {
        let mut e = Enricher {
            path: path.to_owned(),
            on: on.to_owned(),
            fields,
            on_missing,
            rows: HashMap::new(),
            content: Vec::new(),
            sha256: String::new(),
        };
        let content = read(path)?;
        e.replace(&content)?;
        Ok(e)
    }

    /// The file the table comes from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sha256 (hex) of the version in use.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The version in use, as the file held it.
    pub fn content(&self) -> &[u8] {
        &self.content
    }

    /// Number of rows in the table.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Uses `content` (a version of the table file) from now on. A version that does not parse
    /// or lacks a column changes nothing and says why.
    pub fn replace(&mut self, content: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(content)
            .map_err(|_| format!("table {} is not UTF-8 text", self.path.display()))?;
        let records = if self.path.extension().is_some_and(|x| x == "json") {
            json_records(text)
        } else {
            csv_records(text)
        }
        .map_err(|e| format!("table {}: {e}", self.path.display()))?;
        let mut rows = HashMap::new();
        for (n, record) in records.iter().enumerate() {
            let key = match record.get(&self.on) {
                Some(Some(v)) => text_of(v),
                _ => {
                    return Err(format!(
                        "table {}: row {} has no `{}`",
                        self.path.display(),
                        n + 1,
                        self.on
                    ));
                }
            };
            let values = self
                .fields
                .iter()
                .map(|f| record.get(f).cloned().flatten())
                .collect();
            rows.insert(key, values);
        }
        if let Some(first) = records.first() {
            for f in self.fields.iter().chain([&self.on]) {
                if !first.contains_key(f) {
                    return Err(format!("table {} has no column `{f}`", self.path.display()));
                }
            }
        }
        self.rows = rows;
        self.sha256 = crate::runtime::sha256_hex(content);
        self.content = content.to_vec();
        Ok(())
    }

    /// Adds the table's fields to each event whose key is in the table.
    pub fn apply(&self, batch: &Batch) -> Enriched {
        let mut out = Builder::new();
        let mut kept = Vec::with_capacity(batch.len());
        let mut unmatched = Vec::new();
        for i in 0..batch.len() {
            let key = batch.key_of(i);
            let row = self.rows.get(&*key);
            if row.is_none() && self.on_missing == OnMissing::DeadLetter {
                unmatched.push(i);
                continue;
            }
            let mut fields: Vec<(&str, Value)> = batch.fields(i).collect();
            if let Some(row) = row {
                for (name, v) in self.fields.iter().zip(row) {
                    if let Some(v) = v {
                        fields.retain(|(n, _)| *n != name);
                        fields.push((name, v.clone()));
                    }
                }
            }
            out.push(&key, batch.ts_ms[i], fields);
            kept.push(i);
        }
        Enriched {
            events: out.finish(),
            kept,
            unmatched,
        }
    }
}

type Record = HashMap<String, Option<Value>>;

fn text_of(v: &Value) -> String {
    match v {
        Value::Text(s) => s.clone(),
        Value::Float(x) => x.to_string(),
        Value::Int(x) => x.to_string(),
        Value::Flag(x) => x.to_string(),
    }
}

/// Reads a table file (capped, a regular file).
pub fn read(path: &Path) -> Result<Vec<u8>, String> {
    crate::fsutil::read_capped(path, "table", crate::fsutil::caps::TABLE).map_err(|e| e.to_string())
}

/// A CSV cell as a value: an integer, a number, true/false, text; empty is absent.
fn cell(s: &str) -> Option<Value> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    Some(if let Ok(i) = s.parse::<i64>() {
        Value::Int(i)
    } else if let Ok(x) = s.parse::<f64>() {
        Value::Float(x)
    } else if s == "true" || s == "false" {
        Value::Flag(s == "true")
    } else {
        Value::Text(s.to_owned())
    })
}

fn csv_records(text: &str) -> Result<Vec<Record>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| csv_error(&e))?
        .iter()
        .map(str::to_owned)
        .collect();
    reader
        .records()
        .map(|row| {
            let row = row.map_err(|e| csv_error(&e))?;
            Ok(header.iter().cloned().zip(row.iter().map(cell)).collect())
        })
        .collect()
}

/// The csv crate's error, said as weir says things: where, then what.
fn csv_error(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => format!(
            "line {} has {len} cells, the header {expected_len}",
            pos.as_ref().map_or(0, |p| p.line())
        ),
        csv::ErrorKind::Utf8 { pos, .. } => format!(
            "line {} is not UTF-8 text",
            pos.as_ref().map_or(0, |p| p.line())
        ),
        _ => e.to_string(),
    }
}

fn json_records(text: &str) -> Result<Vec<Record>, String> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let array = json.as_array().ok_or("not a JSON array of objects")?;
    array
        .iter()
        .enumerate()
        .map(|(n, row)| {
            let object = row
                .as_object()
                .ok_or_else(|| format!("element {} is not an object", n + 1))?;
            Ok(object
                .iter()
                .map(|(k, v)| (k.clone(), Value::from_json(v)))
                .collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings() -> Batch {
        let mut b = Builder::new();
        b.push("s1", 1, [("temp", Value::Float(20.0))]);
        b.push("s9", 2, [("temp", Value::Float(21.0))]);
        b.push("s2", 3, [("temp", Value::Float(22.0))]);
        b.finish()
    }

    fn table(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weir-enrich-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn joins_csv_rows_by_key_and_passes_or_dead_letters_the_unmatched() {
        let path = table(
            "sensors.csv",
            "sensor_id,location,crop,offset\ns1,north,\"wheat, winter\",0.5\ns2,south,corn,\n",
        );
        let fields = vec!["location".to_string(), "crop".into(), "offset".into()];
        let pass = Enricher::open(&path, "sensor_id", fields.clone(), OnMissing::Pass).unwrap();
        let out = pass.apply(&readings());
        assert_eq!(out.kept, vec![0, 1, 2]);
        let loc = |i| out.events.column("location").unwrap().get(i);
        assert_eq!(loc(0), Some(Value::Text("north".into())));
        assert_eq!(loc(1), None);
        assert_eq!(
            out.events.column("crop").unwrap().get(0),
            Some(Value::Text("wheat, winter".into()))
        );
        assert_eq!(out.events.column("offset").unwrap().get(2), None);
        let strict = Enricher::open(&path, "sensor_id", fields, OnMissing::DeadLetter).unwrap();
        let out = strict.apply(&readings());
        assert_eq!((out.kept, out.unmatched), (vec![0, 2], vec![1]));
    }

    #[test]
    fn a_new_version_replaces_the_table_and_a_broken_one_keeps_the_old() {
        let path = table("t.json", r#"[{"id": "s1", "zone": "a"}]"#);
        let mut e = Enricher::open(&path, "id", vec!["zone".into()], OnMissing::Pass).unwrap();
        let first = e.sha256().to_owned();
        e.replace(br#"[{"id": "s1", "zone": "b"}, {"id": "s2", "zone": "c"}]"#)
            .unwrap();
        assert_eq!(e.len(), 2);
        assert_ne!(e.sha256(), first);
        let err = e.replace(br#"[{"zone": "b"}]"#).unwrap_err();
        assert!(err.ends_with("row 1 has no `id`"), "{err}");
        assert_eq!(e.len(), 2, "the previous version stays in use");
        let err = Enricher::open(&path, "sensor", vec![], OnMissing::Pass).unwrap_err();
        assert!(err.ends_with("row 1 has no `sensor`"), "{err}");
        let err = Enricher::open(&path, "id", vec!["crop".into()], OnMissing::Pass).unwrap_err();
        assert!(err.ends_with("has no column `crop`"), "{err}");
    }
}
