//! What the admin API can ask of a running engine: its status, its plugins, its metrics, and
//! hot swaps.
//!
//! Nothing the admin API reads waits long for the engine thread, which may be busy (a long
//! batch, or retrying a write to a full disk): metrics are atomics shared with the engine, the
//! plugin steps are kept on a [`Steps`] board (counters shared with the operators, versions
//! recorded at each swap, quarantines published by the engine thread after each batch), and
//! `/status` asks the engine thread for its pipelines but answers without them, marked
//! `"engine": "busy"`, when it does not answer within [`ENGINE_ANSWER_WITHIN`].
//!
//! Swaps go to the engine thread as commands answered between two batches; loading and preparing
//! a new plugin version happens on the caller's thread, off the data path, so the engine pauses
//! only for the switch itself. A change the engine does not take within [`CHANGE_TAKEN_WITHIN`]
//! is abandoned, and never done later: the engine claims a command before acting on it, and the
//! caller gives up only on a command not claimed yet.

use std::path::Path;
use std::sync::atomic::Ordering::{AcqRel, Relaxed};
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::Metrics;
use super::core::Core;
use crate::admin::ChangeError;
use crate::runtime::{
    KeyedState, OperatorMetrics, OperatorSpec, Plugin, Prepared, Runtime, SwapReport,
};
use crate::store::Store;

/// How long `/status` waits for the engine thread before answering without the pipelines.
pub const ENGINE_ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// How long a swap or rollback waits for the engine thread to take it; not taken by then, it is
/// abandoned and never done.
pub const CHANGE_TAKEN_WITHIN: Duration = Duration::from_secs(10);
/// Commands waiting for the engine thread, at most; more are answered "busy" at once.
const COMMAND_QUEUE: usize = 16;

/// A request to the engine thread.
pub(super) enum Command {
    Status(Reply<Value>),
    /// The spec, config and state layout of a step, to prepare a new version with.
    Spec {
        pipeline: String,
        step: String,
        reply: Reply<Result<(OperatorSpec, String, String), String>>,
    },
    /// A copy of a step's keyed state, to migrate off the data path; the step notes the keys
    /// that change from now until the swap (or [`Command::ForgetCopy`]).
    StateCopy {
        pipeline: String,
        step: String,
        reply: Reply<Result<KeyedState, String>>,
    },
    /// The swap a [`Command::StateCopy`] was taken for will not happen.
    ForgetCopy {
        pipeline: String,
        step: String,
    },
    Swap {
        pipeline: String,
        step: String,
        /// The plugin file (for the input recording).
        path: std::path::PathBuf,
        prepared: Box<Prepared>,
        reply: Reply<Result<SwapReport, String>>,
    },
    Rollback {
        pipeline: String,
        step: String,
        reply: Reply<Result<SwapReport, String>>,
    },
    /// Start a prepared version in the shadow of a step.
    Shadow {
        pipeline: String,
        step: String,
        prepared: Box<Prepared>,
        reply: Reply<Result<(), String>>,
    },
    /// Make the candidate in a step's shadow live.
    Promote {
        pipeline: String,
        step: String,
        reply: Reply<Result<SwapReport, String>>,
    },
    /// Drop the candidate in a step's shadow.
    Discard {
        pipeline: String,
        step: String,
        reply: Reply<Result<(), String>>,
    },
    /// The shadows' reports.
    Shadows(Reply<Value>),
}

/// The way back to whoever sent a command, who may give up waiting: the engine [`claim`]s a
/// command before acting on it, and skips one its sender gave up on.
///
/// [`claim`]: Reply::claim
pub(super) struct Reply<T> {
    tx: SyncSender<T>,
    /// `PENDING`, then `CLAIMED` (by the engine) or `ABANDONED` (by the sender), once.
    state: Arc<AtomicU8>,
}

const PENDING: u8 = 0;
const CLAIMED: u8 = 1;
const ABANDONED: u8 = 2;

