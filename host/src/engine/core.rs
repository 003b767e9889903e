//! The deterministic part of a live run: input-log entries in, records out. It owns the running
//! pipelines and their ingest dedup, and knows nothing of brokers, disks or clocks: the live
//! loop and the replay after a restart drive it with the same entries.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use serde::{Deserialize, Serialize};

use super::dedup::{Fingerprint, SeenChanges, SeenSet};
use super::input::{LogEntry, Logged};
use super::metrics::EngineMetrics;
use crate::config::{self, Guarantee};
use crate::pipeline::{GatewayClock, Output, Pipeline, PipelineState, Record};
use crate::runtime::bindings::Message;
use crate::runtime::{Operator, Runtime};

/// The checkpoint's layout version: 2 adds [`StepVersion`]s; weir reads 1 too.
const CHECKPOINT_VERSION: u32 = 2;

/// What a checkpoint stores besides the outbox records and the seen-sets: the state of every
/// effectively-once pipeline, by name, and the plugin version each of their steps ran.
#[derive(Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    version: u32,
    pipelines: Vec<(String, PipelineState)>,
    steps: Vec<StepVersion>,
}

/// The plugin version a step ran when a checkpoint was taken: its state is that version's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepVersion {
    pub pipeline: String,
    /// `pipeline/step`.
    pub step: String,
    /// The version running, and the layout of what it stores.
    pub sha256: String,
    pub layout: String,
    /// The version the config named then: while the config still names it, a version swapped
    /// in since stays after a restart.
    pub config_sha256: String,
}

/// Layout version 1: no step versions.
#[derive(Deserialize)]
struct CheckpointV1 {
    version: u32,
    pipelines: Vec<(String, PipelineState)>,
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("checkpoints serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
        let unreadable = |e: postcard::Error| format!("the checkpoint is unreadable: {e}");
        let (version, _) = postcard::take_from_bytes::<u32>(bytes).map_err(unreadable)?;
        match version {
            CHECKPOINT_VERSION => postcard::from_bytes(bytes).map_err(unreadable),
            1 => {
                let c: CheckpointV1 = postcard::from_bytes(bytes).map_err(unreadable)?;
                Ok(Checkpoint {
                    version: c.version,
                    pipelines: c.pipelines,
                    steps: Vec::new(),
                })
            }
            v => Err(format!(
                "the checkpoint has layout version {v}, this weir reads {CHECKPOINT_VERSION} and 1"
            )),
        }
    }

    /// The plugin versions the steps ran.
    pub fn steps(&self) -> &[StepVersion] {
        &self.steps
    }
}

/// One pipeline and its dedup.
struct Lane {
    pipeline: Pipeline,
    durable: bool,
    seen: SeenSet,
}

/// Which pipelines an entry is applied to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lanes {
    All,
    /// Only the effectively-once ones (recovery: the at-most-once ones never saw the input log).
    EffectivelyOnce,
    /// Only the at-most-once ones (an entry the input log does not hold).
    AtMostOnce,
}

impl Lanes {
    fn has(self, durable: bool) -> bool {
        match self {
            Lanes::All => true,
            Lanes::EffectivelyOnce => durable,
            Lanes::AtMostOnce => !durable,
        }
    }
}

/// Records produced by one entry, in the order made.
#[derive(Debug, Default)]
pub struct Produced {
    /// Each with whether its pipeline is effectively-once (to the outbox with the next
    /// checkpoint) or at-most-once (published from memory with QoS 0).
    pub records: Vec<(Record, bool)>,
}

impl Produced {
    /// The records of effectively-once pipelines.
    pub fn durable(self) -> impl Iterator<Item = Record> {
        self.records.into_iter().filter(|(_, d)| *d).map(|(r, _)| r)
    }
}

