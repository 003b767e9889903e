//! The end-to-end benchmark of `weir run` between two real Mosquitto brokers (not a test: it
//! measures and prints, it asserts nothing about time).
//!
//! ```sh
//! cargo run -p weir-tests --bin weir-live-bench [-- --quick]
//! ```
//!
//! 1. Throughput: 100 000 real readings (the MnDOT traffic series of `../shared/data`, cycled with
//!    shifted times) from one publisher, through the sensors' broker, weir (durable, QoS 1 in and
//!    out, a windowless relay and a keyed one-minute window) and the upstream broker to a
//!    subscriber; next to the broker alone (publisher → broker → subscriber) in the same run.
//! 2. Latency from a sensor's publish to the upstream arrival of its record through a pipeline
//!    without a window, at a steady 1 000 and 10 000 msg/s.
//! 3. fsyncs per second at a steady 1 000 msg/s (from weir's `commits=` status field).
//! 4. Recovery after SIGKILL with 1 000 000 records queued (the uplink absent).
//!
//! weir itself is built and run in release; peak RSS is the process's VmHWM.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use weir_tests::mosquitto::Mosquitto;
use weir_tests::mqtt_client::{Collector, Message, Publisher, publish_all};
use weir_tests::process::{TempDir, WeirProcess, free_port};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let weir = build_release();
    println!(
        "# weir live benchmark ({})",
        if quick { "quick" } else { "full" }
    );
    println!(
        "machine: {} cores, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let runs = if quick { 1 } else { 3 };
    throughput(&weir, runs);
    latency(&weir, 1_000, Duration::from_secs(10), "200ms");
    latency(&weir, 1_000, Duration::from_secs(10), "20ms");
    latency(&weir, 10_000, Duration::from_secs(5), "200ms");
    recovery(&weir, if quick { 100_000 } else { 1_000_000 });
}

fn build_release() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "weir",
            "--bin",
            "weir",
        ])
        .current_dir(weir_tests::repo())
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building weir failed");
    weir_tests::repo().join("target/release/weir")
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `n` real readings: the traffic series, cycled with times shifted so no two are alike.
fn readings(n: usize) -> Vec<(String, Vec<u8>)> {
    let path = weir_tests::repo().join("../shared/data/derived/mndot-traffic-merged.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; the benchmark needs ../shared/data",
            path.display()
        )
    });
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let span =
        lines.last().unwrap()["ts"].as_i64().unwrap() - lines[0]["ts"].as_i64().unwrap() + 300_000;
    (0..n)
        .map(|i| {
            let mut v = lines[i % lines.len()].clone();
            let cycle = (i / lines.len()) as i64;
            v["ts"] = (v["ts"].as_i64().unwrap() + cycle * span).into();
            let topic = format!(
                "traffic/{}/{}",
                v["sensor_id"].as_str().unwrap(),
                v["metric"].as_str().unwrap()
            );
            (topic, v.to_string().into_bytes())
        })
        .collect()
}