impl<T> Reply<T> {
    /// Whether the sender still waits; if so, it now waits for the answer however long it
    /// takes. False: skip the command.
    pub(super) fn claim(&self) -> bool {
        self.state
            .compare_exchange(PENDING, CLAIMED, AcqRel, Relaxed)
            .is_ok()
    }

    pub(super) fn send(self, answer: T) {
        let _ = self.tx.send(answer);
    }
}

/// The handle the admin API holds.
pub struct EngineControl {
    commands: SyncSender<Command>,
    metrics: Metrics,
    store: Option<Arc<Store>>,
    runtime: Runtime,
    steps: Arc<Steps>,
    /// Swaps and rollbacks done, and the time the engine thread spent on them (µs): from when
    /// it stopped processing to when it resumed (the checkpoint before the switch included).
    swaps: AtomicU64,
    swap_pause_micros: AtomicU64,
    /// The candidate version in each step's shadow, for the board when it is promoted.
    shadow_versions: Mutex<std::collections::HashMap<String, Version>>,
}

impl std::fmt::Debug for EngineControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineControl").finish_non_exhaustive()
    }
}

pub(super) fn channel() -> (SyncSender<Command>, Receiver<Command>) {
    sync_channel(COMMAND_QUEUE)
}

/// `transform[0]` or `farm/transform[0]` → `farm/transform[0]`.
fn full_step(pipeline: &str, step: &str) -> String {
    if step.starts_with(&format!("{pipeline}/")) {
        step.to_owned()
    } else {
        format!("{pipeline}/{step}")
    }
}

/// What the engine says when it cannot find a step (its text starts "unknown"), as a change error.
fn engine_refusal(reason: String) -> ChangeError {
    if reason.starts_with("unknown") {
        ChangeError::Unknown(reason)
    } else {
        ChangeError::Refused(reason)
    }
}

