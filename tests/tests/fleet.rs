//! Fleet rollouts over the upstream broker: three weir processes and one real Mosquitto; plugins
//! rolled out, signed, with `weir fleet`; the gateways' outcomes read from their retained
//! statuses.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use serde_json::{Value as Json, json};
use weir::fleet::{Manifest, Policy, SigningKey, Topics};
use weir_tests::mosquitto::Mosquitto;
use weir_tests::mqtt_client::Publisher;
use weir_tests::process::{TempDir, WeirProcess};

const START: Duration = Duration::from_secs(120);
const GATEWAYS: [&str; 3] = ["barn-1", "barn-2", "barn-3"];

fn config(dir: &Path, port: u16, id: &str, public_key: &str) -> std::path::PathBuf {
    let plugin = weir_tests::plugin_path("key_stats_v1");
    let text = format!(
        "version = 1\n\n[source]\nbroker = \"127.0.0.1:{port}\"\nclient_id = \"weir-{id}\"\n\n\
         [upstream]\nbroker = \"127.0.0.1:{port}\"\nclient_id = \"weir-up-{id}\"\n\n\
         [storage]\ndata_dir = {data:?}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [fleet]\nid = \"{id}\"\nkeys = [\"{public_key}\"]\nartifact_timeout = \"30s\"\n\n\
         [[pipeline]]\nname = \"relay\"\ntopics = [\"sensors/{id}/#\"]\n\n[pipeline.decode]\n\
         json = {{ key = \"sensor\", time = \"ts\", time_format = \"ms\" }}\n\n\
         [[pipeline.transform]]\nplugin = {plugin:?}\n\n[pipeline.output]\ntopic = \"relay/{id}/{{key}}\"\n",
        data = dir.join(format!("data-{id}")),
    );
    let path = dir.join(format!("{id}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn endpoint(port: u16) -> weir::mqtt::Endpoint {
    weir::mqtt::Endpoint {
        host: "127.0.0.1".into(),
        port,
        // One id per connection: the tests of this file run at once, and a broker drops a
        // connection when another takes its client id.
        client_id: {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("fleet-test-{}-{n}", std::process::id())
        },
        protocol: weir::mqtt::Protocol::V5,
        keep_alive: Duration::from_secs(30),
        clean_session: true,
        username: None,
        password: None,
        tls: None,
        reconnect: weir::mqtt::Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        },
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Waits until the retained status of `id` satisfies `done`; returns it.
fn wait_status(port: u16, id: &str, what: &str, done: impl Fn(&Json) -> bool) -> Json {
    let topics = Topics::new("weir/fleet");
    let seen = runtime()
        .block_on(weir::fleet::client::watch(
            &endpoint(port),
            &topics,
            &[id.to_owned()],
            Duration::from_secs(60),
            |seen| seen.get(id).is_some_and(&done),
        ))
        .unwrap();
    let status = seen.get(id).cloned().unwrap_or(Json::Null);
    assert!(done(&status), "{id}: {what}; last status: {status:#}");
    status
}

/// `weir fleet ARGS`: whether it succeeded, stdout, and stderr.
fn fleet(args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["fleet"];
    all.extend_from_slice(args);
    let mut p = WeirProcess::spawn(&all, &[]);
    let status = p.wait(Duration::from_secs(180));
    (status.success(), p.stdout(), p.stderr())
}

/// The lines `weir fleet rollout` printed, by gateway: (outcome, detail).
fn outcomes(stdout: &str) -> BTreeMap<String, (String, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, '\t');
            Some((
                parts.next()?.to_owned(),
                (
                    parts.next()?.to_owned(),
                    parts.next().unwrap_or("").to_owned(),
                ),
            ))
        })
        .collect()
}

fn sha256(path: &Path) -> String {
    weir::runtime::sha256_hex(&std::fs::read(path).unwrap())
}

fn live_sha(status: &Json) -> String {
    status["plugins"][0]["sha256"].as_str().unwrap().to_owned()
}

