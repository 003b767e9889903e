//! `weir run`: the live gateway. Messages from the source broker are processed as they come;
//! at most once per `commit_interval` one durable transaction (a group commit) holds the input
//! taken in since the last one, the records made from it, the deletion of records the upstream
//! broker acknowledged, and, when one is due, a checkpoint (state, dedup changes, the input
//! position). Only then are the messages acknowledged to the source broker, and the records
//! handed to the forwarder, which drains the outbox upstream.
//!
//! Threads: the MQTT source and the forwarder are tokio tasks (their event loops never run guest
//! code); the pipelines run on one engine thread of their own, which also commits, so Wasm never
//! runs on a tokio worker.
//!
//! After a crash the engine restores the last checkpoint and replays the input log after it:
//! every entry is processed exactly as before (same messages, same gateway clock), so the state
//! is what it was. The records those entries made are in the outbox already (each commit held
//! its input's records), so recovery makes them again only to drop them.

mod acked;
pub mod control;
mod core;
pub mod dedup;
pub mod input;
pub mod metrics;
pub mod record;
// `watch.rs`; named so as not to clash with tokio's `watch` channel used here.
#[path = "watch.rs"]
mod plugin_watch;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};

pub use self::core::{Checkpoint, Core, Produced};
use self::dedup::SeenChanges;
use self::input::{LogEntry, Logged, OVERSIZED_KEPT_BYTES};
pub use self::metrics::EngineMetrics;
use crate::config::Config;
use crate::mqtt::forwarder::{self, ForwarderMetrics, ForwarderSettings, VolatileRecord};
use crate::mqtt::source::{AckToken, Acker, Incoming, Source, SourceMetrics};
use crate::record::WireRecord;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::store::{Commit, OnFull, Store, StoreOptions};

/// How often the reference tables' files are looked at for a new version.
const TABLE_POLL: Duration = Duration::from_secs(1);
/// Time passes for windows (idle sources) after this long without messages.
const TICK_EVERY: Duration = Duration::from_secs(1);
/// A status line (INFO) at most this often, when something changed.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// While the store keeps failing (a full disk), a summary line at most this often.
const STORE_SUMMARY_EVERY: Duration = Duration::from_secs(30);
/// While the disk is full, the engine looks whether there is room again this often, answering
/// admin commands in between.
const DISK_FULL_POLL: Duration = Duration::from_millis(200);
/// A checkpoint is due once this much input was logged since the last one, whatever the
/// interval: it bounds the input log (and so recovery, and what a full disk must hold), and the
/// dedup changes a checkpoint writes at once. Measured with `weir-gateway-bench` at 10 000 msg/s:
/// 1 MiB made each checkpoint a 30 ms stall (alert p99 66 ms), 256 KiB keeps p99 under 45 ms.
const CHECKPOINT_AFTER_INPUT_BYTES: usize = 256 << 10;
/// While the disk is full, a commit is tried at most this often.
const FULL_DISK_COMMIT_EVERY: Duration = Duration::from_secs(1);
/// A commit is due at once when what it would hold (input-log entries and records) reaches this,
/// whatever `commit_interval` says, and a batch stops gathering input at it: one commit's data
/// stays well inside the disk reserve (so it still fits once the disk fills) and in memory.
const MAX_UNCOMMITTED_BYTES: usize = 256 * 1024;
/// The live loop looks at the admin API's commands at least this often.
const COMMANDS_EVERY: Duration = Duration::from_millis(100);
/// While a batch gathers, the engine sleeps until the batch would be full at the rate seen so
/// far (or its deadline), and at least this long, then takes what queued meanwhile.
const GATHER_STEP: Duration = Duration::from_millis(1);
/// Records of at-most-once pipelines waiting in memory for the forwarder, at most.
const VOLATILE_QUEUE: usize = 10_000;
/// Messages from the source waiting for the engine, at most.
const INGEST_QUEUE: usize = 4096;
// A broker that honours the Receive Maximum never has more unacknowledged messages out to weir
// (MQTT 5) than the ingest queue holds, so the source task seldom waits to hand one over.
const _: () = assert!(crate::mqtt::source::RECEIVE_MAXIMUM as usize <= INGEST_QUEUE);

/// Everything a live run shares with its observers.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub engine: Arc<EngineMetrics>,
    pub source: Arc<SourceMetrics>,
    pub forwarder: Arc<ForwarderMetrics>,
}

/// Now, by the monotonic clock: the live loop's own pacing (checkpoints, ticks, reports).
#[allow(clippy::disallowed_methods)] // the live loop is the edge that reads the clocks
fn instant() -> Instant {
    Instant::now()
}

/// The gateway clock, in ms since the Unix epoch.
#[allow(clippy::disallowed_methods)] // the live loop is the edge that reads the clocks
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs `config` until `shutdown` turns true (or a part fails), then shuts down cleanly: a last
/// checkpoint, the forwarder given a moment to deliver, the brokers disconnected.
pub fn run(
    config: Config,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    run_with(config, metrics, shutdown, RunOptions::default())
}

/// What a run may do besides what the config says.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Write the input as the engine takes it, for `weir replay` (see [`record`]).
    pub record_input: Option<std::path::PathBuf>,
    /// Filled with the admin API's address once it listens.
    pub admin_address: Option<Arc<std::sync::OnceLock<std::net::SocketAddr>>>,
}

