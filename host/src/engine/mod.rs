//! `weir run`: the live gateway. Messages from the source broker are logged (one commit, one
//! fsync per batch) and only then acknowledged; the pipelines process them; a checkpoint commits
//! their state, the dedup changes, the input position and the records emitted since the last one
//! in one transaction; the forwarder drains the outbox upstream.
//!
//! Threads: the MQTT source and the forwarder are tokio tasks (their event loops never run guest
//! code); the pipelines run on one engine thread of their own, which also does the input-log and
//! checkpoint commits, so Wasm never runs on a tokio worker.
//!
//! After a crash the engine restores the last checkpoint and replays the input log after it:
//! every entry is processed exactly as before (same messages, same gateway clock), so the
//! records, and their ids, are the same ones.

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
use crate::pipeline::Record;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::store::{OnFull, OutboxRecord, Store, StoreError, StoreOptions};

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
/// interval: it bounds the input log and the records one checkpoint writes, which must fit in
/// the disk's reserve when the disk is full.
const CHECKPOINT_AFTER_INPUT_BYTES: usize = 256 * 1024;
/// While the disk is full, a checkpoint is tried at most this often.
const FULL_DISK_CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
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
        cache_dir: Some(config.storage.data_dir.join("plugin-cache")),
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
    let mut engine = Engine {
        core: &mut core,
        store: store.clone(),
        pending: Vec::new(),
        unsaved_seen: Vec::new(),
        processed_through: None,
        dirty: false,
        last_checkpoint: instant(),
        checkpoint_interval: config.storage.checkpoint_interval,
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
        checkpoint_failing: Throttled::new("checkpoints fail"),
        tables_polled: None,
        table_stats: std::collections::HashMap::new(),
        unsaved_input_bytes: 0,
        append_failing: Throttled::new("cannot write the input log"),
    };
    if let Some(store) = &store {
        engine.recover(store)?;
    }
    let (fwd_stop_tx, fwd_stop_rx) = watch::channel(false);
    let fwd_stop_rx_admin = fwd_stop_rx.clone();
    let outbox: Arc<dyn forwarder::Outbox> = match &store {
        Some(s) => s.clone(),
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
    tracing::info!(
        pipelines = config.pipelines.len(),
        source = %config.source.broker.address(),
        upstream = %upstream.broker.address(),
        data_dir = %config.storage.data_dir.display(),
        "weir is running"
    );

    let live = Live {
        ingest: ingest_rx,
        acker: source.acker(),
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
    acker: Acker,
    batch_max: usize,
    linger: Duration,
    max_message_bytes: u64,
    on_full: OnFull,
    max_outbox_bytes: u64,
    stop: Arc<AtomicBool>,
}

/// The engine thread: takes messages in, logs them, runs them through the core, checkpoints.
struct Engine<'a> {
    core: &'a mut Core,
    store: Option<Arc<Store>>,
    /// Records of effectively-once pipelines since the last checkpoint.
    pending: Vec<Record>,
    /// Seen-set changes of checkpoints that failed to commit, for the next one.
    unsaved_seen: Vec<(String, SeenChanges)>,
    /// The last input-log entry processed.
    processed_through: Option<u64>,
    /// State changed since the last checkpoint.
    dirty: bool,
    last_checkpoint: Instant,
    checkpoint_interval: Duration,
    wake: watch::Sender<u64>,
    volatile: mpsc::Sender<VolatileRecord>,
    metrics: Arc<EngineMetrics>,
    commands: std::sync::mpsc::Receiver<control::Command>,
    /// What the admin API shows of the plugin steps; quarantines are published after each batch.
    steps: Arc<control::Steps>,
    /// `--record-input`: what the engine applies, for `weir replay`.
    recorder: Option<record::InputRecorder>,
    /// When the reference tables were last looked at, and what each file's metadata was then
    /// (size, mtime, inode), by pipeline.
    tables_polled: Option<Instant>,
    table_stats: std::collections::HashMap<String, Option<(u64, i64, i64, u64)>>,
    /// Failing checkpoints, for logs at a bounded rate.
    checkpoint_failing: Throttled,
    /// Bytes appended to the input log since the last checkpoint.
    unsaved_input_bytes: usize,
    /// Failing input-log appends, for logs at a bounded rate.
    append_failing: Throttled,
}

