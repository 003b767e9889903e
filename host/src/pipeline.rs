//! One pipeline, assembled from its config: topic filters → decode → transforms → enrichment →
//! key by → window and aggregates (or straight out) → records for the main, late and
//! dead-letter outputs.
//!
//! A pipeline is driven by batches of messages and a gateway clock; it does no I/O of its own, so
//! any driver (`weir replay`, or a live source) runs the same code.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use sha2::{Digest, Sha256};

use crate::batch::{Batch, Value};
use crate::config;
use crate::decode::JsonMapping;
use crate::enrich::Enricher;
use crate::keys;
use crate::runtime::bindings::Message;
use crate::runtime::{
    DeadInput, DeadLetter, Operator, OperatorSpec, Prepared, Runtime, SwapReport, World,
    config_json,
};
pub use crate::window::GatewayClock;
use crate::window::{self, Windower};

pub use crate::record::{Output, Record, RecordId};

enum Decoder {
    Json(JsonMapping),
    Plugin(Box<Operator>),
}

/// The layout version of [`PipelineState`].
const STATE_VERSION: u32 = 2;

/// One entry of a step's keyed state: (key, name, value).
type StateEntry = (String, String, Vec<u8>);

/// Everything a pipeline holds that its output depends on, for a checkpoint: window state, the
/// keyed state of each plugin step, the watermark source of each key, the newest event time.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PipelineState {
    version: u32,
    window: Option<window::WindowState>,
    /// Per plugin step (by step name), its committed entries (key, name, value).
    operators: Vec<(String, Vec<StateEntry>)>,
    /// Key → watermark source, sorted by key.
    sources: Vec<(String, String)>,
    newest_event_ms: i64,
    /// The reference table in use (its file's content), so that recovery enriches with the
    /// version the live run used, whatever the file holds now.
    table: Option<Vec<u8>>,
}

/// A running pipeline.
pub struct Pipeline {
    name: String,
    topics: Vec<String>,
    decoder: Decoder,
    transforms: Vec<Operator>,
    enrich: Option<Enricher>,
    key_field: Option<String>,
    processing_time: bool,
    window: Option<Windower>,
    output: config::Output,
    /// The watermark source of each key, as last decoded: transforms may reshape a batch, so an
    /// event's source after them is that of the last decoded event with its key.
    sources: HashMap<keys::KeyId, Arc<str>>,
    /// The newest event time seen that was not future-dated (the clock of a replay).
    newest_event_ms: i64,
    max_future_ms: i64,
    max_key_bytes: usize,
    counts: PipelineCounts,
}

/// What a pipeline took in: messages by the topic filter that matched them (the first one, in
/// config order), and the events its decoder made of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipelineCounts {
    pub messages_by_filter: Vec<(String, u64)>,
    pub decoded: u64,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn operator(
    runtime: &Runtime,
    step: String,
    world: World,
    plugin: &config::PluginStep,
    max_key_bytes: usize,
) -> anyhow::Result<Operator> {
    let loaded = runtime.load(&plugin.path, plugin.sha256.as_deref())?;
    let spec = OperatorSpec {
        runtime: runtime.clone(),
        step: step.into(),
        world,
        limits: crate::runtime::Limits {
            max_key_bytes,
            ..plugin.limits.clone()
        },
        permissions: plugin.permissions.clone(),
    };
    Ok(Operator::start(spec, loaded, &config_json(&plugin.config))?)
}

