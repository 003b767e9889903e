//! One pipeline step running a plugin, supervised: limits, dead letters, rebuilds, quarantine,
//! keyed state and hot swap.
//!
//! Every input reaches exactly one place: the output of the call that processed it, or the
//! dead-letter output with a reason. A call that fails as a whole (the plugin returned an error,
//! trapped, ran out of time or memory, or returned too much) sends its whole input to the
//! dead-letter output and leaves the keyed state as it was before the call. After a trap the
//! instance is thrown away and a fresh one is built for the next call. A plugin that fails
//! `quarantine_after_failures` calls in a row is quarantined: for a backoff period its inputs go
//! straight to the dead-letter output; then one call is tried, and a failure quarantines it again
//! for twice as long.

// Call times are measured for the metrics, and an operator run on its own (not by a pipeline)
// has only the wall clock for its quarantine; nothing a pipeline emits reads it.
#![allow(clippy::disallowed_methods)]

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Runtime;
use super::bindings::v0_2::KeyState;
use super::bindings::{Batch, Field, GuestError, Message, Output};
use super::instance::{Bound, InitFailure, Instance, guest_error_text};
use super::limits::{Limits, Permissions};
use super::metrics::{OperatorMetrics, add};
use super::plugin::{LoadError, Plugin, World};
use super::shadow::Shadow;
use super::state::KeyedState;

/// Why a call failed as a whole.
#[derive(Clone, Debug, PartialEq)]
pub enum Failure {
    /// The plugin returned an error for the whole batch.
    Guest(String),
    /// The plugin trapped (panicked, hit `unreachable`, accessed memory out of bounds, ...).
    Trap(String),
    /// The call ran past its time budget and was stopped.
    TimeLimit { budget: Duration },
    /// The plugin tried to grow its memory past the cap.
    MemoryLimit { max_bytes: u64 },
    /// The plugin returned more than the output limits allow.
    OutputLimit(String),
    /// The plugin returned a malformed batch.
    BadOutput(String),
    /// The plugin is quarantined after repeated failures.
    Quarantined { remaining: Duration },
    /// No instance could be started (the plugin fails in `init` or instantiation).
    Unavailable(String),
}

impl Failure {
    /// The reason category, as counted in metrics and written on dead letters.
    pub fn reason(&self) -> Reason {
        match self {
            Failure::Guest(_) => Reason::Failed,
            Failure::Trap(_) => Reason::Trap,
            Failure::TimeLimit { .. } => Reason::TimeLimit,
            Failure::MemoryLimit { .. } => Reason::MemoryLimit,
            Failure::OutputLimit(_) => Reason::OutputLimit,
            Failure::BadOutput(_) => Reason::BadOutput,
            Failure::Quarantined { .. } => Reason::Quarantined,
            Failure::Unavailable(_) => Reason::Unavailable,
        }
    }

    /// Whether the instance is unusable afterwards and must be rebuilt.
    fn breaks_instance(&self) -> bool {
        matches!(
            self,
            Failure::Trap(_) | Failure::TimeLimit { .. } | Failure::MemoryLimit { .. }
        )
    }
}

impl std::error::Error for Failure {}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Guest(m) => write!(f, "the plugin failed the batch: {m}"),
            Failure::Trap(m) => write!(f, "the plugin trapped: {m}"),
            Failure::TimeLimit { budget } => {
                write!(
                    f,
                    "the plugin ran past its time budget of {budget:?} and was stopped"
                )
            }
            Failure::MemoryLimit { max_bytes } => write!(
                f,
                "the plugin tried to use more than its memory cap of {} (limits.max_memory)",
                crate::config::units::format_size(*max_bytes)
            ),
            Failure::OutputLimit(m) => write!(f, "the plugin's output is over the limit: {m}"),
            Failure::BadOutput(m) => write!(f, "the plugin returned a malformed batch: {m}"),
            Failure::Quarantined { remaining } => write!(
                f,
                "the plugin is quarantined after repeated failures for another {remaining:?}"
            ),
            Failure::Unavailable(m) => write!(f, "the plugin cannot be started: {m}"),
        }
    }
}

/// Why an input went to the dead-letter output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The plugin rejected this input (and only this one).
    Rejected,
    Failed,
    Trap,
    TimeLimit,
    MemoryLimit,
    OutputLimit,
    BadOutput,
    Quarantined,
    Unavailable,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).expect("reasons serialize");
        f.write_str(s.as_str().expect("reasons serialize as strings"))
    }
}

/// What went to the dead-letter output: the inputs, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// The step that sent it.
    pub step: Arc<str>,
    pub reason: Reason,
    /// A sentence saying what happened.
    pub detail: String,
    pub input: DeadInput,
}

/// The inputs of a dead letter.
#[derive(Clone, Debug, PartialEq)]
pub enum DeadInput {
    Events(Batch),
    Messages(Vec<Message>),
}