impl EngineControl {
    /// The candidate version in each step's shadow.
    fn shadow_versions(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Version>> {
        self.shadow_versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Reads `path` (a regular file, capped), checks the pin of the request, then loads and
    /// prepares the new version for the step, off the engine thread, with the step's state
    /// converted when the new version stores another layout.
    fn prepare_change(
        &self,
        pipeline: &str,
        step: &str,
        path: &Path,
        sha256: Option<&str>,
    ) -> Result<(String, Version, Prepared), ChangeError> {
        let step = full_step(pipeline, step);
        let (spec, config, layout) = self
            .ask(CHANGE_TAKEN_WITHIN, |reply| Command::Spec {
                pipeline: pipeline.to_owned(),
                step: step.clone(),
                reply,
            })?
            .map_err(engine_refusal)?;
        let refused = |e: &dyn std::fmt::Display| ChangeError::Refused(e.to_string());
        let bytes = crate::fsutil::read_capped(path, "plugin", crate::fsutil::caps::PLUGIN)
            .map_err(|e| refused(&e))?;
        let actual = crate::runtime::sha256_hex(&bytes);
        if let Some(pinned) = sha256
            && !pinned.eq_ignore_ascii_case(&actual)
        {
            return Err(ChangeError::Refused(format!(
                "plugin {} has sha256 {actual}, but the swap request pins {}; check which file \
                 you meant to swap to",
                path.display(),
                crate::fsutil::elide(pinned, 64)
            )));
        }
        let plugin = self
            .runtime
            .load_bytes(path, &bytes, None)
            .map_err(|e| refused(&e))?;
        if let Some(store) = &self.store {
            // A copy in the data directory: the swap outlasts a restart.
            let dir = store.swapped_plugins_dir();
            super::core::keep_swapped(&dir, &actual, &bytes).map_err(|e| {
                ChangeError::Refused(format!(
                    "cannot keep a copy of the new version in {} (for it to run again after a \
                     restart): {}",
                    dir.display(),
                    crate::fsutil::describe_io(&e)
                ))
            })?;
        }
        drop(bytes);
        let version = Version::of(&plugin);
        let mut prepared = spec.prepare(plugin, &config).map_err(|e| refused(&e))?;
        // An aggregator's accumulators are converted at the switch (see Pipeline::swap_step).
        if prepared.layout() != layout && spec.world != crate::runtime::World::Aggregator {
            self.migrate_off_path(pipeline, &step, &spec, &layout, &mut prepared)?;
        }
        Ok((step, version, prepared))
    }

    /// Converts a copy of the step's keyed state (written in `layout`) for the prepared version,
    /// on this thread; the switch converts only what changed meanwhile.
    fn migrate_off_path(
        &self,
        pipeline: &str,
        step: &str,
        spec: &OperatorSpec,
        layout: &str,
        prepared: &mut Prepared,
    ) -> Result<(), ChangeError> {
        let copy = self
            .ask(CHANGE_TAKEN_WITHIN, |reply| Command::StateCopy {
                pipeline: pipeline.to_owned(),
                step: step.to_owned(),
                reply,
            })?
            .map_err(engine_refusal)?;
        let result = prepared.migrate_copy(spec, layout, &copy);
        drop(copy);
        if let Err(e) = result {
            // Best effort: the step stops noting changed keys (the next copy starts afresh).
            let _ = self.commands.try_send(Command::ForgetCopy {
                pipeline: pipeline.to_owned(),
                step: step.to_owned(),
            });
            return Err(ChangeError::Refused(e.to_string()));
        }
        Ok(())
    }

    pub(super) fn new(
        commands: SyncSender<Command>,
        metrics: Metrics,
        store: Option<Arc<Store>>,
        runtime: Runtime,
        steps: Arc<Steps>,
    ) -> Self {
        EngineControl {
            commands,
            metrics,
            store,
            runtime,
            steps,
            swaps: AtomicU64::new(0),
            swap_pause_micros: AtomicU64::new(0),
            shadow_versions: Mutex::default(),
        }
    }

    fn count_swap(&self, report: &SwapReport) {
        self.swaps.fetch_add(1, Relaxed);
        self.swap_pause_micros.fetch_add(
            u64::try_from(report.pause.as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    /// Sends a command and waits up to `within` for the engine to answer it, or (a change) to
    /// claim it; a claimed change is waited for to its end.
    fn ask<T>(
        &self,
        within: Duration,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, NoAnswer> {
        let (tx, rx) = sync_channel(1);
        let state = Arc::new(AtomicU8::new(PENDING));
        let reply = Reply {
            tx,
            state: state.clone(),
        };
        match self.commands.try_send(make(reply)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(NoAnswer::Busy(within)),
            Err(TrySendError::Disconnected(_)) => return Err(NoAnswer::Stopping),
        }
        match rx.recv_timeout(within) {
            Ok(answer) => Ok(answer),
            Err(RecvTimeoutError::Disconnected) => Err(NoAnswer::Stopping),
            Err(RecvTimeoutError::Timeout) => {
                if state
                    .compare_exchange(PENDING, ABANDONED, AcqRel, Relaxed)
                    .is_ok()
                {
                    return Err(NoAnswer::Busy(within));
                }
                // The engine took it just now: it is under way, and its answer comes.
                rx.recv().map_err(|_| NoAnswer::Stopping)
            }
        }
    }
}

/// Why the engine thread gave no answer.
#[derive(Debug)]
enum NoAnswer {
    /// It did not answer (or take the command) within this long.
    Busy(Duration),
    Stopping,
}

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoAnswer::Busy(within) => write!(
                f,
                "the engine thread did not answer within {} s (a long batch, or a store write \
                 being retried: see weir's log)",
                within.as_secs_f64()
            ),
            NoAnswer::Stopping => f.write_str("weir is shutting down"),
        }
    }
}

impl From<NoAnswer> for ChangeError {
    fn from(e: NoAnswer) -> ChangeError {
        ChangeError::Busy(format!("{e}; nothing was changed, try again"))
    }
}

/// What `/plugins` and `/metrics` show of the plugin steps, kept current without asking the
/// engine thread: the counters are the operators' own atomics, versions are recorded here at
/// each swap and rollback, and quarantines are published by the engine thread after each batch.
#[derive(Debug, Default)]
pub struct Steps {
    steps: Vec<StepView>,
}

#[derive(Debug)]
struct StepView {
    pipeline: String,
    /// `pipeline/step`.
    step: String,
    metrics: Arc<OperatorMetrics>,
    /// Until when (ms since the Unix epoch) the plugin is quarantined; 0: it is not.
    quarantined_until_ms: AtomicI64,
    versions: Mutex<Versions>,
}

#[derive(Debug)]
struct Versions {
    current: Version,
    previous: Option<Version>,
}

impl Versions {
    /// What `op` runs, and would roll back to.
    fn of(op: &crate::runtime::Operator) -> Versions {
        Versions {
            current: Version::of(op.plugin()),
            previous: op.previous_plugin().map(|p| Version::of(p)),
        }
    }
}

/// A plugin version, as `/plugins` shows it.
#[derive(Clone, Debug)]
struct Version {
    path: String,
    sha256: String,
    world: String,
    contract: String,
}

impl Version {
    fn of(plugin: &Plugin) -> Version {
        Version {
            path: plugin.path.display().to_string(),
            sha256: plugin.sha256.clone(),
            world: plugin.world.to_string(),
            contract: plugin.version.clone(),
        }
    }
}

impl Steps {
    /// Every plugin step of `core`, as it starts.
    pub(super) fn of(core: &Core) -> Steps {
        let mut steps = Vec::new();
        for (p, _, _) in core.pipelines() {
            for op in p.plugin_steps() {
                steps.push(StepView {
                    pipeline: p.name().to_owned(),
                    step: op.spec().step.to_string(),
                    metrics: op.metrics().clone(),
                    quarantined_until_ms: AtomicI64::new(0),
                    versions: Mutex::new(Versions::of(op)),
                });
            }
        }
        Steps { steps }
    }

    /// Takes the versions from `core` again: a restore may resume versions swapped in before a
    /// restart.
    pub(super) fn refresh(&self, core: &Core) {
        let ops = core.pipelines().flat_map(|(p, _, _)| p.plugin_steps());
        for (view, op) in self.steps.iter().zip(ops) {
            *view.versions.lock().unwrap_or_else(|e| e.into_inner()) = Versions::of(op);
        }
    }

    /// Publishes which plugins are quarantined, and until when: the engine thread calls this
    /// after each batch.
    pub(super) fn publish_quarantines(&self, core: &Core) {
        // Quarantines run on the gateway clock, which is the wall clock's reading live.
        let now_ms = super::now_ms();
        let ops = core.pipelines().flat_map(|(p, _, _)| p.plugin_steps());
        for (view, op) in self.steps.iter().zip(ops) {
            let until = op.quarantined_until().filter(|&u| u > now_ms).unwrap_or(0);
            view.quarantined_until_ms.store(until, Relaxed);
        }
    }

    fn find(&self, step: &str) -> Option<&StepView> {
        self.steps.iter().find(|s| s.step == step)
    }

    /// A swap to `to` succeeded: what ran becomes the previous version, and a swap ends any
    /// quarantine.
    fn swapped(&self, step: &str, to: Version) {
        if let Some(view) = self.find(step) {
            let mut v = view.versions.lock().unwrap_or_else(|e| e.into_inner());
            let old = std::mem::replace(&mut v.current, to);
            v.previous = Some(old);
            view.quarantined_until_ms.store(0, Relaxed);
        }
    }

    /// A rollback succeeded: the previous version runs again, and the one rolled back from
    /// becomes the previous.
    fn rolled_back(&self, step: &str) {
        if let Some(view) = self.find(step) {
            let mut v = view.versions.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(previous) = v.previous.take() {
                let old = std::mem::replace(&mut v.current, previous);
                v.previous = Some(old);
            }
            view.quarantined_until_ms.store(0, Relaxed);
        }
    }

    /// One object per plugin step (see [`crate::admin::Control::plugins`]).
    fn json(&self) -> Value {
        let now_ms = super::now_ms();
        let steps = self.steps.iter().map(|s| {
            let m = s.metrics.snapshot();
            let v = s.versions.lock().unwrap_or_else(|e| e.into_inner());
            let until = s.quarantined_until_ms.load(Relaxed);
            json!({
                "pipeline": s.pipeline,
                "step": s.step,
                "plugin": v.current.path,
                "sha256": v.current.sha256,
                "world": v.current.world,
                "version": v.current.contract,
                "calls": m.calls,
                "errors": m.failed_calls,
                "time_ms": m.call_ns as f64 / 1e6,
                "limit_hits": m.time_limit_hits + m.memory_limit_hits + m.output_limit_hits,
                "quarantined_until_ms": (until > now_ms).then_some(until),
                "swaps": m.swaps,
                "previous_sha256": v.previous.as_ref().map(|p| p.sha256.clone()),
            })
        });
        Value::Array(steps.collect())
    }
}

impl crate::admin::Control for EngineControl {
    /// Pipelines (asked of the engine thread, up to [`ENGINE_ANSWER_WITHIN`]), uplink, outbox,
    /// checkpoints (from the metrics).
    fn status(&self) -> Value {
        let mut status = match self.ask(ENGINE_ANSWER_WITHIN, Command::Status) {
            Ok(mut s) => {
                s["engine"] = json!("ok");
                s
            }
            Err(e) => json!({
                "engine": "busy",
                "engine_detail": e.to_string(),
                "now_ms": super::now_ms(),
            }),
        };
        let f = &self.metrics.forwarder;
        let e = &self.metrics.engine;
        status["uplink"] = json!({
            "connected": f.connected.load(Relaxed),
            "forwarded": f.forwarded.load(Relaxed),
            "acked": f.acked.load(Relaxed),
            "reconnects": f.reconnects.load(Relaxed),
            "inflight": f.inflight.load(Relaxed),
        });
        status["outbox"] = json!({
            "records": self.store.as_ref().map_or(0, |s| s.outbox_len()),
            "bytes": self.store.as_ref().map_or(0, |s| s.outbox_bytes()),
            "cap_bytes": self.store.as_ref().map(|s| s.options().max_outbox_bytes),
            "ingest_blocked": e.ingest_blocked.load(Relaxed) == 1,
            "set_aside": self.store.as_ref().map_or(0, |s| s.set_aside_len()),
            "set_aside_refused": f.set_aside_refused.load(Relaxed),
            "set_aside_damaged": f.set_aside_damaged.load(Relaxed),
            "unreadable_ranges": f.unreadable.load(Relaxed),
        });
        if let Some(store) = &self.store {
            status["store"] = json!({
                "disk_full": store.disk_full(),
                "disk_full_events": store.disk_full_events(),
                "reopens": store.reopens(),
                "compactions": store.compactions(),
            });
        }
        status["last_checkpoint_ms"] = json!(e.last_checkpoint_ms.load(Relaxed));
        status["messages_in"] = json!(e.messages_in.load(Relaxed));
        status["store_errors"] = json!(e.store_errors.load(Relaxed));
        status
    }

    fn plugins(&self) -> Value {
        self.steps.json()
    }

    /// Reads `path` (a regular file, capped), checks the pin of the request, loads and prepares
    /// the new version (off the engine thread), then has the engine switch to it between two
    /// batches.
    fn swap(
        &self,
        pipeline: &str,
        step: &str,
        path: &Path,
        sha256: Option<&str>,
    ) -> Result<Value, ChangeError> {
        let (step, version, prepared) = self.prepare_change(pipeline, step, path, sha256)?;
        let report = self
            .ask(CHANGE_TAKEN_WITHIN, |reply| Command::Swap {
                pipeline: pipeline.to_owned(),
                step: step.clone(),
                path: path.to_owned(),
                prepared: Box::new(prepared),
                reply,
            })?
            .map_err(engine_refusal)?;
        self.steps.swapped(&step, version);
        // A swap discards the step's shadow, if any.
        self.shadow_versions().remove(&step);
        self.count_swap(&report);
        Ok(report_json(&step, &report))
    }

    fn shadow(
        &self,
        pipeline: &str,
        step: &str,
        path: &Path,
        sha256: Option<&str>,
    ) -> Result<Value, ChangeError> {
        let (step, version, prepared) = self.prepare_change(pipeline, step, path, sha256)?;
        self.ask(CHANGE_TAKEN_WITHIN, |reply| Command::Shadow {
            pipeline: pipeline.to_owned(),
            step: step.clone(),
            prepared: Box::new(prepared),
            reply,
        })?
        .map_err(engine_refusal)?;
        let sha256 = version.sha256.clone();
        self.shadow_versions().insert(step.clone(), version);
        Ok(json!({ "step": step, "candidate_sha256": sha256, "shadow": true }))
    }

    fn shadows(&self) -> Result<Value, ChangeError> {
        Ok(self.ask(ENGINE_ANSWER_WITHIN, Command::Shadows)?)
    }

    fn promote(&self, pipeline: &str, step: &str) -> Result<Value, ChangeError> {
        let step = full_step(pipeline, step);
        let report = self
            .ask(CHANGE_TAKEN_WITHIN, |reply| Command::Promote {
                pipeline: pipeline.to_owned(),
                step: step.clone(),
                reply,
            })?
            .map_err(engine_refusal)?;
        let version = self.shadow_versions().remove(&step);
        if let Some(version) = version {
            self.steps.swapped(&step, version);
        }
        self.count_swap(&report);
        Ok(report_json(&step, &report))
    }

    fn discard(&self, pipeline: &str, step: &str) -> Result<Value, ChangeError> {
        let step = full_step(pipeline, step);
        self.ask(CHANGE_TAKEN_WITHIN, |reply| Command::Discard {
            pipeline: pipeline.to_owned(),
            step: step.clone(),
            reply,
        })?
        .map_err(engine_refusal)?;
        self.shadow_versions().remove(&step);
        Ok(json!({ "step": step, "discarded": true }))
    }

    fn rollback(&self, pipeline: &str, step: &str) -> Result<Value, ChangeError> {
        let step = full_step(pipeline, step);
        let report = self
            .ask(CHANGE_TAKEN_WITHIN, |reply| Command::Rollback {
                pipeline: pipeline.to_owned(),
                step: step.clone(),
                reply,
            })?
            .map_err(engine_refusal)?;
        self.steps.rolled_back(&step);
        self.count_swap(&report);
        Ok(report_json(&step, &report))
    }

    /// The engine's, source's and forwarder's counters, and per plugin step: atomics only.
    fn metrics(&self, p: &mut crate::admin::Prometheus) {
        let e = &self.metrics.engine;
        let s = &self.metrics.source;
        let f = &self.metrics.forwarder;
        let c = |x: &std::sync::atomic::AtomicU64| x.load(Relaxed) as f64;
        p.counter(
            "weir_messages_in_total",
            "Messages taken from the source broker",
            &[],
            c(&e.messages_in),
        );
        p.counter(
            "weir_messages_logged_total",
            "Messages written to the input log",
            &[],
            c(&e.messages_logged),
        );
        p.counter(
            "weir_input_commits_total",
            "Input-log commits (one fsync'd redb commit each)",
            &[],
            c(&e.input_commits),
        );
        p.counter(
            "weir_deduped_total",
            "Resent messages dropped by ingest dedup",
            &[],
            c(&e.deduped),
        );
        p.counter(
            "weir_oversized_total",
            "Messages over max_message_bytes (dead letters)",
            &[],
            c(&e.oversized),
        );
        p.counter(
            "weir_unknown_topic_total",
            "Messages no pipeline takes (dead letters)",
            &[],
            c(&e.unknown_topic),
        );
        for (pipeline, counts) in e.pipelines.lock().unwrap_or_else(|x| x.into_inner()).iter() {
            for (filter, n) in &counts.messages_by_filter {
                p.counter(
                    "weir_pipeline_messages_total",
                    "Messages a pipeline took, by the topic filter that matched them",
                    &[("pipeline", pipeline), ("topic_filter", filter)],
                    *n as f64,
                );
            }
            p.counter(
                "weir_pipeline_decoded_total",
                "Events a pipeline's decoder made of its messages",
                &[("pipeline", pipeline)],
                counts.decoded as f64,
            );
        }
        p.counter(
            "weir_records_total",
            "Records emitted to the main output",
            &[],
            c(&e.records),
        );
        p.counter(
            "weir_late_total",
            "Events too late for their window (late output)",
            &[],
            c(&e.late),
        );
        for (reason, n) in e
            .dead_letters_by_reason
            .lock()
            .unwrap_or_else(|x| x.into_inner())
            .iter()
        {
            p.counter(
                "weir_dead_letters_total",
                "Dead-letter records, by reason",
                &[("reason", reason)],
                *n as f64,
            );
        }
        p.counter(
            "weir_windows_fired_total",
            "Windows fired the first time",
            &[],
            c(&e.windows_fired),
        );
        p.counter(
            "weir_windows_refired_total",
            "Windows fired again by late events (revision > 0)",
            &[],
            c(&e.windows_refired),
        );
        p.counter(
            "weir_checkpoints_total",
            "Checkpoints committed",
            &[],
            c(&e.checkpoints),
        );
        p.counter(
            "weir_checkpoint_seconds_total",
            "Time spent committing checkpoints",
            &[],
            c(&e.checkpoint_micros) / 1e6,
        );
        p.gauge(
            "weir_last_checkpoint_seconds",
            "Duration of the last checkpoint",
            &[],
            c(&e.last_checkpoint_micros) / 1e6,
        );
        p.counter(
            "weir_swaps_total",
            "Plugin swaps and rollbacks done",
            &[],
            c(&self.swaps),
        );
        p.counter(
            "weir_swap_pause_seconds_total",
            "Time the engine thread held the data path for swaps and rollbacks",
            &[],
            c(&self.swap_pause_micros) / 1e6,
        );
        p.counter(
            "weir_dropped_by_cap_total",
            "Outbox records dropped by the drop-oldest policy",
            &[],
            c(&e.dropped_by_cap),
        );
        p.counter(
            "weir_volatile_dropped_total",
            "At-most-once records dropped (queue full or uplink down)",
            &[],
            c(&e.volatile_dropped) + f.volatile_dropped.load(Relaxed) as f64,
        );
        p.gauge(
            "weir_ingest_blocked",
            "1 while ingest is held back by the block policy",
            &[],
            c(&e.ingest_blocked),
        );
        p.counter(
            "weir_store_errors_total",
            "Failed store reads and writes (retried)",
            &[],
            c(&e.store_errors) + c(&f.store_errors),
        );
        for (reason, n) in [
            ("refused", &f.set_aside_refused),
            ("damaged", &f.set_aside_damaged),
        ] {
            p.counter(
                "weir_outbox_set_aside_total",
                "Outbox records set aside instead of sent: refused by the upstream broker, or damaged on disk",
                &[("reason", reason)],
                c(n),
            );
        }
        p.counter(
            "weir_outbox_unreadable_total",
            "Ranges of outbox records the store could not read, skipped",
            &[],
            c(&f.unreadable),
        );
        p.counter(
            "weir_forward_rejected_total",
            "PUBACKs with a failure reason that may pass (kept in the outbox)",
            &[],
            c(&f.rejected),
        );
        if let Some(store) = &self.store {
            p.gauge(
                "weir_outbox_records",
                "Records owed upstream",
                &[],
                store.outbox_len() as f64,
            );
            p.gauge(
                "weir_outbox_bytes",
                "Bytes of records owed upstream",
                &[],
                store.outbox_bytes() as f64,
            );
            p.counter(
                "weir_store_commits_total",
                "Durable redb commits (two fdatasyncs each with quick repair)",
                &[],
                store.commits() as f64,
            );
            p.counter(
                "weir_store_fsyncs_total",
                "fdatasyncs of the store: two per commit (redb's quick repair)",
                &[],
                (store.commits() * 2) as f64,
            );
            p.gauge(
                "weir_outbox_set_aside_records",
                "Records held in the store's set-aside table",
                &[],
                store.set_aside_len() as f64,
            );
            p.gauge(
                "weir_store_disk_full",
                "1 while the disk is full (ingest waits, delivery goes on)",
                &[],
                f64::from(u8::from(store.disk_full())),
            );
            p.counter(
                "weir_store_disk_full_total",
                "Times the disk was found full",
                &[],
                store.disk_full_events() as f64,
            );
            p.counter(
                "weir_store_reopens_total",
                "Times the store was reopened after an i/o error",
                &[],
                store.reopens() as f64,
            );
            p.counter(
                "weir_store_compactions_total",
                "Compactions that gave space back while the disk was full",
                &[],
                store.compactions() as f64,
            );
        }
        p.counter(
            "weir_source_reconnects_total",
            "Reconnects to the source broker",
            &[],
            c(&s.reconnects),
        );
        p.counter(
            "weir_source_connection_errors_total",
            "Failed or dropped source connections",
            &[],
            c(&s.connection_errors),
        );
        p.counter(
            "weir_source_acks_sent_total",
            "Acks (PUBACK, PUBREC) written to the source broker",
            &[],
            c(&s.acks_sent),
        );
        p.gauge(
            "weir_source_acks_backlog",
            "Acks committed but waiting for the MQTT client (grows when the broker ignores the Receive Maximum)",
            &[],
            c(&s.acks_backlog),
        );
        p.counter(
            "weir_forwarded_total",
            "Records published upstream (QoS 1)",
            &[],
            c(&f.forwarded),
        );
        p.counter(
            "weir_forward_acked_total",
            "Records acknowledged by the upstream broker",
            &[],
            c(&f.acked),
        );
        p.counter(
            "weir_forward_resent_total",
            "Records sent again after a reconnect",
            &[],
            c(&f.resent),
        );
        p.counter(
            "weir_upstream_reconnects_total",
            "Reconnects to the upstream broker",
            &[],
            c(&f.reconnects),
        );
        p.gauge(
            "weir_uplink_up",
            "1 while connected to the upstream broker",
            &[],
            f64::from(u8::from(f.connected.load(Relaxed))),
        );
        p.gauge(
            "weir_forward_inflight",
            "Publishes awaiting their acknowledgement",
            &[],
            c(&f.inflight),
        );
        if let Some(plugins) = self.plugins().as_array() {
            for pl in plugins {
                let step = pl["step"].as_str().unwrap_or_default();
                let labels = [("step", step)];
                let n = |k: &str| pl[k].as_f64().unwrap_or(0.0);
                p.counter(
                    "weir_plugin_calls_total",
                    "Calls into a plugin",
                    &labels,
                    n("calls"),
                );
                p.counter(
                    "weir_plugin_errors_total",
                    "Failed plugin calls",
                    &labels,
                    n("errors"),
                );
                p.counter(
                    "weir_plugin_call_seconds_total",
                    "Time spent in plugin calls",
                    &labels,
                    n("time_ms") / 1e3,
                );
                p.counter(
                    "weir_plugin_limit_hits_total",
                    "Plugin calls stopped by a limit (time, memory, output)",
                    &labels,
                    n("limit_hits"),
                );
                p.gauge(
                    "weir_plugin_quarantined",
                    "1 while the plugin is quarantined",
                    &labels,
                    f64::from(u8::from(!pl["quarantined_until_ms"].is_null())),
                );
            }
        }
    }
}

fn report_json(step: &str, r: &SwapReport) -> Value {
    json!({
        "step": step,
        "from_sha256": r.from_sha256,
        "to_sha256": r.to_sha256,
        "prepare_ms": r.prepare_time.as_secs_f64() * 1e3,
        "pause_us": r.pause.as_secs_f64() * 1e6,
        "from_layout": r.from_layout,
        "to_layout": r.to_layout,
        "migrated": r.migrated,
        "migrate_ms": r.migrate_time.as_secs_f64() * 1e3,
    })
}