/// [`run`], with [`RunOptions`].
pub fn run_with(
    config: Config,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
    options: RunOptions,
) -> anyhow::Result<()> {
    let upstream = config.upstream.clone().with_context(|| {
        format!(
            "{}: no [upstream] section; weir run needs the broker to forward results to, e.g. \
             [upstream] broker = \"mqtt.example.com:8883\" (see configs/README.md)",
            config.file.display()
        )
    })?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("weir-io")
        .build()?;
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(config.storage.plugin_cache()),
        ..RuntimeConfig::default()
    })?;
    let mut core = Core::start(&config, &runtime, metrics.engine.clone())?;
    let steps = Arc::new(control::Steps::of(&core));
    let store = if core.any_durable() {
        let store = Store::open(
            &config.storage.data_dir,
            StoreOptions {
                max_outbox_bytes: config.storage.max_outbox_bytes,
                on_full: config.storage.on_full,
                disk_reserve_bytes: crate::store::DEFAULT_DISK_RESERVE_BYTES,
            },
        )?;
        Some(Arc::new(store))
    } else {
        None
    };
    let _guard = tokio.enter();

    // Restore, and replay what the last checkpoint does not cover, before taking anything new.
    let (commands_tx, commands_rx) = control::channel();
    let (wake_tx, wake_rx) = watch::channel(0u64);
    let (volatile_tx, volatile_rx) = mpsc::channel(VOLATILE_QUEUE);
    let acked = Arc::new(acked::Acknowledged::default());
    let mut engine = Engine {
        core: &mut core,
        store: store.clone(),
        uncommitted: Uncommitted::default(),
        acked: acked.clone(),
        acker: None,
        unsaved_seen: Vec::new(),
        dirty: false,
        last_commit: None,
        last_checkpoint: instant(),
        commit_interval: config.storage.commit_interval,
        checkpoint_interval: config.storage.checkpoint_interval,
        input_bytes_since_checkpoint: 0,
        wake: wake_tx,
        volatile: volatile_tx,
        metrics: metrics.engine.clone(),
        commands: commands_rx,
        steps: steps.clone(),
        recorder: options
            .record_input
            .as_deref()
            .map(record::InputRecorder::create)
            .transpose()?,
        commit_failing: Throttled::new("commits fail"),
        tables_polled: None,
        table_stats: std::collections::HashMap::new(),
    };
    if let Some(store) = &store {
        engine.recover(store)?;
        steps.refresh(engine.core);
    }
    let (fwd_stop_tx, fwd_stop_rx) = watch::channel(false);
    let fwd_stop_rx_admin = fwd_stop_rx.clone();
    let outbox: Arc<dyn forwarder::Outbox> = match &store {
        Some(s) => Arc::new(acked::CommittedOutbox {
            store: s.clone(),
            acked,
        }),
        None => Arc::new(forwarder::EmptyOutbox),
    };
    let forwarder = forwarder::spawn(
        &upstream.broker.endpoint()?,
        ForwarderSettings {
            max_inflight: upstream.max_inflight,
            drain_rate_per_s: upstream.drain_rate_per_s,
            id_property: upstream.id_property.clone(),
            linger: Duration::from_millis(20),
        },
        outbox,
        wake_rx,
        volatile_rx,
        metrics.forwarder.clone(),
        fwd_stop_rx,
    )?;

    let mut filters: Vec<String> = config
        .pipelines
        .iter()
        .flat_map(|p| p.topics.iter().cloned())
        .collect();
    filters.sort();
    filters.dedup();
    let (ingest_tx, ingest_rx) = mpsc::channel(INGEST_QUEUE);
    let source = Source::start(
        &config.source.broker.endpoint()?,
        filters
            .iter()
            .map(|f| (f.clone(), config.source.qos))
            .collect(),
        ingest_tx,
        metrics.source.clone(),
    )?;
    let control = Arc::new(control::EngineControl::new(
        commands_tx.clone(),
        metrics.clone(),
        store.clone(),
        runtime.clone(),
        steps,
    ));
    let admin = match config.admin.listen {
        Some(addr) => {
            let listener = tokio
                .block_on(tokio::net::TcpListener::bind(addr))
                .with_context(|| {
                    format!("cannot listen for the admin API on {addr} ([admin] listen)")
                })?;
            let local = listener.local_addr()?;
            let control = control.clone();
            let settings = crate::admin::Settings {
                token: config.admin.token()?,
                plugin_dirs: config.admin.swap_dirs(&config),
            };
            tracing::info!(
                address = %local,
                token = settings.token.is_some(),
                plugin_dirs = ?settings.plugin_dirs,
                "admin API listening"
            );
            if let Some(cell) = &options.admin_address {
                let _ = cell.set(local);
            }
            let stop = fwd_stop_rx_admin.clone();
            Some(tokio.spawn(crate::admin::serve(listener, settings, control, stop)))
        }
        None => None,
    };
    let fleet = match &config.fleet {
        Some(fleet) => Some(crate::fleet::agent::spawn(
            crate::fleet::agent::Settings {
                fleet: fleet.clone(),
                endpoint: upstream.broker.endpoint()?,
                data_dir: config.storage.data_dir.clone(),
            },
            control.clone(),
        )?),
        None => None,
    };
    tracing::info!(
        pipelines = config.pipelines.len(),
        source = %config.source.broker.address(),
        upstream = %upstream.broker.address(),
        data_dir = %config.storage.data_dir.display(),
        "weir is running"
    );

    engine.acker = Some(source.acker());
    let live = Live {
        ingest: ingest_rx,
        batch_max: config.source.batch_max_messages,
        linger: config.source.batch_linger,
        max_message_bytes: config.source.max_message_bytes,
        on_full: config.storage.on_full,
        max_outbox_bytes: config.storage.max_outbox_bytes,
        stop: Arc::new(AtomicBool::new(false)),
    };
    let stop = live.stop.clone();
    let watch_stop = Arc::new(AtomicBool::new(false));
    let plugin_watch = plugin_watch::spawn(&config, control.clone(), watch_stop.clone())?;
    let handle = tokio.handle().clone();
    let mut shutdown = shutdown;
    let watcher = tokio.spawn(async move {
        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        stop.store(true, SeqCst);
    });
    let result = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("weir-engine".into())
            .spawn_scoped(scope, || engine.live(live, &handle))
            .expect("the engine thread starts")
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the engine thread panicked")))
    });
    watcher.abort();
    watch_stop.store(true, SeqCst);
    if let Some(w) = plugin_watch {
        let _ = w.join();
    }
    tokio.block_on(async {
        if let Some(fleet) = fleet {
            fleet.stop().await;
        }
    });
    drop(control);
    drop(commands_tx);
    tokio.block_on(async {
        source.stop().await;
        let _ = fwd_stop_tx.send(true);
        let _ = forwarder.await;
        if let Some(admin) = admin {
            let _ = admin.await;
        }
    });
    result
}

