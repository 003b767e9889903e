//! `weir run` when its store is in trouble, against real Mosquitto brokers: the disk fills up
//! while the uplink is down (on a 4 MiB tmpfs), a record in the store is damaged on disk, and
//! records already in the store that the upstream broker would refuse.
//!
//! Each test starts its own brokers on free loopback ports and stops them, and the weir
//! processes it starts, by pid. The full-disk test mounts a tmpfs: it needs root.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use weir::record::RecordId;
use weir::store::{OnFull, OutboxRecord, Store, StoreOptions};
use weir_tests::mosquitto::Mosquitto;
use weir_tests::mqtt_client::{Collector, Message};
use weir_tests::process::{TempDir, WeirProcess};
use weir_tests::proxy::Proxy;
use weir_tests::tmpfs::Tmpfs;

/// How long weir may take to start.
const START: Duration = Duration::from_secs(120);

/// A relay pipeline (no window: every reading goes upstream as a record, keyed by sensor) with
/// its data directory at `data`.
fn relay_config(dir: &Path, data: &Path, sensors: u16, upstream: u16) -> PathBuf {
    let text = format!(
        "version = 1\n\n[source]\nbroker = \"127.0.0.1:{sensors}\"\nclient_id = \"weir-disk-test\"\n\n\
         [upstream]\nbroker = \"127.0.0.1:{upstream}\"\nreconnect = {{ initial = \"50ms\", max = \"300ms\" }}\n\n\
         [storage]\ndata_dir = {data:?}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[pipeline]]\nname = \"relay\"\ntopics = [\"sensors/#\"]\n\n[pipeline.decode]\n\
         json = {{ key = \"sensor\", time = \"ts\", time_format = \"ms\" }}\n\n\
         [pipeline.output]\ntopic = \"relay/{{key}}\"\n"
    );
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `weir run CONFIG` and waits until it has subscribed.
fn start_weir(config: &Path) -> WeirProcess {
    let mut weir = WeirProcess::spawn(
        &["run", config.to_str().unwrap()],
        &[("WEIR_LOG", "weir=info")],
    );
    weir.wait_for_stderr("subscribed", START);
    weir
}

const BASE_MS: i64 = 1_700_000_040_000;

/// Reading `i` of 20 sensors, numbered per sensor, with `pad` bytes of padding.
fn reading(i: usize, pad: usize) -> (String, Vec<u8>) {
    let sensor = format!("s{}", i % 20);
    (
        format!("sensors/{sensor}"),
        json!({"sensor": sensor, "ts": BASE_MS + i as i64, "seq": i / 20, "pad": "p".repeat(pad)})
            .to_string()
            .into_bytes(),
    )
}

/// The records' ids (the MQTT 5 user property), each once.
fn distinct_ids(messages: &[Message]) -> BTreeSet<String> {
    messages
        .iter()
        .filter_map(|m| {
            m.user_properties
                .iter()
                .find(|(k, _)| k == "weir-id")
                .map(|(_, v)| v.clone())
        })
        .collect()
}

/// Checks every reading of `0..n` arrived once after dedup by id, in order per sensor.
fn assert_each_once(messages: &[Message], n: usize) {
    let mut seen = BTreeSet::new();
    let mut readings = BTreeSet::new();
    let mut last = std::collections::HashMap::<String, i64>::new();
    for m in messages {
        let p: Json = serde_json::from_slice(&m.payload).unwrap();
        if !seen.insert(p["id"].as_str().unwrap().to_owned()) {
            continue;
        }
        let key = p["key"].as_str().unwrap().to_owned();
        let seq = p["fields"]["seq"]
            .as_i64()
            .or(p["seq"].as_i64())
            .expect("seq");
        let index = seq as usize * 20 + key[1..].parse::<usize>().unwrap();
        assert!(readings.insert(index), "reading {index} arrived twice");
        let previous = last.insert(key.clone(), seq).unwrap_or(-1);
        assert!(seq > previous, "{key}: {seq} arrived after {previous}");
    }
    let missing: Vec<usize> = (0..n).filter(|i| !readings.contains(i)).collect();
    assert!(missing.is_empty(), "readings never arrived: {missing:?}");
    assert_eq!(readings.len(), n, "every reading once");
}

/// The last `key=N` weir logged on stderr.
fn last_logged(weir: &WeirProcess, key: &str) -> Option<u64> {
    let stderr = weir.stderr();
    let (_, tail) = stderr.rsplit_once(&format!("{key}="))?;
    tail.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The last `lines` lines of a log.
fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `GET path` on weir's admin API, timed.
fn admin_get(address: &str, path: &str) -> (Duration, weir::admin::client::Response) {
    let started = Instant::now();
    let response =
        weir::admin::client::get(address, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (started.elapsed(), response)
}

/// Polls `/status` until `done` holds for it (or panics after `timeout`).
fn wait_status(address: &str, timeout: Duration, what: &str, done: impl Fn(&Json) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, r) = admin_get(address, "/status");
        let status = r.json().unwrap();
        if done(&status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; /status: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A metric's value in Prometheus text (the first line with this name and labels).
fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)?
            .strip_prefix(' ')?
            .parse()
            .ok()
    })
}