impl DeadInput {
    pub fn len(&self) -> usize {
        match self {
            DeadInput::Events(b) => b.len(),
            DeadInput::Messages(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a batch turned into.
#[derive(Debug)]
pub struct Outcome {
    pub events: Batch,
    pub dead_letters: Vec<DeadLetter>,
}

impl Outcome {
    fn new() -> Self {
        Outcome {
            events: Batch::empty(),
            dead_letters: Vec::new(),
        }
    }

    /// Number of inputs that went to the dead-letter output.
    pub fn dead_lettered(&self) -> usize {
        self.dead_letters.iter().map(|d| d.input.len()).sum()
    }
}

/// Why an operator (or a new version of it) could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("plugin {path} rejected its config for step {step}: {reason}")]
    Config {
        step: String,
        path: String,
        reason: String,
    },
    #[error("plugin {path} failed to start for step {step}: {reason}")]
    Init {
        step: String,
        path: String,
        reason: String,
    },
    /// The new version cannot take over what the running one stored; nothing changed.
    #[error(
        "plugin {path} cannot take over step {step}: {reason}; the running version keeps running \
         with its state"
    )]
    Migrate {
        step: String,
        path: String,
        reason: String,
    },
}

/// What an operator is, apart from the plugin it runs: its step name, world, limits and
/// permissions. Cheap to clone, so a new version can be prepared on another thread.
#[derive(Clone, Debug)]
pub struct OperatorSpec {
    pub runtime: Runtime,
    /// The pipeline step, e.g. `farm/transform[1]`: names the operator in logs and dead letters.
    pub step: Arc<str>,
    pub world: World,
    pub limits: Limits,
    pub permissions: Permissions,
}

/// A plugin version instantiated and initialised, ready to be swapped in.
pub struct Prepared {
    version: Version,
    instance: Instance,
    prepare_time: Duration,
    /// The running version's keyed state, converted off the data path (see
    /// [`Prepared::migrate_copy`]).
    migrated: Option<Migrated>,
}

/// Keyed state converted from `from` (a layout) into the new version's.
struct Migrated {
    from: String,
    state: KeyedState,
    time: Duration,
}

impl Prepared {
    /// The layout of what the new version stores.
    pub fn layout(&self) -> &str {
        &self.version.layout
    }

    /// Converts a copy of the running version's keyed state, written in `from`, into this
    /// version's layout, off the data path; the switch then converts only the keys that changed
    /// since the copy was taken (see [`KeyedState::copy_and_track_changes`]).
    pub fn migrate_copy(
        &mut self,
        spec: &OperatorSpec,
        from: &str,
        copy: &KeyedState,
    ) -> Result<usize, StartError> {
        let started = Instant::now();
        let keys: Vec<&str> = copy.key_names().collect();
        let converted = self.migrate_keys(spec, from, copy, &keys)?;
        let mut state = KeyedState::default();
        for (key, entries) in converted {
            state.replace_key(&key, entries);
        }
        self.migrated = Some(Migrated {
            from: from.to_owned(),
            state,
            time: started.elapsed(),
        });
        Ok(keys.len())
    }

    /// Refuses to convert data written in `from` if this version exports no `migrate`.
    fn check_migrates(&self, spec: &OperatorSpec, from: &str) -> Result<(), StartError> {
        if self.version.plugin.migrates() {
            return Ok(());
        }
        Err(spec.migrate_error(
            &self.version.plugin,
            format!(
                "it stores layout {:?} and the running version layout {from:?}, and it exports no \
                 migrate to convert one into the other (build it with the migrating world of \
                 weir:operator@0.2.0, or swap to a version with the same layout)",
                self.version.layout
            ),
        ))
    }

    /// The state of `keys` in `source` (written in `from`), in this version's layout: every
    /// key listed, with its new entries (none: it has no state afterwards).
    fn migrate_keys(
        &mut self,
        spec: &OperatorSpec,
        from: &str,
        source: &KeyedState,
        keys: &[&str],
    ) -> Result<Vec<(String, Entries)>, StartError> {
        self.check_migrates(spec, from)?;
        let plugin = self.version.plugin.clone();
        let refuse = |reason: String| spec.migrate_error(&plugin, reason);
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MIGRATE_CHUNK) {
            let states: Vec<KeyState> = chunk
                .iter()
                .map(|name| KeyState {
                    key: crate::keys::intern(name),
                    entries: source.entries(name),
                })
                .filter(|s| !s.entries.is_empty())
                .collect();
            let result = self
                .instance
                .call(&spec.runtime, spec.limits.time_budget, |store, bound| {
                    bound
                        .migrate_state(store, from, &states)
                        .expect("checked that the plugin exports migrate")
                })
                .map_err(|e| refuse(format!("its migrate-state failed: {e}")))?
                .map_err(|e| {
                    refuse(format!(
                        "its migrate-state refused the state of layout {from:?}: {}",
                        guest_error_text(&e)
                    ))
                })?;
            let mut by_key: std::collections::HashMap<u32, Entries> =
                std::collections::HashMap::new();
            for s in result {
                if !states.iter().any(|given| given.key == s.key) {
                    return Err(refuse(format!(
                        "its migrate-state returned state for key id {}, which it was not given",
                        s.key
                    )));
                }
                by_key.entry(s.key).or_default().extend(s.entries);
            }
            for name in chunk {
                let id = crate::keys::intern(name);
                out.push(((*name).to_owned(), by_key.remove(&id).unwrap_or_default()));
            }
        }
        Ok(out)
    }

