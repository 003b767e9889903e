//! `weir demo`: the whole mission on one machine, with nothing to install.
//!
//! ```text
//!  farm simulator ─► sensors' broker ─► weir (configs/demo.toml, ─► link ─► cloud broker ─► cloud subscriber
//!  (sensor frames,    (embedded, or     example plugins, store,   (down      (embedded, or    (records by id,
//!   QoS 1)             --sensor-broker)  outbox, admin API)        and up)    --cloud-broker)  repeats counted)
//! ```
//!
//! Everything runs in this process: two small MQTT brokers ([`broker`]), the uplink that goes
//! down and comes back on a schedule ([`link`]), the sensors ([`sensors`], the farm simulator's
//! readings as binary frames, [`frame`]), weir itself ([`crate::engine::run_with`] on a thread
//! of its own, exactly as `weir run` runs it, recording its input), and the cloud's subscriber
//! ([`cloud`]). A live view ([`view`]) shows it every second. Halfway through, the counter
//! operator is hot-swapped from version 1 to version 2 through the admin API, as `weir plugin
//! swap` does.
//!
//! The end: the sensors stop, the link comes back, and the demo waits for weir to finish its work
//! (every message taken in, every window fired, the outbox empty) before stopping it. Then the
//! check ([`check`]): every record that reached the cloud arrived once after dropping repeats by
//! id, and the records are exactly those `weir replay --keep-open` computes from the input weir
//! recorded (swap included).

// The demo runs brokers, a simulator and weir in real time: an edge.
#![allow(clippy::disallowed_methods)]

pub mod broker;
pub mod check;
pub mod cloud;
pub mod frame;
pub mod link;
pub mod sensors;
pub mod view;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;
use tokio::sync::watch;

use crate::engine::{self, Metrics, RunOptions};
use crate::sim::{Farm, FarmOptions, Kind};

/// The config the demo runs, with `{placeholders}` it fills in.
const CONFIG: &str = include_str!("../../../configs/demo.toml");
/// Every plugin the demo's config names, and the swap's second version.
pub const PLUGINS: [&str; 7] = [
    "sensor_frame_decoder.wasm",
    "range_filter.wasm",
    "unit_converter.wasm",
    "counter_v1.wasm",
    "counter_v2.wasm",
    "frost_detector.wasm",
    "p95_aggregator.wasm",
];
/// The step swapped midway, and its second version.
const SWAP_PIPELINE: &str = "farm";
const SWAP_STEP: &str = "transform[3]";
const SWAP_TO: &str = "counter_v2.wasm";
/// How long weir may take to start (compiling the plugins the first time included).
const START_WITHIN: Duration = Duration::from_secs(120);
/// How long the end may wait for weir to finish its work.
const SETTLE_WITHIN: Duration = Duration::from_secs(120);

/// What the demo does; see `weir demo --help`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub duration: Duration,
    /// Sensor messages per second, all sensors together.
    pub rate: f64,
    pub sensors: usize,
    pub seed: u64,
    /// Where the config, weir's store and the recorded input go (must be new or empty); a
    /// temporary directory, removed at the end, if not given.
    pub data_dir: Option<PathBuf>,
    /// The compiled example plugins.
    pub plugins: PathBuf,
    /// External brokers (host:port) instead of the embedded ones.
    pub sensor_broker: Option<String>,
    pub cloud_broker: Option<String>,
    /// The link goes down this often, for `outage` each time (the first outage ends at
    /// `outage_every`).
    pub outage_every: Duration,
    pub outage: Duration,
}

