//! `weir run` against real Mosquitto brokers that ask for more than plain anonymous MQTT 5: TLS
//! (a test CA, a client certificate upstream), user names and passwords (a wrong one too), and
//! MQTT 3.1.1 on both sides with QoS 2 on the way in.
//!
//! Each broker has two listeners (`weir_tests::mosquitto::BrokerOptions`): the secure one, which
//! weir uses, and a plain anonymous one for the test's own publishers and subscribers.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use weir_tests::mosquitto::{BrokerOptions, Mosquitto, TlsFiles};
use weir_tests::mqtt_client::{Collector, Message};
use weir_tests::process::{TempDir, WeirProcess};

/// How long weir may take to start (the first start builds the binary).
const START: Duration = Duration::from_secs(120);

const BASE_MS: i64 = 1_700_000_040_000;

/// `version`, `[source]`, `[upstream]`, `[storage]` and `[admin]` for the test brokers; `extra`
/// holds more lines, each `section.field = value`.
fn live_sections(dir: &Path, sensors: u16, upstream: u16, extra: &str) -> String {
    let mut source = vec![
        format!("broker = \"127.0.0.1:{sensors}\""),
        "client_id = \"weir-test\"".to_owned(),
    ];
    let mut up = vec![format!("broker = \"127.0.0.1:{upstream}\"")];
    let mut storage = vec![format!("data_dir = {:?}", dir.join("data"))];
    let mut admin = vec!["listen = \"127.0.0.1:0\"".to_owned()];
    for line in extra.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (section, field) = line.split_once('.').expect("section.field = value");
        match section {
            "source" => source.push(field.to_owned()),
            "upstream" => up.push(field.to_owned()),
            "storage" => storage.push(field.to_owned()),
            "admin" => admin.push(field.to_owned()),
            other => panic!("no section {other}"),
        }
    }
    format!(
        "version = 1\n\n[source]\n{}\n\n[upstream]\n{}\n\n[storage]\n{}\n\n[admin]\n{}\n",
        source.join("\n"),
        up.join("\n"),
        storage.join("\n"),
        admin.join("\n")
    )
}

/// A pipeline without a window: every reading goes upstream as it is, keyed by sensor.
fn relay_config(dir: &Path, sensors: u16, upstream: u16, extra: &str) -> PathBuf {
    let text = format!(
        "{}\n[[pipeline]]\nname = \"relay\"\ntopics = [\"sensors/#\"]\n\n[pipeline.decode]\n\
         json = {{ key = \"sensor\", time = \"ts\", time_format = \"ms\" }}\n\n\
         [pipeline.output]\ntopic = \"relay/{{key}}\"\n",
        live_sections(dir, sensors, upstream, extra)
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

/// `n` readings from 50 sensors, numbered per sensor.
fn numbered(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let sensor = format!("s{}", i % 50);
            let seq = i / 50;
            (
                format!("sensors/{sensor}"),
                json!({"sensor": sensor, "ts": BASE_MS + i as i64, "seq": seq})
                    .to_string()
                    .into_bytes(),
            )
        })
        .collect()
}

/// The record id in an upstream payload.
fn payload_id(m: &Message) -> Option<String> {
    let v: Json = serde_json::from_slice(&m.payload).ok()?;
    Some(v["id"].as_str()?.to_owned())
}

fn distinct_ids(messages: &[Message]) -> usize {
    messages
        .iter()
        .filter_map(payload_id)
        .collect::<BTreeSet<_>>()
        .len()
}

/// Checks every reading arrived once after dedup by the payload's id, and per key in order of
/// first arrival.
fn assert_all_in_order(messages: &[Message], n: usize) {
    let mut seen = BTreeSet::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    for m in messages {
        let p: Json = serde_json::from_slice(&m.payload).unwrap();
        let id = p["id"].as_str().expect("an id in the payload").to_owned();
        if !seen.insert(id) {
            continue;
        }
        let key = p["key"].as_str().unwrap().to_owned();
        let seq = p["fields"]["seq"]
            .as_i64()
            .or(p["seq"].as_i64())
            .expect("seq");
        let prev = last.insert(key.clone(), seq).unwrap_or(-1);
        assert!(seq > prev, "key {key}: {seq} arrived after {prev}");
    }
    assert_eq!(seen.len(), n, "every reading once");
}

