//! `weir-ops-bench`: what it costs to operate weir on a gateway, measured on `weir run` between
//! real Mosquitto brokers. It measures and prints; it asserts nothing about time.
//!
//! ```sh
//! cargo run -p weir-tests --bin weir-ops-bench [-- --quick]
//! WEIR_BENCH_BINARY=target/gateway/weir cargo run -p weir-tests --bin weir-ops-bench -- --rss-only
//! ```
//!
//! `--rss-only` runs scenario 2 alone, on the weir binary `WEIR_BENCH_BINARY` names (e.g. one
//! built without the compiler, or in the `gateway` profile) when set.
//!
//! It builds weir in release (`cargo build --release --locked -p weir --bin weir`), builds the
//! plugins (`plugins/build`), and runs `<repo>/target/release/weir run CONFIG` with
//! `WEIR_LOG=weir=info`. What it measures (`--quick`: fewer keys' readings and start-up runs;
//! the swap scenario always does 100 swaps):
//!
//! 1. **Swap pause** under load: a publisher streams 2 000 msg/s (QoS 1, 100 keys) into a
//!    windowless pipeline whose one plugin step (`counter_v1`, keyed state) is swapped 100 times,
//!    between `counter_v2` and `counter_v1`, through the admin API (`POST /plugins/swap`), one
//!    swap every 400 ms. *As weir sees it*: the swap report's `pause_us`, the time the engine
//!    thread held the data path (the commit with a checkpoint before the switch, and the switch; broken down
//!    when the report has `checkpoint_us`). *From
//!    outside*: the longest gap between upstream arrivals around each swap (from the request to
//!    100 ms after its answer), next to the same measure in windows of the same length between
//!    swaps (the baseline; records leave with each commit, `commit_interval` apart: 25 ms by
//!    default). Median and p99 (nearest rank) of each. Every message is checked to come out once,
//!    and the keyed count to continue across the swaps.
//! 2. **RSS with 5 plugins and 10 000 keys**: a pipeline with range filter ×2, unit converter,
//!    frost detector (all Wasm) and a one-minute tumbling window with count, mean and the p95
//!    aggregator plugin, keyed by sensor, its plugins compiled ahead into the plugin cache (as on
//!    a gateway after its first start). Current RSS (VmRSS) and peak (VmHWM) idle after start;
//!    then 10 000 sensors publish (3 readings each, 1 with `--quick`, within one minute so every
//!    key's window stays open): the highest VmRSS sampled every 100 ms while they are processed,
//!    VmHWM after, and VmRSS once all is processed (10 000 keys held). Idle and after, where the
//!    resident memory is, by kind of mapping (`tools/rss`).
//! 3. **Start-up time** to the first processed message, with the compiled-plugin cache
//!    (`<data_dir>/plugin-cache`) cold (empty: the four components are compiled) and warm: the
//!    5-plugin pipeline with a count window of one event (so each reading gives a record at once),
//!    a publisher sending a reading every 5 ms before weir starts; time from spawning weir to its
//!    "subscribed" log line and to the first record arriving upstream. Median of 5 runs each (3
//!    with `--quick`).
//!
//! 4. **A shadow's cost** to the live path: the swap scenario's pipeline at the same rate for
//!    three phases of 6 s: no shadow, `counter_v2` in the shadow of `counter_v1`, no shadow again
//!    (discarded). Per phase: latency from publishing to arriving upstream (median, p99) and
//!    weir's CPU per 1 000 messages; and the shadow's report (`--shadow-only`: this alone).
//!
//! The report ends with the same numbers as one JSON line (`{"weir_ops_bench": ...}`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_tests::bench::{distinct, log_time_us, now_ms, now_us, round, shell, tail};
use weir_tests::mosquitto::Mosquitto;
use weir_tests::mqtt_client::{Collector, Message, Publisher};
use weir_tests::process::{TempDir, WeirProcess, free_port};

