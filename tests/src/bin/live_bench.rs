//! `weir-live-bench`: the end-to-end benchmark of `weir run` between real Mosquitto brokers. It
//! measures and prints; it asserts nothing about time.
//!
//! ```sh
//! cargo run --release -p weir-tests --bin weir-live-bench -- [--quick | --throughput-only N]
//! ```
//!
//! It builds weir itself (`cargo build --release --locked -p weir --bin weir`) and runs
//! `<repo>/target/release/weir run CONFIG` with `WEIR_LOG=weir=info`, reading weir's `status`
//! lines from its stderr. What it measures (`--quick`: one run instead of three, and 100 000
//! instead of 1 000 000 queued records):
//!
//! 1. **Throughput**: 100 000 real readings (the MnDOT traffic series of
//!    `../shared/data/derived/mndot-traffic-merged.jsonl`, cycled with shifted times if shorter),
//!    topic `traffic/<sensor_id>/<metric>`, QoS 1. (a) broker only: publisher → Mosquitto →
//!    subscriber on `traffic/#`; (b) publisher → sensors' Mosquitto → weir (durable; a keyed
//!    one-minute tumbling window with count/mean/min/max of `value` to `agg/{key}`, and a
//!    windowless `relay` of every reading to `relay/{key}`) → upstream Mosquitto → subscriber on
//!    `relay/#`, until all 100 000 distinct `weir-id`s arrived, and `weir tail --count 100000`
//!    on `relay/#` until it printed them all. Medians, weir's peak RSS (VmHWM) and CPU time
//!    (utime + stime).
//! 2. **Recovery after SIGKILL** with 1 000 000 records in the outbox (the upstream broker absent):
//!    time from spawn to "recovered from the store" and to "subscribed", and the database size.
//! 3. Peak RSS of weir per scenario.
//!
//! Latency, fsyncs and bytes written at steady rates, per `commit_interval`, are
//! `weir-gateway-bench`'s.
//!
//! The report ends with the same numbers as one JSON line (`{"weir_live_bench": ...}`).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_tests::bench::{cpu_seconds, distinct, now_us, round, shell, status_mib, tail, weir_id};
use weir_tests::mosquitto::Mosquitto;
use weir_tests::mqtt_client::{Collector, Message, Publisher, publish_all};
use weir_tests::process::{TempDir, WeirProcess, free_port};

/// Readings in the throughput scenario.
const THROUGHPUT_N: usize = 100_000;
/// A run in which nothing new arrives for this long is reported as stalled (and weir killed).
const STALL: Duration = Duration::from_secs(30);

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let started = Instant::now();
    let weir = build_release();
    let mut report = serde_json::Map::new();

    println!(
        "# weir live benchmark ({})",
        if quick { "--quick" } else { "full" }
    );
    let nproc = shell("nproc");
    let kernel = shell("uname -r");
    println!("machine: nproc {nproc}, kernel {kernel}");
    println!("weir: {}", weir.display());
    report.insert("nproc".into(), json!(nproc));
    report.insert("kernel".into(), json!(kernel));
    report.insert("quick".into(), json!(quick));

    let mut peaks: Vec<(String, f64)> = Vec::new();

    // `--throughput-only N`: N runs of the throughput scenario and nothing else.
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--throughput-only") {
        let runs = args.get(i + 1).and_then(|n| n.parse().ok()).unwrap_or(5);
        let result = throughput(&weir, runs, &mut peaks);
        println!("{}", json!({ "weir_live_bench": { "throughput": result } }));
        return;
    }

    report.insert(
        "throughput".into(),
        throughput(&weir, if quick { 1 } else { 3 }, &mut peaks),
    );

    report.insert(
        "recovery".into(),
        recovery(&weir, if quick { 100_000 } else { 1_000_000 }, &mut peaks),
    );

    println!("\n## 3. weir's peak RSS (VmHWM) per scenario");
    for (name, mib) in &peaks {
        println!("{name:<55} {mib:>7.1} MiB");
    }
    report.insert(
        "peak_rss_mib".into(),
        peaks
            .iter()
            .map(|(n, m)| (n.clone(), json!(round(*m, 1))))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    );
    let total = started.elapsed().as_secs_f64();
    report.insert("total_s".into(), json!(round(total, 1)));
    println!("\nbenchmark took {total:.0} s");
    println!("{}", json!({ "weir_live_bench": report }));
}

