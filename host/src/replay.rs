//! `weir replay`: runs a config's pipelines over recorded input and writes every record they emit
//! as JSON lines, deterministically: the way to test a pipeline like code.
//!
//! Replay is the live engine's own core ([`Core::apply`]) fed from a file: each input line
//! becomes the entry the engine would apply, so live processing, crash recovery and replay give
//! the same records with the same ids (dead letters of messages on topics no pipeline takes and
//! of oversized messages included). This module is also where the input format is defined, both
//! ways: [`parse_line`] reads a line, [`entry_lines`] writes an entry (`weir run --record-input`).
//!
//! Input, one JSON object per line:
//! - a message: `{"topic": "farm/north/sensors/s1", "payload": {...}}`, the payload as JSON (it is
//!   re-serialized to bytes) or `"payload_base64": "..."` for bytes; optional `"received_ms"`
//!   (the gateway clock when it arrived), optional `"oversized": N` (a message of N bytes of
//!   which only the first KiB was kept: it becomes a dead letter, as live);
//! - a time marker: `{"watermark": 1700000060000}` moves every pipeline's watermark there;
//! - a clock tick: `{"tick": 1700000060000}`: the gateway clock moved there with no input (idle
//!   sources, processing-time windows), as in a live run;
//! - a hot swap, `{"swap": {"pipeline": "farm", "step": "farm/transform[2]", "plugin": "x.wasm"}}`,
//!   or a rollback, `{"rollback": {"pipeline": "farm", "step": "farm/transform[2]"}}`;
//! - a new version of a pipeline's reference table, `{"table": {"pipeline": "farm",
//!   "content_base64": "..."}}` (the table file is otherwise read once, at the start).
//!
//! `weir run --record-input FILE` writes exactly this, so a live session replays to the same
//! records. Messages with a `received_ms` (recorded live) go through each pipeline's ingest
//! dedup, as they did live; messages without one are all taken.
//!
//! **The gateway clock** during a replay is the input's, so the output never depends on when
//! the replay runs, nor on how the input is cut into batches. A message with `received_ms` was
//! received then. A message without it has no receive time, and the clock is the data's own
//! time, event by event: each event is judged (future skew, idle sources) by the newest event
//! time its pipeline placed before it, the first event setting the clock. So an event stamped
//! further ahead of the events before it than `max_future` is a dead letter (a gap that long in
//! the data too: record `received_ms`, or raise `max_future`, to replay such data); processing
//! time is the event's own time. At the end of the input every open window fires (unless
//! `--keep-open`).
//!
//! Output, one JSON object per line, each tagged with its `output`: `main`, `late` or
//! `dead-letter`, and the `topic` it would be published to.

use std::io::{BufRead, Write};
use std::sync::Arc;

use base64::Engine as _;
use serde_json::json;

use crate::config::Config;
use crate::engine::input::{LogEntry, Logged};
use crate::engine::{Core, EngineMetrics, Produced};
use crate::pipeline::Output;
use crate::runtime::{Runtime, RuntimeConfig};

/// One line of replay input.
#[derive(Debug, PartialEq)]
pub enum Line {
    /// A message, received at `received_ms` if the input says when.
    Message {
        received_ms: Option<i64>,
        message: Logged,
    },
    /// A watermark marker, a tick, a swap or a rollback.
    Entry(LogEntry),
}