/// Swaps in the swap-pause scenario.
const SWAPS: usize = 100;
/// One swap every...
const SWAP_EVERY: Duration = Duration::from_millis(400);
/// The publisher's rate during the swaps.
const SWAP_RATE: u64 = 2_000;
/// Keys of the RSS scenario.
const KEYS: usize = 10_000;
/// A minute boundary: every reading of the RSS scenario falls in [BASE_MS, BASE_MS + 1 min).
const BASE_MS: i64 = 1_700_000_040_000;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let started = Instant::now();
    let weir = weir_tests::process::build_weir(true);
    weir_tests::plugins();
    let mut report = serde_json::Map::new();

    println!(
        "# weir operations benchmark ({})",
        if quick { "--quick" } else { "full" }
    );
    let nproc = shell("nproc");
    let kernel = shell("uname -r");
    println!("machine: nproc {nproc}, kernel {kernel}");
    println!("weir: {}", weir.display());
    report.insert("nproc".into(), json!(nproc));
    report.insert("kernel".into(), json!(kernel));
    report.insert("quick".into(), json!(quick));

    if std::env::args().any(|a| a == "--rss-only") {
        // The weir to measure: WEIR_BENCH_BINARY (e.g. one built without the compiler, or with
        // the gateway profile), else the release build; plugins are compiled ahead by the latter.
        let measured = std::env::var_os("WEIR_BENCH_BINARY")
            .map(PathBuf::from)
            .unwrap_or_else(|| weir.clone());
        println!("measured: {}", measured.display());
        rss(&weir, &measured, if quick { 1 } else { 3 });
        return;
    }
    if std::env::args().any(|a| a == "--shadow-only") {
        shadow_cost(&weir);
        return;
    }
    let swap = swap_pause(&weir);
    let rss = rss(&weir, &weir, if quick { 1 } else { 3 });
    let startup = startup(&weir, if quick { 3 } else { 5 });
    let shadow = shadow_cost(&weir);

    println!("\n## summary");
    let row = |what: &str, result: String| println!("| {what:<58} | {result} |");
    println!("| {:<58} | result |", "measure");
    println!("|{}|--------|", "-".repeat(60));
    row(
        &format!("swap pause as weir sees it ({SWAPS} swaps at {SWAP_RATE} msg/s)"),
        format!(
            "median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(&swap["pause_ms"]["median"]),
            ms(&swap["pause_ms"]["p99"]),
            ms(&swap["pause_ms"]["max"])
        ),
    );
    // Only when weir's swap report breaks the pause down (`checkpoint_us`).
    if swap["checkpoint_ms"]["n"] != 0 {
        row(
            "  of which the checkpoint before the switch",
            format!(
                "median {:.2} ms, p99 {:.2} ms",
                ms(&swap["checkpoint_ms"]["median"]),
                ms(&swap["checkpoint_ms"]["p99"])
            ),
        );
    }
    row(
        "longest upstream gap around a swap (baseline between swaps)",
        format!(
            "median {:.1} ms ({:.1}), p99 {:.1} ms ({:.1})",
            ms(&swap["gap_ms"]["median"]),
            ms(&swap["baseline_gap_ms"]["median"]),
            ms(&swap["gap_ms"]["p99"]),
            ms(&swap["baseline_gap_ms"]["p99"])
        ),
    );
    row(
        "messages lost / processed twice across the swaps",
        format!("{} / {}", swap["lost"], swap["duplicated"]),
    );
    row(
        "RSS idle after start, 5 plugins (VmRSS; VmHWM)",
        format!(
            "{:.1} MiB; {:.1} MiB",
            ms(&rss["idle_rss_mib"]),
            ms(&rss["idle_hwm_mib"])
        ),
    );
    row(
        &format!("RSS under load, {KEYS} keys (max VmRSS; VmHWM)"),
        format!(
            "{:.1} MiB; {:.1} MiB",
            ms(&rss["load_max_rss_mib"]),
            ms(&rss["load_hwm_mib"])
        ),
    );
    row(
        &format!("RSS with {KEYS} keys held, after the load (VmRSS)"),
        format!("{:.1} MiB", ms(&rss["after_rss_mib"])),
    );
    for cache in ["cold", "warm"] {
        row(
            &format!("start-up, plugin cache {cache}: → subscribed; → first record"),
            format!(
                "{:.0} ms; {:.0} ms",
                ms(&startup[cache]["subscribed_ms"]["median"]),
                ms(&startup[cache]["first_record_ms"]["median"])
            ),
        );
    }
    report.insert("swap".into(), swap);
    report.insert("rss".into(), rss);
    for phase in shadow["phases"].as_array().into_iter().flatten() {
        row(
            &format!(
                "latency; weir CPU per 1 000 msgs, {}",
                phase["phase"].as_str().unwrap_or("")
            ),
            format!(
                "median {:.1} ms, p99 {:.1} ms; {:.1} ms",
                ms(&phase["latency_ms"]["median"]),
                ms(&phase["latency_ms"]["p99"]),
                ms(&phase["cpu_ms_per_1000"])
            ),
        );
    }
    report.insert("startup".into(), startup);
    report.insert("shadow".into(), shadow);
    let total = started.elapsed().as_secs_f64();
    report.insert("total_s".into(), json!(round(total, 1)));
    println!("\nbenchmark took {total:.0} s");
    println!("{}", json!({ "weir_ops_bench": report }));
}

// ---------------------------------------------------------------------------------------------
// 1. Swap pause

/// One swap, as the client saw it.
struct Swap {
    /// Wall clock (µs since the epoch) when the request was sent and when the answer came.
    sent_us: u64,
    answered_us: u64,
    /// The report's figures (µs); `None` where the report lacks them.
    pause_us: Option<f64>,
    checkpoint_us: Option<f64>,
    prepare_ms: Option<f64>,
}

