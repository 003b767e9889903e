//! One core: live processing, crash recovery and `weir replay` apply the same entries with the
//! same function (`Core::apply`). A seeded property test over random input of every kind —
//! valid readings, garbage, unknown topics, oversized messages, resends, readings out of order
//! and far in the future, ticks, watermark markers, hot swaps — checks that:
//!
//! - the entries applied as the live engine applies them, then recorded as
//!   `weir run --record-input` records them and replayed, give the same records (ids included);
//! - any cut of the same messages into entries gives the same records, with receive times
//!   (the live log's entries) and without (replay input with no `received_ms`, where the
//!   future-skew guard judges each event by the newest event time before it).

use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, RngSeed, TestRunner};
use serde_json::json;
use weir::config::Config;
use weir::engine::input::{LogEntry, Logged};
use weir::engine::{Core, EngineMetrics};

const BASE_MS: i64 = 1_700_000_040_000;

/// Two pipelines over the same sensors: one windowed (with lateness, a future-skew guard and a
/// counter plugin that hot swaps), one forwarding events at most once; one topic nobody takes.
fn config() -> Config {
    let counter = weir_tests::plugin_path("counter_v1");
    let text = format!(
        r#"
version = 1

[[pipeline]]
name = "windows"
topics = ["farm/+/sensors/#"]
[pipeline.decode]
json = {{ key = "sensor", time = "ts", time_format = "ms" }}
[[pipeline.transform]]
plugin = {counter:?}
[pipeline.window]
kind = "tumbling"
size = "10s"
out_of_orderness = "2s"
idle_timeout = "30s"
allowed_lateness = "5s"
max_future = "20s"
[[pipeline.aggregate]]
fn = "count"
[[pipeline.aggregate]]
fn = "max"
field = "seen"
[pipeline.output]
topic = "out/{{key}}"

[[pipeline]]
name = "relay"
guarantee = "at-most-once"
topics = ["farm/north/#"]
[pipeline.decode]
json = {{ key = "sensor", time = "ts", time_format = "ms" }}
[pipeline.output]
topic = "relay/{{key}}"
"#
    );
    let dir = weir_tests::repo().join("configs");
    Config::from_str(&text, &dir.join("one-core.toml")).unwrap_or_else(|e| panic!("{e}"))
}

/// What one step of the input is.
#[derive(Clone, Debug)]
enum Step {
    /// A reading of sensor `s`, `offset_ms` from the running clock (negative: out of order;
    /// far positive: future-dated).
    Reading {
        sensor: u8,
        offset_ms: i64,
    },
    Garbage(Vec<u8>),
    UnknownTopic,
    Oversized,
    /// The last message again (a sensor resending).
    Resend,
    /// The clock moves on by this much.
    Advance(i64),
    Tick,
    Watermark(i64),
    Swap,
    Rollback,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0u8..6, -4_000i64..3_000).prop_map(|(sensor, offset_ms)| Step::Reading { sensor, offset_ms }),
        1 => (0u8..6, 25_000i64..90_000).prop_map(|(sensor, offset_ms)| Step::Reading { sensor, offset_ms }),
        1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Step::Garbage),
        1 => Just(Step::UnknownTopic),
        1 => Just(Step::Oversized),
        2 => Just(Step::Resend),
        4 => (1i64..4_000).prop_map(Step::Advance),
        1 => Just(Step::Tick),
        1 => (-10_000i64..20_000).prop_map(Step::Watermark),
        1 => Just(Step::Swap),
        1 => Just(Step::Rollback),
    ]
}

