//! Pipelines run over recorded input with `weir replay`, checked against straightforward
//! computations written here, on real sensor data from ../shared/data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};

/// The shared data sets, next to the repository.
fn data(path: &str) -> PathBuf {
    let p = weir_tests::repo().join("../shared/data").join(path);
    assert!(
        p.exists(),
        "{} is missing: the tests need ../shared/data",
        p.display()
    );
    p
}

/// Runs `config` (TOML text) over `input` (JSON lines) and returns the output lines, parsed.
fn replay(config: &str, input: &str) -> Vec<Json> {
    let dir = weir_tests::repo().join("configs");
    let config = weir::config::Config::from_str(config, &dir.join("test.toml"))
        .unwrap_or_else(|e| panic!("test config is valid: {e}"));
    let mut out = Vec::new();
    weir::replay::run(&config, &mut input.as_bytes(), &mut out).expect("replay runs");
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn by_output<'a>(lines: &'a [Json], output: &str) -> Vec<&'a Json> {
    lines.iter().filter(|l| l["output"] == output).collect()
}

/// The Minnesota traffic sensors as replay input: one message per reading, one series per
/// (metric, sensor).
fn traffic_input() -> (String, Vec<(String, i64, f64)>) {
    let text = std::fs::read_to_string(data("derived/mndot-traffic-merged.jsonl")).unwrap();
    let mut input = String::new();
    let mut readings = Vec::new();
    for line in text.lines() {
        let r: Json = serde_json::from_str(line).unwrap();
        let series = format!(
            "{}-{}",
            r["metric"].as_str().unwrap(),
            r["sensor_id"].as_str().unwrap()
        );
        let ts = r["ts"].as_i64().unwrap();
        let value = r["value"].as_f64().unwrap();
        let payload = json!({"series": series, "ts": ts, "value": value});
        input.push_str(
            &json!({"topic": format!("traffic/{series}"), "payload": payload}).to_string(),
        );
        input.push('\n');
        readings.push((series, ts, value));
    }
    (input, readings)
}

const TRAFFIC: &str = r#"
version = 1
[[pipeline]]
name = "traffic"
topics = ["traffic/#"]
[pipeline.decode]
json = { key = "series", time = "ts", time_format = "ms", values = ["value"], source = "series" }
[pipeline.window]
WINDOW
out_of_orderness = "0s"
idle_timeout = "365d"
max_future = "3650d"
[[pipeline.aggregate]]
fn = "count"
[[pipeline.aggregate]]
fn = "mean"
field = "value"
as = "mean"
[[pipeline.aggregate]]
fn = "max"
field = "value"
as = "max"
[pipeline.output]
topic = "traffic/{key}/agg"
"#;

#[test]
fn hourly_tumbling_means_of_the_traffic_sensors_match_a_direct_computation() {
    let (input, readings) = traffic_input();
    let config = TRAFFIC.replace("WINDOW", "kind = \"tumbling\"\nsize = \"1h\"");
    let lines = replay(&config, &input);
    assert!(by_output(&lines, "late").is_empty() && by_output(&lines, "dead-letter").is_empty());

    // Expected: group by (series, hour), straightforwardly.
    let mut expected: BTreeMap<(String, i64), (u64, f64, f64)> = BTreeMap::new();
    for (series, ts, v) in &readings {
        let e = expected
            .entry((series.clone(), ts.div_euclid(3_600_000) * 3_600_000))
            .or_insert((0, 0.0, f64::MIN));
        e.0 += 1;
        e.1 += v;
        e.2 = e.2.max(*v);
    }
    let main = by_output(&lines, "main");
    assert_eq!(main.len(), expected.len(), "one record per series and hour");
    for r in main {
        let key = (
            r["key"].as_str().unwrap().to_owned(),
            r["start_ms"].as_i64().unwrap(),
        );
        let (count, sum, max) = expected[&key];
        assert_eq!(r["end_ms"].as_i64().unwrap() - key.1, 3_600_000);
        assert_eq!(r["revision"], 0);
        assert_eq!(r["values"]["count"].as_u64(), Some(count), "{key:?}");
        let mean = r["values"]["mean"].as_f64().unwrap();
        assert!((mean - sum / count as f64).abs() < 1e-9, "{key:?}: {mean}");
        assert_eq!(r["values"]["max"].as_f64(), Some(max));
        assert_eq!(r["topic"], format!("traffic/{}/agg", key.0));
    }
}