fn swap_pause(weir: &Path) -> Value {
    println!(
        "\n## 1. swap pause: {SWAPS} swaps (counter_v1 ↔ counter_v2), one every {} ms, while {SWAP_RATE} msg/s stream in",
        SWAP_EVERY.as_millis()
    );
    let sensors = Mosquitto::start();
    let cloud = Mosquitto::start();
    let dir = TempDir::new("weir-ops-swap");
    let admin = format!("127.0.0.1:{}", free_port());
    let v1 = weir_tests::plugin_path("counter_v1");
    let v2 = weir_tests::plugin_path("counter_v2");
    let cfg = write_config(
        dir.path(),
        &live_sections(
            dir.path(),
            sensors.port(),
            cloud.port(),
            "weir-ops-swap",
            &admin,
        ),
        &relay_pipeline(&v1),
    );
    let mut w = start(weir, &cfg);
    let up = Collector::subscribe(cloud.port(), "relay/#");

    // The publisher: SWAP_RATE msg/s from before the first swap to after the last.
    let seconds = 2.0 + SWAPS as f64 * SWAP_EVERY.as_secs_f64() + 2.0;
    let n = (SWAP_RATE as f64 * seconds) as u64;
    let port = sensors.port();
    let publisher = std::thread::spawn(move || paced(port, n, SWAP_RATE));
    std::thread::sleep(Duration::from_secs(2));

    let mut swaps = Vec::with_capacity(SWAPS);
    let mut refused = Vec::new();
    let t0 = Instant::now();
    for i in 0..SWAPS {
        let due = t0 + SWAP_EVERY * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let to = if i % 2 == 0 { &v2 } else { &v1 };
        let sent_us = now_us();
        let answer = weir::admin::client::post(
            &admin,
            "/plugins/swap",
            None,
            &json!({ "pipeline": "relay", "step": "transform[0]", "path": to }),
        );
        let answered_us = now_us();
        match answer.map(|r| (r.status, r.json())) {
            Ok((200, Ok(v))) => swaps.push(Swap {
                sent_us,
                answered_us,
                pause_us: v["pause_us"].as_f64(),
                checkpoint_us: v["checkpoint_us"].as_f64(),
                prepare_ms: v["prepare_ms"].as_f64(),
            }),
            other => refused.push(format!("{other:?}")),
        }
    }
    let (achieved, behind_ms) = publisher.join().expect("the publisher");
    let got = match collect(&up, n as usize, Duration::from_secs(60)) {
        Ok(got) => got,
        Err(got) => {
            println!(
                "STALLED: {} of {n} records arrived; weir's last lines:\n{}",
                distinct(&got),
                tail(&w.stderr(), 6)
            );
            got
        }
    };
    let metrics = weir::admin::client::get(&admin, "/metrics")
        .map(|r| r.body)
        .unwrap_or_default();
    w.terminate();

    // Exactly once: n distinct ids, and per key the count goes 1, 2, 3, ... across versions.
    let mut first_arrival: Vec<u64> = Vec::with_capacity(n as usize);
    let mut ids = HashSet::new();
    let mut counts: HashMap<String, i64> = HashMap::new();
    let (mut gaps_in_count, mut repeats_in_count) = (0u64, 0u64);
    let mut versions_seen = 0;
    let mut last_version = None;
    for m in &got {
        let Ok(r) = serde_json::from_slice::<Value>(&m.payload) else {
            continue;
        };
        let Some(id) = r["id"].as_str() else { continue };
        if !ids.insert(id.to_owned()) {
            continue;
        }
        first_arrival.push(m.received_us);
        let key = r["key"].as_str().unwrap_or_default().to_owned();
        let field = |name: &str| r["fields"][name].as_i64().or(r[name].as_i64());
        let seen = field("seen").unwrap_or(0);
        let last = counts.insert(key, seen).unwrap_or(0);
        match seen - last {
            1 => {}
            d if d <= 0 => repeats_in_count += 1,
            d => gaps_in_count += (d - 1) as u64,
        }
        let v = field("version");
        if v != last_version {
            versions_seen += 1;
            last_version = v;
        }
    }
    let lost = (n as usize).saturating_sub(ids.len()) as u64 + gaps_in_count;
    let duplicated = repeats_in_count;
    first_arrival.sort_unstable();

    let pauses: Vec<f64> = swaps
        .iter()
        .filter_map(|s| s.pause_us)
        .map(|x| x / 1e3)
        .collect();
    let checkpoints: Vec<f64> = swaps
        .iter()
        .filter_map(|s| s.checkpoint_us)
        .map(|x| x / 1e3)
        .collect();
    let prepares: Vec<f64> = swaps.iter().filter_map(|s| s.prepare_ms).collect();
    let requests: Vec<f64> = swaps
        .iter()
        .map(|s| (s.answered_us - s.sent_us) as f64 / 1e3)
        .collect();
    // The longest gap between upstream arrivals in [request, answer + 100 ms], and in a window
    // of the same length 200 ms after the answer (between this swap and the next).
    let (mut gaps, mut baseline) = (Vec::new(), Vec::new());
    for s in &swaps {
        let len = s.answered_us - s.sent_us + 100_000;
        gaps.push(longest_gap(&first_arrival, s.sent_us, s.sent_us + len) / 1e3);
        let b = s.answered_us + 200_000;
        baseline.push(longest_gap(&first_arrival, b, b + len) / 1e3);
    }
    let swap_metrics = metrics
        .lines()
        .filter(|l| l.starts_with("weir_swap"))
        .collect::<Vec<_>>()
        .join("; ");

    println!(
        "{} swaps done, {} refused{}; publisher {achieved:.0} msg/s (target {SWAP_RATE}; at most {behind_ms:.0} ms behind schedule)",
        swaps.len(),
        refused.len(),
        refused
            .first()
            .map(|r| format!(" (first: {r})"))
            .unwrap_or_default()
    );
    println!(
        "{n} messages published, {} distinct records upstream ({} messages incl. repeats); lost {lost}, processed twice {duplicated}; {versions_seen} version runs upstream",
        ids.len(),
        got.len()
    );
    print_stats("pause as weir sees it (engine thread held)", &pauses, "ms");
    if !checkpoints.is_empty() {
        print_stats(
            "  of which the checkpoint before the switch",
            &checkpoints,
            "ms",
        );
    }
    print_stats(
        "preparing the new version (off the data path)",
        &prepares,
        "ms",
    );
    print_stats("swap request, sent → answered (client)", &requests, "ms");
    print_stats("longest upstream gap around a swap", &gaps, "ms");
    print_stats(
        "longest upstream gap between swaps (baseline)",
        &baseline,
        "ms",
    );
    if !swap_metrics.is_empty() {
        println!("weir's metrics: {swap_metrics}");
    }
    json!({
        "swaps": swaps.len(),
        "refused": refused.len(),
        "rate_msgs_per_s": SWAP_RATE,
        "achieved_rate": round(achieved, 0),
        "messages": n,
        "records": ids.len(),
        "lost": lost,
        "duplicated": duplicated,
        "pause_ms": stats(&pauses),
        "checkpoint_ms": stats(&checkpoints),
        "prepare_ms": stats(&prepares),
        "request_ms": stats(&requests),
        "gap_ms": stats(&gaps),
        "baseline_gap_ms": stats(&baseline),
    })
}

