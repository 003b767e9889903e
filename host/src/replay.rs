//! `weir replay`: runs a config's pipelines over recorded input and writes every record they emit
//! as JSON lines, deterministically: the way to test a pipeline like code.
//!
//! Input, one JSON object per line:
//! - a message: `{"topic": "farm/north/sensors/s1", "payload": {...}}`, the payload as JSON (it is
//!   re-serialized to bytes) or `"payload_base64": "..."` for bytes; optional `"received_ms"`;
//! - a time marker: `{"watermark": 1700000060000}` moves every pipeline's watermark there;
//! - a clock tick: `{"tick": 1700000060000}`: the gateway clock moved there with no input (idle
//!   sources, processing-time windows), as in a live run;
//! - a hot swap, `{"swap": {"pipeline": "farm", "step": "farm/transform[2]", "plugin": "x.wasm"}}`,
//!   or a rollback, `{"rollback": {"pipeline": "farm", "step": "farm/transform[2]"}}`.
//!
//! `weir run --record-input FILE` writes exactly this, so a live session replays to the same
//! records. Messages with a `received_ms` (recorded live) go through each pipeline's ingest
//! dedup, as they did live; messages without one are all taken.
//!
//! The gateway clock during a replay is the input's: a message's `received_ms` if it has one
//! (messages are batched only with neighbours received at the same time), otherwise the highest
//! event time seen so far. So idle timeouts and the future-skew guard act
//! on the data's own time, and the output never depends on when the replay runs. At the end of
//! the input, every open window fires.
//!
//! Output, one JSON object per line, each tagged with its `output`: `main`, `late` or
//! `dead-letter`, and the `topic` it would be published to.

use std::io::{BufRead, Write};

use base64::Engine as _;

use crate::config::Config;
use crate::pipeline::{Output, Pipeline, Record};
use crate::runtime::bindings::Message;
use crate::runtime::{Runtime, RuntimeConfig};

/// One line of replay input.
#[derive(Debug, PartialEq)]
pub enum Input {
    Message(Message),
    Watermark(i64),
    Tick(i64),
    Swap {
        pipeline: String,
        step: String,
        plugin: std::path::PathBuf,
    },
    Rollback {
        pipeline: String,
        step: String,
    },
}

/// Reads one line of replay input.
pub fn parse_line(line: &str) -> Result<Input, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(w) = v.get("watermark") {
        let ms = w.as_i64().ok_or("\"watermark\" is not an integer (ms)")?;
        return Ok(Input::Watermark(ms));
    }
    if let Some(t) = v.get("tick") {
        let ms = t.as_i64().ok_or("\"tick\" is not an integer (ms)")?;
        return Ok(Input::Tick(ms));
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
            return Ok(if what == "swap" {
                Input::Swap {
                    pipeline,
                    step,
                    plugin: field("plugin")?.into(),
                }
            } else {
                Input::Rollback { pipeline, step }
            });
        }
    }
    let topic = v["topic"]
        .as_str()
        .ok_or("no \"topic\" string (nor a \"watermark\")")?;
    let payload = match (v.get("payload"), v.get("payload_base64")) {
        (_, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.as_str().ok_or("\"payload_base64\" is not a string")?)
            .map_err(|e| format!("\"payload_base64\" is not base64: {e}"))?,
        (Some(p), None) => serde_json::to_vec(p).expect("JSON values serialize"),
        (None, None) => return Err("no \"payload\" or \"payload_base64\"".into()),
    };
    let received_ms = match v.get("received_ms") {
        Some(r) => r.as_i64().ok_or("\"received_ms\" is not an integer")?,
        None => i64::MIN,
    };
    Ok(Input::Message(Message {
        topic: topic.to_owned(),
        payload,
        received_ms,
    }))
}

/// What a replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub messages: u64,
    pub records: u64,
    pub late: u64,
    pub dead_letters: u64,
}

/// Messages handed to the pipelines at once.
const BATCH: usize = 1024;