/// The live loop's inputs.
struct Live {
    ingest: mpsc::Receiver<Incoming>,
    batch_max: usize,
    linger: Duration,
    max_message_bytes: u64,
    on_full: OnFull,
    max_outbox_bytes: u64,
    stop: Arc<AtomicBool>,
}

/// The engine thread: takes messages in, runs them through the core, commits.
struct Engine<'a> {
    core: &'a mut Core,
    store: Option<Arc<Store>>,
    /// What was taken in and made since the last commit: all of it goes into the next one.
    uncommitted: Uncommitted,
    /// Outbox records acknowledged upstream: the next commit deletes them.
    acked: Arc<acked::Acknowledged>,
    /// Acknowledges messages to the source broker (once it is started).
    acker: Option<Acker>,
    /// Seen-set changes of checkpoints that failed to commit, for the next one.
    unsaved_seen: Vec<(String, SeenChanges)>,
    /// State changed since the last checkpoint.
    dirty: bool,
    last_commit: Option<Instant>,
    last_checkpoint: Instant,
    commit_interval: Duration,
    checkpoint_interval: Duration,
    /// Input bytes logged since the last checkpoint.
    input_bytes_since_checkpoint: usize,
    wake: watch::Sender<u64>,
    volatile: mpsc::Sender<VolatileRecord>,
    metrics: Arc<EngineMetrics>,
    commands: std::sync::mpsc::Receiver<control::Command>,
    /// What the admin API shows of the plugin steps; quarantines are published after each batch.
    steps: Arc<control::Steps>,
    /// `--record-input`: what the engine applies, for `weir replay`.
    recorder: Option<record::InputRecorder>,
    /// Failing commits, for logs at a bounded rate.
    commit_failing: Throttled,
    /// When the reference tables were last looked at, and what each file's metadata was then
    /// (size, mtime, inode), by pipeline.
    tables_polled: Option<Instant>,
    table_stats: std::collections::HashMap<String, Option<(u64, i64, i64, u64)>>,
}

/// Since the last commit: the input-log entries taken in (encoded), the records made from them
/// (serialized, as they enter the outbox), and the acks owed to the source broker for them.
#[derive(Default)]
struct Uncommitted {
    entries: Vec<Vec<u8>>,
    entry_bytes: usize,
    messages: u64,
    records: Vec<WireRecord>,
    /// The records' topics and payloads, in bytes.
    record_bytes: usize,
    acks: Vec<AckToken>,
}

impl Uncommitted {
    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.records.is_empty()
    }

    /// Whether it is as large as one commit should be.
    fn is_full(&self) -> bool {
        self.entry_bytes + self.record_bytes >= MAX_UNCOMMITTED_BYTES
    }
}