/// The pipeline of the swap and shadow scenarios: JSON readings through one plugin step.
fn relay_pipeline(plugin: &Path) -> String {
    format!(
        "[[pipeline]]\nname = \"relay\"\ntopics = [\"bench/#\"]\n\
         [pipeline.decode]\njson = {{ key = \"sensor_id\", time = \"ts\", time_format = \"ms\" }}\n\
         [[pipeline.transform]]\nplugin = {plugin:?}\n\
         [pipeline.output]\ntopic = \"relay/{{key}}\"\n"
    )
}

/// The longest interval between consecutive `arrivals` (sorted, µs) that overlaps `[from, to]`.
fn longest_gap(arrivals: &[u64], from: u64, to: u64) -> f64 {
    let start = arrivals.partition_point(|&a| a < from).saturating_sub(1);
    let end = arrivals.partition_point(|&a| a <= to);
    let slice = &arrivals[start..(end + 1).min(arrivals.len())];
    slice
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64)
        .fold(0.0, f64::max)
}

/// Publishes `n` readings of 100 sensors at `rate` per second from a new connection (each due at
/// i / rate after the start; when behind, at once), waits for their acks. Returns the achieved
/// rate and how far behind schedule it fell at most (ms).
fn paced(port: u16, n: u64, rate: u64) -> (f64, f64) {
    let mut publisher = Publisher::connect(port);
    let t0 = Instant::now();
    let mut behind = Duration::ZERO;
    for i in 0..n {
        let due = t0 + Duration::from_nanos(i * 1_000_000_000 / rate);
        let now = Instant::now();
        match due.checked_duration_since(now) {
            Some(wait) => std::thread::sleep(wait),
            None => behind = behind.max(now - due),
        }
        let sensor = i % 100;
        publisher.publish(
            &format!("bench/s{sensor}"),
            format!(
                "{{\"sensor_id\":\"s{sensor}\",\"ts\":{},\"seq\":{i}}}",
                now_ms()
            ),
        );
    }
    let achieved = n as f64 / t0.elapsed().as_secs_f64();
    publisher.wait_all_acked(Duration::from_secs(120));
    (achieved, behind.as_secs_f64() * 1e3)
}

// ---------------------------------------------------------------------------------------------
// 2. RSS with 5 plugins and 10 000 keys