fn users(name: &str, password: &str) -> Vec<(String, String)> {
    vec![(name.to_owned(), password.to_owned())]
}

/// Writes `password` (and a newline) to `dir/name`; returns the path.
fn password_file(dir: &Path, name: &str, password: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{password}\n")).unwrap();
    path
}

#[test]
fn tls_and_credentials_on_both_sides() {
    let sensors_broker = Mosquitto::start_with(BrokerOptions {
        tls: Some(TlsFiles {
            require_client_cert: false,
        }),
        users: users("gateway", "field-7"),
    });
    let cloud = Mosquitto::start_with(BrokerOptions {
        tls: Some(TlsFiles {
            require_client_cert: true,
        }),
        users: users("uplink", "cloud-9"),
    });
    let dir = TempDir::new("weir-live-tls");
    let config = relay_config(
        dir.path(),
        sensors_broker.secure_port(),
        cloud.secure_port(),
        &format!(
            "source.username = \"gateway\"\n\
             source.password_file = {:?}\n\
             source.tls = {{ ca_file = {:?} }}\n\
             upstream.username = \"uplink\"\n\
             upstream.password_file = {:?}\n\
             upstream.tls = {{ ca_file = {:?}, client_cert_file = {:?}, client_key_file = {:?} }}",
            password_file(dir.path(), "source.password", "field-7"),
            sensors_broker.ca_file(),
            password_file(dir.path(), "upstream.password", "cloud-9"),
            cloud.ca_file(),
            cloud.client_cert(),
            cloud.client_key(),
        ),
    );
    let upstream = Collector::subscribe(cloud.port(), "relay/#");
    let mut weir = start_weir(&config);
    let input = numbered(2_000);
    weir_tests::mqtt_client::publish_all(sensors_broker.port(), &input, 1);
    let got = upstream.wait_until(|m| distinct_ids(m) >= input.len(), Duration::from_secs(120));
    assert_all_in_order(&got, input.len());
    assert!(
        got.iter()
            .all(|m| m.user_properties.iter().any(|(k, _)| k == "weir-id")),
        "MQTT 5 upstream: the id travels as a user property too"
    );
    assert!(weir.terminate().success(), "{}", weir.stderr());
    // weir went through the secure listeners (the only ones that take these users), over TLS
    // (the only thing they speak).
    for (broker, client, user) in [
        (&sensors_broker, "weir-test", "gateway"),
        (&cloud, "weir-upstream", "uplink"),
    ] {
        let log = broker.log();
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("as {client} ")) && l.contains(&format!("u'{user}'"))),
            "{client} connected as {user}; the broker's log:\n{log}"
        );
    }
}

#[test]
fn wrong_password_is_reported_and_nothing_is_acknowledged() {
    let sensors_broker = Mosquitto::start_with(BrokerOptions {
        tls: None,
        users: users("gateway", "field-7"),
    });
    let cloud = Mosquitto::start();
    let dir = TempDir::new("weir-live-wrongpw");
    let config = relay_config(
        dir.path(),
        sensors_broker.secure_port(),
        cloud.port(),
        &format!(
            "source.username = \"gateway\"\nsource.password_file = {:?}\n\
             source.reconnect = {{ initial = \"50ms\", max = \"500ms\" }}",
            password_file(dir.path(), "source.password", "not-the-password")
        ),
    );
    let upstream = Collector::subscribe(cloud.port(), "#");
    let mut weir = WeirProcess::spawn(
        &["run", config.to_str().unwrap()],
        &[("WEIR_LOG", "weir=info")],
    );
    const FAILED: &str = "source broker connection failed";
    weir.wait_for_stderr(FAILED, START);
    // Readings meanwhile reach the broker but not weir.
    weir_tests::mqtt_client::publish_all(sensors_broker.port(), &numbered(50), 1);
    // weir keeps trying: more attempts are reported, and it is still running.
    weir_tests::process::poll_until("three attempts", Duration::from_secs(30), || {
        weir.stderr().matches(FAILED).count() >= 3
    });
    assert!(
        weir.try_status().is_none(),
        "still running:\n{}",
        weir.stderr()
    );
    let stderr = weir.stderr();
    for line in stderr.lines().filter(|l| l.contains(FAILED)) {
        assert!(line.contains("WARN"), "a warning: {line}");
        assert!(
            line.contains(&format!("127.0.0.1:{}", sensors_broker.secure_port())),
            "names the broker: {line}"
        );
        assert!(
            line.contains("BadUserNamePassword") || line.contains("NotAuthorized"),
            "says why: {line}"
        );
    }
    assert!(
        !stderr.contains("connected to the source broker") && !stderr.contains("subscribed"),
        "never connected:\n{stderr}"
    );
    assert!(
        upstream.messages().is_empty(),
        "nothing went upstream: {:?}",
        upstream.messages().first().map(Message::text)
    );
    assert!(
        weir.terminate().success(),
        "a clean exit:\n{}",
        weir.stderr()
    );
    let log = sensors_broker.log();
    assert!(
        log.contains("disconnected, not authorised"),
        "the broker refused weir; its log:\n{log}"
    );
}