#[test]
fn traffic_sessions_split_at_gaps_of_the_configured_length() {
    let (input, readings) = traffic_input();
    let gap = 30 * 60_000;
    let config = TRAFFIC.replace("WINDOW", "kind = \"session\"\ngap = \"30m\"");
    let lines = replay(&config, &input);

    // Expected: per series, in time order, a new session when the next reading is more than
    // `gap` after the last one (a session of one reading is [ts, ts + gap); touching merges).
    let mut per_series: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (series, ts, _) in &readings {
        per_series.entry(series).or_default().push(*ts);
    }
    let mut expected = Vec::new();
    for (series, mut times) in per_series {
        times.sort();
        let (mut start, mut last, mut count) = (times[0], times[0], 0u64);
        for &t in &times {
            if t > last + gap {
                expected.push((series.to_owned(), start, last + gap, count));
                (start, count) = (t, 0);
            }
            last = t;
            count += 1;
        }
        expected.push((series.to_owned(), start, last + gap, count));
    }
    let mut got: Vec<(String, i64, i64, u64)> = by_output(&lines, "main")
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_owned(),
                r["start_ms"].as_i64().unwrap(),
                r["end_ms"].as_i64().unwrap(),
                r["values"]["count"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    expected.sort();
    assert!(
        expected.len() > 50,
        "the data has gaps: {} sessions",
        expected.len()
    );
    assert_eq!(got, expected);
}

fn machine_input(shuffle_within_ms: Option<i64>) -> (String, Vec<(i64, f64)>) {
    let text = std::fs::read_to_string(data(
        "nab/realKnownCause/machine_temperature_system_failure.csv",
    ))
    .unwrap();
    let mut readings: Vec<(i64, f64)> = text
        .lines()
        .skip(1)
        .map(|l| {
            let (time, value) = l.split_once(',').unwrap();
            let ts = weir::decode::parse_rfc3339(&format!("{}Z", time.replace(' ', "T"))).unwrap();
            (ts, value.parse().unwrap())
        })
        .collect();
    // The file has a few readings out of order (a clock set back); sort them first.
    readings.sort_by_key(|r| r.0);
    let mut order: Vec<(i64, f64)> = readings.clone();
    if let Some(bound) = shuffle_within_ms {
        // Displace each reading by a pseudo-random delay below the bound, then sort by the
        // delayed time: readings arrive out of order, but never later than the bound.
        let mut seed: u64 = 42;
        let mut delayed: Vec<(i64, (i64, f64))> = order
            .iter()
            .map(|&r| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (r.0 + (seed >> 33) as i64 % bound, r)
            })
            .collect();
        delayed.sort_by_key(|d| d.0);
        order = delayed.into_iter().map(|d| d.1).collect();
    }
    let mut input = String::new();
    for (ts, v) in &order {
        let payload = json!({"machine": "m1", "ts": ts, "temp": v});
        input.push_str(&json!({"topic": "plant/m1", "payload": payload}).to_string());
        input.push('\n');
    }
    (input, readings)
}

const MACHINE: &str = r#"
version = 1
[[pipeline]]
name = "plant"
topics = ["plant/#"]
[pipeline.decode]
json = { key = "machine", time = "ts", time_format = "ms" }
[pipeline.window]
kind = "sliding"
size = "1h"
slide = "20m"
out_of_orderness = "10m"
idle_timeout = "365d"
max_future = "3650d"
[[pipeline.aggregate]]
fn = "mean"
field = "temp"
as = "mean"
[[pipeline.aggregate]]
fn = "stddev"
field = "temp"
as = "sd"
[[pipeline.aggregate]]
fn = "count"
[pipeline.output]
topic = "plant/{key}/temp"
"#;

