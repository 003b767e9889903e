//! `weir simulate`, the real binary: a file it writes replays through `configs/farm.toml` to
//! window records with only the garbage as dead letters; and it publishes to a real Mosquitto
//! exactly the messages it says it did.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::Value as Json;
use weir_tests::mosquitto::Mosquitto;
use weir_tests::mqtt_client::Collector;
use weir_tests::process::{TempDir, WeirProcess, weir_command};
use weir_tests::proxy::Proxy;

/// A number printed right before `label` in `text`.
fn number_before(text: &str, label: &str) -> u64 {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("{label:?} in:\n{text}"));
    text[..at]
        .split_whitespace()
        .last()
        .and_then(|n| n.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("a number before {label:?} in:\n{text}"))
}

#[test]
fn a_written_farm_replays_to_windows_with_only_garbage_dead() {
    weir_tests::plugins();
    let dir = TempDir::new("weir-simulate");
    let file = dir.path().join("farm.jsonl");
    let out = weir_command()
        .args(["simulate", "--no-publish", "--count", "20000", "--write"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert_eq!(number_before(&err, "messages to"), 20_000, "{err}");
    let garbage = number_before(&err, "garbage");
    let resent = number_before(&err, "resent");
    let late = number_before(&err, "late,");
    assert!(garbage > 0 && resent > 0 && late > 0, "{err}");
    let written = std::fs::read_to_string(&file).unwrap();
    assert_eq!(written.lines().count(), 20_000);

    // The same seed writes the same file.
    let again = dir.path().join("again.jsonl");
    let status = weir_command()
        .args(["simulate", "--no-publish", "--count", "20000", "--write"])
        .arg(&again)
        .output()
        .unwrap()
        .status;
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(&again).unwrap(), written);

    let out = weir_command()
        .current_dir(weir_tests::repo())
        .args(["replay", "configs/farm.toml", "--input"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    let lines: Vec<Json> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut by_output: BTreeMap<String, usize> = BTreeMap::new();
    for l in &lines {
        *by_output
            .entry(l["output"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    // 20 000 messages at 100 msg/s: 200 s of readings, about four minutes of windows for each
    // of the 40 locations.
    let main = by_output.get("main").copied().unwrap_or(0);
    assert!(main >= 120, "{by_output:?}\n{err}");
    let locations: HashSet<&str> = lines
        .iter()
        .filter(|l| l["output"] == "main")
        .map(|l| l["key"].as_str().unwrap())
        .collect();
    assert_eq!(locations.len(), 40, "{locations:?}");
    let dead: Vec<&Json> = lines
        .iter()
        .filter(|l| l["output"] == "dead-letter")
        .collect();
    assert_eq!(dead.len() as u64, garbage, "{dead:#?}");
    for d in &dead {
        assert_eq!(d["step"], "farm/decode", "{d}");
        assert!(d["detail"].as_str().unwrap().contains("not JSON"), "{d}");
    }
    // Resends are dropped by ingest dedup, impossible readings by the range filters: the
    // windows count fewer readings than there were on time and late.
    let counted: u64 = lines
        .iter()
        .filter(|l| l["output"] == "main")
        .filter_map(|l| l["values"]["temp_count"].as_u64())
        .sum();
    let readings = 20_000 - garbage - resent;
    assert!(
        counted <= readings && counted as f64 > readings as f64 * 0.98,
        "{counted} of {readings} readings counted"
    );
}

/// The summary line of `weir simulate`'s stderr.
fn summary(err: &str) -> &str {
    err.lines()
        .find(|l| l.contains("messages in"))
        .unwrap_or_else(|| panic!("no summary in:\n{err}"))
}

/// Runs `weir simulate` to the broker at `port` with `extra` args, and checks that `count`
/// messages arrived at `collector`, each at least once, as the summary says.
fn publish_and_check(
    port: u16,
    collector: &Collector,
    count: u64,
    extra: &[&str],
    during: impl FnOnce(),
) {
    let address = format!("127.0.0.1:{port}");
    let count_text = count.to_string();
    let mut args = vec!["simulate", "--broker", &address, "--count", &count_text];
    args.extend_from_slice(extra);
    let mut p = WeirProcess::spawn(&args, &[]);
    during();
    let status = p.wait(Duration::from_secs(60));
    let stderr = p.stderr();
    assert!(status.success(), "{stderr}");
    let err = summary(&stderr);
    assert_eq!(number_before(err, "messages in"), count, "{err}");
    assert_eq!(number_before(err, "acknowledged"), count, "{err}");
    let resent = number_before(err, "resent");
    let garbage = number_before(err, "garbage");
    assert!(resent > 0, "{err}");
    let distinct = |messages: &[weir_tests::mqtt_client::Message]| {
        messages
            .iter()
            .map(|m| (m.topic.clone(), m.payload.clone()))
            .collect::<HashSet<_>>()
            .len() as u64
    };
    // Every message at least once (QoS 1: a reconnect may bring a few twice).
    let messages = collector.wait_until(|m| distinct(m) >= count - resent, Duration::from_secs(30));
    assert_eq!(distinct(&messages), count - resent);
    let locations = weir_tests::locations();
    let mut not_json = HashSet::new();
    for m in &messages {
        match serde_json::from_slice::<Json>(&m.payload) {
            Ok(v) => {
                let id = v["sensor_id"].as_str().unwrap();
                assert_eq!(m.topic, format!("farm/{}/sensors/{id}", locations[id]));
            }
            Err(_) => {
                not_json.insert(m.payload.clone());
            }
        }
    }
    assert_eq!(not_json.len() as u64, garbage);
}

#[test]
fn it_publishes_to_a_broker_what_it_says() {
    let broker = Mosquitto::start();
    for version in ["5", "3.1.1"] {
        let collector = Collector::subscribe(broker.port(), "farm/#");
        publish_and_check(
            broker.port(),
            &collector,
            2000,
            &["--rate", "2000", "--mqtt-version", version],
            || {},
        );
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(collector.messages().len(), 2000, "MQTT {version}");
    }
}

#[test]
fn a_dropped_link_loses_nothing() {
    let broker = Mosquitto::start();
    let collector = Collector::subscribe(broker.port(), "farm/#");
    let proxy = Proxy::start(broker.addr());
    publish_and_check(proxy.port(), &collector, 3000, &["--rate", "1000"], || {
        std::thread::sleep(Duration::from_millis(1200));
        proxy.down();
        std::thread::sleep(Duration::from_millis(800));
        proxy.up();
    });
    assert!(proxy.connections() >= 2, "the link was dropped");
}