/// Publishes `messages` with QoS 2 over MQTT 3.1.1 to 127.0.0.1:`port` (the tests' own client
/// speaks MQTT 5 with QoS 0 or 1 only); returns once every one is complete (PUBCOMP).
fn publish_all_qos2(port: u16, messages: &[(String, Vec<u8>)]) {
    let mut options = rumqttc::MqttOptions::new("weir-test-qos2-pub", "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true);
    let (client, mut connection) = rumqttc::Client::new(options, 100);
    let feed = messages.to_vec();
    let publisher = std::thread::spawn(move || {
        for (topic, payload) in feed {
            client
                .publish(topic, rumqttc::QoS::ExactlyOnce, false, payload)
                .expect("publish request");
        }
        client
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut complete = 0;
    while complete < messages.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{complete} of {} QoS 2 publishes complete",
            messages.len()
        );
        match connection.recv_timeout(left) {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubComp(_)))) => complete += 1,
            Ok(Ok(_)) | Err(rumqttc::RecvTimeoutError::Timeout) => {}
            Ok(Err(e)) => panic!("QoS 2 publisher: {e}"),
            Err(e) => panic!("QoS 2 publisher: {e:?}"),
        }
    }
    let client = publisher.join().expect("the publisher thread");
    let _ = client.disconnect();
}

#[test]
fn mqtt_3_1_1_on_both_sides_with_qos_2_in() {
    let sensors_broker = Mosquitto::start();
    let cloud = Mosquitto::start();
    let dir = TempDir::new("weir-live-v311");
    let config = relay_config(
        dir.path(),
        sensors_broker.port(),
        cloud.port(),
        "source.mqtt_version = \"3.1.1\"\nsource.qos = 2\nupstream.mqtt_version = \"3.1.1\"",
    );
    let upstream = Collector::subscribe(cloud.port(), "relay/#");
    let mut weir = start_weir(&config);
    let stderr = weir.stderr();
    let subscribed = stderr.lines().find(|l| l.contains("subscribed")).unwrap();
    assert!(
        subscribed.contains("(\"sensors/#\", 2)"),
        "subscribed with QoS 2: {subscribed}"
    );
    let input = numbered(2_000);
    // Published with QoS 2 too: a message reaches a subscriber with the lower of the two QoS.
    publish_all_qos2(sensors_broker.port(), &input);
    let got = upstream.wait_until(|m| distinct_ids(m) >= input.len(), Duration::from_secs(120));
    assert!(
        got.iter().all(|m| m.user_properties.is_empty()),
        "MQTT 3.1.1 has no user properties: the id is in the payload only"
    );
    assert_all_in_order(&got, input.len());
    assert!(weir.terminate().success(), "{}", weir.stderr());
    // weir spoke 3.1.1 to both brokers and was sent QoS 2 messages.
    for (broker, client) in [(&sensors_broker, "weir-test"), (&cloud, "weir-upstream")] {
        let log = broker.log();
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("as {client} (p2,"))),
            "{client} spoke MQTT 3.1.1 (p2); the broker's log:\n{log}"
        );
    }
}