/// The probe's full disk: `data_dir` on a 4 MiB tmpfs with the uplink down while a publisher
/// sends more than fits. Weir stops taking input (the sensors' broker keeps it), keeps
/// answering its admin API promptly, restarts while the disk is full, and once the uplink is
/// back delivers everything it held, deletes it, takes the rest of the input, and loses nothing:
/// every reading arrives upstream once after dedup by id, in order per sensor.
#[test]
fn a_full_disk_holds_input_back_answers_restarts_and_loses_nothing() {
    let disk = Tmpfs::mount("weir-disk-full", "4m");
    let sensors = Mosquitto::start();
    let cloud = Mosquitto::start();
    let proxy = Proxy::start(cloud.addr());
    proxy.down();
    let dir = TempDir::new("weir-disk-full-config");
    let data = disk.path().join("data");
    let config = relay_config(dir.path(), &data, sensors.port(), proxy.port());
    let upstream = Collector::subscribe(cloud.port(), "relay/#");
    let mut weir = start_weir(&config);
    let admin = weir.admin_address(START);

    // ~1 KiB readings: more than 3 MiB of them, more than the tmpfs holds besides the reserve.
    let n = 6_000;
    let input: Vec<_> = (0..n).map(|i| reading(i, 900)).collect();
    let port = sensors.port();
    let feed = input.clone();
    let publisher =
        std::thread::spawn(move || weir_tests::mqtt_client::publish_all(port, &feed, 1));
    weir.wait_for_stderr("the disk is full", Duration::from_secs(180));
    publisher.join().unwrap();
    let taken_before_restart = last_logged(&weir, "messages_in").unwrap_or(0);
    assert!(
        (taken_before_restart as usize) < n,
        "the disk should fill before weir takes all {n} readings"
    );

    // While the disk is full, the admin API answers at once, and says so.
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let (took, r) = admin_get(&admin, "/status");
        slowest = slowest.max(took);
        assert!(took < Duration::from_secs(2), "/status took {took:?}");
        let status = r.json().unwrap();
        assert_eq!(status["store"]["disk_full"], true, "{status}");
        assert!(
            status["pipelines"].is_array(),
            "the engine answered: {status}"
        );
        let (took, r) = admin_get(&admin, "/metrics");
        assert!(took < Duration::from_secs(2), "/metrics took {took:?}");
        assert_eq!(
            metric(&r.body, "weir_store_disk_full"),
            Some(1.0),
            "{}",
            r.body
        );
        slowest = slowest.max(took);
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!("with the disk full, /status and /metrics answered within {slowest:?}");

    // A restart while the disk is full succeeds. (It may not subscribe at once: while the disk
    // is full it takes no input, and the broker's queue for it may fill its ingest queue before
    // the SUBACK comes through; it runs, and its admin API answers.)
    assert!(weir.terminate().success(), "{}", weir.stderr());
    let first_stderr = weir.stderr();
    let mut weir = WeirProcess::spawn(
        &["run", config.to_str().unwrap()],
        &[("WEIR_LOG", "weir=info")],
    );
    weir.wait_for_stderr("weir is running", START);
    let admin = weir.admin_address(START);
    let (took, r) = admin_get(&admin, "/status");
    assert!(took < Duration::from_secs(2), "/status took {took:?}");
    assert_eq!(r.json().unwrap()["store"]["disk_full"], true);

    // The uplink comes back: everything goes upstream, once, and the outbox empties.
    proxy.up();
    let deadline = Instant::now() + Duration::from_secs(300);
    while distinct_ids(&upstream.messages()).len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} records arrived upstream; weir's log:\n{}",
            distinct_ids(&upstream.messages()).len(),
            tail(&weir.stderr(), 60)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_each_once(&upstream.messages(), n);
    wait_status(
        &admin,
        Duration::from_secs(60),
        "an empty outbox and room on the disk",
        |s| s["outbox"]["records"] == 0 && s["store"]["disk_full"] == false,
    );
    let (_, r) = admin_get(&admin, "/metrics");
    assert!(
        metric(&r.body, "weir_store_compactions_total").unwrap_or(0.0) >= 1.0,
        "the file gave space back: {}",
        r.body
    );
    assert!(weir.terminate().success(), "{}", weir.stderr());

    // The logs said it, at a bounded rate: not a line per retry.
    for stderr in [&first_stderr, &weir.stderr()] {
        let lines = stderr
            .lines()
            .filter(|l| l.contains("disk") || l.contains("no space") || l.contains("input log"))
            .count();
        assert!(lines <= 30, "{lines} lines about the full disk:\n{stderr}");
    }
    assert!(
        weir.stderr().contains("ingest resumes"),
        "{}",
        weir.stderr()
    );
}