/// The entries a run of steps makes, as the live loop would apply them: each group of messages
/// received at one clock reading is one entry.
fn entries(steps: &[Step], with_clock: bool) -> Vec<LogEntry> {
    let mut now = BASE_MS;
    let mut out: Vec<LogEntry> = Vec::new();
    let mut batch: Vec<Logged> = Vec::new();
    let mut last: Option<Logged> = None;
    let mut swapped = false;
    let counter = |v: &str| weir_tests::plugin_path(v);
    let flush = |batch: &mut Vec<Logged>, out: &mut Vec<LogEntry>, now: i64| {
        if !batch.is_empty() {
            out.push(LogEntry::Messages {
                received_ms: with_clock.then_some(now),
                messages: std::mem::take(batch),
            });
        }
    };
    for (n, s) in steps.iter().enumerate() {
        let message = match s {
            Step::Reading { sensor, offset_ms } => {
                let location = if sensor % 2 == 0 { "north" } else { "south" };
                Some(Logged {
                    topic: format!("farm/{location}/sensors/s{sensor}"),
                    payload: json!({"sensor": format!("s{sensor}"), "ts": now + offset_ms, "n": n})
                        .to_string()
                        .into_bytes(),
                    oversized: None,
                })
            }
            Step::Garbage(bytes) => Some(Logged {
                topic: "farm/north/sensors/s0".into(),
                payload: bytes.clone(),
                oversized: None,
            }),
            Step::UnknownTopic => Some(Logged {
                topic: "elsewhere/x".into(),
                payload: format!("{{\"n\": {n}}}").into_bytes(),
                oversized: None,
            }),
            Step::Oversized => Some(Logged {
                topic: "farm/south/sensors/s1".into(),
                payload: vec![b'x'; 1024],
                oversized: Some(5_000_000 + n as u64),
            }),
            Step::Resend => last.clone(),
            _ => None,
        };
        if let Some(m) = message {
            last = Some(m.clone());
            batch.push(m);
            continue;
        }
        flush(&mut batch, &mut out, now);
        match s {
            Step::Advance(ms) => now += ms,
            Step::Tick if with_clock => out.push(LogEntry::Tick { now_ms: now }),
            Step::Watermark(offset) => out.push(LogEntry::Watermark {
                watermark_ms: now + offset,
            }),
            Step::Swap => {
                let to = if swapped { "counter_v1" } else { "counter_v2" };
                swapped = !swapped;
                out.push(LogEntry::Swap {
                    pipeline: "windows".into(),
                    step: "transform[0]".into(),
                    plugin: counter(to),
                });
            }
            Step::Rollback if swapped => {
                swapped = false;
                out.push(LogEntry::Rollback {
                    pipeline: "windows".into(),
                    step: "transform[0]".into(),
                });
            }
            _ => {}
        }
    }
    flush(&mut batch, &mut out, now);
    out
}

/// Records as JSON lines: the results and late events of each topic in the order they were
/// made (per key, order is what weir promises), and the dead letters of each output as a sorted
/// list. Dead letters come from several stages (decode, transforms, the window) that each take
/// a whole entry in turn, so their order across stages depends on the cut; what they are does
/// not. Nor does anything order records across pipelines.
type Streams = std::collections::BTreeMap<String, Vec<String>>;

fn add(streams: &mut Streams, output: &str, topic: &str, line: String) {
    let stream = match output {
        "dead-letter" => format!("dead letters to {topic}"),
        _ => format!("{output} to {topic}"),
    };
    streams.entry(stream).or_default().push(line);
}

fn sorted(mut streams: Streams) -> Streams {
    for (name, lines) in &mut streams {
        if name.starts_with("dead letters") {
            lines.sort();
        }
    }
    streams
}

/// Applies `entries` to a fresh core and returns every record.
fn apply(config: &Config, entries: &[LogEntry]) -> Streams {
    let mut core = Core::start(
        config,
        &weir_tests::runtime(),
        Arc::new(EngineMetrics::default()),
    )
    .expect("the pipelines start");
    let mut streams = Streams::new();
    for e in entries {
        let produced = core.apply(e, false).expect("every entry applies");
        for (r, _) in &produced.records {
            let v = r.to_json();
            add(
                &mut streams,
                v["output"].as_str().unwrap(),
                &r.topic,
                v.to_string(),
            );
        }
    }
    sorted(streams)
}

/// The same messages cut into entries differently: every entry of messages split at the cut
/// points given (as fractions), entries with the same receive time kept apart or joined.
fn recut(entries: &[LogEntry], cuts: &[u8]) -> Vec<LogEntry> {
    let mut out: Vec<LogEntry> = Vec::new();
    let mut cuts = cuts.iter().cycle();
    for e in entries {
        match e {
            LogEntry::Messages {
                received_ms,
                messages,
            } => {
                let mut rest = &messages[..];
                while !rest.is_empty() {
                    let take = (usize::from(*cuts.next().unwrap_or(&1)) % (rest.len() + 1)).max(1);
                    let (now, later) = rest.split_at(take);
                    match out.last_mut() {
                        // Join with the entry before when it was received at the same time.
                        Some(LogEntry::Messages {
                            received_ms: r,
                            messages,
                        }) if r == received_ms && cuts.next().is_some_and(|c| c % 2 == 0) => {
                            messages.extend_from_slice(now)
                        }
                        _ => out.push(LogEntry::Messages {
                            received_ms: *received_ms,
                            messages: now.to_vec(),
                        }),
                    }
                    rest = later;
                }
            }
            other => out.push(other.clone()),
        }
    }
    out
}