/// A config for the test brokers: a windowless relay of every reading, and (optionally) a keyed
/// one-minute window of the traffic values.
fn config(dir: &Path, sensors: u16, upstream: u16, checkpoint: &str, window: bool) -> PathBuf {
    let mut text = format!(
        "version = 1\n[source]\nbroker = \"127.0.0.1:{sensors}\"\nclient_id = \"weir-bench\"\n\
         [upstream]\nbroker = \"127.0.0.1:{upstream}\"\nmax_inflight = 10000\n\
         [storage]\ndata_dir = {:?}\ncheckpoint_interval = \"{checkpoint}\"\nmax_outbox = \"4GiB\"\n\
         [admin]\nlisten = \"off\"\n\
         [[pipeline]]\nname = \"relay\"\ntopics = [\"traffic/#\", \"bench/#\"]\n\
         [pipeline.decode]\njson = {{ key = \"sensor_id\", time = \"ts\", time_format = \"ms\" }}\n\
         [pipeline.output]\ntopic = \"relay/{{key}}\"\n",
        dir.join("data")
    );
    if window {
        text.push_str(
            "[[pipeline]]\nname = \"agg\"\ntopics = [\"traffic/#\"]\n\
             [pipeline.decode]\njson = { key = \"sensor_id\", time = \"ts\", time_format = \"ms\", values = [\"value\"] }\n\
             [pipeline.window]\nkind = \"tumbling\"\nsize = \"1m\"\nout_of_orderness = \"1h\"\n\
             [[pipeline.aggregate]]\nfn = \"count\"\n[[pipeline.aggregate]]\nfn = \"mean\"\nfield = \"value\"\n\
             [[pipeline.aggregate]]\nfn = \"min\"\nfield = \"value\"\n[[pipeline.aggregate]]\nfn = \"max\"\nfield = \"value\"\n\
             [pipeline.output]\ntopic = \"agg/{key}\"\n",
        );
    }
    let path = dir.join("bench.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start(weir: &Path, config: &Path) -> WeirProcess {
    let mut p = WeirProcess::spawn_program(
        weir,
        &["run", config.to_str().unwrap()],
        &[("WEIR_LOG", "weir=info")],
    );
    p.wait_for_stderr("subscribed", Duration::from_secs(300));
    p
}

/// Peak RSS (MiB) and CPU seconds of a running process.
fn usage(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (hwm_kb / 1024.0, (ticks(11) + ticks(12)) / 100.0)
}

fn distinct(messages: &[Message]) -> usize {
    let mut ids: Vec<&str> = messages
        .iter()
        .filter_map(|m| {
            m.user_properties
                .iter()
                .find(|(k, _)| k == "weir-id")
                .map(|(_, v)| v.as_str())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.len()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn throughput(weir: &Path, runs: usize) {
    const N: usize = 100_000;
    let input = readings(N);
    let (mut broker_only, mut through_weir, mut rss, mut cpu) = (vec![], vec![], vec![], vec![]);
    let cpu_median = |cpu: &Vec<f64>| median(cpu.clone());
    for _ in 0..runs {
        let broker = Mosquitto::start();
        let sub = Collector::subscribe(broker.port(), "traffic/#");
        let t = Instant::now();
        publish_all(broker.port(), &input, 1);
        sub.wait_for(N, Duration::from_secs(600));
        broker_only.push(t.elapsed().as_secs_f64());

        let sensors = Mosquitto::start();
        let cloud = Mosquitto::start();
        let dir = TempDir::new("weir-bench");
        let cfg = config(dir.path(), sensors.port(), cloud.port(), "200ms", true);
        let mut w = start(weir, &cfg);
        let up = Collector::subscribe(cloud.port(), "relay/#");
        let t = Instant::now();
        publish_all(sensors.port(), &input, 1);
        up.wait_until(
            |m| m.len() >= N && distinct(m) >= N,
            Duration::from_secs(900),
        );
        through_weir.push(t.elapsed().as_secs_f64());
        let (r, c) = usage(w.pid());
        rss.push(r);
        cpu.push(c);
        w.terminate();
    }
    let (b, w) = (median(broker_only), median(through_weir));
    println!("\n## 1. throughput: {N} real readings, QoS 1, median of {runs}");
    println!(
        "broker only (publisher → Mosquitto → subscriber): {b:.2} s = {:.0} msg/s",
        N as f64 / b
    );
    println!(
        "through weir (→ Mosquitto → weir: input log, relay + 1-minute window, checkpoints, outbox → Mosquitto → subscriber): {w:.2} s = {:.0} msg/s",
        N as f64 / w
    );
    println!("weir / broker-only time: {:.2}×", w / b);
    println!(
        "weir peak RSS {:.1} MiB, CPU {:.2} s ({:.1} µs per reading)",
        median(rss),
        cpu_median(&cpu),
        cpu_median(&cpu) / N as f64 * 1e6
    );
}

fn latency(weir: &Path, rate: u64, duration: Duration, checkpoint: &str) {
    let sensors = Mosquitto::start();
    let cloud = Mosquitto::start();
    let dir = TempDir::new("weir-bench-latency");
    let cfg = config(dir.path(), sensors.port(), cloud.port(), checkpoint, false);
    let mut w = start(weir, &cfg);
    let up = Collector::subscribe(cloud.port(), "relay/#");
    let mut publisher = Publisher::connect(sensors.port());
    let n = rate * duration.as_secs();
    let t0 = Instant::now();
    let commits_before = status_field(&w, "commits");
    let checkpoints_before = status_field(&w, "checkpoints");
    for i in 0..n {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let payload = format!(
            "{{\"sensor_id\": \"s{}\", \"ts\": {}, \"sent_us\": {}}}",
            i % 100,
            1_700_000_000_000 + i as i64,
            now_us()
        );
        publisher.publish(&format!("bench/s{}", i % 100), payload);
    }
    let achieved = n as f64 / t0.elapsed().as_secs_f64();
    let got = up.wait_until(|m| distinct(m) >= n as usize, Duration::from_secs(300));
    let elapsed = t0.elapsed().as_secs_f64();
    // weir's status lines come once a second: the commits over the steady part.
    std::thread::sleep(Duration::from_millis(1_500));
    let commits = status_field(&w, "commits") - commits_before;
    let checkpoints = status_field(&w, "checkpoints") - checkpoints_before;
    let mut lat: Vec<f64> = got
        .iter()
        .filter_map(|m| {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
            let sent = v["fields"]["sent_us"].as_u64().or(v["sent_us"].as_u64())?;
            Some(m.received_us.saturating_sub(sent) as f64 / 1000.0)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "\n## 2. latency, publish → upstream arrival, no window, {rate} msg/s for {}s (checkpoint_interval {checkpoint})",
        duration.as_secs()
    );
    println!(
        "achieved rate {achieved:.0} msg/s; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} records)",
        q(0.5),
        q(0.99),
        q(1.0),
        lat.len()
    );
    println!(
        "store commits {commits} in {elapsed:.1} s = {:.1}/s ({:.1} fdatasyncs/s with quick repair), checkpoints {:.1}/s",
        commits / elapsed,
        2.0 * commits / elapsed,
        checkpoints / elapsed
    );
    let (rss, _) = usage(w.pid());
    println!("weir peak RSS {rss:.1} MiB");
    w.terminate();
}

/// The last value of `name=` in weir's status lines.
fn status_field(w: &WeirProcess, name: &str) -> f64 {
    let needle = format!("{name}=");
    w.stderr()
        .lines()
        .rev()
        .find_map(|l| {
            let t = l.split(&needle).nth(1)?;
            t.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        })
        .unwrap_or(0.0)
}

fn recovery(weir: &Path, n: usize) {
    let sensors = Mosquitto::start();
    let dir = TempDir::new("weir-bench-recovery");
    // The uplink is absent: everything stays queued.
    let cfg = config(dir.path(), sensors.port(), free_port(), "200ms", false);
    let mut w = start(weir, &cfg);
    let input: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            (
                format!("bench/s{}", i % 1000),
                format!(
                    "{{\"sensor_id\":\"s{}\",\"ts\":{}}}",
                    i % 1000,
                    1_700_000_000_000i64 + i as i64
                )
                .into_bytes(),
            )
        })
        .collect();
    let t = Instant::now();
    publish_all(sensors.port(), &input, 1);
    let deadline = Instant::now() + Duration::from_secs(1800);
    while (status_field(&w, "outbox") as usize) < n {
        assert!(Instant::now() < deadline, "weir did not queue {n} records");
        std::thread::sleep(Duration::from_millis(500));
    }
    let queued_in = t.elapsed().as_secs_f64();
    let (rss, _) = usage(w.pid());
    w.kill9();
    let db = dir.path().join("data/weir.redb");
    let size = std::fs::metadata(&db).map_or(0, |m| m.len());
    let t = Instant::now();
    let mut w = WeirProcess::spawn_program(
        weir,
        &["run", cfg.to_str().unwrap()],
        &[("WEIR_LOG", "weir=info")],
    );
    w.wait_for_stderr("recovered from the store", Duration::from_secs(600));
    let recovered = t.elapsed().as_secs_f64();
    w.wait_for_stderr("subscribed", Duration::from_secs(600));
    let subscribed = t.elapsed().as_secs_f64();
    let took = status_field(&w, "took_ms");
    println!("\n## 4. recovery after SIGKILL with {n} records queued (uplink absent)");
    println!(
        "queued in {queued_in:.1} s ({:.0} msg/s into the outbox); peak RSS before the kill {rss:.1} MiB",
        n as f64 / queued_in
    );
    println!(
        "database {:.1} MiB; restart → recovered {recovered:.2} s (store reopen + restore: {took} ms), → subscribed {subscribed:.2} s",
        size as f64 / 1048576.0
    );
    let (rss, _) = usage(w.pid());
    println!("peak RSS after recovery {rss:.1} MiB");
    w.terminate();
}