/// Runs weir with the uplink down until it holds `input` in its outbox, then stops it.
fn fill_outbox(config: &Path, sensors: u16, input: &[(String, Vec<u8>)]) {
    let mut weir = start_weir(config);
    weir_tests::mqtt_client::publish_all(sensors, input, 1);
    weir_tests::process::poll_until(
        "weir to hold every record in its outbox",
        Duration::from_secs(60),
        || last_logged(&weir, "outbox") == Some(input.len() as u64),
    );
    assert!(weir.terminate().success(), "{}", weir.stderr());
}

/// A record whose bytes changed on disk is never published: weir sets it aside (counted,
/// logged at ERROR with its seq) and delivers the records after it, and the outbox empties.
#[test]
fn a_damaged_record_in_the_store_is_set_aside_and_the_records_after_it_arrive() {
    let sensors = Mosquitto::start();
    let cloud = Mosquitto::start();
    let proxy = Proxy::start(cloud.addr());
    proxy.down();
    let dir = TempDir::new("weir-disk-damaged");
    let data = dir.path().join("data");
    let config = relay_config(dir.path(), &data, sensors.port(), proxy.port());
    // 200 readings, and in the middle one from a sensor of its own, whose record is damaged.
    let mut input: Vec<_> = (0..200).map(|i| reading(i, 10)).collect();
    let marked = json!({"sensor": "damage-me", "ts": BASE_MS + 100, "seq": 0});
    input.insert(
        100,
        ("sensors/damage-me".into(), marked.to_string().into_bytes()),
    );
    fill_outbox(&config, sensors.port(), &input);

    // Flip one byte of the record's topic wherever the file holds it (old copies in freed
    // pages included).
    let file = data.join(weir::store::FILE_NAME);
    let mut bytes = std::fs::read(&file).unwrap();
    let needle = b"relay/damage-me";
    let mut hits = 0;
    let mut at = 0;
    while let Some(i) = bytes[at..].windows(needle.len()).position(|w| w == needle) {
        bytes[at + i + 6] ^= 0x01; // "damage-me" → "eamage-me"
        hits += 1;
        at += i + needle.len();
    }
    assert!(hits >= 1, "the record's topic is in the file");
    std::fs::write(&file, &bytes).unwrap();

    let upstream = Collector::subscribe(cloud.port(), "relay/#");
    proxy.up();
    let mut weir = start_weir(&config);
    let admin = weir.admin_address(START);
    let got = upstream.wait_until(|m| distinct_ids(m).len() >= 200, Duration::from_secs(120));
    wait_status(&admin, Duration::from_secs(60), "an empty outbox", |s| {
        s["outbox"]["records"] == 0
    });
    assert!(
        got.iter().all(|m| m.topic.starts_with("relay/s")),
        "only the good records went upstream: {:?}",
        got.iter().map(|m| &m.topic).collect::<BTreeSet<_>>()
    );
    assert_each_once(&got, 200);
    let (_, r) = admin_get(&admin, "/metrics");
    assert_eq!(
        metric(&r.body, "weir_outbox_set_aside_total{reason=\"damaged\"}"),
        Some(1.0),
        "{}",
        r.body
    );
    assert_eq!(metric(&r.body, "weir_outbox_set_aside_records"), Some(1.0));
    assert!(weir.terminate().success(), "{}", weir.stderr());
    let stderr = weir.stderr();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("damaged") && l.contains("seq=")),
        "an ERROR names the damaged record:\n{stderr}"
    );

    // It is kept, with its bytes, in the store's set-aside table.
    let store = Store::open(&data, store_options()).unwrap();
    let aside = store.read_set_aside(None, 10).unwrap();
    assert_eq!(aside.len(), 1);
    assert!(
        aside[0].reason.starts_with("damaged"),
        "{}",
        aside[0].reason
    );
    assert!(!aside[0].stored.is_empty());
}

