//! `weir-gateway-bench`: what `weir run` costs a gateway at steady rates, as the OS sees it. It
//! measures and prints; it asserts nothing about time.
//!
//! ```sh
//! cargo run --release -p weir-tests --bin weir-gateway-bench -- [--quick] [--rates 100,1000] [--intervals 10ms,1s]
//! ```
//!
//! For each rate (100, 1 000 and 10 000 msg/s) and each `[storage] commit_interval` (10 ms, the
//! default, 1 s), it runs the release `weir run` between two real Mosquitto brokers with the
//! farm of `configs/farm.toml` (its plugins, its table, per-location minute windows) and a
//! windowless alert pipeline (readings below 2 °C, through the range filter, straight
//! upstream). A publisher sends the readings of the 1 000 sensors of `configs/sensors.csv` at
//! the rate (QoS 1), about 2 % of them cold. After 3 s of warm-up, over a window of 30 s (10 s
//! with `--quick`) it reads:
//!
//! - fdatasyncs and commits per second, from weir's own `weir_store_fsyncs_total` and
//!   `weir_store_commits_total` (admin API);
//! - bytes written per message, from `/proc/<pid>/io` `write_bytes`;
//! - CPU µs per message, from `/proc/<pid>/stat` (utime + stime);
//! - alert latency p50 / p99, publish → arrival upstream (the payload carries `sent_us`);
//! - weir's RSS (VmRSS) at the end of the window, and its peak (VmHWM).
//!
//! The report ends with the numbers as one JSON line (`{"weir_gateway_bench": ...}`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_tests::bench::{cpu_seconds, now_ms, now_us, round, shell, status_mib, write_bytes};
use weir_tests::mosquitto::Mosquitto;
use weir_tests::mqtt_client::{Collector, Publisher};
use weir_tests::process::{TempDir, WeirProcess};

const WARM_UP: Duration = Duration::from_secs(3);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let list = |flag: &str| -> Option<Vec<String>> {
        let i = args.iter().position(|a| a == flag)?;
        Some(args.get(i + 1)?.split(',').map(str::to_owned).collect())
    };
    let rates: Vec<u64> = list("--rates")
        .map(|v| v.iter().filter_map(|r| r.parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 1_000, 10_000]);
    let default = weir::config::units::format_duration(weir::config::DEFAULT_COMMIT_INTERVAL);
    let intervals: Vec<String> =
        list("--intervals").unwrap_or_else(|| vec!["10ms".into(), default.clone(), "1s".into()]);
    let window = if quick {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(30)
    };
    let weir = weir_tests::process::build_weir(true);
    weir_tests::plugins();
    println!(
        "# weir gateway benchmark: nproc {}, kernel {}, {} s per run, default commit_interval {default}",
        shell("nproc"),
        shell("uname -r"),
        window.as_secs()
    );
    println!(
        "{:>7} {:>9} | {:>9} {:>10} {:>11} {:>10} {:>10} | {:>8} {:>8} | {:>7} {:>7}",
        "msg/s",
        "commit",
        "commits/s",
        "fsyncs/s",
        "bytes/msg",
        "CPU µs/msg",
        "achieved",
        "p50 ms",
        "p99 ms",
        "RSS MiB",
        "HWM MiB"
    );
    let mut runs = Vec::new();
    for &rate in &rates {
        for interval in &intervals {
            let r = run(&weir, rate, interval, window);
            println!(
                "{:>7} {:>9} | {:>9.1} {:>10.1} {:>11.0} {:>10.1} {:>10.0} | {:>8.1} {:>8.1} | {:>7.1} {:>7.1}",
                rate,
                interval,
                r["commits_per_s"].as_f64().unwrap_or(f64::NAN),
                r["fdatasyncs_per_s"].as_f64().unwrap_or(f64::NAN),
                r["bytes_written_per_msg"].as_f64().unwrap_or(f64::NAN),
                r["cpu_us_per_msg"].as_f64().unwrap_or(f64::NAN),
                r["achieved_rate"].as_f64().unwrap_or(f64::NAN),
                r["alert_p50_ms"].as_f64().unwrap_or(f64::NAN),
                r["alert_p99_ms"].as_f64().unwrap_or(f64::NAN),
                r["rss_mib"].as_f64().unwrap_or(f64::NAN),
                r["hwm_mib"].as_f64().unwrap_or(f64::NAN),
            );
            runs.push(r);
        }
    }
    println!("{}", json!({ "weir_gateway_bench": { "runs": runs } }));
}

/// The sensors of `configs/sensors.csv`: (id, location).
fn sensors() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(weir_tests::repo().join("configs/sensors.csv")).unwrap();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let mut cells = l.split(',');
            Some((cells.next()?.to_owned(), cells.next()?.to_owned()))
        })
        .collect()
}