    /// Accumulators written in `from`, in this version's layout, one for one.
    pub fn migrate_accumulators(
        &mut self,
        spec: &OperatorSpec,
        from: &str,
        accumulators: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>, StartError> {
        self.check_migrates(spec, from)?;
        let plugin = self.version.plugin.clone();
        let refuse = |reason: String| spec.migrate_error(&plugin, reason);
        let mut out = Vec::with_capacity(accumulators.len());
        for chunk in accumulators.chunks(MIGRATE_CHUNK) {
            let converted = self
                .instance
                .call(&spec.runtime, spec.limits.time_budget, |store, bound| {
                    bound
                        .migrate_accumulators(store, from, chunk)
                        .expect("checked that the plugin exports migrate")
                })
                .map_err(|e| refuse(format!("its migrate-accumulators failed: {e}")))?
                .map_err(|e| {
                    refuse(format!(
                        "its migrate-accumulators refused layout {from:?}: {}",
                        guest_error_text(&e)
                    ))
                })?;
            if converted.len() != chunk.len() {
                return Err(refuse(format!(
                    "its migrate-accumulators returned {} accumulators for {}",
                    converted.len(),
                    chunk.len()
                )));
            }
            out.extend(converted);
        }
        Ok(out)
    }
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("plugin", &self.version.plugin)
            .finish_non_exhaustive()
    }
}

/// What a swap did.
#[derive(Clone, Debug)]
pub struct SwapReport {
    /// sha256 of the version swapped out and of the one swapped in.
    pub from_sha256: String,
    pub to_sha256: String,
    /// Time spent preparing the new version (off the data path).
    pub prepare_time: Duration,
    /// Time the data path was held for the switch itself.
    pub pause: Duration,
    /// The layouts of what the two versions store (see the contract's `migrate`).
    pub from_layout: String,
    pub to_layout: String,
    /// Keys whose state (or accumulators whose content) was converted to the new layout; 0 when
    /// the layouts are the same and everything carried over as it was.
    pub migrated: usize,
    /// Time spent converting, off the data path and during the switch.
    pub migrate_time: Duration,
}

#[derive(Clone)]
struct Version {
    plugin: Arc<Plugin>,
    /// The step's config, as JSON.
    config: String,
    /// The layout of what it stores, as its `migrate` export says ("" without one).
    layout: String,
}

/// One key's state: (name, value) pairs.
type Entries = Vec<(String, Vec<u8>)>;

/// Keys migrated per call into a plugin's `migrate-state`.
const MIGRATE_CHUNK: usize = 256;

impl OperatorSpec {
    /// Loads nothing: instantiates `plugin` with `config` (JSON) and runs its `init`, off the
    /// data path, so that it can be swapped in.
    pub fn prepare(&self, plugin: Arc<Plugin>, config: &str) -> Result<Prepared, StartError> {
        let started = Instant::now();
        if plugin.world != self.world {
            return Err(LoadError::WrongWorld {
                path: plugin.path.clone(),
                found: plugin.world,
                expected: self.world,
            }
            .into());
        }
        let mut instance = Instance::start(
            &self.runtime,
            &plugin,
            self.step.clone(),
            &self.limits,
            &self.permissions,
            config,
        )
        .map_err(|e| self.start_error(&plugin, e))?;
        let layout = instance
            .call(&self.runtime, self.limits.time_budget, |store, bound| {
                bound.layout(store)
            })
            .map_err(|e| StartError::Init {
                step: self.step.to_string(),
                path: plugin.path.display().to_string(),
                reason: format!("its migrate.layout failed: {e}"),
            })?;
        Ok(Prepared {
            version: Version {
                plugin,
                config: config.to_owned(),
                layout,
            },
            instance,
            prepare_time: started.elapsed(),
            migrated: None,
        })
    }

    fn migrate_error(&self, plugin: &Plugin, reason: String) -> StartError {
        StartError::Migrate {
            step: self.step.to_string(),
            path: plugin.path.display().to_string(),
            reason,
        }
    }

    fn start_error(&self, plugin: &Plugin, e: InitFailure) -> StartError {
        let step = self.step.to_string();
        let path = plugin.path.display().to_string();
        match e {
            InitFailure::Config(reason) => StartError::Config { step, path, reason },
            InitFailure::Other(reason) => StartError::Init { step, path, reason },
        }
    }
}