// ---------------------------------------------------------------------------------------------
// 1. Throughput

fn throughput(weir: &Path, runs: usize, peaks: &mut Vec<(String, f64)>) -> Value {
    let input = readings(THROUGHPUT_N);
    let n = THROUGHPUT_N;
    let (mut broker_s, mut weir_s, mut rss, mut cpu) = (vec![], vec![], vec![], vec![]);
    let mut tail_s = vec![];
    let mut stalls = vec![];
    println!("\n## 1. throughput: {n} real readings, QoS 1");
    for run in 1..=runs {
        // (a) publisher → Mosquitto → subscriber.
        let broker = Mosquitto::start();
        let sub = Collector::subscribe(broker.port(), "traffic/#");
        let mut publisher = Publisher::connect(broker.port());
        let t = Instant::now();
        for (topic, payload) in &input {
            publisher.publish(topic, payload.clone());
        }
        sub.wait_for(n, Duration::from_secs(600));
        let b = t.elapsed().as_secs_f64();
        drop((publisher, sub, broker));

        // (b) publisher → Mosquitto → weir → Mosquitto → subscriber.
        let sensors = Mosquitto::start();
        let cloud = Mosquitto::start();
        let dir = TempDir::new("weir-bench");
        let cfg = config(dir.path(), sensors.port(), cloud.port(), true);
        let mut w = start(weir, &cfg);
        let up = Collector::subscribe(cloud.port(), "relay/#");
        let agg = Collector::subscribe(cloud.port(), "agg/#");
        // `weir tail`, as a user watches upstream: it exits after n distinct records.
        let mut tail_p = WeirProcess::spawn_program(
            weir,
            &[
                "tail",
                "--broker",
                &format!("127.0.0.1:{}", cloud.port()),
                "--topic",
                "relay/#",
                "--count",
                &n.to_string(),
            ],
            &[("WEIR_LOG", "weir=info")],
        );
        tail_p.wait_for_stderr("subscribed", Duration::from_secs(60));
        let mut publisher = Publisher::connect(sensors.port());
        let (t, start_us) = (Instant::now(), now_us());
        for (topic, payload) in &input {
            publisher.publish(topic, payload.clone());
        }
        let published = t.elapsed().as_secs_f64();
        let outcome = collect(&up, n, STALL);
        let (r, c) = usage(w.pid());
        let last = last_status(&w.stderr()).unwrap_or_default();
        let (got, through) = match outcome {
            Ok((got, done_us)) => {
                let through = done_us.saturating_sub(start_us) as f64 / 1e6;
                let status = tail_p.wait(STALL);
                let tail_done = t.elapsed().as_secs_f64();
                let printed = tail_p.stdout().lines().count();
                assert!(
                    status.success() && printed == n,
                    "weir tail: {status}, {printed} of {n} records printed; stderr:\n{}",
                    tail_p.stderr()
                );
                println!(
                    "run {run}: weir tail printed all {printed} distinct records {:.2} s after the first publish",
                    tail_done
                );
                tail_s.push(tail_done);
                w.terminate();
                (got, through)
            }
            Err(got) => {
                let tail = tail(&w.stderr(), 6);
                w.kill9();
                println!(
                    "run {run}: STALLED through weir: {} of {n} distinct relay records after {:.0} s, nothing new for {STALL:?} (publisher done at {published:.2} s); weir's last lines:\n{tail}",
                    distinct(&got),
                    t.elapsed().as_secs_f64()
                );
                stalls.push(
                    json!({ "run": run, "received": distinct(&got), "weir_stderr_tail": tail }),
                );
                broker_s.push(b);
                continue;
            }
        };
        println!(
            "run {run}: broker only {b:.2} s ({:.0} msg/s); through weir {through:.2} s ({:.0} msg/s; \
             publisher done at {published:.2} s; {} relay messages, {} window results); \
             weir RSS {r:.1} MiB, CPU {c:.2} s; weir's last status: {last}",
            n as f64 / b,
            n as f64 / through,
            got.len(),
            agg.messages().len(),
        );
        broker_s.push(b);
        weir_s.push(through);
        rss.push(r);
        cpu.push(c);
    }
    let b = median(&broker_s);
    if weir_s.is_empty() {
        println!("every run through weir stalled; broker only: median {b:.2} s");
        return json!({ "readings": n, "runs": runs, "broker_only_s": round(b, 3), "weir_stalls": stalls });
    }
    let w = median(&weir_s);
    let (r, c) = (median(&rss), median(&cpu));
    println!(
        "median of {runs} broker-only runs, {} completed weir runs:",
        weir_s.len()
    );
    println!(
        "  broker only (publisher → Mosquitto → subscriber):      {b:>6.2} s = {:>6.0} msg/s",
        n as f64 / b
    );
    println!(
        "  through weir (input log, relay + 1-minute window, outbox): {w:>6.2} s = {:>6.0} msg/s",
        n as f64 / w
    );
    let ts = median(&tail_s);
    println!(
        "  ... and printed by weir tail (dedup by id):             {ts:>6.2} s = {:>6.0} msg/s",
        n as f64 / ts
    );
    println!(
        "  weir's rate / broker-only rate: {:.2} (weir takes {:.2}× the time)",
        b / w,
        w / b
    );
    println!(
        "  weir peak RSS {r:.1} MiB, CPU {c:.2} s ({:.1} µs per reading)",
        c / n as f64 * 1e6
    );
    peaks.push((
        "1. throughput, 100 000 readings (max of runs)".into(),
        max(&rss),
    ));
    json!({
        "readings": n,
        "runs": runs,
        "broker_only_s": round(b, 3),
        "broker_only_msgs_per_s": round(n as f64 / b, 0),
        "weir_s": round(w, 3),
        "weir_msgs_per_s": round(n as f64 / w, 0),
        "weir_tail_s": round(ts, 3),
        "weir_over_broker_rate": round(b / w, 3),
        "broker_only_runs_s": broker_s.iter().map(|x| round(*x, 3)).collect::<Vec<_>>(),
        "weir_runs_s": weir_s.iter().map(|x| round(*x, 3)).collect::<Vec<_>>(),
        "weir_peak_rss_mib": round(r, 1),
        "weir_cpu_s": round(c, 2),
        "weir_cpu_us_per_reading": round(c / n as f64 * 1e6, 1),
        "weir_stalls": stalls,
    })
}

