//! What the admin API can ask of a running engine: its status, its plugins, its metrics, and
//! hot swaps. Questions and swaps go to the engine thread as commands and are answered between
//! two batches; loading and preparing a new plugin version happens on the caller's thread, off
//! the data path, so the engine pauses only for the switch itself.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

use serde_json::{Value, json};

use super::Metrics;
use crate::runtime::{OperatorSpec, Prepared, Runtime, SwapReport};
use crate::store::Store;

/// How long a question may wait for the engine thread.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// A request to the engine thread.
pub(super) enum Command {
    Status(SyncSender<Value>),
    Plugins(SyncSender<Value>),
    /// The spec and config of a step, to prepare a new version with.
    Spec {
        pipeline: String,
        step: String,
        reply: SyncSender<Result<(OperatorSpec, String), String>>,
    },
    Swap {
        pipeline: String,
        step: String,
        /// The plugin file (for the input recording).
        path: std::path::PathBuf,
        prepared: Box<Prepared>,
        reply: SyncSender<Result<SwapReport, String>>,
    },
    Rollback {
        pipeline: String,
        step: String,
        reply: SyncSender<Result<SwapReport, String>>,
    },
}

/// The handle the admin API holds.
pub struct EngineControl {
    commands: SyncSender<Command>,
    metrics: Metrics,
    store: Option<Arc<Store>>,
    runtime: Runtime,
    /// Swaps and rollbacks done, and the time the engine thread spent on them (µs): from when
    /// it stopped processing to when it resumed (the checkpoint before the switch included).
    swaps: AtomicU64,
    swap_pause_micros: AtomicU64,
}

impl std::fmt::Debug for EngineControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineControl").finish_non_exhaustive()
    }
}

pub(super) fn channel() -> (SyncSender<Command>, Receiver<Command>) {
    sync_channel(16)
}

/// `transform[0]` or `farm/transform[0]` → `farm/transform[0]`.
fn full_step(pipeline: &str, step: &str) -> String {
    if step.starts_with(&format!("{pipeline}/")) {
        step.to_owned()
    } else {
        format!("{pipeline}/{step}")
    }
}

impl EngineControl {
    pub(super) fn new(
        commands: SyncSender<Command>,
        metrics: Metrics,
        store: Option<Arc<Store>>,
        runtime: Runtime,
    ) -> Self {
        EngineControl {
            commands,
            metrics,
            store,
            runtime,
            swaps: AtomicU64::new(0),
            swap_pause_micros: AtomicU64::new(0),
        }
    }

    fn count_swap(&self, report: &SwapReport) {
        self.swaps.fetch_add(1, Relaxed);
        self.swap_pause_micros.fetch_add(
            u64::try_from(report.pause.as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    fn ask<T>(&self, make: impl FnOnce(SyncSender<T>) -> Command) -> Result<T, String> {
        let (tx, rx) = sync_channel(1);
        self.commands
            .send(make(tx))
            .map_err(|_| "weir is shutting down".to_owned())?;
        rx.recv_timeout(ANSWER_WITHIN)
            .map_err(|_| "the engine did not answer in time".to_owned())
    }
}

impl crate::admin::Control for EngineControl {
    /// Pipelines, uplink, store: see [`Command::Status`].
    fn status(&self) -> Value {
        let mut status = self
            .ask(Command::Status)
            .unwrap_or_else(|e| json!({ "error": e }));
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
        status
    }

    fn plugins(&self) -> Value {
        self.ask(Command::Plugins)
            .unwrap_or_else(|e| json!({ "error": e }))
    }

    /// Loads and prepares `path` for a step (off the engine thread), then has the engine switch
    /// to it between two batches.
    fn swap(
        &self,
        pipeline: &str,
        step: &str,
        path: &Path,
        sha256: Option<&str>,
    ) -> Result<Value, String> {
        let step = full_step(pipeline, step);
        let (spec, config) = self.ask(|reply| Command::Spec {
            pipeline: pipeline.to_owned(),
            step: step.clone(),
            reply,
        })??;
        let plugin = self.runtime.load(path, sha256).map_err(|e| e.to_string())?;
        let prepared = spec.prepare(plugin, &config).map_err(|e| e.to_string())?;
        let report = self.ask(|reply| Command::Swap {
            pipeline: pipeline.to_owned(),
            step: step.clone(),
            path: path.to_owned(),
            prepared: Box::new(prepared),
            reply,
        })??;
        self.count_swap(&report);
        Ok(report_json(&step, &report))
    }

    fn rollback(&self, pipeline: &str, step: &str) -> Result<Value, String> {
        let step = full_step(pipeline, step);
        let report = self.ask(|reply| Command::Rollback {
            pipeline: pipeline.to_owned(),
            step: step.clone(),
            reply,
        })??;
        self.count_swap(&report);
        Ok(report_json(&step, &report))
    }

    /// Prometheus text: the engine's, source's and forwarder's counters, and per plugin step.
    fn metrics(&self) -> String {
        use crate::admin::Prometheus;
        let mut p = Prometheus::new();
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
        p.render()
    }
}

fn report_json(step: &str, r: &SwapReport) -> Value {
    json!({
        "step": step,
        "from_sha256": r.from_sha256,
        "to_sha256": r.to_sha256,
        "prepare_ms": r.prepare_time.as_secs_f64() * 1e3,
        "pause_us": r.pause.as_secs_f64() * 1e6,
    })
}