/// Health: failures in a row, and quarantine.
#[derive(Debug, Default)]
struct Health {
    failures_in_row: u32,
    quarantines_in_row: u32,
    /// On the operator's clock (see [`Operator::set_clock`]), in ms.
    quarantined_until: Option<i64>,
    /// The last quarantine just ended: the next failure quarantines again at once.
    probation: bool,
}

/// A plugin running for one pipeline step. Calls are synchronous and run guest code on the
/// calling thread, each under the time budget; see [`super::OperatorHandle`] to run it on a
/// thread of its own.
pub struct Operator {
    spec: OperatorSpec,
    current: Version,
    previous: Option<Version>,
    /// `None` after a trap, until the next call rebuilds it.
    instance: Option<Instance>,
    state: KeyedState,
    health: Health,
    metrics: Arc<OperatorMetrics>,
    /// The gateway clock of the batch being processed, set by the pipeline, so that quarantines
    /// follow the input's time and replay the same; `None` (a plugin run on its own, as by
    /// `weir plugin run`): the wall clock.
    clock_ms: Option<i64>,
    /// A candidate version run beside this one on the same batches, if any.
    shadow: Option<Shadow>,
    /// sha256 of the version the operator started with (the one its config names).
    started_sha256: String,
}

impl fmt::Debug for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Operator")
            .field("step", &self.spec.step)
            .field("plugin", &self.current.plugin)
            .finish_non_exhaustive()
    }
}

impl Operator {
    /// Starts `plugin` for a step, with its config as JSON. Errors in the config (as the plugin
    /// judges it) are reported here, before any data flows.
    pub fn start(
        spec: OperatorSpec,
        plugin: Arc<Plugin>,
        config: &str,
    ) -> Result<Self, StartError> {
        let started_sha256 = plugin.sha256.clone();
        let prepared = spec.prepare(plugin, config)?;
        Ok(Operator {
            spec,
            current: prepared.version,
            previous: None,
            instance: Some(prepared.instance),
            state: KeyedState::default(),
            health: Health::default(),
            metrics: Arc::default(),
            clock_ms: None,
            shadow: None,
            started_sha256,
        })
    }

    /// Sets the gateway clock (ms) for the calls that follow: quarantines start and end by it.
    pub fn set_clock(&mut self, now_ms: i64) {
        self.clock_ms = Some(now_ms);
    }

    fn now_ms(&self) -> i64 {
        self.clock_ms.unwrap_or_else(wall_clock_ms)
    }

    pub fn spec(&self) -> &OperatorSpec {
        &self.spec
    }