/// Records `entries` as `weir run --record-input` does and replays the recording.
fn record_and_replay(config: &Config, entries: &[LogEntry]) -> Streams {
    let mut recording = String::new();
    for e in entries {
        for line in weir::replay::entry_lines(e) {
            recording.push_str(&line.to_string());
            recording.push('\n');
        }
    }
    let mut out = Vec::new();
    let options = weir::replay::Options {
        flush_at_end: false,
        ..weir::replay::Options::default()
    };
    weir::replay::run_with(config, &mut recording.as_bytes(), &mut out, options)
        .expect("the recording replays");
    let mut streams = Streams::new();
    for line in String::from_utf8(out).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let (output, topic) = (v["output"].as_str().unwrap(), v["topic"].as_str().unwrap());
        add(&mut streams, output, topic, v.to_string());
    }
    sorted(streams)
}

fn runner() -> TestRunner {
    TestRunner::new(PropConfig {
        cases: 48,
        rng_seed: RngSeed::Fixed(0x0ce_c0de),
        failure_persistence: None,
        ..PropConfig::default()
    })
}

#[test]
fn live_entries_recorded_and_replayed_give_the_same_records_however_they_are_cut() {
    weir_tests::plugins();
    let config = config();
    runner()
        .run(
            &(
                proptest::collection::vec(step(), 1..120),
                proptest::collection::vec(any::<u8>(), 1..16),
            ),
            |(steps, cuts)| {
                let live = entries(&steps, true);
                let want = apply(&config, &live);
                prop_assert_eq!(
                    &record_and_replay(&config, &live),
                    &want,
                    "recorded and replayed"
                );
                prop_assert_eq!(
                    &apply(&config, &recut(&live, &cuts)),
                    &want,
                    "cut otherwise"
                );
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn without_receive_times_any_cut_gives_the_same_records() {
    weir_tests::plugins();
    let config = config();
    runner()
        .run(
            &(
                proptest::collection::vec(step(), 1..120),
                proptest::collection::vec(any::<u8>(), 1..16),
            ),
            |(steps, cuts)| {
                let input = entries(&steps, false);
                let want = apply(&config, &input);
                prop_assert_eq!(&apply(&config, &recut(&input, &cuts)), &want);
                // One message per entry: the clock is each message's own, not a batch's.
                let singles = recut(&input, &[1]);
                prop_assert_eq!(&apply(&config, &singles), &want);
                prop_assert_eq!(&record_and_replay(&config, &input), &want);
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn a_dense_history_without_receive_times_replays_like_one_with_them() {
    // 2 000 readings five seconds apart (almost three hours), replayed without receive times in
    // batches of 1 024: the clock is each reading's own, so none is "ahead of the gateway clock"
    // and the windows are those of the same readings received as they were made.
    let config = config();
    weir_tests::plugins();
    let lines = |with_clock: bool| -> String {
        (0..2000)
            .map(|i| {
                let ts = BASE_MS + i * 5_000;
                let mut line = json!({
                    "topic": "farm/north/sensors/s0",
                    "payload": {"sensor": "s0", "ts": ts},
                });
                if with_clock {
                    line["received_ms"] = ts.into();
                }
                line.to_string() + "\n"
            })
            .collect()
    };
    let run = |input: String| {
        let mut out = Vec::new();
        let summary = weir::replay::run(&config, &mut input.as_bytes(), &mut out).unwrap();
        (summary, String::from_utf8(out).unwrap())
    };
    let (without, text) = run(lines(false));
    assert_eq!(
        without.dead_letters,
        0,
        "{}",
        text.lines().next().unwrap_or("")
    );
    let (with, _) = run(lines(true));
    assert_eq!(without.records, with.records);
    assert_eq!(with.dead_letters, 0);
}