/// The pipeline of the RSS and start-up scenarios: JSON → range filter (humidity) → range filter
/// (temp) → unit converter (°C → °F) → frost detector (passing readings through) → `window`
/// with count, mean and the p95 aggregator, keyed by sensor.
fn five_plugins(window: &str) -> String {
    let p = |name: &str| weir_tests::plugin_path(name);
    format!(
        "[[pipeline]]\nname = \"farm\"\ntopics = [\"farm/#\"]\n\
         [pipeline.decode]\njson = {{ key = \"sensor_id\", time = \"ts\", time_format = \"ms\", values = [\"temp\", \"humidity\"] }}\n\
         [[pipeline.transform]]\nplugin = {:?}\nconfig = {{ field = \"humidity\", min = 0.0, max = 100.0 }}\n\
         [[pipeline.transform]]\nplugin = {:?}\nconfig = {{ field = \"temp\", min = -40.0, max = 85.0 }}\n\
         [[pipeline.transform]]\nplugin = {:?}\nconfig = {{ field = \"temp\", from = \"c\", to = \"f\" }}\n\
         [[pipeline.transform]]\nplugin = {:?}\nconfig = {{ field = \"temp\", threshold_c = 32.0, consecutive = 3, pass_through = true }}\n\
         [pipeline.window]\n{window}\n\
         [[pipeline.aggregate]]\nfn = \"count\"\n\
         [[pipeline.aggregate]]\nfn = \"mean\"\nfield = \"temp\"\n\
         [[pipeline.aggregate]]\nplugin = {:?}\nconfig = {{ field = \"temp\" }}\n\
         [pipeline.output]\ntopic = \"farm/{{key}}\"\n",
        p("range_filter"),
        p("range_filter"),
        p("unit_converter"),
        p("frost_detector"),
        p("p95_aggregator"),
    )
}