fn store_options() -> StoreOptions {
    StoreOptions {
        max_outbox_bytes: u64::MAX,
        on_full: OnFull::Block,
        disk_reserve_bytes: weir::store::DEFAULT_DISK_RESERVE_BYTES,
    }
}

/// Records already in a store that the upstream broker would refuse (no pipeline makes them any
/// more, but a store may hold them): an empty topic, a wildcard, a NUL, a 70 000-byte topic, and
/// a packet over the broker's Maximum Packet Size (Mosquitto's `max_packet_size`, which it
/// announces over MQTT 5). None is sent, none blocks the records behind it: each is set aside,
/// counted and logged at ERROR with its seq and id (long topics elided), and the outbox drains
/// to empty.
#[test]
fn records_the_broker_would_refuse_are_set_aside_and_the_rest_flows() {
    let sensors = Mosquitto::start();
    let cloud = Mosquitto::start_with_config("max_packet_size 4096");
    let proxy = Proxy::start(cloud.addr());
    proxy.down();
    let dir = TempDir::new("weir-disk-refused");
    let data = dir.path().join("data");
    let config = relay_config(dir.path(), &data, sensors.port(), proxy.port());
    let first: Vec<_> = (0..100).map(|i| reading(i, 10)).collect();
    fill_outbox(&config, sensors.port(), &first);

    // Append the hostile records after them, as a checkpoint would, then one good record.
    let store = Store::open(&data, store_options()).unwrap();
    let (checkpoint, through) = store.load_checkpoint().unwrap().expect("a checkpoint");
    // Ids whose time part says which is which: 0xbad0 + n for the bad ones, 0x600d for the good.
    let id = |n: u64| RecordId::new(n, &[0; 8]).to_string();
    let bad = |topic: String, payload: usize, n: u64| OutboxRecord {
        topic,
        id: RecordId::new(n, &[0; 8]),
        payload: json!({"id": id(n), "pad": "p".repeat(payload)})
            .to_string()
            .into_bytes(),
    };
    let hostile = vec![
        bad(String::new(), 10, 0xbad0),
        bad("relay/+".into(), 10, 0xbad1),
        bad("relay/a\0b".into(), 10, 0xbad2),
        bad(format!("relay/{}", "k".repeat(70_000)), 10, 0xbad3),
        bad("relay/big".into(), 10_000, 0xbad4),
        bad("relay/after".into(), 10, 0x600d),
    ];
    let bad_ids: Vec<String> = (0xbad0..=0xbad4).map(id).collect();
    store
        .commit_checkpoint(&checkpoint, through, &hostile, &[])
        .unwrap();
    assert_eq!(store.outbox_len(), 106);
    drop(store);

    let upstream = Collector::subscribe(cloud.port(), "relay/#");
    proxy.up();
    let mut weir = start_weir(&config);
    let admin = weir.admin_address(START);
    // And more readings after them.
    let second: Vec<_> = (100..150).map(|i| reading(i, 10)).collect();
    weir_tests::mqtt_client::publish_all(sensors.port(), &second, 1);
    let got = upstream.wait_until(|m| distinct_ids(m).len() >= 151, Duration::from_secs(120));
    wait_status(&admin, Duration::from_secs(60), "an empty outbox", |s| {
        s["outbox"]["records"] == 0
    });
    let ids = distinct_ids(&got);
    assert!(ids.contains(&id(0x600d)), "the record after them arrived");
    assert!(
        !ids.iter().any(|i| bad_ids.contains(i)),
        "no refused record was sent: {ids:?}"
    );
    let readings: Vec<Message> = got
        .into_iter()
        .filter(|m| m.topic != "relay/after")
        .collect();
    assert_each_once(&readings, 150);

    let (_, r) = admin_get(&admin, "/metrics");
    assert_eq!(
        metric(&r.body, "weir_outbox_set_aside_total{reason=\"refused\"}"),
        Some(5.0),
        "{}",
        r.body
    );
    let (_, r) = admin_get(&admin, "/status");
    assert_eq!(r.json().unwrap()["outbox"]["set_aside"], 5);
    assert!(weir.terminate().success(), "{}", weir.stderr());
    let stderr = weir.stderr();
    for id in &bad_ids {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("ERROR") && l.contains(id.as_str()) && l.contains("seq=")),
            "an ERROR names {id}:\n{stderr}"
        );
    }
    assert!(
        stderr.lines().all(|l| l.len() < 4_000),
        "long topics are elided in the log"
    );
    // Connected once: no refused record cost the connection.
    assert!(
        !stderr.contains("upstream broker connection failed"),
        "{stderr}"
    );
}