/// Runs every pipeline of `config` over `input`, writing records to `out`.
pub fn run(
    config: &Config,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> anyhow::Result<Summary> {
    run_with(config, input, out, Options::default())
}

/// How a replay ends.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Fire every open window at the end of the input (the default). Without it, windows still
    /// open stay unfired, as when a live run stops.
    pub flush_at_end: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { flush_at_end: true }
    }
}

/// [`run`], with [`Options`].
pub fn run_with(
    config: &Config,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    options: Options,
) -> anyhow::Result<Summary> {
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let pipelines = config
        .pipelines
        .iter()
        .map(|p| Pipeline::start(p, &runtime))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let seen = config
        .pipelines
        .iter()
        .map(|p| crate::engine::dedup::SeenSet::new(p.dedup.clone()))
        .collect();
    let mut replay = Replay {
        unknown_topic: config.source.dead_letter.clone(),
        pipelines,
        seen,
        pending: Vec::new(),
        summary: Summary::default(),
        out,
    };
    let mut bytes = Vec::new();
    for n in 0.. {
        let more =
            crate::fsutil::read_line_capped(input, &mut bytes, crate::fsutil::caps::INPUT_LINE)
                .map_err(|e| {
                    anyhow::anyhow!("input line {}: {}", n + 1, crate::fsutil::describe_io(&e))
                })?;
        if !more {
            break;
        }
        let line = std::str::from_utf8(&bytes)
            .map_err(|_| anyhow::anyhow!("input line {}: not UTF-8 text", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line).map_err(|e| anyhow::anyhow!("input line {}: {e}", n + 1))? {
            Input::Message(m) => {
                replay.summary.messages += 1;
                // Messages received at another time than the pending ones see another clock.
                if replay
                    .pending
                    .last()
                    .is_some_and(|p| p.received_ms != m.received_ms)
                {
                    replay.process()?;
                }
                replay.pending.push(m);
                if replay.pending.len() >= BATCH {
                    replay.process()?;
                }
            }
            Input::Watermark(ms) => {
                replay.process()?;
                for i in 0..replay.pipelines.len() {
                    let records = replay.pipelines[i].advance_watermark_to(ms);
                    replay.write(records)?;
                }
            }
            Input::Tick(ms) => {
                replay.process()?;
                for i in 0..replay.pipelines.len() {
                    let records = replay.pipelines[i].tick(ms);
                    replay.write(records)?;
                }
            }
            Input::Swap {
                pipeline,
                step,
                plugin,
            } => {
                replay.process()?;
                let op = replay.step(&pipeline, &step, n)?;
                let loaded = runtime
                    .load(&plugin, None)
                    .map_err(|e| anyhow::anyhow!("input line {}: {e}", n + 1))?;
                let prepared = op
                    .spec()
                    .prepare(loaded, op.config())
                    .map_err(|e| anyhow::anyhow!("input line {}: {e}", n + 1))?;
                op.swap(prepared);
            }
            Input::Rollback { pipeline, step } => {
                replay.process()?;
                replay
                    .step(&pipeline, &step, n)?
                    .rollback()
                    .map_err(|e| anyhow::anyhow!("input line {}: {e}", n + 1))?;
            }
        }
    }
    replay.process()?;
    if options.flush_at_end {
        for i in 0..replay.pipelines.len() {
            let records = replay.pipelines[i].flush();
            replay.write(records)?;
        }
    }
    replay.out.flush()?;
    Ok(replay.summary)
}

struct Replay<'a> {
    /// Where messages no pipeline takes go as a dead letter (`[source] dead_letter`), as live.
    unknown_topic: String,
    pipelines: Vec<Pipeline>,
    /// Each pipeline's ingest dedup (for messages recorded with their receive time).
    seen: Vec<crate::engine::dedup::SeenSet>,
    pending: Vec<Message>,
    summary: Summary,
    out: &'a mut dyn Write,
}