/// Reads one line of replay input.
pub fn parse_line(line: &str) -> Result<Line, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    let ms = |field: &str| -> Result<Option<i64>, String> {
        match v.get(field) {
            None => Ok(None),
            Some(x) => x
                .as_i64()
                .map(Some)
                .ok_or_else(|| format!("\"{field}\" is not an integer (ms)")),
        }
    };
    if let Some(watermark_ms) = ms("watermark")? {
        return Ok(Line::Entry(LogEntry::Watermark { watermark_ms }));
    }
    if let Some(now_ms) = ms("tick")? {
        return Ok(Line::Entry(LogEntry::Tick { now_ms }));
    }
    if let Some(t) = v.get("table") {
        let pipeline = t
            .get("pipeline")
            .and_then(|x| x.as_str())
            .ok_or("\"table\" needs a \"pipeline\" string")?;
        let content = t
            .get("content_base64")
            .and_then(|x| x.as_str())
            .ok_or("\"table\" needs a \"content_base64\" string")?;
        let content = base64::engine::general_purpose::STANDARD
            .decode(content)
            .map_err(|e| format!("\"table\" content is not base64: {e}"))?;
        return Ok(Line::Entry(LogEntry::Table {
            pipeline: pipeline.to_owned(),
            content,
        }));
    }
    for what in ["swap", "rollback"] {
        if let Some(o) = v.get(what) {
            let field = |name: &str| {
                o.get(name)
                    .and_then(|x| x.as_str())
                    .map(str::to_owned)
                    .ok_or_else(|| format!("\"{what}\" needs a \"{name}\" string"))
            };
            let (pipeline, step) = (field("pipeline")?, field("step")?);
            return Ok(Line::Entry(if what == "swap" {
                LogEntry::Swap {
                    pipeline,
                    step,
                    plugin: field("plugin")?.into(),
                }
            } else {
                LogEntry::Rollback { pipeline, step }
            }));
        }
    }
    let topic = v["topic"].as_str().ok_or(
        "no \"topic\" string (nor a \"watermark\", \"tick\", \"swap\", \"rollback\" or \"table\")",
    )?;
    let payload = match (v.get("payload"), v.get("payload_base64")) {
        (_, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.as_str().ok_or("\"payload_base64\" is not a string")?)
            .map_err(|e| format!("\"payload_base64\" is not base64: {e}"))?,
        (Some(p), None) => serde_json::to_vec(p).expect("JSON values serialize"),
        (None, None) => return Err("no \"payload\" or \"payload_base64\"".into()),
    };
    let oversized = match v.get("oversized") {
        None => None,
        Some(n) => Some(n.as_u64().ok_or("\"oversized\" is not a size in bytes")?),
    };
    Ok(Line::Message {
        received_ms: ms("received_ms")?,
        message: Logged {
            topic: topic.to_owned(),
            payload,
            oversized,
        },
    })
}

/// The lines [`parse_line`] reads back as `entry` (one per message for a group of messages).
pub fn entry_lines(entry: &LogEntry) -> Vec<serde_json::Value> {
    match entry {
        LogEntry::Messages {
            received_ms,
            messages,
        } => messages
            .iter()
            .map(|m| {
                let mut line = json!({ "topic": m.topic });
                if let Some(ms) = received_ms {
                    line["received_ms"] = (*ms).into();
                }
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
                if let Some(size) = m.oversized {
                    line["oversized"] = size.into();
                }
                line
            })
            .collect(),
        LogEntry::Tick { now_ms } => vec![json!({ "tick": now_ms })],
        LogEntry::Watermark { watermark_ms } => vec![json!({ "watermark": watermark_ms })],
        LogEntry::Swap {
            pipeline,
            step,
            plugin,
        } => vec![json!({ "swap": { "pipeline": pipeline, "step": step, "plugin": plugin } })],
        LogEntry::Rollback { pipeline, step } => {
            vec![json!({ "rollback": { "pipeline": pipeline, "step": step } })]
        }
        LogEntry::Table { pipeline, content } => vec![json!({ "table": {
            "pipeline": pipeline,
            "content_base64": base64::engine::general_purpose::STANDARD.encode(content),
        } })],
    }
}

/// What a replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub messages: u64,
    pub records: u64,
    pub late: u64,
    pub dead_letters: u64,
}

/// Messages applied as one entry at most. Any cut gives the same records; this one bounds memory.
pub const BATCH: usize = 1024;