impl Engine<'_> {
    /// Restores the last checkpoint and replays the input log after it. The records the replayed
    /// entries make are dropped: each commit held its input and the records made from it, so they
    /// are in the outbox already (or were delivered).
    fn recover(&mut self, store: &Store) -> anyhow::Result<()> {
        let started = instant();
        let mut after = None;
        if let Some((blob, through)) = store.load_checkpoint()? {
            let checkpoint = Checkpoint::decode(&blob).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e}; weir will not start over silently. Keep a copy of the data \
                     directory and move it aside to start empty",
                    store.path().display()
                )
            })?;
            self.core
                .restore(checkpoint, Some(&store.swapped_plugins_dir()), |name| {
                    Ok(store.load_seen(name)?)
                })?;
            after = through;
        }
        let mut replayed = 0u64;
        loop {
            let entries = store.read_input(after, 256)?;
            if entries.is_empty() {
                break;
            }
            for (seq, bytes) in entries {
                let entry = LogEntry::decode(&bytes).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: input-log entry {seq} is unreadable ({e}); keep a copy of the data \
                         directory and move it aside to start empty",
                        store.path().display()
                    )
                })?;
                self.core.apply(&entry, true).map_err(anyhow::Error::msg)?;
                self.input_bytes_since_checkpoint += bytes.len();
                after = Some(seq);
                self.dirty = true;
                replayed += 1;
            }
        }
        tracing::info!(
            replayed_entries = replayed,
            outbox = store.outbox_len(),
            took_ms = started.elapsed().as_millis() as u64,
            "recovered from the store"
        );
        Ok(())
    }

    /// The live loop, until `stop`.
    fn live(&mut self, mut live: Live, tokio: &tokio::runtime::Handle) -> anyhow::Result<()> {
        let mut last_input = instant();
        let mut blocked = false;
        let mut last_report = (instant(), u64::MAX);
        let mut disk_wait = Throttled::new("the disk is full: ingest waits");
        while !live.stop.load(SeqCst) {
            while let Ok(command) = self.commands.try_recv() {
                self.command(command);
            }
            if let Some(store) = self.store.clone()
                && store.disk_full()
                && !store.try_resume()
            {
                // No new input while the disk is full: the room the store's released reserve
                // made goes to deleting delivered records and to the pending commit. Messages
                // stay unacknowledged at the source broker.
                disk_wait.waiting(|waited, _| {
                    tracing::warn!(
                        waited_s = waited.as_secs(),
                        times_full = store.disk_full_events(),
                        outbox = store.outbox_len(),
                        "the disk is still full: no new input is taken (the source broker keeps \
                         it) until there is room; free space, or let the uplink drain the outbox"
                    );
                });
                if self
                    .last_commit
                    .is_none_or(|t| t.elapsed() >= FULL_DISK_COMMIT_EVERY)
                {
                    // Deletes first: they make room. Then what was taken in before the disk
                    // filled (at most one bounded commit's worth), with a checkpoint, which
                    // trims the input log it covers.
                    self.commit_deletes(&store);
                    if !self.uncommitted.is_empty() || self.dirty {
                        self.commit(true);
                    }
                }
                self.answer_commands_for(DISK_FULL_POLL);
                continue;
            }
            disk_wait.over(|waited| {
                tracing::info!(
                    waited_s = waited.as_secs(),
                    "the disk has room again: ingest resumes"
                );
            });
            let activity = self.metrics.messages_in.load(Relaxed)
                + self.metrics.checkpoints.load(Relaxed)
                + self.store.as_ref().map_or(0, |s| s.outbox_len());
            if last_report.0.elapsed() >= STATUS_EVERY && activity != last_report.1 {
                self.report("status");
                last_report = (instant(), activity);
            }
            if self.over_cap(&live) {
                if !blocked {
                    blocked = true;
                    self.metrics.ingest_blocked.store(1, Relaxed);
                    self.metrics.ingest_blocks.fetch_add(1, Relaxed);
                    tracing::warn!(
                        cap_bytes = live.max_outbox_bytes,
                        "the outbox is full (on_full = \"block\"): no more input is acknowledged \
                         until the uplink drains it; the source broker holds the messages"
                    );
                }
                self.maybe_commit();
                self.answer_commands_for(Duration::from_millis(20));
                continue;
            }
            if blocked {
                blocked = false;
                self.metrics.ingest_blocked.store(0, Relaxed);
                tracing::info!("the outbox has room again: ingest resumes");
            }
            self.poll_tables();
            // Wait for input until the next commit is due (if one is owed), a tick, or a look at
            // the admin API's commands, whichever comes first.
            let mut wait = COMMANDS_EVERY.min(TICK_EVERY.saturating_sub(last_input.elapsed()));
            if let Some(due) = self.commit_due_in() {
                wait = wait.min(due);
            }
            // When every pipeline is effectively-once nothing leaves before the next commit, so
            // a batch may as well gather until then: the engine wakes once per commit rather
            // than once per linger, at no cost in latency.
            let gather_until = self
                .core
                .all_durable()
                .then(|| self.next_commit_at())
                .flatten();
            let batch = receive(&mut live, tokio, wait, gather_until);
            if !batch.is_empty() {
                last_input = instant();
                self.take_in(&live, batch);
            } else if last_input.elapsed() >= TICK_EVERY {
                last_input = instant();
                self.tick();
            }
            self.maybe_commit();
        }
        if !self.commit(true) {
            tracing::warn!(
                "the last commit failed (see above); what it held stays unacknowledged at the \
                 source broker, and the next start replays the input log after the last checkpoint"
            );
        }
        if let Some(r) = &mut self.recorder {
            r.flush();
        }
        self.report("stopped");
        Ok(())
    }

    /// Answers a question of the admin API, or swaps a plugin, between two batches.
    fn command(&mut self, command: control::Command) {
        use control::Command;
        match command {
            Command::Status(reply) => reply.send(self.status()),
            Command::Spec {
                pipeline,
                step,
                reply,
            } => {
                let found = self.operator(&pipeline, &step).map(|op| {
                    (
                        op.spec().clone(),
                        op.config().to_owned(),
                        op.layout().to_owned(),
                    )
                });
                reply.send(found);
            }
            Command::StateCopy {
                pipeline,
                step,
                reply,
            } => {
                if !reply.claim() {
                    return;
                }
                let copy = self
                    .operator(&pipeline, &step)
                    .map(|op| op.state_for_migration());
                reply.send(copy);
            }
            Command::ForgetCopy { pipeline, step } => {
                if let Ok(op) = self.operator(&pipeline, &step) {
                    op.forget_state_copy();
                }
            }
            Command::Swap {
                pipeline,
                step,
                path,
                prepared,
                reply,
            } => self.change("swap", reply, |engine| {
                let result = engine.core.swap(&pipeline, &step, *prepared);
                if let (Ok(_), Some(r)) = (&result, &mut engine.recorder) {
                    r.swap(&pipeline, &step, &path);
                }
                result
            }),
            c @ (Command::Shadow { .. }
            | Command::Promote { .. }
            | Command::Discard { .. }
            | Command::Shadows(_)) => self.shadow_command(c),
            Command::Rollback {
                pipeline,
                step,
                reply,
            } => self.change("rollback", reply, |engine| {
                let result = engine.core.rollback(&pipeline, &step);
                if let (Ok(_), Some(r)) = (&result, &mut engine.recorder) {
                    r.rollback(&pipeline, &step);
                }
                result
            }),
        }
    }

    /// A swap, rollback or promotion, between two batches, unless the admin API gave up
    /// waiting (it told its client nothing changed). A commit with a checkpoint first, whatever
    /// the commit interval, and another after the change (`after_change`): a crash in between
    /// replays the input log with the version before it; after, with the version it put in.
    /// The pause reported is the data path's: from here to the reply, commits included.
    fn change(
        &mut self,
        what: &str,
        reply: control::Reply<Result<crate::runtime::SwapReport, String>>,
        change: impl FnOnce(&mut Self) -> Result<crate::runtime::SwapReport, String>,
    ) {
        if !reply.claim() {
            return;
        }
        let started = instant();
        if !self.commit(true) {
            reply.send(Err(format!(
                "cannot commit a checkpoint before the {what} (see weir's log)"
            )));
            return;
        }
        let mut result = change(self);
        if let Ok(report) = &mut result {
            self.after_change();
            report.pause = started.elapsed();
        }
        reply.send(result);
    }

    /// After a swap, rollback or promotion: a checkpoint at once, so that a restart runs the
    /// version now running with its state (see [`core::Core::restore`]), and the versions kept
    /// for restarts that no step runs or would roll back to are removed.
    fn after_change(&mut self) {
        // The state changed hands (and maybe layout): a checkpoint is owed.
        self.dirty = true;
        if !self.commit(true) {
            tracing::warn!(
                "the checkpoint after the change failed (see above): until one succeeds, a \
                 restart runs the version before the change"
            );
        }
        if let Some(store) = &self.store {
            core::prune_swapped(&store.swapped_plugins_dir(), &self.core.versions_in_use());
        }
    }

    /// The shadow commands, between two batches.
    fn shadow_command(&mut self, command: control::Command) {
        use control::Command;
        match command {
            Command::Shadow {
                pipeline,
                step,
                prepared,
                reply,
            } => {
                if !reply.claim() {
                    return;
                }
                let now = now_ms();
                let result = self
                    .operator(&pipeline, &step)
                    .and_then(|op| op.start_shadow(*prepared, now).map_err(|e| e.to_string()));
                reply.send(result);
            }
            Command::Promote {
                pipeline,
                step,
                reply,
            } => self.change("promotion", reply, |engine| {
                let op = engine.operator(&pipeline, &step)?;
                let result = op.promote_shadow();
                let path = op.plugin().path.clone();
                if let (Ok(_), Some(r)) = (&result, &mut engine.recorder) {
                    r.swap(&pipeline, &step, &path);
                }
                result
            }),
            Command::Discard {
                pipeline,
                step,
                reply,
            } => {
                if !reply.claim() {
                    return;
                }
                let result = self.operator(&pipeline, &step).and_then(|op| {
                    if op.discard_shadow() {
                        Ok(())
                    } else {
                        Err(format!("no candidate runs in the shadow of {step}"))
                    }
                });
                reply.send(result);
            }
            Command::Shadows(reply) => {
                let shadows: Vec<serde_json::Value> = self
                    .core
                    .pipelines()
                    .flat_map(|(p, _, _)| p.plugin_steps())
                    .filter_map(|op| {
                        let mut report = op.shadow_report()?;
                        report["step"] = op.spec().step.to_string().into();
                        report["live_sha256"] = op.plugin().sha256.clone().into();
                        Some(report)
                    })
                    .collect();
                reply.send(serde_json::Value::Array(shadows));
            }
            _ => unreachable!("only shadow commands come here"),
        }
    }

    fn operator(
        &mut self,
        pipeline: &str,
        step: &str,
    ) -> Result<&mut crate::runtime::Operator, String> {
        let p = self
            .core
            .pipeline_mut(pipeline)
            .ok_or_else(|| format!("unknown pipeline {pipeline:?}"))?;
        let steps: Vec<String> = p
            .plugin_steps()
            .map(|op| op.spec().step.to_string())
            .collect();
        p.step_mut(step).ok_or_else(|| {
            format!("unknown step {step:?}; the plugin steps of {pipeline} are {steps:?}")
        })
    }

    /// Every pipeline's state, as JSON.
    fn status(&self) -> serde_json::Value {
        let pipelines: Vec<serde_json::Value> = self
            .core
            .pipelines()
            .map(|(p, durable, dedup)| {
                let sources: serde_json::Map<String, serde_json::Value> = p
                    .window()
                    .map(|w| w.source_watermarks())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(s, wm, active)| {
                        (s.to_string(), serde_json::json!({ "watermark_ms": wm, "active": active }))
                    })
                    .collect();
                serde_json::json!({
                    "name": p.name(),
                    "guarantee": if durable { "effectively-once" } else { "at-most-once" },
                    "watermark_ms": p.watermark(),
                    "sources": sources,
                    "open_windows": p.open_windows(),
                    "keys": p.window().map_or(0, |w| w.keys()),
                    "dedup_entries": dedup,
                    "newest_event_ms": (p.newest_event_ms() != i64::MIN).then_some(p.newest_event_ms()),
                })
            })
            .collect();
        serde_json::json!({ "pipelines": pipelines, "now_ms": now_ms() })
    }

    /// One line of counters (INFO): what came in, what went out, what waits.
    fn report(&self, what: &str) {
        let m = &self.metrics;
        tracing::info!(
            messages_in = m.messages_in.load(Relaxed),
            deduped = m.deduped.load(Relaxed),
            records = m.records.load(Relaxed),
            late = m.late.load(Relaxed),
            dead_letters = m.dead_letters.load(Relaxed),
            outbox = self.store.as_ref().map_or(0, |s| s.outbox_len()),
            outbox_bytes = self.store.as_ref().map_or(0, |s| s.outbox_bytes()),
            dropped_by_cap = m.dropped_by_cap.load(Relaxed),
            checkpoints = m.checkpoints.load(Relaxed),
            commits = self.store.as_ref().map_or(0, |s| s.commits()),
            "{what}"
        );
    }

    fn over_cap(&self, live: &Live) -> bool {
        live.on_full == OnFull::Block
            && self
                .store
                .as_ref()
                .is_some_and(|s| s.outbox_bytes() >= live.max_outbox_bytes)
    }

    /// Takes a batch in: what must be logged goes into the next commit (acknowledged after it),
    /// the rest is acknowledged at once; the whole batch is processed now.
    fn take_in(&mut self, live: &Live, batch: Vec<Incoming>) {
        self.metrics
            .messages_in
            .fetch_add(batch.len() as u64, Relaxed);
        let received_ms = now_ms();
        let mut owed: Vec<AckToken> = Vec::new();
        let mut free: Vec<AckToken> = Vec::new();
        let mut all = Vec::with_capacity(batch.len());
        let mut logged = Vec::new();
        for incoming in batch {
            let size = incoming.payload.len() as u64;
            let (payload, oversized) = if size > live.max_message_bytes {
                (
                    incoming.payload[..OVERSIZED_KEPT_BYTES.min(incoming.payload.len())].to_vec(),
                    Some(size),
                )
            } else {
                (incoming.payload.to_vec(), None)
            };
            let m = Logged {
                topic: incoming.topic,
                payload,
                oversized,
            };
            if self.store.is_some() && self.core.must_log(&m.topic) {
                logged.push(m.clone());
                owed.push(incoming.ack);
            } else {
                free.push(incoming.ack);
            }
            all.push(m);
        }
        // Not owed upstream: the source broker may forget them now.
        if let Some(acker) = &self.acker {
            acker.ack(free);
        }
        if !logged.is_empty() {
            let entry = LogEntry::Messages {
                received_ms: Some(received_ms),
                messages: logged,
            };
            self.log(&entry);
            self.uncommitted.acks.extend(owed);
        }
        let entry = LogEntry::Messages {
            received_ms: Some(received_ms),
            messages: all,
        };
        self.process(&entry);
    }

    /// Adds an entry to what the next commit writes to the input log.
    fn log(&mut self, entry: &LogEntry) {
        let bytes = entry.encode();
        self.uncommitted.entry_bytes += bytes.len();
        self.uncommitted.messages += entry.messages() as u64;
        self.uncommitted.entries.push(bytes);
    }

    /// Looks at each pipeline's reference table file (at most every [`TABLE_POLL`]): a version
    /// other than the one in use is logged whole, as an entry, and applied, so that recovery
    /// and replay switch tables at the same point. The pipelines themselves never read files.
    fn poll_tables(&mut self) {
        if self.tables_polled.is_some_and(|t| t.elapsed() < TABLE_POLL) {
            return;
        }
        self.tables_polled = Some(instant());
        let mut changed = Vec::new();
        for (p, durable, _) in self.core.pipelines() {
            let Some((path, sha256)) = p.table() else {
                continue;
            };
            let stat = std::fs::metadata(path).ok().map(|m| {
                use std::os::unix::fs::MetadataExt as _;
                (m.len(), m.mtime(), m.mtime_nsec(), m.ino())
            });
            let seen = self.table_stats.insert(p.name().to_owned(), stat);
            if seen.is_some_and(|seen| seen == stat) {
                continue;
            }
            match crate::enrich::read(path) {
                Ok(content) if crate::runtime::sha256_hex(&content) != sha256 => {
                    changed.push((p.name().to_owned(), durable, content))
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("{e}; the version in use stays"),
            }
        }
        for (pipeline, durable, content) in changed {
            let entry = LogEntry::Table { pipeline, content };
            if durable && self.store.is_some() {
                self.log(&entry);
                self.process(&entry);
            } else {
                self.process_volatile(&entry);
            }
        }
    }

    /// Time passes with no input. Logged (and so applied to every pipeline) while an
    /// effectively-once pipeline holds windows; otherwise applied to the at-most-once ones only,
    /// so that nothing the input log does not hold ever changes a durable pipeline.
    fn tick(&mut self) {
        let durable = self.store.is_some() && self.core.wants_ticks(true);
        let entry = LogEntry::Tick { now_ms: now_ms() };
        if durable {
            self.log(&entry);
            self.process(&entry);
        } else if self.core.wants_ticks(false) {
            self.process_volatile(&entry);
        }
    }

    /// Answers the admin API's commands for `wait` (instead of sleeping), so that a store that
    /// keeps failing never leaves `/status` unanswered.
    fn answer_commands_for(&mut self, wait: Duration) {
        let deadline = instant() + wait;
        loop {
            let left = deadline.saturating_duration_since(instant());
            match self.commands.recv_timeout(left) {
                Ok(command) => self.command(command),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(left);
                    return;
                }
            }
        }
    }

    /// Applies an entry to every pipeline: records of effectively-once ones wait for the next
    /// commit, those of at-most-once ones are sent at once.
    fn process(&mut self, entry: &LogEntry) {
        self.apply(entry, false);
    }

    /// Applies an entry the input log does not hold to the at-most-once pipelines only.
    fn process_volatile(&mut self, entry: &LogEntry) {
        self.apply(entry, true);
    }

    fn apply(&mut self, entry: &LogEntry, volatile_only: bool) {
        if let Some(r) = &mut self.recorder {
            r.entry(entry);
        }
        let lanes = if volatile_only {
            core::Lanes::AtMostOnce
        } else {
            core::Lanes::All
        };
        // The live loop applies messages, ticks and tables, which cannot fail.
        let produced = self.core.apply_to(entry, lanes).unwrap_or_else(|e| {
            tracing::error!(error = %e, "an entry could not be applied");
            Produced::default()
        });
        for (r, durable) in produced.records {
            let wire = r.to_wire();
            if durable {
                self.uncommitted.record_bytes += wire.topic.len() + wire.payload.len();
                self.uncommitted.records.push(wire);
            } else if self.volatile.try_send(wire).is_err() {
                self.metrics.volatile_dropped.fetch_add(1, Relaxed);
            }
        }
        if !volatile_only {
            self.dirty = true;
        }
        self.steps.publish_quarantines(self.core);
    }

    /// While the disk is full: a commit of the deletes of what the upstream broker acknowledged,
    /// and nothing else. It needs little room (the store released its reserve) and makes more,
    /// until the store says there is room again; the input and records taken in before the disk
    /// filled wait in memory, unacknowledged, for the commit after that.
    fn commit_deletes(&mut self, store: &Store) {
        self.last_commit = Some(instant());
        let deletes = self.acked.take();
        if deletes.is_empty() {
            return;
        }
        let only_deletes = Commit {
            delete: &deletes,
            ..Commit::default()
        };
        match store.commit(&only_deletes) {
            Ok(_) => self.acked.deleted(&deletes),
            Err(_) => {
                self.metrics.store_errors.fetch_add(1, Relaxed);
                self.acked.put_back(deletes);
            }
        }
    }

    /// Whether a checkpoint is due: `checkpoint_interval` passed since the last one, or the input
    /// logged since reached [`CHECKPOINT_AFTER_INPUT_BYTES`].
    fn checkpoint_due(&self) -> bool {
        self.dirty
            && (self.last_checkpoint.elapsed() >= self.checkpoint_interval
                || self.input_bytes_since_checkpoint + self.uncommitted.entry_bytes
                    >= CHECKPOINT_AFTER_INPUT_BYTES)
    }

    /// How long until the next commit, if one is owed: something was taken in or made, the
    /// upstream broker acknowledged records, or a checkpoint is due.
    fn commit_due_in(&self) -> Option<Duration> {
        self.store.as_ref()?;
        if self.uncommitted.is_full() {
            return Some(Duration::ZERO);
        }
        let owed =
            !self.uncommitted.is_empty() || self.acked.any_waiting() || self.checkpoint_due();
        if !owed {
            return None;
        }
        Some(self.last_commit.map_or(Duration::ZERO, |t| {
            self.commit_interval.saturating_sub(t.elapsed())
        }))
    }

    /// When the next commit falls due once something is owed: `commit_interval` after the
    /// last one.
    fn next_commit_at(&self) -> Option<Instant> {
        self.store.as_ref()?;
        Some(self.last_commit? + self.commit_interval)
    }

    /// Commits if one is owed and `commit_interval` has passed since the last one (or what it
    /// would hold reached [`MAX_UNCOMMITTED_BYTES`]).
    fn maybe_commit(&mut self) {
        if self.commit_due_in() == Some(Duration::ZERO) {
            self.commit(false);
        }
    }

    /// One group commit: the input taken in since the last one, the records made from it, the
    /// deletes of what the upstream broker acknowledged, and a checkpoint if one is due (or
    /// `checkpoint`). Then the messages are acknowledged and the forwarder woken. A failed
    /// commit changed nothing on disk: everything stays for the next one (and no new input is
    /// taken meanwhile, see [`Engine::live`]); the first failure is logged, then a summary every
    /// 30 s. Returns whether it committed.
    fn commit(&mut self, checkpoint: bool) -> bool {
        let Some(store) = self.store.clone() else {
            self.dirty = false;
            return true;
        };
        let with_checkpoint = (checkpoint && self.dirty) || self.checkpoint_due();
        let deletes = self.acked.take();
        if self.uncommitted.is_empty() && deletes.is_empty() && !with_checkpoint {
            return true;
        }
        let started = instant();
        let (blob, seen) = if with_checkpoint {
            let (state, mut seen) = self.core.checkpoint();
            if !self.unsaved_seen.is_empty() {
                let mut earlier = std::mem::take(&mut self.unsaved_seen);
                for (name, changes) in seen {
                    match earlier.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, e)) => e.merge(changes),
                        None => earlier.push((name, changes)),
                    }
                }
                seen = earlier;
            }
            (Some(state.encode()), seen)
        } else {
            (None, Vec::new())
        };
        let commit = Commit {
            input: &self.uncommitted.entries,
            records: &self.uncommitted.records,
            delete: &deletes,
            checkpoint: blob.as_deref().map(|b| (b, seen.as_slice())),
        };
        self.last_commit = Some(instant());
        match store.commit(&commit) {
            Ok(done) => {
                let took = started.elapsed().as_micros() as u64;
                let m = &self.metrics;
                let done_input = std::mem::take(&mut self.uncommitted);
                if !done_input.entries.is_empty() {
                    m.input_commits.fetch_add(1, Relaxed);
                    m.messages_logged.fetch_add(done_input.messages, Relaxed);
                    self.input_bytes_since_checkpoint += done_input.entry_bytes;
                }
                m.outboxed
                    .fetch_add(done_input.records.len() as u64, Relaxed);
                m.dropped_by_cap.fetch_add(done.dropped, Relaxed);
                self.acked.deleted(&deletes);
                if with_checkpoint {
                    self.dirty = false;
                    self.input_bytes_since_checkpoint = 0;
                    self.last_checkpoint = instant();
                    m.checkpoints.fetch_add(1, Relaxed);
                    m.checkpoint_micros.fetch_add(took, Relaxed);
                    m.last_checkpoint_micros.store(took, Relaxed);
                    m.last_checkpoint_ms.store(now_ms().max(0) as u64, Relaxed);
                }
                // Durable now: the source broker may forget the messages, the records may go.
                if let Some(acker) = self.acker.as_ref() {
                    acker.ack(done_input.acks);
                }
                if let Some(last) = done.last_seq {
                    self.wake.send_replace(last);
                }
                self.commit_failing.over(|waited| {
                    tracing::info!(
                        waited_ms = waited.as_millis() as u64,
                        "commits succeed again"
                    );
                });
                true
            }
            Err(e) => {
                self.metrics.store_errors.fetch_add(1, Relaxed);
                self.acked.put_back(deletes);
                if with_checkpoint {
                    self.unsaved_seen = seen;
                }
                if self.commit_failing.begin() {
                    tracing::error!(
                        error = %e,
                        "cannot commit; the input stays unacknowledged at the source broker and \
                         the records in memory, and the commit is retried (nothing is lost)"
                    );
                }
                self.commit_failing.waiting(|waited, attempts| {
                    tracing::warn!(
                        error = %e,
                        waited_s = waited.as_secs(),
                        attempts,
                        "commits still fail"
                    );
                });
                false
            }
        }
    }
}