impl Replay<'_> {
    /// Runs the pending messages through every pipeline, on the input's clock.
    fn process(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let messages = std::mem::take(&mut self.pending);
        let received = messages
            .iter()
            .map(|m| m.received_ms)
            .max()
            .unwrap_or(i64::MIN);
        for i in 0..self.pipelines.len() {
            let now = if received != i64::MIN {
                received
            } else {
                self.pipelines[i].newest_event_ms()
            };
            let batch: Vec<Message> = if received == i64::MIN {
                messages.clone()
            } else {
                let (pipeline, seen) = (&self.pipelines[i], &mut self.seen[i]);
                messages
                    .iter()
                    .filter(|m| {
                        !pipeline.accepts(&m.topic)
                            || !seen.check(seen.fingerprint(&m.topic, &m.payload), received)
                    })
                    .cloned()
                    .collect()
            };
            let records = self.pipelines[i].process(&batch, now);
            self.write(records)?;
        }
        let unknown: Vec<crate::engine::input::Logged> = messages
            .iter()
            .filter(|m| !self.pipelines.iter().any(|p| p.accepts(&m.topic)))
            .map(|m| crate::engine::input::Logged {
                topic: m.topic.clone(),
                payload: m.payload.clone(),
                oversized: None,
            })
            .collect();
        if !unknown.is_empty() {
            let unknown: Vec<&crate::engine::input::Logged> = unknown.iter().collect();
            let record = crate::engine::core::unknown_topic_record(&self.unknown_topic, &unknown);
            self.write(vec![record])?;
        }
        // Between two batches, no batch holds key ids: the key table may forget idle keys.
        let forgotten = crate::keys::sweep();
        for p in &mut self.pipelines {
            p.forget_keys(&forgotten);
        }
        Ok(())
    }

    fn step(
        &mut self,
        pipeline: &str,
        step: &str,
        line: usize,
    ) -> anyhow::Result<&mut crate::runtime::Operator> {
        let p = self
            .pipelines
            .iter_mut()
            .find(|p| p.name() == pipeline)
            .ok_or_else(|| anyhow::anyhow!("input line {}: no pipeline {pipeline:?}", line + 1))?;
        p.step_mut(step)
            .ok_or_else(|| anyhow::anyhow!("input line {}: no plugin step {step:?}", line + 1))
    }

    fn write(&mut self, records: Vec<Record>) -> anyhow::Result<()> {
        for r in records {
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

    #[test]
    fn reads_messages_and_markers_and_says_what_is_wrong() {
        assert_eq!(parse_line(r#"{"watermark": 5}"#), Ok(Input::Watermark(5)));
        assert_eq!(parse_line(r#"{"tick": 7}"#), Ok(Input::Tick(7)));
        assert_eq!(
            parse_line(
                r#"{"swap": {"pipeline": "p", "step": "p/transform[0]", "plugin": "x.wasm"}}"#
            ),
            Ok(Input::Swap {
                pipeline: "p".into(),
                step: "p/transform[0]".into(),
                plugin: "x.wasm".into()
            })
        );
        assert_eq!(
            parse_line(r#"{"rollback": {"pipeline": "p", "step": "s"}}"#),
            Ok(Input::Rollback {
                pipeline: "p".into(),
                step: "s".into()
            })
        );
        assert!(
            parse_line(r#"{"swap": {"pipeline": "p"}}"#)
                .unwrap_err()
                .contains("\"step\"")
        );
        let Input::Message(m) =
            parse_line(r#"{"topic": "t", "payload": {"a": 1}, "received_ms": 9}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (m.topic.as_str(), m.payload.as_slice(), m.received_ms),
            ("t", &br#"{"a":1}"#[..], 9)
        );
        let Input::Message(m) = parse_line(r#"{"topic": "t", "payload_base64": "AQI="}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(m.payload, vec![1, 2]);
        assert_eq!(
            parse_line(r#"{"payload": 1}"#),
            Err("no \"topic\" string (nor a \"watermark\")".into())
        );
        assert_eq!(
            parse_line(r#"{"topic": "t"}"#),
            Err("no \"payload\" or \"payload_base64\"".into())
        );
        assert!(parse_line("{").unwrap_err().starts_with("not JSON"));
    }
}