/// Readings for every gateway until stopped; each carries a field `boom`, which the
/// hostile-panic plugin panics on.
fn feed(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut p = Publisher::connect(port);
        let mut i = 0i64;
        while !stop.load(SeqCst) {
            for id in GATEWAYS {
                let sensor = format!("s{}", i % 10);
                let body = json!({"sensor": sensor, "ts": 1_700_000_000_000i64 + i, "value": (i % 7) as f64, "boom": 1});
                p.publish(&format!("sensors/{id}/{sensor}"), body.to_string());
            }
            i += 1;
            // A steady trickle: the shadows need events to judge.
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

#[test]
fn signed_rollouts_promote_on_every_gateway_roll_back_a_dead_lettering_candidate_and_refuse_the_rest()
 {
    weir_tests::plugins();
    let broker = Mosquitto::start();
    let port = broker.port();
    let broker_arg = format!("127.0.0.1:{port}");
    let dir = TempDir::new("weir-fleet");
    let key = dir.path().join("fleet.key");
    let (ok, public_key, said) = fleet(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(ok && said.contains("[fleet]"), "{said}");
    let public_key = public_key.trim().to_owned();
    let (ok, _, said) = fleet(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(!ok && said.contains("never overwritten"), "{said}");
    let other_key = dir.path().join("other.key");
    assert!(fleet(&["keygen", "--out", other_key.to_str().unwrap()]).0);

    let mut weirs: Vec<WeirProcess> = GATEWAYS
        .iter()
        .map(|id| {
            let config = config(dir.path(), port, id, &public_key);
            WeirProcess::spawn(
                &["run", config.to_str().unwrap()],
                &[("WEIR_LOG", "weir=info")],
            )
        })
        .collect();
    for w in &mut weirs {
        w.wait_for_stderr("fleet: connected", START);
    }
    let v1 = weir_tests::plugin_path("key_stats_v1");
    let v2 = weir_tests::plugin_path("key_stats_v2");
    for id in GATEWAYS {
        let status = wait_status(port, id, "online, running v1", |s| {
            s["online"] == true && s["plugins"][0]["sha256"].is_string()
        });
        assert_eq!(live_sha(&status), sha256(&v1));
        assert_eq!(status["uplink"]["connected"], true, "{status:#}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = feed(port, stop.clone());

    let gateways = GATEWAYS.join(",");
    let rollout = |plugin: &Path, extra: &[&str]| {
        let mut args = vec![
            "rollout",
            plugin.to_str().unwrap(),
            "--broker",
            &broker_arg,
            "--pipeline",
            "relay",
            "--step",
            "transform[0]",
            "--shadow",
            "2s",
            "--min-events",
            "20",
            "--wait",
            "90s",
        ];
        if !extra.contains(&"--key") {
            args.extend_from_slice(&["--key", key.to_str().unwrap()]);
        }
        args.extend_from_slice(extra);
        fleet(&args)
    };
    // A candidate that panics on every event dead-letters all it sees: rolled back everywhere,
    // v1 stays live.
    let hostile = weir_tests::plugin_path("hostile_panic");
    let (ok, out, said) = rollout(&hostile, &["--gateway", &gateways]);
    let ends = outcomes(&out);
    assert!(!ok, "not promoted: {out}\n{said}");
    for id in GATEWAYS {
        assert_eq!(ends[id].0, "rolled_back", "{out}");
        assert!(ends[id].1.contains("error rate above"), "{out}");
        let status = wait_status(port, id, "rolled back", |s| {
            s["rollout"]["state"] == "rolled_back"
        });
        assert_eq!(live_sha(&status), sha256(&v1), "{status:#}");
    }

    // A rollout that promotes on all three: v2 migrates v1's state in the shadow.
    let (ok, out, said) = rollout(&v2, &["--gateway", &gateways]);
    let ends = outcomes(&out);
    assert!(ok, "all promoted: {out}\n{said}");
    for id in GATEWAYS {
        assert_eq!(ends[id].0, "promoted", "{out}");
        assert!(ends[id].1.contains("events in the shadow"), "{out}");
        let status = wait_status(port, id, "promoted to v2", |s| {
            s["rollout"]["state"] == "promoted"
        });
        assert_eq!(live_sha(&status), sha256(&v2), "{status:#}");
        assert_eq!(
            status["plugins"][0]["previous_sha256"],
            sha256(&v1).as_str()
        );
    }

    // Refusals, on barn-1; each leaves v2 running.
    let g1 = &["--gateway", "barn-1"][..];
    let refused = |out: &str, said: &str, why: &str| {
        let ends = outcomes(out);
        assert_eq!(ends["barn-1"].0, "refused", "{out}\n{said}");
        assert!(ends["barn-1"].1.contains(why), "{why}: {out}");
    };
    // Signed by a key barn-1 does not know.
    let mut args = g1.to_vec();
    args.extend_from_slice(&["--key", other_key.to_str().unwrap()]);
    let (ok, out, said) = rollout(&v1, &args);
    assert!(!ok);
    refused(&out, &said, "does not verify");
    // Replayed: an older sequence number than the last accepted.
    let mut args = g1.to_vec();
    args.extend_from_slice(&["--seq", "5"]);
    let (ok, out, said) = rollout(&v1, &args);
    assert!(!ok);
    refused(&out, &said, "replayed");
    // Of another world than the step's, as its manifest says.
    let p95 = weir_tests::plugin_path("p95_aggregator");
    let (ok, out, said) = rollout(&p95, g1);
    assert!(!ok);
    refused(&out, &said, "wrong world");

    // Crafted messages `weir fleet` would not make.
    let topics = Topics::new("weir/fleet");
    let signer = SigningKey::from_text(&std::fs::read_to_string(&key).unwrap()).unwrap();
    let p95_bytes = std::fs::read(&p95).unwrap();
    let manifest = |seq: u64, gateways: &[&str], bytes: &[u8], world: &str| Manifest {
        seq,
        gateways: gateways.iter().map(|g| g.to_string()).collect(),
        pipeline: "relay".into(),
        step: "transform[0]".into(),
        world: world.into(),
        sha256: weir::runtime::sha256_hex(bytes),
        size: bytes.len() as u64,
        chunks: bytes.len().div_ceil(weir::fleet::CHUNK_BYTES) as u32,
        policy: Policy {
            shadow_ms: 1_000,
            max_dead_letter_rate: 1.0,
            max_error_rate: 1.0,
            min_events: 1,
        },
    };
    let publish = |envelope: &weir::fleet::Envelope, artifact: Option<&[u8]>| {
        runtime()
            .block_on(weir::fleet::client::publish(
                &endpoint(port),
                &topics,
                artifact,
                Some((envelope, &["barn-1".to_owned()])),
                Duration::from_secs(30),
            ))
            .unwrap();
    };
    let now = weir_tests::bench::now_ms() * 10;
    let has_error = |seq: u64, why: &'static str| {
        move |s: &Json| {
            s["errors"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|e| e["seq"] == seq && e["error"].as_str().unwrap().contains(why))
            })
        }
    };
    // Unsigned.
    let mut envelope = signer.sign(&manifest(now, &["barn-1"], &p95_bytes, "transformer"));
    envelope.signature.clear();
    publish(&envelope, None);
    wait_status(
        port,
        "barn-1",
        "unsigned refused",
        has_error(now, "unsigned"),
    );
    // Signed for another gateway, copied to barn-1's topic.
    let envelope = signer.sign(&manifest(now + 1, &["barn-2"], &p95_bytes, "transformer"));
    publish(&envelope, None);
    wait_status(
        port,
        "barn-1",
        "not for barn-1",
        has_error(now + 1, "not for"),
    );
    // Its manifest says transformer, but the plugin is an aggregator: the load refuses it.
    let envelope = signer.sign(&manifest(now + 2, &["barn-1"], &p95_bytes, "transformer"));
    publish(&envelope, Some(&p95_bytes));
    let status = wait_status(port, "barn-1", "wrong world refused", |s| {
        s["rollout"]["seq"] == now + 2 && s["rollout"]["state"] == "refused"
    });
    assert!(
        status["rollout"]["detail"]
            .as_str()
            .unwrap()
            .contains("implements the aggregator world"),
        "{status:#}"
    );
    assert_eq!(live_sha(&status), sha256(&v2), "{status:#}");
    // Another gateway saw none of it.
    let status = wait_status(port, "barn-2", "untouched", |s| s["online"] == true);
    assert!(
        status["errors"].as_array().unwrap().is_empty(),
        "{status:#}"
    );

    // A gateway that stops says so; started again, it runs what it was rolled out to, and the
    // retained rollout on its topic is not taken twice.
    let mut barn3 = weirs.pop().unwrap();
    assert!(barn3.terminate().success(), "{}", barn3.stderr());
    let before = wait_status(port, "barn-3", "offline", |s| s["online"] == false);
    assert_eq!(before["rollout"]["state"], "promoted", "{before:#}");
    let config3 = dir.path().join("barn-3.toml");
    let mut barn3 = WeirProcess::spawn(
        &["run", config3.to_str().unwrap()],
        &[("WEIR_LOG", "weir=info")],
    );
    barn3.wait_for_stderr("fleet: connected", START);
    let after = wait_status(port, "barn-3", "online again", |s| s["online"] == true);
    assert_eq!(live_sha(&after), sha256(&v2), "{after:#}");
    assert_eq!(after["accepted_seq"], before["accepted_seq"], "{after:#}");
    assert_eq!(
        after["rollout"], before["rollout"],
        "not run again: {after:#}"
    );
    let (ok, out, said) = rollout(&v1, &["--gateway", "barn-3", "--seq", "6"]);
    assert!(!ok);
    let ends = outcomes(&out);
    assert_eq!(ends["barn-3"].0, "refused", "{out}\n{said}");
    assert!(ends["barn-3"].1.contains("replayed"), "{out}");
    weirs.push(barn3);

    stop.store(true, SeqCst);
    feeder.join().unwrap();
    for w in &mut weirs {
        assert!(w.terminate().success(), "{}", w.stderr());
    }
}