/// What happened, and the end check's result.
#[derive(Debug)]
pub struct Outcome {
    /// Sensor messages published (acknowledged by the broker), and those weir took in.
    pub published: u64,
    pub acked_by_broker: u64,
    pub messages_in: u64,
    pub deduped: u64,
    pub outages: u64,
    /// The swap's report, or why it was refused; `None` when the demo was interrupted before
    /// half time.
    pub swap: Option<Result<String, String>>,
    /// Distinct window results delivered, by the counter's version that computed them, and
    /// alerts delivered.
    pub windows_by_version: [usize; 2],
    pub alerts: usize,
    /// weir finished its work before it was stopped (else the check may miss records that were
    /// still on their way).
    pub settled: bool,
    pub comparison: check::Comparison,
    pub peak_rss_mib: f64,
    /// Where the config, the store and the recording are (kept when `--data-dir` named it).
    pub dir: PathBuf,
    pub kept: bool,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.comparison.passed() && !matches!(self.swap, Some(Err(_))) && self.settled
    }
}

/// Runs the demo until `duration` passes or `stop` turns true, then checks.
pub fn run(options: DemoOptions, stop: watch::Receiver<bool>) -> anyhow::Result<Outcome> {
    for name in PLUGINS {
        let path = options.plugins.join(name);
        anyhow::ensure!(
            path.is_file(),
            "{} is missing: build the example plugins first, in the repository: \
             `bash plugins/build rust` (or name their directory with --plugins)",
            path.display()
        );
    }
    let plugins = options
        .plugins
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", options.plugins.display()))?;
    let (dir, _remove) = demo_dir(options.data_dir.as_deref())?;
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("weir-demo")
        .build()?;
    let _guard = io.enter();

    // The brokers and the link.
    let (sensors_addr, _sensors_broker) =
        io.block_on(broker_at(options.sensor_broker.as_deref()))?;
    let (cloud_addr, _cloud_broker) = io.block_on(broker_at(options.cloud_broker.as_deref()))?;
    let link = io.block_on(link::Link::start(cloud_addr))?;

    // The farm, its sensor table, and weir's config.
    let farm = Farm::new(FarmOptions {
        sensors: options.sensors,
        rate: options.rate,
        seed: options.seed,
        start_ms: engine::now_ms(),
        ..FarmOptions::default()
    });
    let table = dir.join("sensors.csv");
    std::fs::write(&table, frame::sensor_table(&farm.sensor_table()))?;
    let recording = dir.join("input.jsonl");
    let version = |external: &Option<String>| if external.is_some() { "5" } else { "3.1.1" };
    let text = CONFIG
        .replace("{sensor_broker}", &sensors_addr.to_string())
        .replace("{source_mqtt_version}", version(&options.sensor_broker))
        .replace("{cloud_broker}", &link.addr().to_string())
        .replace("{upstream_mqtt_version}", version(&options.cloud_broker))
        .replace("{data_dir}", &toml_path(&dir.join("data")))
        .replace("{plugins}", &toml_path(&plugins))
        .replace("{sensor_table}", &toml_path(&table))
        .replace(
            "{cold_threshold_c}",
            &format!("{:.1}", cold_threshold(&farm)),
        );
    let config_path = dir.join("demo.toml");
    std::fs::write(&config_path, text)?;
    let config = crate::config::Config::from_file(&config_path).map_err(|e| {
        anyhow::anyhow!("the demo config {} is invalid:\n{e}", config_path.display())
    })?;

    let mut view = view::View::new(&format!(
        "weir demo: {} sensors, {} msg/s, for {:.0} s\n  sensors ─► broker {sensors_addr}{} ─► weir ─► link ({} down every {}) ─► cloud broker {cloud_addr}{}\n  in {}",
        options.sensors,
        options.rate,
        options.duration.as_secs_f64(),
        if options.sensor_broker.is_some() {
            ""
        } else {
            " (embedded)"
        },
        human(options.outage),
        human(options.outage_every),
        if options.cloud_broker.is_some() {
            ""
        } else {
            " (embedded)"
        },
        dir.display(),
    ));

    // The cloud's subscriber, in place before weir can send anything.
    let mut cloud = io.block_on(cloud::Cloud::subscribe(cloud_addr))?;

    // weir, on a thread of its own, as `weir run --record-input` runs it.
    let metrics = Metrics::default();
    let admin_cell = Arc::new(OnceLock::new());
    let (engine_stop_tx, engine_stop_rx) = watch::channel(false);
    let engine_thread = {
        let metrics = metrics.clone();
        let options = RunOptions {
            record_input: Some(recording.clone()),
            admin_address: Some(admin_cell.clone()),
        };
        let config = config.clone();
        std::thread::Builder::new()
            .name("weir-demo-engine".into())
            .spawn(move || engine::run_with(config, metrics, engine_stop_rx, options))?
    };
    view.note("weir is starting (the plugins are compiled once, then cached in its store)");
    let started = Instant::now();
    // The source's SUBACK: from then on, nothing the sensors publish can miss weir.
    while metrics.source.subscribed.load(Relaxed) == 0 || admin_cell.get().is_none() {
        if engine_thread.is_finished() {
            let result = engine_thread
                .join()
                .map_err(|_| anyhow::anyhow!("weir's engine thread panicked"))?;
            return Err(result
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("weir stopped before it subscribed")));
        }
        anyhow::ensure!(
            started.elapsed() < START_WITHIN,
            "weir did not subscribe to the sensors' broker at {sensors_addr} within {} s",
            START_WITHIN.as_secs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let admin = admin_cell.get().expect("set above").to_string();
    view.note(&format!(
        "weir is running (admin API on {admin}: try `weir status --admin {admin}`)"
    ));

    // The sensors.
    let sensor_stats = Arc::new(sensors::SensorStats::default());
    let (sensors_stop_tx, sensors_stop_rx) = watch::channel(false);
    let sensors_task = io.spawn(sensors::publish(
        farm,
        sensors_addr,
        sensor_stats.clone(),
        sensors_stop_rx,
    ));

    // The show.
    let mut swap: Option<Result<String, String>> = None;
    let swap_at = options.duration / 2;
    let mut rate = Rate::default();
    let t0 = Instant::now();
    let mut next_frame = t0;
    while t0.elapsed() < options.duration && !*stop.borrow() {
        let t = t0.elapsed();
        let phase = t.as_millis() % options.outage_every.as_millis().max(1);
        link.set_up(phase < (options.outage_every - options.outage).as_millis());
        if swap.is_none() && t >= swap_at {
            let result = swap_counter(&admin, &plugins);
            view.note(&format!(
                "{:>4.0} s  hot swap of {SWAP_PIPELINE} {SWAP_STEP}: {}",
                t.as_secs_f64(),
                match &result {
                    Ok(r) => r.clone(),
                    Err(e) => format!("REFUSED: {e}"),
                }
            ));
            swap = Some(result);
        }
        if Instant::now() >= next_frame {
            next_frame += Duration::from_secs(1);
            let status = status(&admin);
            view.draw(&snapshot(
                &Parts {
                    elapsed: t,
                    duration: options.duration,
                    phase: "running",
                    metrics: &metrics,
                    sensors: &sensor_stats,
                    link: &link,
                    cloud: &cloud,
                    swap: swap.as_ref(),
                },
                &status,
                rate.per_s(metrics.engine.messages_in.load(Relaxed)),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if *stop.borrow() {
        view.note("interrupted: finishing up and checking what was delivered so far");
    }

    // The end: the sensors stop, the link comes back, weir finishes its work, weir stops.
    let _ = sensors_stop_tx.send(true);
    let acked = io
        .block_on(sensors_task)
        .context("the sensors' task")?
        .context("the sensors")?;
    link.set_up(true);
    view.note("the sensors stopped and the link is up: waiting for weir to fire its last windows and empty its outbox");
    let settle_start = Instant::now();
    let settled = loop {
        let t = t0.elapsed();
        let status = status(&admin);
        if Instant::now() >= next_frame {
            next_frame += Duration::from_secs(1);
            view.draw(&snapshot(
                &Parts {
                    elapsed: t,
                    duration: options.duration,
                    phase: "draining",
                    metrics: &metrics,
                    sensors: &sensor_stats,
                    link: &link,
                    cloud: &cloud,
                    swap: swap.as_ref(),
                },
                &status,
                rate.per_s(metrics.engine.messages_in.load(Relaxed)),
            ));
        }
        if finished(&status, acked, &metrics) {
            break true;
        }
        if settle_start.elapsed() > SETTLE_WITHIN {
            view.note(&format!(
                "weir did not finish within {} s (open windows or records in the outbox): stopping it anyway",
                SETTLE_WITHIN.as_secs()
            ));
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = engine_stop_tx.send(true);
    engine_thread
        .join()
        .map_err(|_| anyhow::anyhow!("weir's engine thread panicked"))?
        .context("weir")?;
    io.block_on(cloud.sync(Duration::from_secs(30)))?;

    // The check.
    view.note("weir stopped; replaying its recorded input to check what the cloud received");
    let want = check::replay(&config, &recording)?;
    let received = cloud.received();
    let comparison = check::compare(&received, &want);
    Ok(Outcome {
        published: sensor_stats.published.load(Relaxed),
        acked_by_broker: acked,
        messages_in: metrics.engine.messages_in.load(Relaxed),
        deduped: metrics.engine.deduped.load(Relaxed),
        outages: link.outages(),
        swap,
        windows_by_version: received.by_version,
        alerts: received.alerts,
        settled,
        comparison,
        peak_rss_mib: peak_rss_mib(),
        kept: options.data_dir.is_some(),
        dir,
    })
}

/// The demo's directory: `data_dir` (created; it must be empty, so weir starts from an empty
/// store) or a new temporary one, removed when the guard drops.
fn demo_dir(data_dir: Option<&Path>) -> anyhow::Result<(PathBuf, Option<RemoveOnDrop>)> {
    match data_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            let empty = std::fs::read_dir(d)
                .with_context(|| format!("cannot read {}", d.display()))?
                .next()
                .is_none();
            anyhow::ensure!(
                empty,
                "{} is not empty: the demo starts from an empty store; name a new or empty \
                 directory with --data-dir",
                d.display()
            );
            Ok((d.canonicalize()?, None))
        }
        None => {
            let d = std::env::temp_dir().join(format!("weir-demo-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
            Ok((d.clone(), Some(RemoveOnDrop(d))))
        }
    }
}

/// An external broker's address, or an embedded broker started on a free port.
async fn broker_at(external: Option<&str>) -> anyhow::Result<(SocketAddr, Option<broker::Broker>)> {
    match external {
        Some(address) => {
            let addr = tokio::net::lookup_host(address)
                .await
                .with_context(|| format!("cannot resolve {address}"))?
                .next()
                .with_context(|| format!("{address} resolves to nothing"))?;
            Ok((addr, None))
        }
        None => {
            let b = broker::Broker::start()
                .await
                .context("cannot start an embedded broker")?;
            Ok((b.addr(), Some(b)))
        }
    }
}

/// The temperature (°C) below which the coldest tenth of the farm's sensors read now (a day's
/// cycle moves every sensor's temperature by about 12 °C): the cold pipeline's threshold.
fn cold_threshold(farm: &Farm) -> f64 {
    let n = farm.options().sensors.clamp(10, 5000);
    let mut temps: Vec<f64> = farm
        .clone()
        .filter(|m| m.kind == Kind::Normal)
        .take(n)
        .filter_map(|m| serde_json::from_slice::<Value>(&m.payload).ok()?["temp"].as_f64())
        .filter(|t| *t <= 85.0)
        .collect();
    temps.sort_by(f64::total_cmp);
    temps.get(temps.len() / 10).copied().unwrap_or(0.0)
}

/// Swaps the counter for its version 2 through the admin API, as `weir plugin swap` does.
fn swap_counter(admin: &str, plugins: &Path) -> Result<String, String> {
    let path = plugins.join(SWAP_TO);
    let body = serde_json::json!({ "pipeline": SWAP_PIPELINE, "step": SWAP_STEP, "path": path });
    match crate::admin::client::post(admin, "/plugins/swap", None, &body) {
        Ok(r) if r.status == 200 => {
            let report = r.json().unwrap_or_default();
            Ok(format!(
                "counter v1 → v2 ({SWAP_TO}), prepared in {:.1} ms, data path paused {:.0} µs, keyed state carried over",
                report["prepare_ms"].as_f64().unwrap_or(f64::NAN),
                report["pause_us"].as_f64().unwrap_or(f64::NAN),
            ))
        }
        Ok(r) => Err(format!("HTTP {}: {}", r.status, r.body.trim())),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// weir's `/status`, or `Null` when it does not answer.
fn status(admin: &str) -> Value {
    crate::admin::client::get(admin, "/status")
        .ok()
        .and_then(|r| r.json().ok())
        .unwrap_or(Value::Null)
}

/// Every pipeline's open windows, from a status.
fn open_windows(status: &Value) -> Option<u64> {
    status["pipelines"]
        .as_array()?
        .iter()
        .map(|p| p["open_windows"].as_u64())
        .sum()
}

/// weir has nothing left to do: it took in every message the broker acknowledged to the sensors,
/// every window fired and closed (so no clock tick can emit more), the outbox is empty and
/// nothing is in flight upstream.
fn finished(status: &Value, acked: u64, metrics: &Metrics) -> bool {
    metrics.engine.messages_in.load(Relaxed) >= acked
        && open_windows(status) == Some(0)
        && status["outbox"]["records"].as_u64() == Some(0)
        && metrics.forwarder.inflight.load(Relaxed) == 0
}

/// Messages per second between two calls.
#[derive(Debug, Default)]
struct Rate {
    last: Option<(Instant, u64)>,
}

impl Rate {
    fn per_s(&mut self, total: u64) -> f64 {
        let now = Instant::now();
        let rate = self.last.map_or(0.0, |(at, n)| {
            total.saturating_sub(n) as f64 / now.duration_since(at).as_secs_f64().max(1e-3)
        });
        self.last = Some((now, total));
        rate
    }
}

/// What a view snapshot is made of.
struct Parts<'a> {
    elapsed: Duration,
    duration: Duration,
    phase: &'a str,
    metrics: &'a Metrics,
    sensors: &'a sensors::SensorStats,
    link: &'a link::Link,
    cloud: &'a cloud::Cloud,
    swap: Option<&'a Result<String, String>>,
}

fn snapshot(p: &Parts<'_>, status: &Value, ingest_per_s: f64) -> view::Snapshot {
    let e = &p.metrics.engine;
    let received = p.cloud.received();
    view::Snapshot {
        elapsed: p.elapsed,
        duration: p.duration,
        phase: p.phase.to_owned(),
        published: p.sensors.published.load(Relaxed),
        ingest_per_s,
        messages_in: e.messages_in.load(Relaxed),
        deduped: e.deduped.load(Relaxed),
        windows: e.windows_fired.load(Relaxed),
        refired: e.windows_refired.load(Relaxed),
        late: e.late.load(Relaxed),
        dead_letters: e.dead_letters.load(Relaxed),
        outbox_records: status["outbox"]["records"].as_u64(),
        open_windows: open_windows(status),
        link_up: p.link.is_up(),
        uplink_connected: p.metrics.forwarder.connected.load(Relaxed),
        outages: p.link.outages(),
        delivered: received.records.len(),
        repeats: received.repeats,
        window_results: received.windows,
        alerts: received.alerts,
        by_version: received.by_version,
        swap: p.swap.map(|s| match s {
            Ok(r) => format!("done: {r}"),
            Err(e) => format!("REFUSED: {e}"),
        }),
    }
}

/// A duration as the config writes it ("5s", "1m 30s" as "90s").
fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A path as a TOML basic string's contents.
fn toml_path(path: &Path) -> String {
    path.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

/// Removes the demo's temporary directory.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The process's peak resident memory (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}