#[test]
fn shuffling_within_the_out_of_orderness_bound_changes_nothing() {
    let (in_order, readings) = machine_input(None);
    let (shuffled, _) = machine_input(Some(10 * 60_000));
    assert_ne!(in_order, shuffled, "the shuffle moved readings");
    let a = replay(MACHINE, &in_order);
    let b = replay(MACHINE, &shuffled);
    assert!(by_output(&a, "late").is_empty() && by_output(&b, "late").is_empty());
    // Same records with the same ids; sums may differ in the last bits, since the readings
    // were added in another order.
    let sorted = |lines: &[Json]| {
        let mut v: Vec<Json> = by_output(lines, "main").into_iter().cloned().collect();
        v.sort_by_key(|r| r["id"].as_str().unwrap().to_owned());
        v
    };
    let (sa, sb) = (sorted(&a), sorted(&b));
    assert_eq!(sa.len(), sb.len());
    for (x, y) in sa.iter().zip(&sb) {
        assert_eq!(x["id"], y["id"]);
        assert_eq!(x["values"]["count"], y["values"]["count"], "{}", x["id"]);
        for v in ["mean", "sd"] {
            let (p, q) = (x["values"][v].as_f64(), y["values"][v].as_f64());
            assert_eq!(p.is_some(), q.is_some());
            if let (Some(p), Some(q)) = (p, q) {
                assert!(
                    (p - q).abs() <= 1e-9 * p.abs().max(1.0),
                    "{}: {v} {p} vs {q}",
                    x["id"]
                );
            }
        }
    }
    // Ids are unique per window and revision.
    let ids: std::collections::BTreeSet<&str> = by_output(&a, "main")
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), by_output(&a, "main").len());
    // And the sliding means are right: check one window by hand.
    let r = by_output(&a, "main")[10];
    let (start, end) = (
        r["start_ms"].as_i64().unwrap(),
        r["end_ms"].as_i64().unwrap(),
    );
    let inside: Vec<f64> = readings
        .iter()
        .filter(|(t, _)| (start..end).contains(t))
        .map(|r| r.1)
        .collect();
    let mean = inside.iter().sum::<f64>() / inside.len() as f64;
    assert!((r["values"]["mean"].as_f64().unwrap() - mean).abs() < 1e-9);
    assert_eq!(r["values"]["count"].as_u64(), Some(inside.len() as u64));
}

#[test]
fn replay_is_byte_for_byte_deterministic() {
    let (input, _) = machine_input(Some(5 * 60_000));
    let config = weir::config::Config::from_str(MACHINE, Path::new("configs/test.toml")).unwrap();
    let run = || {
        let mut out = Vec::new();
        weir::replay::run(&config, &mut input.as_bytes(), &mut out).unwrap();
        out
    };
    let first = run();
    assert!(!first.is_empty());
    assert_eq!(first, run());
}

const LATE: &str = r#"
version = 1
[[pipeline]]
name = "farm"
topics = ["farm/#"]
[pipeline.decode]
json = { key = "sensor", time = "ts", time_format = "ms", values = ["temp"] }
[pipeline.window]
kind = "tumbling"
size = "1m"
out_of_orderness = "0s"
allowed_lateness = "1m"
idle_timeout = "365d"
max_future = "3650d"
[[pipeline.aggregate]]
fn = "sum"
field = "temp"
as = "sum"
[pipeline.output]
topic = "farm/{key}/agg"
late = "farm/{key}/late"
dead_letter = "farm/dead"
"#;

fn reading(sensor: &str, ts: i64, temp: f64) -> String {
    json!({"topic": format!("farm/{sensor}"), "payload": {"sensor": sensor, "ts": ts, "temp": temp}}).to_string()
}

#[test]
fn late_events_refire_within_lateness_and_go_to_the_late_output_beyond_it() {
    let input = [
        reading("s1", 10_000, 1.0),
        reading("s1", 70_000, 2.0), // watermark 70 000: [0, 60 000) fires, revision 0
        reading("s1", 20_000, 4.0), // late, within lateness: revision 1, sum 5
        r#"{"topic": "farm/s1", "payload": "not an object"}"#.to_string(),
        r#"{"watermark": 125000}"#.to_string(), // past end - 1 + lateness of [0, 60 000)
        reading("s1", 30_000, 8.0),             // beyond lateness: late output
    ]
    .join("\n");
    let lines = replay(LATE, &input);
    let main = by_output(&lines, "main");
    let first: Vec<(i64, i64, f64)> = main
        .iter()
        .filter(|r| r["start_ms"] == 0)
        .map(|r| {
            (
                r["revision"].as_i64().unwrap(),
                r["end_ms"].as_i64().unwrap(),
                r["values"]["sum"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(first, vec![(0, 60_000, 1.0), (1, 60_000, 5.0)]);
    let late = by_output(&lines, "late");
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["topic"], "farm/s1/late");
    assert_eq!(late[0]["ts_ms"], 30_000);
    assert!(
        late[0]["reason"].as_str().unwrap().contains("closed"),
        "{}",
        late[0]
    );
    let dead = by_output(&lines, "dead-letter");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["topic"], "farm/dead");
    assert_eq!(dead[0]["detail"], "payload is not a JSON object");
    // Revisions of one window have distinct ids.
    let ids: std::collections::BTreeSet<&str> =
        main.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), main.len());
}