    /// The plugin version running now.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.current.plugin
    }

    /// The step's config (JSON), as handed to `init`.
    pub fn config(&self) -> &str {
        &self.current.config
    }

    /// The version a [`Operator::rollback`] would restore, if any.
    pub fn previous_plugin(&self) -> Option<&Arc<Plugin>> {
        self.previous.as_ref().map(|v| &v.plugin)
    }

    pub fn metrics(&self) -> &Arc<OperatorMetrics> {
        &self.metrics
    }

    /// The step's keyed state.
    pub fn state(&self) -> &KeyedState {
        &self.state
    }

    /// Replaces the step's keyed state (when restoring a checkpoint).
    pub fn restore_state(&mut self, state: KeyedState) {
        self.state = state;
    }

    /// Until when (ms, on the clock of [`Operator::set_clock`]) the plugin is quarantined, if it
    /// is.
    pub fn quarantined_until(&self) -> Option<i64> {
        self.health.quarantined_until
    }

    /// The layout of what the running version stores (see the contract's `migrate`).
    pub fn layout(&self) -> &str {
        &self.current.layout
    }

    /// sha256 of the version the operator started with: the one its config names.
    pub fn started_sha256(&self) -> &str {
        &self.started_sha256
    }

    /// Converts the keyed state restored from a checkpoint, written in `from` (a layout), into
    /// the running version's layout, with its `migrate`; an error if it cannot.
    pub fn convert_restored_state(&mut self, from: &str) -> Result<usize, StartError> {
        if from == self.current.layout || self.spec.world == World::Aggregator {
            return Ok(0);
        }
        let mut prepared = self
            .spec
            .prepare(self.current.plugin.clone(), &self.current.config)?;
        let n = prepared.migrate_copy(&self.spec, from, &self.state)?;
        self.state = prepared.migrated.take().expect("set by migrate_copy").state;
        Ok(n)
    }

    /// A copy of the keyed state, to migrate off the data path for a swap; from now until the
    /// swap, the keys that change are noted, to be migrated again at the switch.
    pub fn state_for_migration(&mut self) -> KeyedState {
        self.state.copy_and_track_changes()
    }

    /// The keyed state in the prepared version's layout, if it differs from the running one's
    /// (`None`: the state carries over as it is), and the time spent converting it off the data
    /// path: what [`Prepared::migrate_copy`] converted, plus the keys that changed since, here.
    /// Changes nothing but the note of changed keys.
    fn converted_state(
        &mut self,
        prepared: &mut Prepared,
    ) -> Result<Option<(KeyedState, Duration)>, StartError> {
        let changed = self.state.changed_since_copy();
        let from_layout = self.current.layout.clone();
        if prepared.version.layout == from_layout || self.spec.world == World::Aggregator {
            return Ok(None);
        }
        if self.state.keys() == 0 {
            // Nothing to convert (a version swapped in again at a restart, before the state is
            // restored, or a step that stored nothing yet).
            return Ok(Some((KeyedState::default(), Duration::ZERO)));
        }
        let converted = match (prepared.migrated.take(), changed) {
            (Some(m), Some(changed)) if m.from == from_layout => {
                let keys: Vec<&str> = changed.iter().map(String::as_str).collect();
                let delta = prepared.migrate_keys(&self.spec, &from_layout, &self.state, &keys)?;
                let mut state = m.state;
                for (key, entries) in delta {
                    state.replace_key(&key, entries);
                }
                (state, m.time)
            }
            _ => {
                let copy = self.state.copy_and_track_changes();
                self.state.stop_tracking();
                prepared.migrate_copy(&self.spec, &from_layout, &copy)?;
                let m = prepared.migrated.take().expect("set by migrate_copy");
                (m.state, Duration::ZERO)
            }
        };
        Ok(Some(converted))
    }

    /// Starts `prepared` as a candidate beside this version: it gets every batch this version
    /// processes, on its own thread, with a copy of the keyed state (converted when its layout
    /// differs), and emits nothing. See [`super::shadow`].
    pub fn start_shadow(&mut self, mut prepared: Prepared, now_ms: i64) -> Result<(), StartError> {
        let step = self.spec.step.to_string();
        let path = prepared.version.plugin.path.display().to_string();
        let refuse = |reason: String| StartError::Init {
            step: step.clone(),
            path: path.clone(),
            reason,
        };
        if self.spec.world == World::Aggregator {
            return Err(refuse(
                "a shadow runs beside a decoder or transform step; swap an aggregator directly"
                    .into(),
            ));
        }
        if self.shadow.is_some() {
            return Err(refuse(
                "a candidate already runs in the shadow of this step: promote or discard it first"
                    .into(),
            ));
        }
        let state = match self.converted_state(&mut prepared)? {
            Some((converted, _)) => converted,
            None => KeyedState::from_entries(
                self.state
                    .iter()
                    .map(|(k, n, v)| (k.to_owned(), n.to_owned(), v.to_vec())),
            ),
        };
        let candidate = Operator {
            spec: self.spec.clone(),
            current: prepared.version,
            previous: None,
            instance: Some(prepared.instance),
            state,
            health: Health::default(),
            metrics: Arc::default(),
            clock_ms: self.clock_ms,
            shadow: None,
            started_sha256: String::new(),
        };
        let shadow = Shadow::start(candidate, now_ms)
            .map_err(|e| refuse(format!("cannot start the shadow's thread: {e}")))?;
        tracing::info!(step = %self.spec.step, "candidate started in the shadow");
        self.shadow = Some(shadow);
        Ok(())
    }

    /// sha256 of the candidate running in the shadow, if any.
    pub fn shadow_sha256(&self) -> Option<&str> {
        self.shadow.as_ref().map(Shadow::sha256)
    }

    /// The shadow's report, if a candidate runs in the shadow.
    pub fn shadow_report(&self) -> Option<serde_json::Value> {
        self.shadow.as_ref().map(Shadow::json)
    }

    /// Drops the candidate running in the shadow; false if there was none.
    pub fn discard_shadow(&mut self) -> bool {
        let had = self.shadow.take().is_some();
        if had {
            tracing::info!(step = %self.spec.step, "shadow candidate discarded");
        }
        had
    }

    /// Makes the candidate running in the shadow the live version, with the state it built;
    /// the version it replaces is kept for [`Operator::rollback`]. Refused, keeping the shadow,
    /// if the candidate skipped a batch.
    pub fn promote_shadow(&mut self) -> Result<SwapReport, String> {
        let started = Instant::now();
        let Some(shadow) = &mut self.shadow else {
            return Err(format!(
                "no candidate runs in the shadow of {}; start one with `weir plugin swap ... \
                 --shadow`",
                self.spec.step
            ));
        };
        let candidate = shadow.finish()?;
        self.shadow = None;
        let from_sha256 = self.current.plugin.sha256.clone();
        let from_layout = self.current.layout.clone();
        let Operator {
            current,
            instance,
            state,
            ..
        } = candidate;
        self.previous = Some(std::mem::replace(&mut self.current, current));
        self.instance = instance;
        self.state = state;
        self.health = Health::default();
        add(&self.metrics.swaps, 1);
        let pause = started.elapsed();
        tracing::info!(
            step = %self.spec.step,
            to = %short(&self.current.plugin.sha256),
            ?pause,
            "shadow candidate promoted"
        );
        Ok(SwapReport {
            from_sha256,
            to_sha256: self.current.plugin.sha256.clone(),
            prepare_time: Duration::ZERO,
            pause,
            to_layout: self.current.layout.clone(),
            from_layout,
            migrated: 0,
            migrate_time: Duration::ZERO,
        })
    }

    /// The swap a [`Operator::state_for_migration`] was for will not happen.
    pub fn forget_state_copy(&mut self) {
        self.state.stop_tracking();
    }

    /// Switches to a prepared version, between two calls. The keyed state carries over as it is
    /// when both versions store the same layout, and converted by the new version's `migrate`
    /// when not: what [`Prepared::migrate_copy`] converted off the data path, then the keys that
    /// changed since, here. If the new version cannot convert it, nothing changes. The version
    /// swapped out is kept for [`Operator::rollback`]; a candidate in its shadow is discarded.
    pub fn swap(&mut self, mut prepared: Prepared) -> Result<SwapReport, StartError> {
        let started = Instant::now();
        let from_layout = self.current.layout.clone();
        let mut migrated = 0;
        let mut migrate_time = Duration::ZERO;
        if let Some((converted, time)) = self.converted_state(&mut prepared)? {
            migrated = converted.keys();
            migrate_time = time + started.elapsed();
            self.state = converted;
        }
        if self.shadow.take().is_some() {
            tracing::info!(step = %self.spec.step, "shadow candidate discarded: the version it ran beside is swapped out");
        }
        let from_sha256 = self.current.plugin.sha256.clone();
        let old = std::mem::replace(&mut self.current, prepared.version);
        self.previous = Some(old);
        let old_instance = self.instance.replace(prepared.instance);
        self.health = Health::default();
        let pause = started.elapsed();
        add(&self.metrics.swaps, 1);
        drop(old_instance);
        tracing::info!(
            step = %self.spec.step,
            from = %short(&from_sha256),
            to = %short(&self.current.plugin.sha256),
            from_layout = %from_layout,
            to_layout = %self.current.layout,
            migrated,
            ?pause,
            "plugin swapped"
        );
        Ok(SwapReport {
            from_sha256,
            to_sha256: self.current.plugin.sha256.clone(),
            prepare_time: prepared.prepare_time,
            pause,
            to_layout: self.current.layout.clone(),
            from_layout,
            migrated,
            migrate_time,
        })
    }

    /// Swaps back to the version that was running before the last swap.
    pub fn rollback(&mut self) -> Result<SwapReport, StartError> {
        let prepared = self.prepare_rollback()?;
        self.swap(prepared)
    }

    /// The version that was running before the last swap, prepared to be swapped in again.
    pub fn prepare_rollback(&self) -> Result<Prepared, StartError> {
        let Some(previous) = self.previous.clone() else {
            return Err(StartError::Init {
                step: self.spec.step.to_string(),
                path: self.current.plugin.path.display().to_string(),
                reason: "there is no previous version to roll back to".into(),
            });
        };
        self.spec.prepare(previous.plugin, &previous.config)
    }

    /// Runs a batch of events through a transformer (and through the candidate in its shadow,
    /// if one runs). An empty batch calls nothing.
    pub fn transform(&mut self, events: Batch) -> Outcome {
        if events.is_empty() {
            // Nothing to call the plugin for (every message of the batch was a dead letter
            // before this step, or an earlier step emitted nothing).
            return Outcome::new();
        }
        if self.shadow.is_none() {
            return self.transform_here(events);
        }
        let copy = events.clone();
        let started = Instant::now();
        let outcome = self.transform_here(events);
        let time = started.elapsed();
        if let Some(shadow) = &self.shadow {
            shadow.offer_events(copy, &outcome, time, self.clock_ms);
        }
        outcome
    }

    fn transform_here(&mut self, events: Batch) -> Outcome {
        let mut outcome = Outcome::new();
        for part in events.split(self.spec.limits.max_batch_events) {
            let n = part.len();
            let result = self.invoke(n, |store, bound| bound.transform(store, &part));
            self.settle(result, DeadInput::Events(part), &mut outcome);
        }
        outcome
    }

    /// Decodes a batch of raw messages (and has the candidate in its shadow decode them too, if
    /// one runs).
    pub fn decode(&mut self, messages: Vec<Message>) -> Outcome {
        if self.shadow.is_none() {
            return self.decode_here(messages);
        }
        let copy = messages.clone();
        let started = Instant::now();
        let outcome = self.decode_here(messages);
        let time = started.elapsed();
        if let Some(shadow) = &self.shadow {
            shadow.offer_messages(copy, &outcome, time, self.clock_ms);
        }
        outcome
    }

    fn decode_here(&mut self, messages: Vec<Message>) -> Outcome {
        let mut outcome = Outcome::new();
        let max = self.spec.limits.max_batch_events.max(1);
        let mut rest = messages;
        while !rest.is_empty() {
            let tail = rest.split_off(max.min(rest.len()));
            let part = std::mem::replace(&mut rest, tail);
            let result = self.invoke(part.len(), |store, bound| bound.decode(store, &part));
            self.settle(result, DeadInput::Messages(part), &mut outcome);
        }
        outcome
    }

    /// A new, empty accumulator from an aggregator.
    pub fn create_accumulator(&mut self) -> Result<Vec<u8>, Failure> {
        let acc = self.invoke(0, |store, bound| bound.create(store).map(Ok))?;
        self.succeed();
        Ok(acc)
    }

    /// Adds events to accumulators: `group[i]` is the accumulator event `i` goes to.
    pub fn add_to_accumulators(
        &mut self,
        accumulators: &[Vec<u8>],
        events: &Batch,
        group: &[u32],
    ) -> Result<Vec<Vec<u8>>, Failure> {
        let out = self.invoke(events.len(), |store, bound| {
            bound.add(store, accumulators, events, group)
        })?;
        if out.len() != accumulators.len() {
            return Err(self.fail(Failure::BadOutput(format!(
                "{} accumulators back for {} passed",
                out.len(),
                accumulators.len()
            ))));
        }
        self.succeed();
        Ok(out)
    }

    /// Merges two accumulators.
    pub fn merge_accumulators(&mut self, a: &[u8], b: &[u8]) -> Result<Vec<u8>, Failure> {
        let merged = self.invoke(0, |store, bound| bound.merge(store, a, b))?;
        self.succeed();
        Ok(merged)
    }

    /// The results of accumulators.
    pub fn finish_accumulators(
        &mut self,
        accumulators: &[Vec<u8>],
    ) -> Result<Vec<Vec<Field>>, Failure> {
        let out = self.invoke(0, |store, bound| bound.finish(store, accumulators))?;
        if out.len() != accumulators.len() {
            return Err(self.fail(Failure::BadOutput(format!(
                "{} results for {} accumulators",
                out.len(),
                accumulators.len()
            ))));
        }
        self.succeed();
        Ok(out)
    }

    /// One call into the plugin, with everything around it: quarantine, a rebuilt instance if
    /// the last one broke, the keyed state moved in, metrics. A failure is recorded here; on
    /// success the caller checks the result and then calls [`Operator::succeed`].
    fn invoke<R>(
        &mut self,
        inputs: usize,
        call: impl FnOnce(
            &mut wasmtime::Store<super::StoreData>,
            &Bound,
        ) -> wasmtime::Result<Result<R, GuestError>>,
    ) -> Result<R, Failure> {
        add(&self.metrics.events_in, inputs as u64);
        if let Some(until) = self.health.quarantined_until {
            let now = self.now_ms();
            if now < until {
                return Err(Failure::Quarantined {
                    remaining: Duration::from_millis(until.abs_diff(now)),
                });
            }
            self.health.quarantined_until = None;
            self.health.probation = true;
        }
        if self
            .instance
            .as_ref()
            .is_some_and(|i| i.key_generation != crate::keys::generation())
        {
            // Keys were forgotten since this instance started: ids it may have cached could name
            // nothing now. A fresh instance starts with no cache (its state is the host's).
            self.instance = None;
        }
        if self.instance.is_none() {
            match Instance::start(
                &self.spec.runtime,
                &self.current.plugin,
                self.spec.step.clone(),
                &self.spec.limits,
                &self.spec.permissions,
                &self.current.config,
            ) {
                Ok(instance) => {
                    add(&self.metrics.rebuilds, 1);
                    self.instance = Some(instance);
                }
                Err(InitFailure::Config(m) | InitFailure::Other(m)) => {
                    return Err(self.fail(Failure::Unavailable(m)));
                }
            }
        }
        let instance = self.instance.as_mut().expect("built above");
        instance.store.data_mut().state = std::mem::take(&mut self.state);
        let started = Instant::now();
        add(&self.metrics.calls, 1);
        let result = instance.call(&self.spec.runtime, self.spec.limits.time_budget, call);
        add(&self.metrics.call_ns, started.elapsed().as_nanos() as u64);
        self.state = std::mem::take(&mut instance.store.data_mut().state);
        let result = match result {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(Failure::Guest(guest_error_text(&e))),
            Err(failure) => Err(failure),
        };
        result.map_err(|failure| self.fail(failure))
    }

    /// Records a successful call: its state writes become permanent.
    fn succeed(&mut self) {
        self.state.commit();
        self.health.failures_in_row = 0;
        self.health.quarantines_in_row = 0;
        self.health.probation = false;
    }

    /// Records a failed call: metrics, a rebuild if the instance broke, quarantine if the
    /// plugin keeps failing.
    fn fail(&mut self, failure: Failure) -> Failure {
        self.state.rollback();
        let m = &self.metrics;
        add(&m.failed_calls, 1);
        match &failure {
            Failure::Trap(_) => add(&m.traps, 1),
            Failure::TimeLimit { .. } => add(&m.time_limit_hits, 1),
            Failure::MemoryLimit { .. } => add(&m.memory_limit_hits, 1),
            Failure::OutputLimit(_) => add(&m.output_limit_hits, 1),
            _ => {}
        }
        if failure.breaks_instance() {
            self.instance = None;
        }
        tracing::warn!(step = %self.spec.step, reason = %failure.reason(), "{failure}");
        let limits = &self.spec.limits;
        self.health.failures_in_row += 1;
        if self.health.probation || self.health.failures_in_row >= limits.quarantine_after_failures
        {
            let factor = 1u32 << self.health.quarantines_in_row.min(16);
            let backoff = limits
                .quarantine_backoff
                .saturating_mul(factor)
                .min(limits.quarantine_backoff_max);
            let backoff_ms = i64::try_from(backoff.as_millis()).unwrap_or(i64::MAX);
            self.health.quarantined_until = Some(self.now_ms().saturating_add(backoff_ms));
            self.health.quarantines_in_row += 1;
            self.health.failures_in_row = 0;
            self.health.probation = false;
            add(&m.quarantines, 1);
            tracing::warn!(
                step = %self.spec.step,
                ?backoff,
                "plugin quarantined after repeated failures; its input goes to the dead-letter output until it recovers"
            );
        }
        failure
    }

    /// Sorts the result of a decode or transform call into output and dead letters.
    fn settle(&mut self, result: Result<Output, Failure>, input: DeadInput, outcome: &mut Outcome) {
        let result = result
            .map(|output| self.set_aside_refused_keys(output, outcome))
            .and_then(|output| self.check_output(output, input.len()));
        match result {
            Ok(Output { events, rejected }) => {
                self.succeed();
                add(&self.metrics.events_out, events.len() as u64);
                if !rejected.is_empty() {
                    add(&self.metrics.rejected, rejected.len() as u64);
                    for r in rejected {
                        let index = r.index as usize;
                        let one = match &input {
                            DeadInput::Events(b) => DeadInput::Events(b.take(&[index])),
                            DeadInput::Messages(m) => DeadInput::Messages(vec![m[index].clone()]),
                        };
                        outcome.dead_letters.push(DeadLetter {
                            step: self.spec.step.clone(),
                            reason: Reason::Rejected,
                            detail: r.reason,
                            input: one,
                        });
                    }
                }
                outcome.events.append(events);
            }
            Err(failure) => {
                add(&self.metrics.dead_lettered, input.len() as u64);
                outcome.dead_letters.push(DeadLetter {
                    step: self.spec.step.clone(),
                    reason: failure.reason(),
                    detail: failure.to_string(),
                    input,
                });
            }
        }
    }

    /// Takes the events whose key weir refused to make (too long) out of `output`, into one dead
    /// letter.
    fn set_aside_refused_keys(&mut self, mut output: Output, outcome: &mut Outcome) -> Output {
        let (refused, keep): (Vec<usize>, Vec<usize>) =
            (0..output.events.len()).partition(|&i| output.events.key[i] == crate::keys::REFUSED);
        if refused.is_empty() {
            return output;
        }
        add(&self.metrics.rejected, refused.len() as u64);
        for &i in &refused {
            outcome.dead_letters.push(DeadLetter {
                step: self.spec.step.clone(),
                reason: Reason::Rejected,
                detail: format!(
                    "the plugin made a key longer than max_key_bytes ({} bytes)",
                    self.spec.limits.max_key_bytes
                ),
                input: DeadInput::Events(output.events.take(&[i])),
            });
        }
        output.events = output.events.take(&keep);
        output
    }

    /// Checks an output against the limits and for well-formedness.
    fn check_output(&mut self, output: Output, inputs: usize) -> Result<Output, Failure> {
        match output_problem(&output, inputs, &self.spec.limits) {
            Some(failure) => Err(self.fail(failure)),
            None => Ok(output),
        }
    }
}

/// What is wrong with a plugin's output, if anything.
fn output_problem(output: &Output, inputs: usize, limits: &Limits) -> Option<Failure> {
    let events = &output.events;
    if events.len() > limits.max_output_events {
        return Some(Failure::OutputLimit(format!(
            "{} events, more than max_output_events ({})",
            events.len(),
            limits.max_output_events
        )));
    }
    let bytes = events.approx_bytes();
    if bytes > limits.max_output_bytes {
        return Some(Failure::OutputLimit(format!(
            "about {bytes} bytes, more than max_output_bytes ({})",
            limits.max_output_bytes
        )));
    }
    if let Err(m) = events.validate() {
        return Some(Failure::BadOutput(m));
    }
    let r = output
        .rejected
        .iter()
        .find(|r| r.index as usize >= inputs)?;
    Some(Failure::BadOutput(format!(
        "rejected input {} of a batch of {inputs}",
        r.index
    )))
}

fn short(sha256: &str) -> &str {
    &sha256[..sha256.len().min(12)]
}

/// The wall clock, for an operator not run by a pipeline (which gives it the gateway clock).
#[allow(clippy::disallowed_methods)] // the edge: a plugin run on its own, with no input clock
fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
