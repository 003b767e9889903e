//! `weir replay`: runs a config's pipelines over recorded input and writes every record they emit
//! as JSON lines, deterministically: the way to test a pipeline like code.
//!
//! Input, one JSON object per line:
//! - a message: `{"topic": "farm/north/sensors/s1", "payload": {...}}`, the payload as JSON (it is
//!   re-serialized to bytes) or `"payload_base64": "..."` for bytes; optional `"received_ms"`;
//! - a time marker: `{"watermark": 1700000060000}` moves every pipeline's watermark there.
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

use anyhow::Context as _;
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
}

/// Reads one line of replay input.
pub fn parse_line(line: &str) -> Result<Input, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(w) = v.get("watermark") {
        let ms = w.as_i64().ok_or("\"watermark\" is not an integer (ms)")?;
        return Ok(Input::Watermark(ms));
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
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let pipelines = config
        .pipelines
        .iter()
        .map(|p| Pipeline::start(p, &runtime))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut replay = Replay {
        pipelines,
        pending: Vec::new(),
        summary: Summary::default(),
        out,
    };
    for (n, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("reading input line {}", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(&line).map_err(|e| anyhow::anyhow!("input line {}: {e}", n + 1))? {
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
        }
    }
    replay.process()?;
    for i in 0..replay.pipelines.len() {
        let records = replay.pipelines[i].flush();
        replay.write(records)?;
    }
    replay.out.flush()?;
    Ok(replay.summary)
}

struct Replay<'a> {
    pipelines: Vec<Pipeline>,
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
            let records = self.pipelines[i].process(&messages, now);
            self.write(records)?;
        }
        Ok(())
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
