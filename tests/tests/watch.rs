//! `watch = true` on a plugin step, live: `weir run` between real Mosquitto brokers, a publisher
//! streaming, and the step's plugin file replaced under it (written to a temporary name, then
//! renamed over). A new version is swapped in with no message lost or counted twice and the keyed
//! state carried over; a version that fails its init is refused with the reason (ERROR) and the
//! running version keeps running.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use serde_json::{Value as Json, json};
use weir_tests::mosquitto::Mosquitto;
use weir_tests::mqtt_client::{Collector, Message, Publisher};
use weir_tests::process::{TempDir, WeirProcess};

/// How long weir may take to start (the first start compiles the plugins).
const START: Duration = Duration::from_secs(120);
const BASE_MS: i64 = 1_700_000_040_000;
const SENSORS: usize = 50;

/// Replaces `to` with a copy of `from` the way an operator should: a new file, then a rename.
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("wasm.tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// Reading `i`: sensor `s{i % 50}`, numbered per sensor.
fn reading(i: usize) -> (String, Vec<u8>) {
    let sensor = format!("s{}", i % SENSORS);
    (
        format!("sensors/{sensor}"),
        json!({"sensor": sensor, "ts": BASE_MS + i as i64, "seq": i / SENSORS})
            .to_string()
            .into_bytes(),
    )
}

fn record(m: &Message) -> Json {
    serde_json::from_slice(&m.payload).unwrap()
}

/// A field of a forwarded event, whether the record nests fields or not.
fn field(record: &Json, name: &str) -> Option<i64> {
    record["fields"][name].as_i64().or(record[name].as_i64())
}

fn distinct(messages: &[Message]) -> usize {
    messages
        .iter()
        .map(|m| record(m)["id"].as_str().unwrap().to_owned())
        .collect::<BTreeSet<_>>()
        .len()
}

/// The sha256 of the step's running plugin, from the admin API.
fn running_sha256(admin: &str) -> String {
    let body = weir::admin::client::get(admin, "/plugins").unwrap().body;
    let plugins: Json = serde_json::from_str(&body).unwrap();
    plugins[0]["sha256"].as_str().unwrap().to_owned()
}

fn sha256_of(path: &Path) -> String {
    let mut p = WeirProcess::spawn(&["plugin", "check", path.to_str().unwrap()], &[]);
    assert!(p.wait(Duration::from_secs(120)).success(), "{}", p.stderr());
    let out = p.stdout() + &p.stderr();
    out.split(|c: char| !c.is_ascii_hexdigit())
        .find(|w| w.len() == 64)
        .unwrap_or_else(|| panic!("a sha256 in {out}"))
        .to_owned()
}

#[test]
fn a_watched_plugin_file_is_swapped_when_it_changes_and_a_broken_one_is_refused() {
    weir_tests::plugins();
    let sensors_broker = Mosquitto::start();
    let cloud = Mosquitto::start();
    let dir = TempDir::new("weir-watch");
    let counter = |v: &str| weir_tests::plugin_path(&format!("counter_{v}"));
    let plugin_dir = dir.path().join("plugins");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    let plugin = plugin_dir.join("counter.wasm");
    std::fs::copy(counter("v1"), &plugin).unwrap();
    let text = format!(
        "version = 1\n\n[source]\nbroker = \"127.0.0.1:{}\"\nclient_id = \"weir-watch-test\"\n\n\
         [upstream]\nbroker = \"127.0.0.1:{}\"\n\n[storage]\ndata_dir = {:?}\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[pipeline]]\nname = \"relay\"\ntopics = [\"sensors/#\"]\n\n[pipeline.decode]\n\
         json = {{ key = \"sensor\", time = \"ts\", time_format = \"ms\" }}\n\n\
         [[pipeline.transform]]\nplugin = \"plugins/counter.wasm\"\nwatch = true\n\n\
         [pipeline.output]\ntopic = \"relay/{{key}}\"\n",
        sensors_broker.port(),
        cloud.port(),
        dir.path().join("data"),
    );
    let config = dir.path().join("watch.toml");
    std::fs::write(&config, text).unwrap();
    let upstream = Collector::subscribe(cloud.port(), "relay/#");
    let mut weir = WeirProcess::spawn(
        &["run", config.to_str().unwrap()],
        &[("WEIR_LOG", "weir=info")],
    );
    weir.wait_for_stderr("subscribed", START);
    weir.wait_for_stderr("watching the plugin file", START);
    let admin = weir.admin_address(START);
    let (v1_sha, v2_sha) = (sha256_of(&counter("v1")), sha256_of(&counter("v2")));
    assert_eq!(running_sha256(&admin), v1_sha);

    // The publisher streams (~2 000 messages/s) until told how many to send in all.
    let limit = Arc::new(AtomicUsize::new(usize::MAX));
    let published = Arc::new(AtomicUsize::new(0));
    let port = sensors_broker.port();
    let publisher = {
        let (limit, published) = (limit.clone(), published.clone());
        std::thread::spawn(move || {
            let mut p = Publisher::connect(port);
            let mut i = 0;
            while i < limit.load(SeqCst).min(200_000) {
                let (t, m) = reading(i);
                p.publish(&t, m);
                i += 1;
                published.store(i, SeqCst);
                if i.is_multiple_of(50) {
                    std::thread::sleep(Duration::from_millis(25));
                }
            }
            p.wait_all_acked(Duration::from_secs(120));
            i
        })
    };

    // v2 over the file, under load: swapped in, logged with both hashes.
    upstream.wait_until(|m| m.len() >= 1_000, Duration::from_secs(60));
    replace(&counter("v2"), &plugin);
    weir.wait_for_stderr(
        "the watched plugin file changed: swapped",
        Duration::from_secs(30),
    );
    let log = weir.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("the watched plugin file changed: swapped"))
        .unwrap();
    assert!(
        line.contains("INFO") && line.contains(&v1_sha) && line.contains(&v2_sha),
        "INFO, old and new sha256: {line}"
    );
    println!("{line}");
    assert_eq!(running_sha256(&admin), v2_sha);
    upstream.wait_until(
        |m| m.iter().any(|m| field(&record(m), "version") == Some(2)),
        Duration::from_secs(30),
    );

    // A version that fails its init: refused with the reason at ERROR; v2 keeps running.
    let before = upstream.messages().len();
    replace(&weir_tests::plugin_path("broken_init"), &plugin);
    weir.wait_for_stderr("the new version is refused", Duration::from_secs(30));
    let log = weir.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("the new version is refused"))
        .unwrap();
    assert!(
        line.contains("ERROR") && line.contains("this version refuses to start"),
        "ERROR with the reason: {line}"
    );
    println!("{line}");
    assert_eq!(running_sha256(&admin), v2_sha, "v2 keeps running");
    // Not retried while the file stays as it is.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        weir.stderr().matches("the new version is refused").count(),
        1,
        "a refused version is not tried again until the file changes"
    );
    limit.store(published.load(SeqCst) + 1_000, SeqCst);
    let total = publisher.join().unwrap();
    let got = upstream.wait_until(|m| distinct(m) >= total, Duration::from_secs(120));
    assert!(got.len() > before);

    // Every message once (after dropping resends by id), in order per key; `seen` counts 1, 2,
    // 3, ... per key across the swap; the versions run 1, then 2 to the end.
    let mut ids = BTreeSet::new();
    let mut seen: HashMap<String, i64> = HashMap::new();
    let mut last_seq: HashMap<String, i64> = HashMap::new();
    let mut versions: Vec<i64> = Vec::new();
    for m in &got {
        let r = record(m);
        if !ids.insert(r["id"].as_str().unwrap().to_owned()) {
            continue;
        }
        let key = r["key"].as_str().unwrap().to_owned();
        let seq = field(&r, "seq").expect("seq");
        let prev = last_seq.insert(key.clone(), seq).unwrap_or(-1);
        assert_eq!(seq, prev + 1, "key {key}: every reading once, in order");
        let count = field(&r, "seen").expect("counted");
        let last = seen.insert(key.clone(), count).unwrap_or(0);
        assert_eq!(
            count,
            last + 1,
            "key {key}: the count continues across the swap"
        );
        let v = field(&r, "version").expect("a version tag");
        if versions.last() != Some(&v) {
            versions.push(v);
        }
    }
    assert_eq!(ids.len(), total, "every reading exactly once upstream");
    assert_eq!(versions, vec![1, 2], "v1, then v2 to the end");
    let metrics = weir::admin::client::get(&admin, "/metrics").unwrap().body;
    assert!(
        metrics.lines().any(|l| l == "weir_swaps_total 1"),
        "one swap counted:\n{metrics}"
    );
    assert!(weir.terminate().success());
}