/// `n` real readings as (topic, payload): the traffic series, cycled with times shifted by the
/// series' span so that no two payloads are alike (weir dedups by topic and payload).
fn readings(n: usize) -> Vec<(String, Vec<u8>)> {
    let path = weir_tests::repo().join("../shared/data/derived/mndot-traffic-merged.jsonl");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; the benchmark needs it", path.display()));
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON reading per line"))
        .collect();
    let ts = |v: &Value| v["ts"].as_i64().expect("ts in ms");
    let lo = lines.iter().map(ts).min().unwrap();
    let hi = lines.iter().map(ts).max().unwrap();
    let span = hi - lo + 3_600_000;
    (0..n)
        .map(|i| {
            let cycle = (i / lines.len()) as i64;
            let mut v = lines[i % lines.len()].clone();
            if cycle > 0 {
                v["ts"] = (ts(&v) + cycle * span).into();
            }
            let field = |name: &str| match &v[name] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let topic = format!("traffic/{}/{}", field("sensor_id"), field("metric"));
            (topic, v.to_string().into_bytes())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 2. Recovery

fn recovery(weir: &Path, n: usize, peaks: &mut Vec<(String, f64)>) -> Value {
    println!("\n## 2. recovery after SIGKILL with {n} records queued (upstream broker absent)");
    let sensors = Mosquitto::start();
    let dir = TempDir::new("weir-bench-recovery");
    // A port nothing listens on: everything stays in the outbox.
    let cfg = config(dir.path(), sensors.port(), free_port(), false);
    let mut w = start(weir, &cfg);
    let input: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let sensor = i % 1000;
            (
                format!("bench/s{sensor}"),
                format!(
                    "{{\"sensor_id\":\"s{sensor}\",\"ts\":{},\"value\":{}}}",
                    1_700_000_000_000i64 + i as i64,
                    i % 97
                )
                .into_bytes(),
            )
        })
        .collect();
    let t = Instant::now();
    publish_all(sensors.port(), &input, 1);
    let published = t.elapsed().as_secs_f64();
    // Until the outbox holds all n, or weir's status stops changing for STALL.
    let (mut seen_status, mut changed) = (String::new(), Instant::now());
    let mut stalled = false;
    loop {
        let status = last_status(&w.stderr()).unwrap_or_default();
        if fields(&status).get("outbox").copied().unwrap_or(0) >= n as u64 {
            break;
        }
        if status != seen_status {
            (seen_status, changed) = (status, Instant::now());
        } else if changed.elapsed() > STALL {
            stalled = true;
            println!(
                "STALLED: weir's status unchanged for {STALL:?}, before the outbox held {n}; weir's last lines:\n{}",
                tail(&w.stderr(), 6)
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let queued = t.elapsed().as_secs_f64();
    let (rss_before, cpu_before) = usage(w.pid());
    let last_before = last_status(&w.stderr()).unwrap_or_default();
    w.kill9();
    let db = dir.path().join("data/weir.redb");
    let size = std::fs::metadata(&db).map_or(0, |m| m.len());

    let t = Instant::now();
    let mut w = WeirProcess::spawn_program(
        weir,
        &["run", cfg.to_str().unwrap()],
        &[("WEIR_LOG", "weir=info")],
    );
    w.wait_for_stderr("recovered from the store", Duration::from_secs(900));
    let recovered = t.elapsed().as_secs_f64();
    w.wait_for_stderr("subscribed", Duration::from_secs(900));
    let subscribed = t.elapsed().as_secs_f64();
    let stderr = w.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("recovered from the store"))
        .unwrap_or_default()
        .to_owned();
    let f = fields(&line);
    let (rss_after, _) = usage(w.pid());
    w.terminate();

    println!(
        "published (broker acks) in {published:.1} s; all {n} in weir's outbox after {queued:.1} s ({:.0} msg/s); \
         weir RSS {rss_before:.1} MiB, CPU {cpu_before:.1} s; last status: {last_before}",
        n as f64 / queued
    );
    println!(
        "database {:.1} MiB ({:.0} bytes per record)",
        size as f64 / 1_048_576.0,
        size as f64 / n as f64
    );
    println!(
        "restart → \"recovered from the store\" {recovered:.2} s (took_ms={}, replayed_entries={}, outbox={}), → \"subscribed\" {subscribed:.2} s; RSS after recovery {rss_after:.1} MiB",
        f.get("took_ms").copied().unwrap_or(0),
        f.get("replayed_entries").copied().unwrap_or(0),
        f.get("outbox").copied().unwrap_or(0),
    );
    peaks.push((format!("4. {n} records queued, before SIGKILL"), rss_before));
    peaks.push((format!("4. restarted with {n} records queued"), rss_after));
    json!({
        "records": n,
        "stalled_before_all_queued": stalled,
        "outbox_at_kill": fields(&last_before).get("outbox"),
        "published_s": round(published, 2),
        "queued_s": round(queued, 2),
        "queued_msgs_per_s": round(n as f64 / queued, 0),
        "db_bytes": size,
        "spawn_to_recovered_s": round(recovered, 3),
        "recovery_took_ms": f.get("took_ms"),
        "replayed_entries": f.get("replayed_entries"),
        "outbox_after_restart": f.get("outbox"),
        "spawn_to_subscribed_s": round(subscribed, 3),
        "peak_rss_before_kill_mib": round(rss_before, 1),
        "peak_rss_after_restart_mib": round(rss_after, 1),
    })
}

// ---------------------------------------------------------------------------------------------
// Shared

fn build_release() -> PathBuf {
    weir_tests::process::build_weir(true)
}

/// A config for the test brokers: a windowless relay of every reading (`relay/{key}`) and, with
/// `window`, a keyed one-minute tumbling window of the traffic values (`agg/{key}`).
fn config(dir: &Path, sensors: u16, upstream: u16, window: bool) -> PathBuf {
    let mut text = format!(
        "version = 1\n\n\
         [source]\nbroker = \"127.0.0.1:{sensors}\"\nclient_id = \"weir-bench\"\n\n\
         [upstream]\nbroker = \"127.0.0.1:{upstream}\"\n\n\
         [storage]\ndata_dir = {:?}\nmax_outbox = \"4GiB\"\n\n\
         [admin]\nlisten = \"off\"\n\n\
         [[pipeline]]\nname = \"relay\"\ntopics = [\"traffic/#\", \"bench/#\"]\n\
         [pipeline.decode]\njson = {{ key = \"sensor_id\", time = \"ts\", time_format = \"ms\" }}\n\
         [pipeline.output]\ntopic = \"relay/{{key}}\"\n",
        dir.join("data")
    );
    if window {
        text.push_str(
            "\n[[pipeline]]\nname = \"agg\"\ntopics = [\"traffic/#\"]\n\
             [pipeline.decode]\njson = { key = \"sensor_id\", time = \"ts\", time_format = \"ms\", values = [\"value\"] }\n\
             [pipeline.window]\nkind = \"tumbling\"\nsize = \"1m\"\nout_of_orderness = \"1h\"\n\
             [[pipeline.aggregate]]\nfn = \"count\"\n\
             [[pipeline.aggregate]]\nfn = \"mean\"\nfield = \"value\"\n\
             [[pipeline.aggregate]]\nfn = \"min\"\nfield = \"value\"\n\
             [[pipeline.aggregate]]\nfn = \"max\"\nfield = \"value\"\n\
             [pipeline.output]\ntopic = \"agg/{key}\"\n",
        );
    }
    let path = dir.join("bench.toml");
    std::fs::write(&path, text).unwrap();
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

/// Peak RSS (VmHWM, MiB) and CPU time (utime + stime, s) of a running process.
fn usage(pid: u32) -> (f64, f64) {
    (status_mib(pid, "VmHWM:"), cpu_seconds(pid))
}

/// Polls `c` until `n` distinct `weir-id`s arrived: Ok with the messages and the arrival time
/// (µs since the epoch) of the n-th distinct one; Err with the messages so far if nothing new
/// arrived for `stall`.
fn collect(c: &Collector, n: usize, stall: Duration) -> Result<(Vec<Message>, u64), Vec<Message>> {
    let (mut count, mut progress) = (0, Instant::now());
    loop {
        let m = c.messages();
        if m.len() >= n {
            let mut ids = HashSet::new();
            for msg in &m {
                if ids.insert(weir_id(msg).unwrap_or_default()) && ids.len() == n {
                    let at = msg.received_us;
                    return Ok((m, at));
                }
            }
        }
        if m.len() > count {
            (count, progress) = (m.len(), Instant::now());
        } else if progress.elapsed() > stall {
            return Err(m);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The last status line in weir's stderr.
fn last_status(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .rev()
        .find(|l| l.contains(": status "))
        .map(str::to_owned)
}

/// The numeric `name=value` fields of a log line.
fn fields(line: &str) -> BTreeMap<String, u64> {
    line.split_whitespace()
        .filter_map(|t| {
            let (k, v) = t.split_once('=')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}