/// `configs/farm.toml` with absolute paths, live sections, and the alert pipeline.
fn config(dir: &Path, sensors: u16, upstream: u16, commit_interval: &str) -> PathBuf {
    let repo = weir_tests::repo();
    let farm = std::fs::read_to_string(repo.join("configs/farm.toml"))
        .unwrap()
        .replace("\"../plugins/", &format!("\"{}/plugins/", repo.display()))
        .replace(
            "\"sensors.csv\"",
            &format!("\"{}/configs/sensors.csv\"", repo.display()),
        )
        .replace("version = 1\n", "");
    let filter = repo.join("plugins/target/wasm/range_filter.wasm");
    let text = format!(
        "version = 1\n\n\
         [source]\nbroker = \"127.0.0.1:{sensors}\"\nclient_id = \"weir-gateway-bench\"\n\n\
         [upstream]\nbroker = \"127.0.0.1:{upstream}\"\n\n\
         [storage]\ndata_dir = {:?}\ncommit_interval = \"{commit_interval}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         {farm}\n\n\
         [[pipeline]]\nname = \"alerts\"\ntopics = [\"farm/+/sensors/#\"]\n\
         [pipeline.decode]\njson = {{ key = \"sensor_id\", time = \"ts\", time_format = \"ms\" }}\n\
         [[pipeline.transform]]\nplugin = {:?}\nconfig = {{ field = \"temp\", min = -40.0, max = 2.0 }}\n\
         [pipeline.output]\ntopic = \"alerts/{{key}}\"\n",
        dir.join("data"),
        filter
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// What the OS and weir say at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    write_bytes: f64,
    cpu_s: f64,
    fsyncs: f64,
    commits: f64,
    messages_in: f64,
}

fn sample(pid: u32, admin: &str) -> Sample {
    let write_bytes = write_bytes(&pid.to_string()) as f64;
    let metrics = weir::admin::client::get(admin, "/metrics")
        .map(|r| r.body)
        .unwrap_or_default();
    let metric = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    Sample {
        write_bytes,
        cpu_s: cpu_seconds(pid),
        fsyncs: metric("weir_store_fsyncs_total"),
        commits: metric("weir_store_commits_total"),
        messages_in: metric("weir_messages_in_total"),
    }
}

fn run(weir: &Path, rate: u64, interval: &str, window: Duration) -> Value {
    let sensors_broker = Mosquitto::start();
    let cloud = Mosquitto::start();
    let dir = TempDir::new("weir-gateway-bench");
    let cfg = config(dir.path(), sensors_broker.port(), cloud.port(), interval);
    let mut w = WeirProcess::spawn_program(
        weir,
        &["run", cfg.to_str().unwrap()],
        &[("WEIR_LOG", "weir=info")],
    );
    let admin = w.admin_address(Duration::from_secs(300));
    let alerts = Collector::subscribe(cloud.port(), "alerts/#");
    let sensors = sensors();
    let mut publisher = Publisher::connect(sensors_broker.port());
    let total = WARM_UP + window;
    let n = (rate as f64 * total.as_secs_f64()) as u64;
    let t0 = Instant::now();
    let mut before = None;
    let mut window_start_us = 0;
    for i in 0..n {
        let due = t0 + Duration::from_nanos(i * 1_000_000_000 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if before.is_none() && t0.elapsed() >= WARM_UP {
            before = Some((sample(w.pid(), &admin), Instant::now()));
            window_start_us = now_us();
        }
        let (id, location) = &sensors[(i as usize * 7919) % sensors.len()];
        // About 2 % of readings are cold: they become alerts.
        let temp = if i % 50 == 0 {
            1.0
        } else {
            10.0 + (i % 13) as f64
        };
        let payload = format!(
            "{{\"sensor_id\":\"{id}\",\"ts\":{},\"temp\":{temp},\"humidity\":{},\"sent_us\":{}}}",
            now_ms(),
            40 + i % 40,
            now_us()
        );
        publisher.publish(&format!("farm/{location}/sensors/{id}"), payload);
    }
    let (start, started) = before.expect("the window started");
    let elapsed = started.elapsed().as_secs_f64();
    let end = sample(w.pid(), &admin);
    let window_end_us = now_us();
    let (rss, hwm) = (status_mib(w.pid(), "VmRSS:"), status_mib(w.pid(), "VmHWM:"));
    // The alerts of messages sent in the window, once they are in.
    std::thread::sleep(Duration::from_secs(2));
    let mut lat: Vec<f64> = alerts
        .messages()
        .iter()
        .filter_map(|m| {
            let v: Value = serde_json::from_slice(&m.payload).ok()?;
            let sent = v["fields"]["sent_us"].as_f64()? as u64;
            (sent >= window_start_us && sent <= window_end_us)
                .then(|| m.received_us.saturating_sub(sent) as f64 / 1000.0)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    w.terminate();
    let messages = (end.messages_in - start.messages_in).max(1.0);
    json!({
        "rate": rate,
        "commit_interval": interval,
        "window_s": round(elapsed, 2),
        "achieved_rate": round(messages / elapsed, 0),
        "commits_per_s": round((end.commits - start.commits) / elapsed, 2),
        "fdatasyncs_per_s": round((end.fsyncs - start.fsyncs) / elapsed, 2),
        "bytes_written_per_msg": round((end.write_bytes - start.write_bytes) / messages, 0),
        "cpu_us_per_msg": round((end.cpu_s - start.cpu_s) * 1e6 / messages, 1),
        "alerts": lat.len(),
        "alert_p50_ms": round(q(0.5), 1),
        "alert_p99_ms": round(q(0.99), 1),
        "rss_mib": round(rss, 1),
        "hwm_mib": round(hwm, 1),
    })
}