/// Runs every pipeline of `config` over `input`, writing records to `out`.
pub fn run(
    config: &Config,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> anyhow::Result<Summary> {
    run_with(config, input, out, Options::default())
}

/// How a replay runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Fire every open window at the end of the input (the default). Without it, windows still
    /// open stay unfired, as when a live run stops.
    pub flush_at_end: bool,
    /// Messages applied as one entry at most (see [`BATCH`]).
    pub batch: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            flush_at_end: true,
            batch: BATCH,
        }
    }
}

/// [`run`], with [`Options`].
pub fn run_with(
    config: &Config,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    options: Options,
) -> anyhow::Result<Summary> {
    // Plugins compiled ahead of time come from the gateway's cache (a weir without the
    // compiler has nothing else); replay writes nothing there.
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(config.storage.plugin_cache()),
        cache_writes: false,
        ..RuntimeConfig::default()
    })?;
    let mut core = Core::start(config, &runtime, Arc::new(EngineMetrics::default()))?;
    core.without_checkpoints();
    let mut replay = Replay {
        core,
        pending: Vec::new(),
        pending_received: None,
        batch: options.batch.max(1),
        summary: Summary::default(),
        out,
    };
    let mut bytes = Vec::new();
    for n in 1.. {
        let more =
            crate::fsutil::read_line_capped(input, &mut bytes, crate::fsutil::caps::INPUT_LINE)
                .map_err(|e| {
                    anyhow::anyhow!("input line {n}: {}", crate::fsutil::describe_io(&e))
                })?;
        if !more {
            break;
        }
        let line = std::str::from_utf8(&bytes)
            .map_err(|_| anyhow::anyhow!("input line {n}: not UTF-8 text"))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = |e: String| anyhow::anyhow!("input line {n}: {e}");
        match parse_line(line).map_err(at)? {
            Line::Message {
                received_ms,
                message,
            } => {
                replay.summary.messages += 1;
                // Messages received at another time than the pending ones see another clock.
                if replay.pending_received != Some(received_ms)
                    || replay.pending.len() >= replay.batch
                {
                    replay.apply_pending()?;
                }
                replay.pending_received = Some(received_ms);
                replay.pending.push(message);
            }
            Line::Entry(entry) => {
                replay.apply_pending()?;
                replay.apply(&entry).map_err(at)?;
            }
        }
    }
    replay.apply_pending()?;
    if options.flush_at_end {
        let produced = replay.core.flush();
        replay.write(produced)?;
    }
    replay.out.flush()?;
    Ok(replay.summary)
}

struct Replay<'a> {
    core: Core,
    /// Messages not applied yet, all received at `pending_received`.
    pending: Vec<Logged>,
    pending_received: Option<Option<i64>>,
    batch: usize,
    summary: Summary,
    out: &'a mut dyn Write,
}