#[test]
fn the_farm_config_gives_per_location_minute_aggregates_through_its_plugins() {
    weir_tests::plugins(); // the config names the built components
    let config = weir::config::Config::from_file(&weir_tests::repo().join("configs/farm.toml"))
        .unwrap_or_else(|e| panic!("configs/farm.toml is valid: {e}"));
    // 300 sensors, a reading every 10 s for 3 minutes; some impossible humidities, one unknown
    // sensor, one payload that is not JSON.
    let mut input = String::new();
    let mut readings = Vec::new();
    let base = 1_700_000_040_000i64; // a minute boundary
    for step in 0..18 {
        for s in 0..300 {
            let sensor = format!("s{s:04}");
            let ts = base + step * 10_000 + s;
            let temp = 5.0 + (s % 17) as f64 + step as f64 * 0.1;
            let humidity = if (s + step) % 41 == 0 {
                140.0
            } else {
                30.0 + (s % 50) as f64
            };
            input.push_str(&reading_json(&sensor, ts, temp, humidity));
            readings.push((sensor, ts, temp, humidity));
        }
    }
    input.push_str(&reading_json("s9999", base, 1.0, 50.0));
    input.push_str("{\"topic\": \"farm/x/sensors/s0001\", \"payload_base64\": \"/w==\"}\n");
    let mut out = Vec::new();
    weir::replay::run(&config, &mut input.as_bytes(), &mut out).unwrap();
    let lines: Vec<Json> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    // Expected, directly: drop humidity outside 0..100, °C to °F, group by location and minute.
    let loc = weir_tests::locations();
    let mut expected: BTreeMap<(String, i64), (u64, f64)> = BTreeMap::new();
    for (sensor, ts, temp, humidity) in &readings {
        if !(0.0..=100.0).contains(humidity) {
            continue;
        }
        let e = expected
            .entry((loc[sensor].clone(), ts - ts.rem_euclid(60_000)))
            .or_default();
        e.0 += 1;
        e.1 += temp * 9.0 / 5.0 + 32.0;
    }
    let main = by_output(&lines, "main");
    assert_eq!(main.len(), expected.len());
    for r in main {
        let key = (
            r["key"].as_str().unwrap().to_owned(),
            r["start_ms"].as_i64().unwrap(),
        );
        let (count, sum) = expected[&key];
        assert_eq!(r["values"]["temp_count"].as_u64(), Some(count), "{key:?}");
        let mean = r["values"]["temp_mean_f"].as_f64().unwrap();
        assert!((mean - sum / count as f64).abs() < 1e-9, "{key:?}");
        assert_eq!(r["topic"], format!("farm/{}/agg/1m", key.0));
    }
    // The unknown sensor and the broken payload are dead letters, with their reasons.
    let dead: Vec<String> = by_output(&lines, "dead-letter")
        .iter()
        .map(|d| d["detail"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(dead.iter().any(|d| d.starts_with("payload is not JSON")));
    assert!(
        dead.iter()
            .any(|d| d == "the key is not in the reference table")
    );
}

fn reading_json(sensor: &str, ts: i64, temp: f64, humidity: f64) -> String {
    let payload = json!({"sensor_id": sensor, "ts": ts, "temp": temp, "humidity": humidity});
    format!(
        "{}\n",
        json!({"topic": format!("farm/north/sensors/{sensor}"), "payload": payload})
    )
}

#[test]
fn a_pipeline_without_window_forwards_alerts_as_they_happen() {
    weir_tests::plugins();
    let config =
        weir::config::Config::from_file(&weir_tests::repo().join("configs/frost-alerts.toml"))
            .unwrap_or_else(|e| panic!("configs/frost-alerts.toml is valid: {e}"));
    let temps = [2.0, 0.2, -1.0, 0.1, -3.0, 4.0];
    let input: String = temps
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let payload = json!({"sensor_id": "s0001", "ts": 1_700_000_000_000i64 + i as i64 * 60_000, "temp": t});
            format!("{}\n", json!({"topic": "farm/x/sensors/s0001", "payload": payload}))
        })
        .collect();
    let mut out = Vec::new();
    weir::replay::run(&config, &mut input.as_bytes(), &mut out).unwrap();
    let lines: Vec<Json> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let alerts = by_output(&lines, "main");
    assert_eq!(alerts.len(), 1, "{lines:?}");
    let loc = &weir_tests::locations()["s0001"];
    assert_eq!(
        alerts[0]["key"],
        loc.as_str(),
        "keyed by the location from the table"
    );
    assert_eq!(alerts[0]["ts_ms"], 1_700_000_000_000i64 + 3 * 60_000);
    assert_eq!(alerts[0]["fields"]["alert"], "frost");
    assert_eq!(alerts[0]["topic"], format!("farm/{loc}/alerts/frost"));
    assert_eq!(alerts[0]["id"].as_str().map(str::len), Some(32));
}