fn rss(weir: &Path, measured: &Path, rounds: usize) -> Value {
    let n = KEYS * rounds;
    println!(
        "\n## 2. RSS: 5 plugins (range filter ×2, unit converter, frost detector, p95 aggregator), {KEYS} keys, {n} readings"
    );
    let sensors = Mosquitto::start();
    let cloud = Mosquitto::start();
    let dir = TempDir::new("weir-ops-rss");
    let admin = format!("127.0.0.1:{}", free_port());
    let cfg = write_config(
        dir.path(),
        &live_sections(
            dir.path(),
            sensors.port(),
            cloud.port(),
            "weir-ops-rss",
            &admin,
        ),
        &five_plugins("kind = \"tumbling\"\nsize = \"1m\"\nout_of_orderness = \"1m\""),
    );
    // A gateway's usual state: its plugins compiled already (ahead, or on an earlier start).
    let compiled = std::process::Command::new(weir)
        .args(["plugin", "compile", "--out"])
        .arg(dir.path().join("data").join("plugin-cache"))
        .args(
            [
                "range_filter",
                "unit_converter",
                "frost_detector",
                "p95_aggregator",
            ]
            .map(weir_tests::plugin_path),
        )
        .output()
        .expect("weir plugin compile runs");
    assert!(compiled.status.success(), "{compiled:?}");
    let mut w = start(measured, &cfg);
    std::thread::sleep(Duration::from_secs(2));
    let idle = memory(w.pid());
    let idle_breakdown = breakdown(w.pid());

    // Every sensor's readings fall in one minute: 10 000 windows stay open.
    let readings: Vec<(String, Vec<u8>)> = (0..rounds)
        .flat_map(|round| {
            (0..KEYS).map(move |k| {
                let ts = BASE_MS + round as i64 * 15_000 + (k % 1000) as i64;
                (
                    format!("farm/s{k:05}"),
                    format!(
                        "{{\"sensor_id\":\"s{k:05}\",\"ts\":{ts},\"temp\":{:.1},\"humidity\":{}}}",
                        (k % 40) as f64 - 5.0,
                        30 + k % 60
                    )
                    .into_bytes(),
                )
            })
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        let pid = w.pid();
        std::thread::spawn(move || {
            let mut max_rss = 0.0f64;
            while !done.load(Ordering::Relaxed) {
                max_rss = max_rss.max(memory(pid).rss);
                std::thread::sleep(Duration::from_millis(100));
            }
            max_rss
        })
    };
    let t = Instant::now();
    let mut publisher = Publisher::connect(sensors.port());
    for (topic, payload) in &readings {
        publisher.publish(topic, payload.clone());
    }
    publisher.wait_all_acked(Duration::from_secs(300));
    let published = t.elapsed().as_secs_f64();
    // Until weir has taken every reading in (then the calls into the last plugin are done).
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut taken = 0.0;
    while Instant::now() < deadline {
        taken = metric(&admin, "weir_messages_in_total").unwrap_or(0.0);
        if taken >= n as f64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let processed = t.elapsed().as_secs_f64();
    // A checkpoint after the last batch, then the figures.
    std::thread::sleep(Duration::from_secs(1));
    done.store(true, Ordering::Relaxed);
    let load_max_rss = sampler
        .join()
        .expect("the sampler")
        .max(memory(w.pid()).rss);
    let after = memory(w.pid());
    let after_breakdown = breakdown(w.pid());
    let keys = weir::admin::client::get(&admin, "/status")
        .ok()
        .and_then(|r| r.json().ok())
        .and_then(|s| s["pipelines"][0]["keys"].as_u64())
        .unwrap_or(0);
    let open = weir::admin::client::get(&admin, "/status")
        .ok()
        .and_then(|r| r.json().ok())
        .and_then(|s| s["pipelines"][0]["open_windows"].as_u64())
        .unwrap_or(0);
    w.terminate();

    println!(
        "idle after start: VmRSS {:.1} MiB, VmHWM {:.1} MiB\n{idle_breakdown}",
        idle.rss, idle.hwm
    );
    println!(
        "{n} readings published in {published:.1} s, all taken in after {processed:.1} s ({:.0} msg/s; weir took {taken:.0})",
        n as f64 / processed
    );
    println!(
        "under load: max VmRSS {load_max_rss:.1} MiB; VmHWM {:.1} MiB; after: VmRSS {:.1} MiB with {keys} keys and {open} open windows\n{after_breakdown}",
        after.hwm, after.rss
    );
    json!({
        "plugins": 5,
        "keys": keys,
        "open_windows": open,
        "readings": n,
        "idle_rss_mib": round(idle.rss, 1),
        "idle_hwm_mib": round(idle.hwm, 1),
        "load_max_rss_mib": round(load_max_rss, 1),
        "load_hwm_mib": round(after.hwm, 1),
        "after_rss_mib": round(after.rss, 1),
        "processed_s": round(processed, 2),
    })
}

// ---------------------------------------------------------------------------------------------
// 3. Start-up time

fn startup(weir: &Path, runs: usize) -> Value {
    println!(
        "\n## 3. start-up to the first processed message, 5 plugins, compiled-plugin cache cold and warm ({runs} runs each)"
    );
    let sensors = Mosquitto::start();
    let cloud = Mosquitto::start();
    let dir = TempDir::new("weir-ops-startup");
    let up = Collector::subscribe(cloud.port(), "farm/#");
    // A reading every 5 ms, from before weir starts to the end.
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let stop = stop.clone();
        let port = sensors.port();
        std::thread::spawn(move || {
            let mut p = Publisher::connect(port);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                p.publish_qos(
                    &format!("farm/s{}", i % 100),
                    format!(
                        "{{\"sensor_id\":\"s{}\",\"ts\":{},\"temp\":12.5,\"humidity\":40}}",
                        i % 100,
                        now_ms()
                    ),
                    0,
                );
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let cache = dir.path().join("plugin-cache");
    let mut result = serde_json::Map::new();
    // Cold first (an empty cache), then warm (the cache the cold runs filled).
    for (name, cold) in [("cold", true), ("warm", false)] {
        let (mut subscribed, mut first) = (Vec::new(), Vec::new());
        for run in 0..runs {
            if cold {
                let _ = std::fs::remove_dir_all(&cache);
            }
            // A fresh store and session each run; the cache is data_dir/plugin-cache.
            let data = dir.path().join(format!("data-{name}-{run}"));
            std::fs::create_dir_all(&data).unwrap();
            if cache.exists() {
                copy_dir(&cache, &data.join("plugin-cache"));
            }
            let client = format!("weir-ops-start-{name}-{run}");
            let sections = live_sections(&data, sensors.port(), cloud.port(), &client, "off")
                .replace(
                    &format!("data_dir = {:?}", data.join("data")),
                    &format!("data_dir = {data:?}"),
                );
            let cfg = write_config(
                &data,
                &sections,
                &five_plugins("kind = \"count\"\ncount = 1"),
            );
            let before = up.messages().len();
            let spawned_us = now_us();
            let mut w = WeirProcess::spawn_program(
                weir,
                &["run", cfg.to_str().unwrap()],
                &[("WEIR_LOG", "weir=info")],
            );
            w.wait_for_stderr("subscribed", Duration::from_secs(300));
            let got = up.wait_until(|m| m.len() > before, Duration::from_secs(60));
            let first_us = got[before].received_us;
            let stderr = w.stderr();
            let subscribed_us = stderr
                .lines()
                .find(|l| l.contains("subscribed"))
                .and_then(log_time_us)
                .unwrap_or(first_us);
            w.terminate();
            if cold {
                // The cache this run filled becomes the one warm runs start from.
                let _ = std::fs::remove_dir_all(&cache);
                copy_dir(&data.join("plugin-cache"), &cache);
            }
            let _ = std::fs::remove_dir_all(&data);
            let s = subscribed_us.saturating_sub(spawned_us) as f64 / 1e3;
            let f = first_us.saturating_sub(spawned_us) as f64 / 1e3;
            println!(
                "{name} run {}: spawn → subscribed {s:.0} ms, → first record upstream {f:.0} ms",
                run + 1
            );
            subscribed.push(s);
            first.push(f);
        }
        result.insert(
            name.into(),
            json!({
                "runs": runs,
                "subscribed_ms": stats(&subscribed),
                "first_record_ms": stats(&first),
            }),
        );
    }
    stop.store(true, Ordering::Relaxed);
    feeder.join().expect("the feeder");
    for name in ["cold", "warm"] {
        println!(
            "{name}: median spawn → subscribed {:.0} ms, → first record upstream {:.0} ms",
            ms(&result[name]["subscribed_ms"]["median"]),
            ms(&result[name]["first_record_ms"]["median"])
        );
    }
    Value::Object(result)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).into_iter().flatten().flatten() {
        let _ = std::fs::copy(entry.path(), to.join(entry.file_name()));
    }
}

// ---------------------------------------------------------------------------------------------
// Shared

/// `version`, `[source]`, `[upstream]`, `[storage]` (data under `dir/data`, checkpoints every
/// 20 ms) and `[admin]` (`listen`, or "off").
fn live_sections(dir: &Path, sensors: u16, upstream: u16, client: &str, admin: &str) -> String {
    format!(
        "version = 1\n\n\
         [source]\nbroker = \"127.0.0.1:{sensors}\"\nclient_id = \"{client}\"\n\n\
         [upstream]\nbroker = \"127.0.0.1:{upstream}\"\nclient_id = \"{client}-up\"\n\n\
         [storage]\ndata_dir = {:?}\n\n\
         [admin]\nlisten = \"{admin}\"\n\n",
        dir.join("data")
    )
}

fn write_config(dir: &Path, sections: &str, pipelines: &str) -> PathBuf {
    let path = dir.join("ops.toml");
    std::fs::write(&path, format!("{sections}{pipelines}")).unwrap();
    path
}

/// Starts `weir run CONFIG` and waits until it has subscribed.
fn start(weir: &Path, config: &Path) -> WeirProcess {
    let mut p = WeirProcess::spawn_program(
        weir,
        &["run", config.to_str().unwrap()],
        &[("WEIR_LOG", "weir=info")],
    );
    p.wait_for_stderr("subscribed", Duration::from_secs(300));
    p
}

/// A sample of weir's metrics, by its name and labels as written (`weir_messages_in_total`).
fn metric(admin: &str, name: &str) -> Option<f64> {
    let body = weir::admin::client::get(admin, "/metrics").ok()?.body;
    body.lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Where a process's resident memory is, by kind of mapping (`tools/rss`).
fn breakdown(pid: u32) -> String {
    let out = std::process::Command::new("python3")
        .arg(weir_tests::repo().join("tools/rss"))
        .arg("-v")
        .arg(pid.to_string())
        .output()
        .expect("python3 runs tools/rss");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Current (VmRSS) and peak (VmHWM) resident memory of a process, MiB.
struct Memory {
    rss: f64,
    hwm: f64,
}

fn memory(pid: u32) -> Memory {
    Memory {
        rss: weir_tests::bench::status_mib(pid, "VmRSS:"),
        hwm: weir_tests::bench::status_mib(pid, "VmHWM:"),
    }
}

/// Polls `c` until `n` distinct `weir-id`s arrived (Ok), or nothing new arrived for `stall`
/// (Err); with the messages so far.
fn collect(c: &Collector, n: usize, stall: Duration) -> Result<Vec<Message>, Vec<Message>> {
    let (mut count, mut progress) = (0, Instant::now());
    loop {
        let m = c.messages();
        if m.len() >= n && distinct(&m) >= n {
            return Ok(m);
        }
        if m.len() > count {
            (count, progress) = (m.len(), Instant::now());
        } else if progress.elapsed() > stall {
            return Err(m);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Median, p99 (nearest rank) and max of `v`, rounded to 0.01.
fn stats(v: &[f64]) -> Value {
    if v.is_empty() {
        return json!({ "n": 0 });
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = |p: f64| s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    json!({
        "n": s.len(),
        "median": round(s[s.len() / 2], 3),
        "p99": round(rank(0.99), 3),
        "max": round(s[s.len() - 1], 3),
        "min": round(s[0], 3),
    })
}

fn print_stats(what: &str, v: &[f64], unit: &str) {
    let s = stats(v);
    if s["n"] == 0 {
        println!("{what:<50} (no data)");
        return;
    }
    println!(
        "{what:<50} median {:>8.2} {unit}, p99 {:>8.2} {unit}, max {:>8.2} {unit} (n = {})",
        ms(&s["median"]),
        ms(&s["p99"]),
        ms(&s["max"]),
        s["n"]
    );
}

/// A number of the report (NaN if absent).
fn ms(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------------------------------
// 4. A shadow's cost to the live path

/// Length of each phase of the shadow scenario: without a shadow, with one, without again.
const SHADOW_PHASE: Duration = Duration::from_secs(6);

/// The swap scenario's pipeline at the same rate, in three phases: no shadow, `counter_v2` in
/// the shadow of `counter_v1`, no shadow again (discarded). Per phase: latency from publishing
/// to arriving upstream (median, p99; readings within 500 ms of a phase change left out) and
/// weir's CPU (`/proc/<pid>/stat`) per 1 000 messages; and the shadow's own report.
fn shadow_cost(weir: &Path) -> Value {
    println!(
        "\n## 4. a shadow's cost: {SWAP_RATE} msg/s through counter_v1; {} s without a shadow, {} s with counter_v2 in its shadow, {} s without again",
        SHADOW_PHASE.as_secs(),
        SHADOW_PHASE.as_secs(),
        SHADOW_PHASE.as_secs()
    );
    let sensors = Mosquitto::start();
    let cloud = Mosquitto::start();
    let dir = TempDir::new("weir-ops-shadow");
    let admin = format!("127.0.0.1:{}", free_port());
    let v1 = weir_tests::plugin_path("counter_v1");
    let v2 = weir_tests::plugin_path("counter_v2");
    let cfg = write_config(
        dir.path(),
        &live_sections(
            dir.path(),
            sensors.port(),
            cloud.port(),
            "weir-ops-shadow",
            &admin,
        ),
        &relay_pipeline(&v1),
    );
    let mut w = start(weir, &cfg);
    let up = Collector::subscribe(cloud.port(), "relay/#");
    let n = SWAP_RATE * 3 * SHADOW_PHASE.as_secs();
    let port = sensors.port();
    let t0_ms = now_ms() as i64;
    let publisher = std::thread::spawn(move || paced(port, n, SWAP_RATE));
    let change = |path: &str, body: Value| {
        let r = weir::admin::client::post(&admin, path, None, &body);
        match r {
            Ok(r) if r.status == 200 => {}
            other => println!("{path} refused: {other:?}"),
        }
    };
    let mut cpu = vec![weir_tests::bench::cpu_seconds(w.pid())];
    std::thread::sleep(SHADOW_PHASE);
    cpu.push(weir_tests::bench::cpu_seconds(w.pid()));
    let shadow_at = now_ms() as i64;
    change(
        "/plugins/swap",
        json!({ "pipeline": "relay", "step": "transform[0]", "path": v2, "shadow": true }),
    );
    std::thread::sleep(SHADOW_PHASE);
    let report = weir::admin::client::get(&admin, "/plugins/shadow")
        .ok()
        .and_then(|r| r.json().ok())
        .unwrap_or(Value::Null);
    cpu.push(weir_tests::bench::cpu_seconds(w.pid()));
    let discard_at = now_ms() as i64;
    change(
        "/plugins/discard",
        json!({ "pipeline": "relay", "step": "transform[0]" }),
    );
    let (achieved, behind_ms) = publisher.join().expect("the publisher");
    cpu.push(weir_tests::bench::cpu_seconds(w.pid()));
    let got = collect(&up, n as usize, Duration::from_secs(60)).unwrap_or_else(|got| got);
    w.terminate();

    // Latency by phase, from the reading's publish time (`ts`, ms) to its first arrival.
    let mut seen = HashSet::new();
    let mut latency: [Vec<f64>; 3] = Default::default();
    for m in &got {
        let Ok(r) = serde_json::from_slice::<Value>(&m.payload) else {
            continue;
        };
        if !r["id"]
            .as_str()
            .is_some_and(|id| seen.insert(id.to_owned()))
        {
            continue;
        }
        let Some(ts) = r["ts"].as_i64().or(r["ts_ms"].as_i64()) else {
            continue;
        };
        let near = |at: i64| (ts - at).abs() < 500;
        if near(shadow_at) || near(discard_at) || ts < t0_ms + 500 {
            continue;
        }
        let phase = if ts < shadow_at {
            0
        } else if ts < discard_at {
            1
        } else {
            2
        };
        latency[phase].push((m.received_us as f64 / 1e3 - ts as f64).max(0.0));
    }
    let names = ["without a shadow", "with a shadow", "without again"];
    println!(
        "publisher {achieved:.0} msg/s (target {SWAP_RATE}; at most {behind_ms:.0} ms behind); {} of {n} records upstream",
        seen.len()
    );
    let mut phases = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let cpu_per_1000 =
            (cpu[i + 1] - cpu[i]) / (SWAP_RATE as f64 * SHADOW_PHASE.as_secs_f64()) * 1e3;
        print_stats(&format!("latency, {name}"), &latency[i], "ms");
        println!(
            "  weir's CPU {name}: {:.1} ms per 1 000 messages",
            cpu_per_1000 * 1e3
        );
        phases.push(json!({
            "phase": name,
            "latency_ms": stats(&latency[i]),
            "cpu_ms_per_1000": round(cpu_per_1000 * 1e3, 2),
        }));
    }
    let s = &report[0];
    println!(
        "the shadow's report: live {:.1} µs per batch, candidate {:.1} µs per batch; {} batches each, {} skipped, {} differing",
        s["live"]["time_per_batch_us"].as_f64().unwrap_or(0.0),
        s["candidate"]["time_per_batch_us"].as_f64().unwrap_or(0.0),
        s["live"]["batches"],
        s["skipped_batches"],
        s["differing_batches"]
    );
    json!({ "phases": phases, "shadow_report": report })
}