impl Replay<'_> {
    fn apply_pending(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let entry = LogEntry::Messages {
            received_ms: self.pending_received.flatten(),
            messages: std::mem::take(&mut self.pending),
        };
        self.apply(&entry).map_err(anyhow::Error::msg)
    }

    fn apply(&mut self, entry: &LogEntry) -> Result<(), String> {
        let produced = self.core.apply(entry, false)?;
        self.write(produced)
            .map_err(|e| format!("writing the output: {e}"))
    }

    fn write(&mut self, produced: Produced) -> std::io::Result<()> {
        for (r, _) in produced.records {
            match r.output {
                Output::Main => self.summary.records += 1,
                Output::Late => self.summary.late += 1,
                Output::DeadLetter => self.summary.dead_letters += 1,
            }
            writeln!(self.out, "{}", r.to_json())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(line: &str) -> (Option<i64>, Logged) {
        match parse_line(line).unwrap() {
            Line::Message {
                received_ms,
                message,
            } => (received_ms, message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_messages_and_markers_and_says_what_is_wrong() {
        assert_eq!(
            parse_line(r#"{"watermark": 5}"#),
            Ok(Line::Entry(LogEntry::Watermark { watermark_ms: 5 }))
        );
        assert_eq!(
            parse_line(r#"{"tick": 7}"#),
            Ok(Line::Entry(LogEntry::Tick { now_ms: 7 }))
        );
        assert_eq!(
            parse_line(
                r#"{"swap": {"pipeline": "p", "step": "p/transform[0]", "plugin": "x.wasm"}}"#
            ),
            Ok(Line::Entry(LogEntry::Swap {
                pipeline: "p".into(),
                step: "p/transform[0]".into(),
                plugin: "x.wasm".into()
            }))
        );
        assert_eq!(
            parse_line(r#"{"rollback": {"pipeline": "p", "step": "s"}}"#),
            Ok(Line::Entry(LogEntry::Rollback {
                pipeline: "p".into(),
                step: "s".into()
            }))
        );
        assert!(
            parse_line(r#"{"swap": {"pipeline": "p"}}"#)
                .unwrap_err()
                .contains("\"step\"")
        );
        let (received, m) = message(r#"{"topic": "t", "payload": {"a": 1}, "received_ms": 9}"#);
        assert_eq!(
            (
                received,
                m.topic.as_str(),
                m.payload.as_slice(),
                m.oversized
            ),
            (Some(9), "t", &br#"{"a":1}"#[..], None)
        );
        let (received, m) = message(r#"{"topic": "t", "payload_base64": "AQI=", "oversized": 7}"#);
        assert_eq!(
            (received, m.payload, m.oversized),
            (None, vec![1, 2], Some(7))
        );
        assert_eq!(
            parse_line(r#"{"payload": 1}"#),
            Err(
                "no \"topic\" string (nor a \"watermark\", \"tick\", \"swap\", \"rollback\" or \
                 \"table\")"
                    .into()
            )
        );
        assert_eq!(
            parse_line(r#"{"topic": "t"}"#),
            Err("no \"payload\" or \"payload_base64\"".into())
        );
        assert_eq!(
            parse_line(r#"{"tick": -1.5}"#),
            Err("\"tick\" is not an integer (ms)".into())
        );
        assert_eq!(parse_line("-1"), Err("not a JSON object".into()));
        assert!(parse_line("{").unwrap_err().starts_with("not JSON"));
    }

    #[test]
    fn entries_written_read_back_as_the_same_entries() {
        let entries = [
            LogEntry::Messages {
                received_ms: Some(5),
                messages: vec![
                    Logged {
                        topic: "a".into(),
                        payload: br#"{"x":1}"#.to_vec(),
                        oversized: None,
                    },
                    Logged {
                        topic: "b".into(),
                        payload: b"\xff not json".to_vec(),
                        oversized: Some(70_000),
                    },
                    Logged {
                        topic: "c".into(),
                        // JSON, but not as re-serializing writes it: kept as bytes.
                        payload: br#"{ "x" : 1 }"#.to_vec(),
                        oversized: None,
                    },
                ],
            },
            LogEntry::Tick { now_ms: 9 },
            LogEntry::Watermark { watermark_ms: 11 },
            LogEntry::Swap {
                pipeline: "p".into(),
                step: "p/transform[0]".into(),
                plugin: "x.wasm".into(),
            },
            LogEntry::Rollback {
                pipeline: "p".into(),
                step: "p/transform[0]".into(),
            },
            LogEntry::Table {
                pipeline: "p".into(),
                content: b"sensor,location\ns1,north\n".to_vec(),
            },
        ];
        for entry in entries {
            let mut messages = Vec::new();
            for line in entry_lines(&entry) {
                match parse_line(&line.to_string()).unwrap() {
                    Line::Message {
                        received_ms,
                        message,
                    } => {
                        assert_eq!(received_ms, Some(5));
                        messages.push(message);
                    }
                    Line::Entry(e) => assert_eq!(e, entry),
                }
            }
            if !messages.is_empty() {
                assert_eq!(
                    LogEntry::Messages {
                        received_ms: Some(5),
                        messages
                    },
                    entry
                );
            }
        }
    }
}