#[test]
fn processing_time_windows_use_the_gateway_clock_and_a_plugin_aggregates() {
    weir_tests::plugins();
    let p95 = weir_tests::plugin_path("p95_aggregator");
    let config = format!(
        r#"
version = 1
[[pipeline]]
name = "wind"
topics = ["wind/#"]
[pipeline.decode]
json = {{ key = "station", time = "ts", time_format = "ms", values = ["speed"] }}
[pipeline.window]
kind = "tumbling"
size = "10s"
time = "processing"
[[pipeline.aggregate]]
fn = "count"
[[pipeline.aggregate]]
plugin = "{}"
config = {{ field = "speed", quantile = 0.5, name = "median" }}
[pipeline.output]
topic = "wind/{{key}}"
"#,
        p95.display()
    );
    // Event times are nonsense (0); the messages' receive times put them in two windows.
    let input: String = (0..30)
        .map(|i| {
            let payload = json!({"station": "w1", "ts": 0, "speed": f64::from(i)});
            let received = 1_700_000_000_000i64 + if i < 20 { 1_000 } else { 12_000 };
            format!(
                "{}\n",
                json!({"topic": "wind/w1", "payload": payload, "received_ms": received})
            )
        })
        .collect();
    let lines = replay(&config, &input);
    let main = by_output(&lines, "main");
    assert_eq!(main.len(), 2, "{lines:?}");
    assert_eq!(main[0]["start_ms"], 1_700_000_000_000i64);
    assert_eq!(main[0]["values"]["count"], 20);
    let median = main[0]["values"]["median"].as_f64().unwrap();
    // The sketch gives the value at rank q * (n - 1), within 1 %: the 10th of 0..20 is 9.
    assert!(
        (median - 9.0).abs() <= 0.1,
        "median of 0..20 by the plugin: {median}"
    );
    assert_eq!(main[1]["values"]["count"], 10);
}

#[test]
fn a_decoder_plugin_feeds_a_count_window_and_its_rejects_are_dead_letters() {
    weir_tests::plugins();
    let decoder = weir_tests::plugin_path("sensor_frame_decoder");
    let config = format!(
        r#"
version = 1
[[pipeline]]
name = "lora"
topics = ["lora/#"]
[pipeline.decode]
plugin = "{}"
config = {{ channels = ["temp", "humidity", "soil_moisture"] }}
[pipeline.window]
kind = "count"
count = 2
[[pipeline.aggregate]]
fn = "mean"
field = "temp"
as = "temp"
[pipeline.output]
topic = "lora/{{key}}/pairs"
"#,
        decoder.display()
    );
    // The frame documented in plugins/sensor-frame-decoder/README.md, twice, and a broken one.
    let frame = "V0YBZxIAAP//e2jlz4sBAAADu/4uIiMMaEQ=";
    let input = [frame, "V0YB", frame]
        .iter()
        .map(|f| json!({"topic": "lora/gw1", "payload_base64": f}).to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let lines = replay(&config, &input);
    let main = by_output(&lines, "main");
    assert_eq!(main.len(), 1, "{lines:?}");
    assert_eq!(main[0]["key"], "4711");
    assert_eq!(main[0]["window"], "count");
    assert_eq!(main[0]["values"]["temp"], -3.25);
    let dead = by_output(&lines, "dead-letter");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["step"], "lora/decode");
    assert!(
        dead[0]["detail"]
            .as_str()
            .unwrap()
            .contains("frame too short"),
        "{}",
        dead[0]
    );
}