impl Engine<'_> {
    /// Restores the last checkpoint and replays the input log after it, then checkpoints.
    fn recover(&mut self, store: &Store) -> anyhow::Result<()> {
        let started = instant();
        let mut covered = None;
        if let Some((blob, through)) = store.load_checkpoint()? {
            let checkpoint = Checkpoint::decode(&blob).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e}; weir will not start over silently. Keep a copy of the data \
                     directory and move it aside to start empty",
                    store.path().display()
                )
            })?;
            self.core
                .restore(checkpoint, |name| Ok(store.load_seen(name)?))?;
            covered = through;
        }
        self.processed_through = covered;
        let mut replayed = 0u64;
        loop {
            let entries = store.read_input(self.processed_through, 256)?;
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
                let produced = self.core.apply(&entry, true).map_err(anyhow::Error::msg)?;
                self.pending.extend(produced.durable());
                self.processed_through = Some(seq);
                self.dirty = true;
                replayed += 1;
            }
        }
        if self.dirty
            && let Err(e) = self.checkpoint()
        {
            // Nothing is lost: the state is in memory and the input log on disk still holds
            // what it replayed. The live loop commits it once the store takes writes again.
            if store_error(&e).is_some_and(|s| s.is_corrupt()) {
                return Err(e);
            }
            tracing::warn!(
                error = %format!("{e:#}"),
                "cannot commit the checkpoint after recovery; weir starts anyway and commits it \
                 once the store takes writes again (the input log still holds everything)"
            );
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
                // made goes to deleting delivered records and to the pending checkpoint.
                // Messages stay unacknowledged at the source broker.
                disk_wait.waiting(|waited, _| {
                    tracing::warn!(
                        waited_s = waited.as_secs(),
                        times_full = store.disk_full_events(),
                        outbox = store.outbox_len(),
                        "the disk is still full: no new input is taken (the source broker keeps \
                         it) until there is room; free space, or let the uplink drain the outbox"
                    );
                });
                self.maybe_checkpoint();
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
                self.maybe_checkpoint();
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            if blocked {
                blocked = false;
                self.metrics.ingest_blocked.store(0, Relaxed);
                tracing::info!("the outbox has room again: ingest resumes");
            }
            self.poll_tables(&live.stop);
            let wait = self
                .checkpoint_interval
                .min(TICK_EVERY)
                .min(Duration::from_millis(100));
            let batch = receive(&mut live, tokio, wait);
            if !batch.is_empty() {
                last_input = instant();
                self.take_in(&live, batch)?;
            } else if last_input.elapsed() >= TICK_EVERY {
                last_input = instant();
                self.tick(&live.stop)?;
            }
            self.maybe_checkpoint();
        }
        if let Err(e) = self.checkpoint() {
            if !store_error(&e).is_some_and(StoreError::is_no_space) {
                return Err(e);
            }
            tracing::warn!(
                "the last checkpoint is skipped: the disk is full; the input log holds everything \
                 since the previous one, and the next start replays it"
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
                let found = self
                    .operator(&pipeline, &step)
                    .map(|op| (op.spec().clone(), op.config().to_owned()));
                reply.send(found);
            }
            Command::Swap {
                pipeline,
                step,
                path,
                prepared,
                reply,
            } => {
                // Not if the admin API gave up waiting: it told its client nothing changed.
                if !reply.claim() {
                    return;
                }
                // The pause as the data path sees it: from here to the reply (checkpoint included).
                let started = instant();
                // A checkpoint first: the input log after it is then replayed, after a crash, by
                // the version the config names (a swap lasts until a restart).
                if let Err(e) = self.checkpoint() {
                    reply.send(Err(format!("cannot checkpoint before the swap: {e:#}")));
                    return;
                }
                let mut result = self.operator(&pipeline, &step).map(|op| op.swap(*prepared));
                if let (Ok(_), Some(r)) = (&result, &mut self.recorder) {
                    r.swap(&pipeline, &step, &path);
                }
                if let Ok(report) = &mut result {
                    report.pause = started.elapsed();
                }
                reply.send(result);
            }
            Command::Rollback {
                pipeline,
                step,
                reply,
            } => {
                if !reply.claim() {
                    return;
                }
                let started = instant();
                if let Err(e) = self.checkpoint() {
                    reply.send(Err(format!("cannot checkpoint before the rollback: {e:#}")));
                    return;
                }
                let mut result = self
                    .operator(&pipeline, &step)
                    .and_then(|op| op.rollback().map_err(|e| e.to_string()));
                if let (Ok(_), Some(r)) = (&result, &mut self.recorder) {
                    r.rollback(&pipeline, &step);
                }
                if let Ok(report) = &mut result {
                    report.pause = started.elapsed();
                }
                reply.send(result);
            }
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
        let steps: Vec<String> = p.operators().map(|op| op.spec().step.to_string()).collect();
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

    /// Logs a batch (if any of it must be), acknowledges it, and processes it.
    fn take_in(&mut self, live: &Live, batch: Vec<Incoming>) -> anyhow::Result<()> {
        self.metrics
            .messages_in
            .fetch_add(batch.len() as u64, Relaxed);
        let received_ms = now_ms();
        let mut tokens: Vec<AckToken> = Vec::with_capacity(batch.len());
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
            }
            all.push(m);
            tokens.push(incoming.ack);
        }
        let mut seq = None;
        if !logged.is_empty() {
            let entry = LogEntry::Messages {
                received_ms: Some(received_ms),
                messages: logged,
            };
            let Some(logged) = self.append(&entry, &live.stop) else {
                // Stopped while the store refused: nothing was acknowledged, so the source
                // broker sends these messages again to the next run.
                return Ok(());
            };
            seq = Some(logged);
            self.metrics
                .messages_logged
                .fetch_add(entry.messages() as u64, Relaxed);
        }
        // Logged (or not owed): now the source broker may forget them.
        live.acker.ack(tokens);
        let entry = LogEntry::Messages {
            received_ms: Some(received_ms),
            messages: all,
        };
        self.process(&entry, seq);
        Ok(())
    }

    /// Time passes with no input: logged first if an effectively-once pipeline has windows.
    /// Looks at each pipeline's reference table file (at most every [`TABLE_POLL`]): a version
    /// other than the one in use is logged whole, as an entry, and applied, so that recovery
    /// and replay switch tables at the same point. The pipelines themselves never read files.
    fn poll_tables(&mut self, stop: &AtomicBool) {
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
            let seq = if durable && self.store.is_some() {
                match self.append(&entry, stop) {
                    Some(seq) => Some(seq),
                    None => return,
                }
            } else {
                None
            };
            self.process(&entry, seq);
        }
    }

    fn tick(&mut self, stop: &AtomicBool) -> anyhow::Result<()> {
        let durable = self.store.is_some() && self.core.wants_ticks(true);
        if !durable && !self.core.wants_ticks(false) {
            return Ok(());
        }
        let entry = LogEntry::Tick { now_ms: now_ms() };
        let seq = if durable {
            match self.append(&entry, stop) {
                Some(seq) => Some(seq),
                None => return Ok(()),
            }
        } else {
            None
        };
        self.process(&entry, seq);
        Ok(())
    }

    /// Appends to the input log, retrying while the store refuses (a full disk, a failing one):
    /// nothing is acknowledged meanwhile, so nothing is lost. Between attempts it answers the
    /// admin API's commands; while the disk is full it does not even try until the store says
    /// there is room ([`Store::try_resume`]). Logs the first failure, then a summary every 30 s.
    /// `None` if `stop` turned true first: the entry was not logged.
    fn append(&mut self, entry: &LogEntry, stop: &AtomicBool) -> Option<u64> {
        let store = self.store.clone().expect("only with a store");
        let bytes = entry.encode();
        let mut delay = Duration::from_millis(50);
        let mut failing = std::mem::replace(
            &mut self.append_failing,
            Throttled::new("cannot write the input log"),
        );
        let result = loop {
            if !store.disk_full() || store.try_resume() {
                match store.append_input(&bytes) {
                    Ok(seq) => {
                        self.metrics.input_commits.fetch_add(1, Relaxed);
                        self.unsaved_input_bytes += bytes.len();
                        failing.over(|waited| {
                            tracing::info!(
                                waited_ms = waited.as_millis() as u64,
                                "the input log is written again"
                            );
                        });
                        break Some(seq);
                    }
                    Err(e) => {
                        self.metrics.store_errors.fetch_add(1, Relaxed);
                        if failing.begin() {
                            tracing::error!(
                                error = %e,
                                "cannot write the input log; the messages stay unacknowledged at \
                                 the source broker and are retried"
                            );
                        }
                    }
                }
            }
            failing.waiting(|waited, attempts| {
                tracing::warn!(
                    waited_s = waited.as_secs(),
                    attempts,
                    disk_full = store.disk_full(),
                    "still cannot write the input log; the messages stay unacknowledged at the \
                     source broker"
                );
            });
            if stop.load(SeqCst) {
                break None;
            }
            // What was processed before may still be committed: it moves input into the outbox.
            self.maybe_checkpoint();
            let wait = if store.disk_full() {
                DISK_FULL_POLL
            } else {
                let d = delay;
                delay = (delay * 2).min(Duration::from_secs(5));
                d
            };
            self.answer_commands_for(wait);
        };
        self.append_failing = failing;
        result
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

    fn process(&mut self, entry: &LogEntry, seq: Option<u64>) {
        if let Some(r) = &mut self.recorder {
            r.entry(entry);
        }
        // The live loop applies messages, ticks and tables, which cannot fail.
        let produced = self.core.apply(entry, false).unwrap_or_else(|e| {
            tracing::error!(error = %e, "an entry could not be applied");
            Produced::default()
        });
        for (r, durable) in produced.records {
            if durable {
                self.pending.push(r);
                continue;
            }
            let record = VolatileRecord {
                topic: r.topic.clone(),
                id: r.id().to_owned(),
                payload: r.body.to_string().into_bytes(),
            };
            if self.volatile.try_send(record).is_err() {
                self.metrics.volatile_dropped.fetch_add(1, Relaxed);
            }
        }
        if seq.is_some() {
            self.processed_through = seq;
        }
        self.dirty = true;
        self.steps.publish_quarantines(self.core);
    }

    /// Checkpoints if one is due: every `checkpoint_interval`, or sooner once the input logged
    /// since the last one reaches [`CHECKPOINT_AFTER_INPUT_BYTES`] (so that neither the input
    /// log nor one checkpoint's records outgrow what a full disk's reserve can take). While the
    /// disk is full, at most every [`FULL_DISK_CHECKPOINT_EVERY`]: a checkpoint is how logged
    /// input becomes outbox records and leaves the input log. A failed commit changed nothing on
    /// disk: it is reported (the first failure, then a summary every 30 s while they last), and
    /// the next one carries everything again.
    fn maybe_checkpoint(&mut self) {
        if !self.dirty {
            return;
        }
        let full = self.store.as_ref().is_some_and(|s| s.disk_full());
        let due = if full {
            self.last_checkpoint.elapsed()
                >= self.checkpoint_interval.max(FULL_DISK_CHECKPOINT_EVERY)
        } else {
            self.last_checkpoint.elapsed() >= self.checkpoint_interval
                || self.unsaved_input_bytes >= CHECKPOINT_AFTER_INPUT_BYTES
        };
        if !due {
            return;
        }
        match self.checkpoint() {
            Ok(()) => self.checkpoint_failing.over(|waited| {
                tracing::info!(
                    waited_ms = waited.as_millis() as u64,
                    "checkpoints commit again"
                );
            }),
            Err(e) => {
                if self.checkpoint_failing.begin() {
                    tracing::error!(
                        error = %format!("{e:#}"),
                        "cannot commit a checkpoint; records wait in memory and it is retried (the \
                         input log still holds everything since the last one)"
                    );
                }
                self.checkpoint_failing.waiting(|waited, attempts| {
                    tracing::warn!(
                        error = %format!("{e:#}"),
                        waited_s = waited.as_secs(),
                        attempts,
                        "checkpoints still fail; records wait in memory"
                    );
                });
            }
        }
    }

    /// Commits state, seen-set changes, the input position and pending records together.
    fn checkpoint(&mut self) -> anyhow::Result<()> {
        let Some(store) = self.store.clone() else {
            self.dirty = false;
            return Ok(());
        };
        if !self.dirty && self.pending.is_empty() {
            return Ok(());
        }
        let started = instant();
        let (checkpoint, mut seen) = self.core.checkpoint();
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
        let records: Vec<OutboxRecord> = self
            .pending
            .iter()
            .map(|r| OutboxRecord {
                topic: r.topic.clone(),
                id: r.id().to_owned(),
                payload: r.body.to_string().into_bytes(),
            })
            .collect();
        match store.commit_checkpoint(
            &checkpoint.encode(),
            self.processed_through,
            &records,
            &seen,
        ) {
            Ok(commit) => {
                self.pending.clear();
                self.dirty = false;
                self.unsaved_input_bytes = 0;
                self.last_checkpoint = instant();
                let m = &self.metrics;
                let took = started.elapsed().as_micros() as u64;
                m.checkpoints.fetch_add(1, Relaxed);
                m.checkpoint_micros.fetch_add(took, Relaxed);
                m.last_checkpoint_micros.store(took, Relaxed);
                m.last_checkpoint_ms.store(now_ms().max(0) as u64, Relaxed);
                m.outboxed.fetch_add(records.len() as u64, Relaxed);
                m.dropped_by_cap.fetch_add(commit.dropped, Relaxed);
                if let Some(last) = commit.last_seq {
                    self.wake.send_replace(last);
                }
                Ok(())
            }
            Err(e) => {
                self.unsaved_seen = seen;
                self.metrics.store_errors.fetch_add(1, Relaxed);
                self.last_checkpoint = instant();
                Err(anyhow::Error::new(e).context("committing a checkpoint"))
            }
        }
    }
}

/// Waits up to `wait` for a first message, then gathers more for up to the linger time.
fn receive(live: &mut Live, tokio: &tokio::runtime::Handle, wait: Duration) -> Vec<Incoming> {
    let mut batch = Vec::new();
    let first = tokio.block_on(async { tokio::time::timeout(wait, live.ingest.recv()).await });
    match first {
        Ok(Some(m)) => batch.push(m),
        _ => return batch,
    }
    let deadline = tokio::time::Instant::now() + live.linger;
    while batch.len() < live.batch_max {
        match live.ingest.try_recv() {
            Ok(m) => batch.push(m),
            Err(mpsc::error::TryRecvError::Empty) => {
                let next = tokio.block_on(async {
                    tokio::time::timeout_at(deadline, live.ingest.recv()).await
                });
                match next {
                    Ok(Some(m)) => batch.push(m),
                    _ => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        }
    }
    batch
}

/// The store error behind an engine error, if any.
fn store_error(error: &anyhow::Error) -> Option<&StoreError> {
    error.chain().find_map(|e| e.downcast_ref::<StoreError>())
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