impl Pipeline {
    /// Starts a pipeline: loads its plugins and tables, sets up its window.
    pub fn start(config: &config::Pipeline, runtime: &Runtime) -> anyhow::Result<Pipeline> {
        let name = config.name.clone();
        let decoder = match &config.decode {
            config::Decode::Json(mapping) => Decoder::Json(mapping.clone()),
            config::Decode::Plugin(p) => Decoder::Plugin(Box::new(operator(
                runtime,
                format!("{name}/decode"),
                World::Decoder,
                p,
                config.max_key_bytes,
            )?)),
        };
        let transforms = config
            .transforms
            .iter()
            .enumerate()
            .map(|(i, t)| {
                operator(
                    runtime,
                    format!("{name}/transform[{i}]"),
                    World::Transformer,
                    t,
                    config.max_key_bytes,
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let enrich = match &config.enrich {
            Some(e) => Some(
                Enricher::open(&e.table, &e.on, e.fields.clone(), e.on_missing)
                    .map_err(anyhow::Error::msg)?,
            ),
            None => None,
        };
        let window = match &config.window {
            Some(w) => {
                let mut custom = None;
                let mut aggregates = Vec::new();
                for a in &config.aggregates {
                    match a {
                        config::Aggregate::Builtin {
                            func,
                            field,
                            output,
                        } => aggregates.push(window::AggregateSpec {
                            func: *func,
                            field: field.clone(),
                            output: output.clone(),
                        }),
                        config::Aggregate::Plugin(p) => {
                            let op = operator(
                                runtime,
                                format!("{name}/aggregate"),
                                World::Aggregator,
                                p,
                                config.max_key_bytes,
                            )?;
                            custom = Some(Box::new(PluginAggregate(op))
                                as Box<dyn window::CustomAggregate + Send>);
                        }
                    }
                }
                let settings = window::WindowConfig {
                    kind: window_kind(w.kind),
                    out_of_orderness_ms: ms(w.out_of_orderness),
                    idle_timeout_ms: ms(w.idle_timeout),
                    allowed_lateness_ms: ms(w.allowed_lateness),
                    max_future_skew_ms: ms(w.max_future),
                    aggregates,
                };
                Some(
                    Windower::new(&name, settings, custom)
                        .map_err(anyhow::Error::msg)
                        .with_context(|| format!("pipeline {name}: window"))?,
                )
            }
            None => None,
        };
        Ok(Pipeline {
            name,
            topics: config.topics.clone(),
            decoder,
            transforms,
            enrich,
            key_field: config.key.clone(),
            processing_time: config
                .window
                .as_ref()
                .is_some_and(|w| w.time == config::WindowTime::Processing),
            window,
            output: config.output.clone(),
            sources: HashMap::new(),
            newest_event_ms: i64::MIN,
            max_future_ms: config
                .window
                .as_ref()
                .map_or(i64::MAX, |w| ms(w.max_future)),
            max_key_bytes: config.max_key_bytes,
            counts: PipelineCounts {
                messages_by_filter: config.topics.iter().map(|t| (t.clone(), 0)).collect(),
                decoded: 0,
            },
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Windows held (open, or fired and kept for late events); 0 without a window.
    pub fn open_windows(&self) -> usize {
        self.window.as_ref().map_or(0, Windower::open_windows)
    }

    /// The watermark, once there is one (pipelines with a window only).
    pub fn watermark(&self) -> Option<i64> {
        self.window.as_ref().and_then(Windower::watermark)
    }

    /// The window, if the pipeline has one.
    pub fn window(&self) -> Option<&Windower> {
        self.window.as_ref()
    }

    /// The plugin step named `step` (`<pipeline>/decode`, `<pipeline>/transform[i]`,
    /// `<pipeline>/aggregate`).
    pub fn step_mut(&mut self, step: &str) -> Option<&mut Operator> {
        let decoder = match &mut self.decoder {
            Decoder::Plugin(op) => Some(&mut **op),
            Decoder::Json(_) => None,
        };
        let aggregate = self
            .window
            .as_mut()
            .and_then(Windower::custom_aggregate_mut)
            .and_then(|c| c.as_any_mut()?.downcast_mut::<PluginAggregate>())
            .map(|p| &mut p.0);
        decoder
            .into_iter()
            .chain(&mut self.transforms)
            .chain(aggregate)
            .find(|op| &*op.spec().step == step)
    }

    /// Every plugin step: those of [`Pipeline::operators`], then the aggregator, if any.
    pub fn plugin_steps(&self) -> impl Iterator<Item = &Operator> {
        let aggregate = self
            .window
            .as_ref()
            .and_then(Windower::custom_aggregate)
            .and_then(|c| c.as_any()?.downcast_ref::<PluginAggregate>())
            .map(|p| &p.0);
        self.operators().chain(aggregate)
    }

    /// Swaps the plugin step `step` to a prepared version (see [`Operator::swap`]). For the
    /// aggregator, the accumulators of the windows held go over to the new version with it: as
    /// they are when both versions store the same layout, converted by the new version's
    /// `migrate-accumulators` when not; if it cannot convert them, nothing changes.
    pub fn swap_step(&mut self, step: &str, mut prepared: Prepared) -> Result<SwapReport, String> {
        let op = self
            .step_mut(step)
            .ok_or_else(|| format!("unknown step {step:?}"))?;
        if op.spec().world != World::Aggregator {
            return op.swap(prepared).map_err(|e| e.to_string());
        }
        let spec = op.spec().clone();
        let from = op.layout().to_owned();
        // Measured for the swap's report only: nothing the pipeline emits reads it.
        #[allow(clippy::disallowed_methods)]
        let started = std::time::Instant::now();
        let mut converted = 0;
        if prepared.layout() != from {
            let window = self
                .window
                .as_mut()
                .expect("an aggregator step has a window");
            converted = window.convert_accumulators(|accs| {
                prepared
                    .migrate_accumulators(&spec, &from, accs)
                    .map_err(|e| e.to_string())
            })?;
        }
        let convert_time = started.elapsed();
        let op = self.step_mut(step).expect("found above");
        let mut report = op.swap(prepared).map_err(|e| e.to_string())?;
        report.migrated = converted;
        report.migrate_time = convert_time;
        Ok(report)
    }

    /// Converts what the plugin step `step` holds, restored from a checkpoint and written in
    /// layout `from`, into its version's layout: its keyed state, or for the aggregator the
    /// accumulators of the windows held. An error if the version cannot read `from`.
    pub fn convert_restored(&mut self, step: &str, from: &str) -> Result<usize, String> {
        let op = self
            .step_mut(step)
            .ok_or_else(|| format!("unknown step {step:?}"))?;
        if op.layout() == from {
            return Ok(0);
        }
        if op.spec().world != World::Aggregator {
            return op.convert_restored_state(from).map_err(|e| e.to_string());
        }
        let spec = op.spec().clone();
        let mut prepared = spec
            .prepare(op.plugin().clone(), op.config())
            .map_err(|e| e.to_string())?;
        let window = self
            .window
            .as_mut()
            .expect("an aggregator step has a window");
        window.convert_accumulators(|accs| {
            prepared
                .migrate_accumulators(&spec, from, accs)
                .map_err(|e| e.to_string())
        })
    }

    /// Swaps the plugin step `step` back to the version that ran before its last swap, by the
    /// same rules as [`Pipeline::swap_step`].
    pub fn rollback_step(&mut self, step: &str) -> Result<SwapReport, String> {
        let op = self
            .step_mut(step)
            .ok_or_else(|| format!("unknown step {step:?}"))?;
        let previous = op.prepare_rollback().map_err(|e| e.to_string())?;
        self.swap_step(step, previous)
    }

    /// The plugin steps with keyed state: the decoder plugin, then each transform.
    pub fn operators(&self) -> impl Iterator<Item = &Operator> {
        let decoder = match &self.decoder {
            Decoder::Plugin(op) => Some(&**op),
            Decoder::Json(_) => None,
        };
        decoder.into_iter().chain(&self.transforms)
    }

    /// Everything the pipeline's output depends on, for a checkpoint.
    pub fn snapshot(&self) -> PipelineState {
        let mut sources: Vec<(String, String)> = self
            .sources
            .iter()
            .filter_map(|(&k, s)| Some((keys::name(k)?.to_string(), s.to_string())))
            .collect();
        sources.sort();
        PipelineState {
            version: STATE_VERSION,
            window: self.window.as_ref().map(Windower::snapshot),
            operators: self
                .operators()
                .map(|op| {
                    let entries = op
                        .state()
                        .iter()
                        .map(|(k, n, v)| (k.to_owned(), n.to_owned(), v.to_vec()))
                        .collect();
                    (op.spec().step.to_string(), entries)
                })
                .collect(),
            sources,
            newest_event_ms: self.newest_event_ms,
            table: self.enrich.as_ref().map(|e| e.content().to_vec()),
        }
    }

    /// Continues from a snapshot. Fails, changing nothing, if it does not fit this pipeline (a
    /// window or plugin steps added or removed since it was taken).
    pub fn restore(&mut self, state: PipelineState) -> Result<(), String> {
        if state.version != STATE_VERSION {
            return Err(format!(
                "pipeline state has layout version {}, this weir reads {STATE_VERSION}",
                state.version
            ));
        }
        let steps: Vec<String> = self
            .operators()
            .map(|op| op.spec().step.to_string())
            .collect();
        let saved: Vec<&str> = state.operators.iter().map(|(s, _)| s.as_str()).collect();
        if steps != saved {
            return Err(format!(
                "the checkpoint has state for plugin steps {saved:?}, the config has {steps:?}"
            ));
        }
        match (&mut self.window, state.window) {
            (Some(w), Some(ws)) => w.restore(ws)?,
            (None, None) => {}
            (Some(_), None) => {
                return Err("the checkpoint has no window state, the config has a window".into());
            }
            (None, Some(_)) => {
                return Err("the checkpoint has window state, the config has no window".into());
            }
        }
        let mut states = state.operators.into_iter();
        if let Decoder::Plugin(op) = &mut self.decoder {
            let (_, entries) = states.next().expect("checked above");
            op.restore_state(crate::runtime::KeyedState::from_entries(entries));
        }
        for op in &mut self.transforms {
            let (_, entries) = states.next().expect("checked above");
            op.restore_state(crate::runtime::KeyedState::from_entries(entries));
        }
        self.sources = state
            .sources
            .into_iter()
            .map(|(k, s)| (keys::intern(&k), Arc::from(s)))
            .collect();
        self.newest_event_ms = state.newest_event_ms;
        if let (Some(e), Some(content)) = (&mut self.enrich, &state.table) {
            e.replace(content)
                .map_err(|e| format!("the checkpoint's reference table: {e}"))?;
        }
        Ok(())
    }

    /// Whether messages on `topic` feed this pipeline.
    pub fn accepts(&self, topic: &str) -> bool {
        self.topics.iter().any(|f| topic_matches(f, topic))
    }

    /// What this pipeline took in so far.
    pub fn counts(&self) -> &PipelineCounts {
        &self.counts
    }

    /// The newest event time this pipeline has seen, not counting future-dated events (those
    /// more than `max_future` ahead of the clock); `i64::MIN` before the first event.
    pub fn newest_event_ms(&self) -> i64 {
        self.newest_event_ms
    }

    /// Runs a batch of messages through the pipeline, received at `clock` (see
    /// [`GatewayClock`]).
    pub fn process(&mut self, messages: &[Message], clock: GatewayClock) -> Vec<Record> {
        let records = self.process_inner(messages, clock);
        self.publishable(records)
    }

    fn process_inner(&mut self, messages: &[Message], clock: GatewayClock) -> Vec<Record> {
        self.set_clock(match clock {
            GatewayClock::At(now_ms) => now_ms,
            GatewayClock::EventTime => self.newest_event_ms,
        });
        let mut records = Vec::new();
        let mut taken = Vec::with_capacity(messages.len());
        for m in messages {
            if let Some(i) = self.topics.iter().position(|f| topic_matches(f, &m.topic)) {
                self.counts.messages_by_filter[i].1 += 1;
                taken.push(m.clone());
            }
        }
        if taken.is_empty() {
            return records;
        }
        let mut events = self.decode(taken, &mut records);
        self.counts.decoded += events.len() as u64;
        for op in &mut self.transforms {
            let outcome = op.transform(events);
            for d in outcome.dead_letters {
                records.push(dead_letter_record(&self.name, &self.output, &d));
            }
            events = outcome.events;
        }
        if let Some(enrich) = &mut self.enrich {
            let enriched = enrich.apply(&events);
            self.dead_letter_each(
                "enrich",
                "the key is not in the reference table",
                &events,
                &enriched.unmatched,
                &mut records,
            );
            events = enriched.events;
        }
        let sources: Vec<Arc<str>> = (0..events.len())
            .map(|i| {
                let k = events.key[i];
                self.sources
                    .get(&k)
                    .cloned()
                    .unwrap_or_else(|| events.key_of(i))
            })
            .collect();
        let (mut events, sources) = match &self.key_field {
            Some(field) => self.key_by(field, events, sources, &mut records),
            None => (events, sources),
        };
        match clock {
            GatewayClock::At(now_ms) => {
                if self.processing_time {
                    events.ts_ms.iter_mut().for_each(|t| *t = now_ms);
                }
                let horizon = now_ms.saturating_add(self.max_future_ms);
                if let Some(newest) = events.ts_ms.iter().copied().filter(|&t| t <= horizon).max() {
                    self.newest_event_ms = self.newest_event_ms.max(newest);
                }
            }
            // Without a receive time, processing time is the event's own time.
            GatewayClock::EventTime if self.window.is_none() => {
                if let Some(newest) = events.ts_ms.iter().copied().max() {
                    self.newest_event_ms = self.newest_event_ms.max(newest);
                }
            }
            GatewayClock::EventTime => {}
        }
        match &mut self.window {
            Some(w) => {
                let emitted = match clock {
                    GatewayClock::At(now_ms) => w.process(&events, &sources, now_ms),
                    GatewayClock::EventTime => {
                        let emitted = w.process_at_event_time(&events, &sources);
                        if let Some(newest) = w.event_clock() {
                            self.newest_event_ms = self.newest_event_ms.max(newest);
                        }
                        emitted
                    }
                };
                self.emitted(emitted, &mut records);
            }
            None => {
                for i in 0..events.len() {
                    records.push(event_record(&self.name, &self.output, &events, i));
                }
            }
        }
        records
    }

    /// A dead letter for messages refused before decoding (too large, say), published to this
    /// pipeline's dead-letter topic.
    pub fn refuse(&self, step: &str, detail: String, messages: Vec<Message>) -> Record {
        let d = DeadLetter {
            step: format!("{}/{step}", self.name).into(),
            reason: crate::runtime::Reason::Rejected,
            detail,
            input: DeadInput::Messages(messages),
        };
        dead_letter_record(&self.name, &self.output, &d)
    }

    /// Moves the watermark to `watermark_ms` (a replay time marker).
    pub fn advance_watermark_to(&mut self, watermark_ms: i64) -> Vec<Record> {
        let mut records = Vec::new();
        if let Some(w) = &mut self.window {
            let emitted = w.advance_watermark_to(watermark_ms);
            self.emitted(emitted, &mut records);
        }
        self.publishable(records)
    }

    /// The reference table's file and the sha256 of the version in use, if the pipeline
    /// enriches.
    pub fn table(&self) -> Option<(&std::path::Path, &str)> {
        self.enrich.as_ref().map(|e| (e.path(), e.sha256()))
    }

    /// Uses a new version of the reference table (see [`Enricher::replace`]); a version that does
    /// not parse is refused with the reason and the old one stays.
    pub fn replace_table(&mut self, content: &[u8]) -> Result<(), String> {
        match &mut self.enrich {
            Some(e) => e.replace(content),
            None => Err(format!("pipeline {} has no reference table", self.name)),
        }
    }

    /// Gives every plugin step the gateway clock: a plugin's quarantine follows the input's
    /// time, not the wall clock, so a replay quarantines where the live run did.
    fn set_clock(&mut self, now_ms: i64) {
        if let Decoder::Plugin(op) = &mut self.decoder {
            op.set_clock(now_ms);
        }
        for op in &mut self.transforms {
            op.set_clock(now_ms);
        }
        if let Some(w) = &mut self.window {
            w.set_custom_clock(now_ms);
        }
    }

    /// Lets time pass with no new messages (idle sources, the gateway clock).
    pub fn tick(&mut self, now_ms: i64) -> Vec<Record> {
        self.set_clock(now_ms);
        let mut records = Vec::new();
        if let Some(w) = &mut self.window {
            let emitted = w.tick(now_ms);
            self.emitted(emitted, &mut records);
        }
        self.publishable(records)
    }

    /// Fires every open window (at the end of the input).
    pub fn flush(&mut self) -> Vec<Record> {
        let mut records = Vec::new();
        if let Some(w) = &mut self.window {
            let emitted = w.flush();
            self.emitted(emitted, &mut records);
        }
        self.publishable(records)
    }

    /// Records whose topic the broker would refuse (over MQTT's 65 535 bytes: a long key in a
    /// long template) become dead letters saying so, on the dead-letter topic.
    fn publishable(&self, records: Vec<Record>) -> Vec<Record> {
        records
            .into_iter()
            .map(|r| match crate::mqtt::topic_problem(&r.topic) {
                None => r,
                Some(problem) => dead_letter_json(
                    &self.name,
                    &self.output,
                    &format!("{}/output", self.name),
                    crate::runtime::Reason::Rejected,
                    &format!(
                        "the record cannot be published: its topic {} {problem}",
                        crate::fsutil::elide(&r.topic, 80)
                    ),
                    vec![r.payload_json()],
                ),
            })
            .collect()
    }

    fn decode(&mut self, messages: Vec<Message>, records: &mut Vec<Record>) -> Batch {
        match &mut self.decoder {
            Decoder::Json(mapping) => {
                let decoded = mapping.decode(messages, self.max_key_bytes);
                for (m, reason) in decoded.rejected {
                    let d = DeadLetter {
                        step: format!("{}/decode", self.name).into(),
                        reason: crate::runtime::Reason::Rejected,
                        detail: reason,
                        input: DeadInput::Messages(vec![m]),
                    };
                    records.push(dead_letter_record(&self.name, &self.output, &d));
                }
                for (i, source) in decoded.sources.into_iter().enumerate() {
                    self.sources.insert(decoded.events.key[i], source);
                }
                decoded.events
            }
            Decoder::Plugin(op) => {
                let topics: Vec<Arc<str>> = messages
                    .iter()
                    .map(|m| Arc::from(m.topic.as_str()))
                    .collect();
                let outcome = op.decode(messages);
                for d in &outcome.dead_letters {
                    records.push(dead_letter_record(&self.name, &self.output, d));
                }
                // A decoder plugin's events have no source field: the topic of a message of
                // the batch stands for it when there is one topic, the key otherwise.
                let single_topic = topics.first().filter(|t| topics.iter().all(|x| x == *t));
                for (i, &k) in outcome.events.key.iter().enumerate() {
                    let source = match single_topic {
                        Some(t) => t.clone(),
                        None => outcome.events.key_of(i),
                    };
                    self.sources.insert(k, source);
                }
                outcome.events
            }
        }
    }

    /// Re-keys events by the value of `field`; events without it go to dead letters.
    fn key_by(
        &self,
        field: &str,
        events: Batch,
        sources: Vec<Arc<str>>,
        records: &mut Vec<Record>,
    ) -> (Batch, Vec<Arc<str>>) {
        let column = events.column(field);
        let mut keep = Vec::with_capacity(events.len());
        let mut new_keys = Vec::with_capacity(events.len());
        let mut missing = Vec::new();
        let mut too_long = Vec::new();
        for i in 0..events.len() {
            let key = match column.and_then(|c| c.get(i)) {
                Some(Value::Text(s)) => s,
                Some(Value::Int(x)) => x.to_string(),
                Some(Value::Flag(x)) => x.to_string(),
                Some(Value::Float(x)) => x.to_string(),
                None => {
                    missing.push(i);
                    continue;
                }
            };
            if key.len() > self.max_key_bytes {
                too_long.push(i);
                continue;
            }
            keep.push(i);
            new_keys.push(keys::intern(&key));
        }
        if missing.is_empty() && too_long.is_empty() {
            let mut events = events;
            events.key = new_keys;
            return (events, sources);
        }
        self.dead_letter_each(
            "key",
            &format!("no field `{field}` to key by"),
            &events,
            &missing,
            records,
        );
        self.dead_letter_each(
            "key",
            &format!(
                "the value of `{field}` is longer than max_key_bytes ({} bytes) and cannot be a key",
                self.max_key_bytes
            ),
            &events,
            &too_long,
            records,
        );
        let mut kept = events.take(&keep);
        kept.key = new_keys;
        let sources = keep.iter().map(|&i| sources[i].clone()).collect();
        (kept, sources)
    }

    /// Drops what the pipeline remembers of keys the key table forgot (see [`keys::sweep`]).
    pub fn forget_keys(&mut self, forgotten: &[keys::KeyId]) {
        if !forgotten.is_empty() && !self.sources.is_empty() {
            let forgotten: std::collections::HashSet<_> = forgotten.iter().collect();
            self.sources.retain(|k, _| !forgotten.contains(k));
            self.sources.shrink_to_fit();
        }
    }

    fn emitted(&self, emitted: window::Emitted, records: &mut Vec<Record>) {
        for r in emitted.results {
            let values: serde_json::Map<String, serde_json::Value> = r
                .values
                .iter()
                .map(|(n, v)| (n.clone(), v.to_json()))
                .collect();
            let vars = TopicVars {
                pipeline: &self.name,
                key: &r.key,
                window: r.kind.as_str(),
                start: r.start_ms,
                end: r.end_ms,
            };
            let serde_json::Value::Object(mut body) = serde_json::json!({
                "pipeline": r.pipeline,
                "key": &*r.key,
                "window": r.kind.as_str(),
                "start_ms": r.start_ms,
                "end_ms": r.end_ms,
                "revision": r.revision,
                "count": r.count,
                "values": values,
            }) else {
                unreachable!("a JSON object")
            };
            if !r.replaces.is_empty() {
                body.insert("replaces".into(), r.replaces.clone().into());
            }
            records.push(Record {
                output: Output::Main,
                topic: vars.render(&self.output.topic),
                id: RecordId::parse(&r.id).expect("window ids are 32 hex characters"),
                body,
            });
        }
        for late in emitted.late {
            for i in 0..late.batch.len() {
                let key = late.batch.key_of(i);
                let vars = TopicVars::event(&self.name, &key);
                let mut event = late.batch.event_json(i);
                event["reason"] = late.reason.clone().into();
                records.push(content_record(
                    &self.name,
                    Output::Late,
                    vars.render(&self.output.late),
                    event,
                ));
            }
        }
        for skewed in emitted.skewed {
            self.dead_letter_each(
                "window",
                &skewed.reason,
                &skewed.batch,
                &(0..skewed.batch.len()).collect::<Vec<_>>(),
                records,
            );
        }
    }

    /// One dead letter per event at `indices`: a dead letter stands for one input, so that what
    /// comes out does not depend on how the input was cut into batches.
    fn dead_letter_each(
        &self,
        step: &str,
        detail: &str,
        events: &Batch,
        indices: &[usize],
        records: &mut Vec<Record>,
    ) {
        for &i in indices {
            let d = DeadLetter {
                step: format!("{}/{step}", self.name).into(),
                reason: crate::runtime::Reason::Rejected,
                detail: detail.to_owned(),
                input: DeadInput::Events(events.take(&[i])),
            };
            records.push(dead_letter_record(&self.name, &self.output, &d));
        }
    }
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn window_kind(kind: config::WindowKind) -> window::WindowKind {
    match kind {
        config::WindowKind::Tumbling { size, offset } => window::WindowKind::Tumbling {
            size_ms: ms(size),
            offset_ms: ms(offset),
        },
        config::WindowKind::Sliding {
            size,
            slide,
            offset,
        } => window::WindowKind::Sliding {
            size_ms: ms(size),
            slide_ms: ms(slide),
            offset_ms: ms(offset),
        },
        config::WindowKind::Session { gap } => window::WindowKind::Session { gap_ms: ms(gap) },
        config::WindowKind::Count { count, slide } => window::WindowKind::Count {
            size: count,
            slide: Some(slide),
        },
    }
}

/// A Wasm aggregator plugin as the windows' custom aggregate.
struct PluginAggregate(Operator);

impl window::CustomAggregate for PluginAggregate {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(self)
    }

    fn create(&mut self) -> Result<Vec<u8>, String> {
        self.0.create_accumulator().map_err(|e| e.to_string())
    }

    fn add(
        &mut self,
        accs: &[Vec<u8>],
        events: &Batch,
        group: &[u32],
    ) -> Result<Vec<Vec<u8>>, String> {
        self.0
            .add_to_accumulators(accs, events, group)
            .map_err(|e| e.to_string())
    }

    fn merge(&mut self, a: &[u8], b: &[u8]) -> Result<Vec<u8>, String> {
        self.0.merge_accumulators(a, b).map_err(|e| e.to_string())
    }

    fn set_clock(&mut self, now_ms: i64) {
        self.0.set_clock(now_ms);
    }

    fn finish(&mut self, accs: &[Vec<u8>]) -> Result<Vec<Vec<(String, Value)>>, String> {
        let results = self
            .0
            .finish_accumulators(accs)
            .map_err(|e| e.to_string())?;
        Ok(results
            .into_iter()
            .map(|fields| fields.into_iter().map(|f| (f.name, f.value)).collect())
            .collect())
    }
}

/// What an output topic template may refer to.
struct TopicVars<'a> {
    pipeline: &'a str,
    key: &'a str,
    window: &'a str,
    start: i64,
    end: i64,
}

impl<'a> TopicVars<'a> {
    fn event(pipeline: &'a str, key: &'a str) -> Self {
        TopicVars {
            pipeline,
            key,
            window: "",
            start: 0,
            end: 0,
        }
    }

    /// Fills a template; in a key, MQTT's special characters (`+`, `#`, `/`) and control
    /// characters (NUL above all, which no topic may hold) become `_`.
    fn render(&self, template: &str) -> String {
        let key: String = self
            .key
            .chars()
            .map(|c| {
                if matches!(c, '+' | '#' | '/') || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        template
            .replace("{pipeline}", self.pipeline)
            .replace("{key}", &key)
            .replace("{window}", self.window)
            .replace("{start}", &self.start.to_string())
            .replace("{end}", &self.end.to_string())
    }
}

fn event_record(pipeline: &str, output: &config::Output, events: &Batch, i: usize) -> Record {
    let key = events.key_of(i);
    content_record(
        pipeline,
        Output::Main,
        TopicVars::event(pipeline, &key).render(&output.topic),
        events.event_json(i),
    )
}

/// A record that is not a window result (an event forwarded without a window, a late event, a
/// dead letter), with its content id: its event time (`ts_ms`, 0 if it has none), then a hash of
/// the pipeline and the record's fields.
pub(crate) fn content_record(
    pipeline: &str,
    output: Output,
    topic: String,
    fields: serde_json::Value,
) -> Record {
    let mut h = Sha256::new();
    h.update(pipeline.as_bytes());
    h.update([0]);
    h.update(fields.to_string().as_bytes());
    let ts = fields["ts_ms"].as_i64().unwrap_or(0) as u64;
    let serde_json::Value::Object(body) = fields else {
        unreachable!("records are JSON objects")
    };
    Record {
        output,
        topic,
        id: RecordId::new(ts, &h.finalize()),
        body,
    }
}

fn dead_letter_record(pipeline: &str, output: &config::Output, d: &DeadLetter) -> Record {
    let input: Vec<serde_json::Value> = match &d.input {
        DeadInput::Events(b) => (0..b.len()).map(|i| b.event_json(i)).collect(),
        DeadInput::Messages(m) => m.iter().map(message_json).collect(),
    };
    dead_letter_json(pipeline, output, &d.step, d.reason, &d.detail, input)
}

/// A dead letter of `input` (events, messages or records, as JSON) refused by `step`.
fn dead_letter_json(
    pipeline: &str,
    output: &config::Output,
    step: &str,
    reason: crate::runtime::Reason,
    detail: &str,
    input: Vec<serde_json::Value>,
) -> Record {
    content_record(
        pipeline,
        Output::DeadLetter,
        TopicVars::event(pipeline, "").render(&output.dead_letter),
        serde_json::json!({
            "step": step,
            "reason": reason,
            "detail": detail,
            "input": input,
        }),
    )
}

fn message_json(m: &Message) -> serde_json::Value {
    use base64::Engine as _;
    match std::str::from_utf8(&m.payload) {
        Ok(text) => serde_json::json!({ "topic": m.topic, "payload_text": text }),
        Err(_) => serde_json::json!({
            "topic": m.topic,
            "payload_base64": base64::engine::general_purpose::STANDARD.encode(&m.payload),
        }),
    }
}

/// Whether an MQTT topic filter (`+` one level, `#` the rest) matches a topic.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters_match_as_mqtt_does() {
        assert!(topic_matches("farm/+/sensors/#", "farm/north/sensors/s1"));
        assert!(topic_matches("farm/+/sensors/#", "farm/north/sensors"));
        assert!(topic_matches("#", "a/b"));
        assert!(!topic_matches("farm/+/sensors/#", "farm/north/gateway/s1"));
        assert!(!topic_matches("farm/+", "farm/north/x"));
        assert!(topic_matches("farm/north", "farm/north"));
        assert!(!topic_matches("farm/north", "farm/north/x"));
    }

    #[test]
    fn templates_fill_in_and_keep_topics_valid() {
        let vars = TopicVars {
            pipeline: "farm",
            key: "north/field+1",
            window: "tumbling",
            start: 60_000,
            end: 120_000,
        };
        assert_eq!(
            vars.render("{pipeline}/{key}/agg/{window}/{start}-{end}"),
            "farm/north_field_1/agg/tumbling/60000-120000"
        );
    }
}
