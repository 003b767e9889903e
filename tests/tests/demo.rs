//! `weir demo`, the real binary: embedded brokers, an uplink that goes down and comes back, the
//! simulator, the farm pipelines with the example plugins and a hot swap; it must end with PASS
//! (every record delivered once after dedup by id, and equal to `weir replay` of the recorded
//! input). Also against real Mosquitto brokers given with --sensor-broker and --cloud-broker, and
//! ended early by Ctrl-C.

use std::time::Duration;

use weir_tests::mosquitto::Mosquitto;
use weir_tests::process::{TempDir, WeirProcess, poll_until, send_signal};

/// `weir demo ARGS` with the plugins built from source and a data dir kept for the assertions.
fn spawn(dir: &TempDir, extra: &[&str]) -> WeirProcess {
    let plugins = weir_tests::plugins().to_str().unwrap().to_owned();
    let data = dir.path().join("demo");
    let mut args = vec![
        "demo",
        "--plugins",
        &plugins,
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    WeirProcess::spawn(&args, &[])
}

/// Waits for the demo to end with exit code 0 and returns its stdout.
fn passed(mut p: WeirProcess, dir: &TempDir) -> String {
    let status = p.wait(Duration::from_secs(300));
    let (out, err) = (p.stdout(), p.stderr());
    assert!(
        status.success(),
        "weir demo failed ({status}):\n{out}\n{err}"
    );
    assert!(out.contains("\nPASS: "), "{out}");
    let data = dir.path().join("demo");
    let recording = std::fs::read_to_string(data.join("input.jsonl")).unwrap();
    assert!(recording.lines().count() > 100, "the recording is kept");
    out
}

/// The number right after `label` on the line starting with `label`.
fn number_after(out: &str, label: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a number after {label:?} in:\n{out}"))
}

/// The number right before `label`, on the first line holding it.
fn number_before(out: &str, label: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.contains(label))
        .unwrap_or_else(|| panic!("{label:?} in:\n{out}"));
    let at = line.find(label).unwrap();
    line[..at]
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a number before {label:?} in {line:?}"))
}

#[test]
fn the_demo_delivers_everything_once_through_outages_and_a_hot_swap() {
    let dir = TempDir::new("weir-demo");
    let out = passed(spawn(&dir, &["--duration", "20s"]), &dir);
    let delivered = number_after(&out, "upstream:");
    assert!(delivered > 0, "{out}");
    assert_eq!(
        number_after(&out, "weir replay --keep-open of the recorded input:"),
        delivered,
        "{out}"
    );
    assert!(number_after(&out, "uplink: went down") >= 1, "{out}");
    assert!(out.contains("hot swap: counter v1 → v2"), "{out}");
    // Results were computed by both versions: the swap took effect on the data path.
    assert!(
        number_before(&out, "window results computed with counter v1") > 0,
        "{out}"
    );
    assert!(number_before(&out, "with v2") > 0, "{out}");
    // The view reported every second while it ran, the outage included.
    assert!(out.contains("uplink DOWN"), "{out}");
}

#[test]
fn the_demo_runs_against_external_brokers() {
    let sensors = Mosquitto::start();
    let cloud = Mosquitto::start();
    let dir = TempDir::new("weir-demo-mosquitto");
    let (s, c) = (sensors.addr().to_string(), cloud.addr().to_string());
    let p = spawn(
        &dir,
        &[
            "--duration",
            "12s",
            "--outage-every",
            "5s",
            "--outage",
            "2s",
            "--sensor-broker",
            &s,
            "--cloud-broker",
            &c,
        ],
    );
    let out = passed(p, &dir);
    assert!(out.contains(&format!("broker {s} ─►")), "{out}");
    assert!(number_after(&out, "upstream:") > 0, "{out}");
    assert!(number_after(&out, "uplink: went down") >= 2, "{out}");
}

#[test]
fn ctrl_c_ends_the_demo_early_and_it_still_checks() {
    let dir = TempDir::new("weir-demo-interrupted");
    let p = spawn(&dir, &["--duration", "10m"]);
    // Until records reach the cloud.
    poll_until("records upstream", Duration::from_secs(120), || {
        p.stdout()
            .lines()
            .filter_map(|l| l.split(" | upstream ").nth(1))
            .any(|rest| rest.split_whitespace().next().is_some_and(|n| n != "0"))
    });
    send_signal(p.pid(), libc::SIGINT).unwrap();
    let out = passed(p, &dir);
    assert!(out.contains("interrupted:"), "{out}");
    assert!(out.contains("hot swap: not done"), "{out}");
    assert!(number_after(&out, "upstream:") > 0, "{out}");
}

#[test]
fn without_the_plugins_the_demo_says_how_to_build_them() {
    let dir = TempDir::new("weir-demo-no-plugins");
    let mut p = WeirProcess::spawn(
        &[
            "demo",
            "--plugins",
            dir.path().to_str().unwrap(),
            "--duration",
            "5s",
        ],
        &[],
    );
    let status = p.wait(Duration::from_secs(60));
    assert!(!status.success());
    let err = p.stderr();
    assert!(
        err.contains("sensor_frame_decoder.wasm is missing")
            && err.contains("bash plugins/build rust"),
        "{err}"
    );
}