/// Every pipeline of a config, driven by log entries.
pub struct Core {
    lanes: Vec<Lane>,
    max_message_bytes: u64,
    /// The topic of dead letters for messages no pipeline takes.
    unknown_topic: String,
    metrics: Arc<EngineMetrics>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("lanes", &self.lanes.len())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// Starts every pipeline of `config`.
    pub fn start(
        config: &config::Config,
        runtime: &Runtime,
        metrics: Arc<EngineMetrics>,
    ) -> anyhow::Result<Core> {
        let lanes = config
            .pipelines
            .iter()
            .map(|p| {
                let durable = p.guarantee == Guarantee::EffectivelyOnce;
                let mut seen = SeenSet::new(p.dedup.clone());
                if !durable {
                    // An at-most-once pipeline is never checkpointed.
                    seen.untrack();
                }
                Ok(Lane {
                    pipeline: Pipeline::start(p, runtime)?,
                    durable,
                    seen,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Core {
            lanes,
            max_message_bytes: config.source.max_message_bytes,
            unknown_topic: config.source.dead_letter.clone(),
            metrics,
        })
    }

    /// Whether any pipeline is effectively-once (then there is an input log and an outbox).
    pub fn any_durable(&self) -> bool {
        self.lanes.iter().any(|l| l.durable)
    }

    /// Whether every pipeline is effectively-once: then nothing leaves before a commit.
    pub fn all_durable(&self) -> bool {
        self.lanes.iter().all(|l| l.durable)
    }

    /// Whether a message on `topic` must be logged before it is acknowledged: an
    /// effectively-once pipeline takes it, or none does (its dead letter is owed upstream).
    pub fn must_log(&self, topic: &str) -> bool {
        let mut taken = false;
        for l in &self.lanes {
            if l.pipeline.accepts(topic) {
                if l.durable {
                    return true;
                }
                taken = true;
            }
        }
        !taken && self.any_durable()
    }

    /// Whether a tick would matter to a pipeline: it holds windows that time can close.
    pub fn wants_ticks(&self, durable: bool) -> bool {
        self.lanes
            .iter()
            .any(|l| l.durable == durable && l.pipeline.open_windows() > 0)
    }

    /// Runs one entry through the pipelines. `replaying`: the entry comes from the input log after
    /// a restart, so at-most-once pipelines (which never saw it logged) skip it. Fails only on a
    /// swap or rollback that cannot be done (an unknown step, a plugin that does not load): entries
    /// the live loop logs never fail.
    pub fn apply(&mut self, entry: &LogEntry, replaying: bool) -> Result<Produced, String> {
        let lanes = if replaying {
            Lanes::EffectivelyOnce
        } else {
            Lanes::All
        };
        self.apply_to(entry, lanes)
    }

    /// [`Core::apply`] to some of the pipelines only.
    pub fn apply_to(&mut self, entry: &LogEntry, lanes: Lanes) -> Result<Produced, String> {
        let mut out = Produced::default();
        match entry {
            LogEntry::Tick { now_ms } => {
                for lane in self.lanes.iter_mut().filter(|l| lanes.has(l.durable)) {
                    let records = lane.pipeline.tick(*now_ms);
                    push(&mut out, lane.durable, records, &self.metrics);
                }
            }
            LogEntry::Watermark { watermark_ms } => {
                for lane in self.lanes.iter_mut().filter(|l| lanes.has(l.durable)) {
                    let records = lane.pipeline.advance_watermark_to(*watermark_ms);
                    push(&mut out, lane.durable, records, &self.metrics);
                }
            }
            LogEntry::Swap {
                pipeline,
                step,
                plugin,
            } => {
                let op = self.step(pipeline, step)?;
                let loaded = op
                    .spec()
                    .runtime
                    .load(plugin, None)
                    .map_err(|e| e.to_string())?;
                let prepared = op
                    .spec()
                    .prepare(loaded, op.config())
                    .map_err(|e| e.to_string())?;
                self.swap(pipeline, step, prepared)?;
            }
            LogEntry::Rollback { pipeline, step } => {
                self.rollback(pipeline, step)?;
            }
            LogEntry::Table { pipeline, content } => {
                let p = self
                    .pipeline_mut(pipeline)
                    .ok_or_else(|| format!("unknown pipeline {pipeline:?}"))?;
                match p.replace_table(content) {
                    Ok(()) => tracing::info!(pipeline = %pipeline, "reference table replaced"),
                    Err(e) => {
                        tracing::warn!(pipeline = %pipeline, "{e}; the previous version stays in use")
                    }
                }
            }
            LogEntry::Messages {
                received_ms,
                messages,
            } => self.messages(*received_ms, messages, lanes, &mut out),
        }
        // Between two entries, no batch holds key ids: the key table may forget idle keys.
        let forgotten = crate::keys::sweep();
        if !forgotten.is_empty() {
            for lane in &mut self.lanes {
                lane.pipeline.forget_keys(&forgotten);
            }
        }
        Ok(out)
    }

    fn messages(
        &mut self,
        received_ms: Option<i64>,
        messages: &[Logged],
        lanes: Lanes,
        out: &mut Produced,
    ) {
        let clock = match received_ms {
            Some(ms) => GatewayClock::At(ms),
            None => GatewayClock::EventTime,
        };
        let mut unknown: Vec<&Logged> = Vec::new();
        for m in messages {
            if !self.lanes.iter().any(|l| l.pipeline.accepts(&m.topic)) {
                unknown.push(m);
            }
        }
        for lane in self.lanes.iter_mut().filter(|l| lanes.has(l.durable)) {
            let mut batch = Vec::new();
            let mut oversized = Vec::new();
            for m in messages.iter().filter(|m| lane.pipeline.accepts(&m.topic)) {
                if let Some(received_ms) = received_ms {
                    let fp: Fingerprint = lane.seen.fingerprint(&m.topic, &m.payload);
                    if lane.seen.check(fp, received_ms) {
                        self.metrics.deduped.fetch_add(1, Relaxed);
                        continue;
                    }
                }
                let message = Message {
                    topic: m.topic.clone(),
                    payload: m.payload.clone(),
                    received_ms: received_ms.unwrap_or(i64::MIN),
                };
                match m.oversized {
                    Some(size) => oversized.push((size, message)),
                    None => batch.push(message),
                }
            }
            let mut records = Vec::new();
            for (size, message) in oversized {
                self.metrics.oversized.fetch_add(1, Relaxed);
                records.push(lane.pipeline.refuse(
                    "source",
                    format!(
                        "the message is {size} bytes, over source.max_message_bytes \
                         ({}); its first {} bytes are kept here",
                        self.max_message_bytes,
                        message.payload.len()
                    ),
                    vec![message],
                ));
            }
            if !batch.is_empty() {
                records.extend(lane.pipeline.process(&batch, clock));
                let counts = lane.pipeline.counts().clone();
                self.metrics
                    .pipelines
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(lane.pipeline.name().to_owned(), counts);
            }
            push(out, lane.durable, records, &self.metrics);
        }
        if !unknown.is_empty() && lanes.has(self.any_durable()) {
            self.metrics
                .unknown_topic
                .fetch_add(unknown.len() as u64, Relaxed);
            // One dead letter per message, so that they do not depend on how messages were
            // grouped into entries.
            let records = unknown
                .into_iter()
                .map(|m| unknown_topic_record(&self.unknown_topic, m))
                .collect();
            let durable = self.any_durable();
            push(out, durable, records, &self.metrics);
        }
    }

    /// Fires every open window of every pipeline (the end of a replay's input).
    pub fn flush(&mut self) -> Produced {
        let mut out = Produced::default();
        for lane in &mut self.lanes {
            let records = lane.pipeline.flush();
            push(&mut out, lane.durable, records, &self.metrics);
        }
        out
    }

    /// The plugin step `step` (`transform[0]` or `farm/transform[0]`) of `pipeline`.
    pub fn step(&mut self, pipeline: &str, step: &str) -> Result<&mut Operator, String> {
        let full = if step.starts_with(&format!("{pipeline}/")) {
            step.to_owned()
        } else {
            format!("{pipeline}/{step}")
        };
        let p = self
            .pipeline_mut(pipeline)
            .ok_or_else(|| format!("unknown pipeline {pipeline:?}"))?;
        let steps: Vec<String> = p
            .plugin_steps()
            .map(|op| op.spec().step.to_string())
            .collect();
        p.step_mut(&full).ok_or_else(|| {
            format!("unknown step {step:?}; the plugin steps of {pipeline} are {steps:?}")
        })
    }

    /// Swaps the plugin step `step` of `pipeline` to a prepared version (see
    /// [`Pipeline::swap_step`]).
    pub fn swap(
        &mut self,
        pipeline: &str,
        step: &str,
        prepared: crate::runtime::Prepared,
    ) -> Result<crate::runtime::SwapReport, String> {
        let full = self.step(pipeline, step)?.spec().step.clone();
        let p = self.pipeline_mut(pipeline).expect("found by step");
        p.swap_step(&full, prepared)
    }

    /// sha256 of every version a plugin step runs or would roll back to.
    pub fn versions_in_use(&self) -> std::collections::HashSet<String> {
        self.lanes
            .iter()
            .flat_map(|l| l.pipeline.plugin_steps())
            .flat_map(|op| {
                std::iter::once(op.plugin().sha256.clone())
                    .chain(op.previous_plugin().map(|p| p.sha256.clone()))
                    .chain(op.shadow_sha256().map(str::to_owned))
            })
            .collect()
    }

    /// Swaps the plugin step `step` of `pipeline` back to its previous version.
    pub fn rollback(
        &mut self,
        pipeline: &str,
        step: &str,
    ) -> Result<crate::runtime::SwapReport, String> {
        let full = self.step(pipeline, step)?.spec().step.clone();
        let p = self.pipeline_mut(pipeline).expect("found by step");
        p.rollback_step(&full)
    }

    /// The state of every effectively-once pipeline, and the seen-set changes since the last
    /// call (by pipeline name).
    pub fn checkpoint(&mut self) -> (Checkpoint, Vec<(String, SeenChanges)>) {
        let mut pipelines = Vec::new();
        let mut seen = Vec::new();
        let mut steps = Vec::new();
        for lane in self.lanes.iter_mut().filter(|l| l.durable) {
            let name = lane.pipeline.name().to_owned();
            pipelines.push((name.clone(), lane.pipeline.snapshot()));
            seen.push((name.clone(), lane.seen.take_changes()));
            for op in lane.pipeline.plugin_steps() {
                steps.push(StepVersion {
                    pipeline: name.clone(),
                    step: op.spec().step.to_string(),
                    sha256: op.plugin().sha256.clone(),
                    layout: op.layout().to_owned(),
                    config_sha256: op.started_sha256().to_owned(),
                });
            }
        }
        (
            Checkpoint {
                version: CHECKPOINT_VERSION,
                pipelines,
                steps,
            },
            seen,
        )
    }

    /// Continues from a checkpoint and the seen-sets saved with it. A pipeline the checkpoint
    /// does not know starts empty; state saved for a pipeline no longer configured is ignored.
    /// A step that ran a version swapped in (kept in `swapped`, see [`resume_swapped`]) runs it
    /// again while the config names the version it was swapped from; a version with another
    /// state layout than the saved state converts it, or the restore fails with the reason.
    pub fn restore(
        &mut self,
        checkpoint: Checkpoint,
        swapped: Option<&std::path::Path>,
        mut seen: impl FnMut(&str) -> anyhow::Result<Vec<(i64, Fingerprint)>>,
    ) -> anyhow::Result<()> {
        let mut saved: std::collections::HashMap<String, PipelineState> =
            checkpoint.pipelines.into_iter().collect();
        for lane in self.lanes.iter_mut().filter(|l| l.durable) {
            let name = lane.pipeline.name().to_owned();
            let versions: Vec<&StepVersion> = checkpoint
                .steps
                .iter()
                .filter(|v| v.pipeline == name)
                .collect();
            match saved.remove(&name) {
                Some(state) => {
                    for v in &versions {
                        resume_swapped(&mut lane.pipeline, v, swapped)?;
                    }
                    lane.pipeline.restore(state).map_err(|e| {
                        anyhow::anyhow!(
                            "pipeline {name}: {e}. The saved state does not fit the config; undo \
                             the change, or give the pipeline a new name to start it over (its \
                             open windows are then lost)"
                        )
                    })?;
                    for v in &versions {
                        let converted = lane
                            .pipeline
                            .convert_restored(&v.step, &v.layout)
                            .map_err(|e| {
                                anyhow::anyhow!(
                                    "{}: the saved state was written by version {} in layout \
                                     {:?}, and the version the config names cannot take it over: \
                                     {e}. Name a version that reads it (such as the one that \
                                     wrote it), or give the pipeline a new name to start it over",
                                    v.step,
                                    short(&v.sha256),
                                    v.layout
                                )
                            })?;
                        if converted > 0 {
                            tracing::info!(step = %v.step, from = %v.layout, converted, "saved state converted to the running version's layout");
                        }
                    }
                }
                None => {
                    tracing::info!(pipeline = %name, "no saved state: the pipeline starts empty")
                }
            }
            lane.seen.restore(seen(&name)?);
        }
        for name in saved.keys() {
            tracing::warn!(pipeline = %name, "saved state of a pipeline no longer configured is ignored");
        }
        Ok(())
    }

    /// No checkpoint will be taken (`weir replay`): the dedup memory keeps no changes for one.
    pub fn without_checkpoints(&mut self) {
        for lane in &mut self.lanes {
            lane.seen.untrack();
        }
    }

    /// The pipeline named `name`.
    pub fn pipeline_mut(&mut self, name: &str) -> Option<&mut Pipeline> {
        self.lanes
            .iter_mut()
            .map(|l| &mut l.pipeline)
            .find(|p| p.name() == name)
    }

    /// The pipelines, for status: each with whether it is effectively-once and its dedup size.
    pub fn pipelines(&self) -> impl Iterator<Item = (&Pipeline, bool, usize)> {
        self.lanes
            .iter()
            .map(|l| (&l.pipeline, l.durable, l.seen.len()))
    }
}

fn push(out: &mut Produced, durable: bool, records: Vec<Record>, metrics: &EngineMetrics) {
    for r in &records {
        match r.output {
            Output::Main => {
                metrics.records.fetch_add(1, Relaxed);
                match r.body.get("revision").and_then(serde_json::Value::as_u64) {
                    Some(0) => metrics.windows_fired.fetch_add(1, Relaxed),
                    Some(_) => metrics.windows_refired.fetch_add(1, Relaxed),
                    None => 0,
                };
            }
            Output::Late => {
                metrics.late.fetch_add(1, Relaxed);
            }
            Output::DeadLetter => {
                metrics.dead_letters.fetch_add(1, Relaxed);
                let reason = r
                    .body
                    .get("reason")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("unknown")
                    .to_owned();
                *metrics
                    .dead_letters_by_reason
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(reason)
                    .or_default() += 1;
            }
        }
    }
    out.records
        .extend(records.into_iter().map(|r| (r, durable)));
}

/// The dead letter of a message that no pipeline's topics match, published to `topic`
/// (`[source] dead_letter`).
fn unknown_topic_record(topic: &str, m: &Logged) -> Record {
    use base64::Engine as _;
    let input = vec![match std::str::from_utf8(&m.payload) {
        Ok(text) => serde_json::json!({ "topic": m.topic, "payload_text": text }),
        Err(_) => serde_json::json!({
            "topic": m.topic,
            "payload_base64": base64::engine::general_purpose::STANDARD.encode(&m.payload),
        }),
    }];
    crate::pipeline::content_record(
        "",
        Output::DeadLetter,
        topic.to_owned(),
        serde_json::json!({
            "step": "source",
            "reason": "rejected",
            "detail": "no pipeline's topics match the message's topic",
            "input": input,
        }),
    )
}

/// Where the versions swapped in are kept (`<data_dir>/swapped-plugins`), by sha256.
pub fn swapped_plugin(dir: &std::path::Path, sha256: &str) -> std::path::PathBuf {
    dir.join(format!("{sha256}.wasm"))
}

/// Keeps a copy of a version about to be swapped in (its component, `bytes`, of sha256
/// `sha256`) in `dir`, durably, so that the swap outlasts a restart.
pub fn keep_swapped(dir: &std::path::Path, sha256: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = swapped_plugin(dir, sha256);
    if path.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(".{sha256}.{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Removes the versions kept in `dir` that no step runs or would roll back to.
pub fn prune_swapped(dir: &std::path::Path, keep: &std::collections::HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(sha) = name.strip_suffix(".wasm") else {
            continue;
        };
        if !keep.contains(sha) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Swaps `pipeline`'s step back to the version it ran at the checkpoint `v`, if that was a
/// version swapped in (not the config's) and the config still names the version it was swapped
/// from: a swap outlasts restarts until the config changes the step. The file is taken from
/// `swapped`, checked against its sha256; if it is gone, the config's version runs (and converts
/// the saved state, if it can).
fn resume_swapped(
    pipeline: &mut Pipeline,
    v: &StepVersion,
    swapped: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let Some(op) = pipeline.step_mut(&v.step) else {
        return Ok(());
    };
    if op.plugin().sha256 == v.sha256 {
        return Ok(());
    }
    if op.started_sha256() != v.config_sha256 {
        tracing::info!(step = %v.step, was = %short(&v.sha256), "the config names another version of the step than it did at the last checkpoint: the config's runs");
        return Ok(());
    }
    let Some(dir) = swapped else { return Ok(()) };
    let path = swapped_plugin(dir, &v.sha256);
    if !path.exists() {
        tracing::warn!(step = %v.step, path = %path.display(), "the version swapped in before the restart is gone: the config's version runs");
        return Ok(());
    }
    let spec = op.spec().clone();
    let plugin = spec.runtime.load(&path, Some(&v.sha256)).map_err(|e| {
        anyhow::anyhow!("{}: the version swapped in before the restart: {e}", v.step)
    })?;
    let prepared = spec.prepare(plugin, op.config()).map_err(|e| {
        anyhow::anyhow!("{}: the version swapped in before the restart: {e}", v.step)
    })?;
    pipeline.swap_step(&v.step, prepared).map_err(|e| {
        anyhow::anyhow!("{}: the version swapped in before the restart: {e}", v.step)
    })?;
    tracing::info!(step = %v.step, sha256 = %short(&v.sha256), "the version swapped in before the restart runs again");
    Ok(())
}

fn short(sha256: &str) -> &str {
    &sha256[..sha256.len().min(12)]
}