/// Waits up to `wait` for a first message, then gathers more for up to the linger time (or
/// until `gather_until`, if later, but at most [`COMMANDS_EVERY`]), up to `batch_max_messages`
/// and [`MAX_UNCOMMITTED_BYTES`] of payload. While it gathers it sleeps until the batch would be
/// full at the rate seen so far (at least [`GATHER_STEP`]) and takes what queued meanwhile,
/// rather than waking for every message: at a low rate the engine wakes a few times per batch.
fn receive(
    live: &mut Live,
    tokio: &tokio::runtime::Handle,
    wait: Duration,
    gather_until: Option<Instant>,
) -> Vec<Incoming> {
    let mut batch = Vec::new();
    let first = tokio.block_on(async { tokio::time::timeout(wait, live.ingest.recv()).await });
    let Ok(Some(first)) = first else {
        return batch;
    };
    let mut bytes = first.payload.len();
    batch.push(first);
    let now = instant();
    let started = now;
    let mut deadline = now + live.linger;
    if let Some(until) = gather_until {
        // Not past the next look at the admin API's commands.
        deadline = deadline.max(until.min(now + COMMANDS_EVERY));
    }
    loop {
        while batch.len() < live.batch_max && bytes < MAX_UNCOMMITTED_BYTES {
            match live.ingest.try_recv() {
                Ok(m) => {
                    bytes += m.payload.len();
                    batch.push(m);
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return batch,
            }
        }
        if batch.len() >= live.batch_max || bytes >= MAX_UNCOMMITTED_BYTES {
            return batch;
        }
        let now = instant();
        if now >= deadline {
            return batch;
        }
        // Until the batch would be full at the rate seen so far, or the deadline.
        let taken = u32::try_from(batch.len()).unwrap_or(u32::MAX).max(1);
        let limit = u32::try_from(live.batch_max).unwrap_or(u32::MAX);
        let full_at = started + (now - started) * limit.min(1 << 16) / taken;
        let step = full_at.saturating_duration_since(now).max(GATHER_STEP);
        std::thread::sleep((deadline - now).min(step));
    }
}

/// A condition that may last or come back again and again (a failing store, a full disk),
/// logged at a bounded rate: [`Throttled::begin`] says whether to log its start (not if a start
/// was logged in the last [`STORE_SUMMARY_EVERY`]: a flapping condition is one episode for the
/// log), [`Throttled::waiting`] gives a summary at most every [`STORE_SUMMARY_EVERY`] while it
/// lasts, and [`Throttled::over`] says once that it ended, if its start was logged.
#[derive(Debug)]
struct Throttled {
    what: &'static str,
    /// When the current episode began.
    since: Option<Instant>,
    summary_at: Option<Instant>,
    times: u64,
    /// When a start was last logged, and whether the current episode's was.
    announced_at: Option<Instant>,
    announced: bool,
}

impl Throttled {
    fn new(what: &'static str) -> Self {
        Throttled {
            what,
            since: None,
            summary_at: None,
            times: 0,
            announced_at: None,
            announced: false,
        }
    }

    /// Marks one occurrence; true if the caller should log it: the first of an episode, unless
    /// another episode's start was logged less than [`STORE_SUMMARY_EVERY`] ago.
    fn begin(&mut self) -> bool {
        self.times += 1;
        if self.since.is_some() {
            return false;
        }
        let now = instant();
        self.since = Some(now);
        self.summary_at = Some(now);
        self.announced = self
            .announced_at
            .is_none_or(|t| now - t >= STORE_SUMMARY_EVERY);
        if self.announced {
            self.announced_at = Some(now);
        }
        self.announced
    }

    /// Marks the condition as lasting (beginning it if needed); calls `summary(waited, times)`
    /// at most every [`STORE_SUMMARY_EVERY`].
    fn waiting(&mut self, summary: impl FnOnce(Duration, u64)) {
        if self.since.is_none() {
            self.begin();
            return;
        }
        let now = instant();
        if self
            .summary_at
            .is_some_and(|t| now - t >= STORE_SUMMARY_EVERY)
        {
            self.summary_at = Some(now);
            summary(now - self.since.unwrap_or(now), self.times);
        }
    }

    /// The condition ended: calls `done(how long it lasted)` if its start was logged.
    fn over(&mut self, done: impl FnOnce(Duration)) {
        if let Some(since) = self.since.take()
            && self.announced
        {
            done(since.elapsed());
        }
        tracing::trace!(what = self.what, times = self.times, "condition over");
        self.summary_at = None;
        self.times = 0;
        self.announced = false;
    }
}
