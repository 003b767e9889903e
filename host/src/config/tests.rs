//! Tests of parsing and validation. The text of the errors users see is pinned by the golden
//! tests (`tests/golden/config/`); these check the resolved values and the example configs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::decode::TimeFormat;
use crate::runtime::DirGrant;

/// The repository's `configs/` folder.
fn configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

fn errors(text: &str) -> Vec<String> {
    match Config::from_str(text, Path::new("cfg/test.toml")) {
        Ok(c) => panic!("expected errors, got {c:#?}"),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

const MINIMAL: &str = r#"
version = 1
[[pipeline]]
name = "p"
topics = ["a/#"]
[pipeline.decode]
json = { key = "k", time = "t", time_format = "s" }
[pipeline.output]
topic = "out/{key}"
"#;

#[test]
fn the_example_configs_are_valid() {
    for name in ["farm.toml", "frost-alerts.toml"] {
        let path = configs().join(name);
        if let Err(e) = Config::from_file(&path) {
            panic!("{name} is invalid:\n{e}");
        }
    }
}

#[test]
fn the_farm_example_resolves_to_what_its_comments_say() {
    let config = Config::from_file(&configs().join("farm.toml")).unwrap();
    let [farm] = &config.pipelines[..] else {
        panic!("one pipeline")
    };
    assert_eq!(farm.name, "farm");
    assert_eq!(farm.topics, ["farm/+/sensors/#"]);
    assert_eq!(farm.key.as_deref(), Some("location"));
    assert_eq!(
        farm.decode,
        Decode::Json(JsonMapping {
            key: "sensor_id".into(),
            time: "ts".into(),
            time_format: TimeFormat::Millis,
            values: Some(vec!["temp".into(), "humidity".into()]),
            source: Some("sensor_id".into()),
        })
    );
    let plugin = |name: &str| configs().join("../plugins/target/wasm").join(name);
    let paths: Vec<&Path> = farm.transforms.iter().map(|t| t.path.as_path()).collect();
    assert_eq!(
        paths,
        [
            plugin("range_filter.wasm"),
            plugin("range_filter.wasm"),
            plugin("unit_converter.wasm")
        ]
    );
    let first = &farm.transforms[0];
    assert_eq!(
        first.limits,
        Limits {
            time_budget: Duration::from_millis(100),
            max_memory_bytes: 32 << 20,
            ..Limits::default()
        }
    );
    assert_eq!(
        first.config,
        toml::from_str::<toml::Value>("field = \"humidity\"\nmin = 0.0\nmax = 100.0").unwrap()
    );
    assert_eq!(farm.transforms[2].limits, Limits::default());
    assert_eq!(
        farm.enrich,
        Some(Enrich {
            table: configs().join("sensors.csv"),
            on: "sensor_id".into(),
            fields: vec!["location".into(), "crop".into()],
            on_missing: OnMissing::DeadLetter,
        })
    );
    assert_eq!(
        farm.window,
        Some(Window {
            kind: WindowKind::Tumbling {
                size: Duration::from_secs(60),
                offset: Duration::ZERO
            },
            time: WindowTime::Event,
            out_of_orderness: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            allowed_lateness: Duration::from_secs(30),
            max_future: Duration::from_secs(600),
        })
    );
    let outputs: Vec<&str> = farm
        .aggregates
        .iter()
        .map(|a| match a {
            Aggregate::Builtin { output, .. } => output.as_str(),
            Aggregate::Plugin(_) => panic!("built-in aggregates only"),
        })
        .collect();
    assert_eq!(outputs.len(), 8);
    assert_eq!(
        farm.aggregates[1],
        Aggregate::Builtin {
            func: AggregateFn::Mean,
            field: Some("temp".into()),
            output: "temp_mean_f".into()
        }
    );
    assert_eq!(
        farm.output,
        Output {
            topic: "farm/{key}/agg/1m".into(),
            late: "farm/{key}/late".into(),
            dead_letter: "farm/dead-letter".into(),
        }
    );
}

#[test]
fn defaults_fill_what_is_left_out() {
    let config = Config::from_str(MINIMAL, Path::new("test.toml")).unwrap();
    let p = &config.pipelines[0];
    assert_eq!(p.window, None);
    assert!(p.aggregates.is_empty() && p.transforms.is_empty() && p.enrich.is_none());
    assert_eq!(p.key, None);
    assert_eq!(p.output.late, "{pipeline}/late");
    assert_eq!(p.output.dead_letter, "{pipeline}/dead-letter");
    let Decode::Json(m) = &p.decode else {
        panic!("json")
    };
    assert_eq!((m.values.as_ref(), m.source.as_ref()), (None, None));

    let windowed = MINIMAL.replace(
        "[pipeline.output]",
        "[pipeline.window]\nkind = \"sliding\"\nsize = \"1h\"\nslide = \"10m\"\n\
         [[pipeline.aggregate]]\nfn = \"count\"\n[[pipeline.aggregate]]\nfn = \"stddev\"\n\
         field = \"x\"\n[pipeline.output]",
    );
    let config = Config::from_str(&windowed, Path::new("test.toml")).unwrap();
    let p = &config.pipelines[0];
    let w = p.window.as_ref().unwrap();
    assert_eq!(
        w.kind,
        WindowKind::Sliding {
            size: Duration::from_secs(3600),
            slide: Duration::from_secs(600),
            offset: Duration::ZERO
        }
    );
    assert_eq!(
        (
            w.time,
            w.out_of_orderness,
            w.idle_timeout,
            w.allowed_lateness,
            w.max_future
        ),
        (
            WindowTime::Event,
            Duration::ZERO,
            Duration::from_secs(60),
            Duration::ZERO,
            Duration::from_secs(600)
        )
    );
    let names: Vec<_> = p
        .aggregates
        .iter()
        .map(|a| match a {
            Aggregate::Builtin { func, output, .. } => (*func, output.as_str()),
            Aggregate::Plugin(_) => unreachable!(),
        })
        .collect();
    assert_eq!(
        names,
        [
            (AggregateFn::Count, "count"),
            (AggregateFn::StdDev, "stddev_x")
        ]
    );
}

#[test]
fn plugin_steps_resolve_paths_limits_and_grants_against_the_config_directory() {
    let dir = std::env::temp_dir().join(format!("weir-config-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("tables")).unwrap();
    let text = MINIMAL.replace(
        "[pipeline.decode]\njson = { key = \"k\", time = \"t\", time_format = \"s\" }",
        r#"[pipeline.decode]
plugin = "decoders/frame.wasm"
config = { channels = ["temp"] }
sha256 = "ABCDEF0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789"
limits = { max_output_bytes = "1MB", quarantine_after_failures = 5, quarantine_backoff = "2s", quarantine_backoff_max = "1h" }
allow = { dirs = [{ host = "tables", guest = "/t", writable = true }], env = { A = "1" }, connect = ["127.0.0.1:8086", "[::1]:9000"] }"#,
    );
    let config = Config::from_str(&text, &dir.join("p.toml")).unwrap();
    let Decode::Plugin(step) = &config.pipelines[0].decode else {
        panic!("a decoder plugin")
    };
    assert_eq!(step.path, dir.join("decoders/frame.wasm"));
    assert_eq!(
        step.sha256.as_deref(),
        Some("abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789")
    );
    assert_eq!(
        step.limits,
        Limits {
            max_output_bytes: 1_000_000,
            quarantine_after_failures: 5,
            quarantine_backoff: Duration::from_secs(2),
            quarantine_backoff_max: Duration::from_secs(3600),
            ..Limits::default()
        }
    );
    assert_eq!(
        step.permissions,
        Permissions {
            dirs: vec![DirGrant {
                host: dir.join("tables"),
                guest: "/t".into(),
                writable: true
            }],
            env: vec![("A".into(), "1".into())],
            connect: vec![
                "127.0.0.1:8086".parse().unwrap(),
                "[::1]:9000".parse().unwrap()
            ],
        }
    );
    let uses = validate(&text, &dir.join("p.toml")).plugins;
    assert_eq!(
        uses,
        [PluginUse {
            at: "pipeline[0] (p).decode.plugin".into(),
            path: dir.join("decoders/frame.wasm"),
            sha256: step.sha256.clone(),
            world: crate::runtime::World::Decoder,
        }]
    );
    assert_eq!(plugin_uses(&config), uses);
}

#[test]
fn every_problem_is_reported_not_only_the_first() {
    let text = r#"
version = 1
[[pipeline]]
name = "a"
topics = ["x/#/y"]
[pipeline.decode]
json = { key = "k", time = "t", time_format = "ms" }
[pipeline.window]
kind = "tumbling"
size = "1 fortnight"
[[pipeline.aggregate]]
fn = "mean"
[pipeline.output]
topic = "o/{nope}"

[[pipeline]]
name = "a"
topics = ["z"]
[pipeline.decode]
json = { key = "k", time = "t", time_format = "ms", extra = 1 }
[pipeline.output]
topic = "o"
"#;
    let errors = errors(text);
    let at: Vec<&str> = errors
        .iter()
        .map(|e| e.split(": ").nth(1).unwrap())
        .collect();
    assert_eq!(
        at,
        [
            "pipeline[0] (a).topics[0]",
            "pipeline[0] (a).window.size",
            "pipeline[0] (a).aggregate[0].field",
            "pipeline[0] (a).output.topic",
            "pipeline[1] (a).name",
            "pipeline[1] (a).decode.json.extra",
        ],
        "{errors:#?}"
    );
    assert!(errors.iter().all(|e| e.starts_with("cfg/test.toml: ")));
}

#[test]
fn errors_display_one_per_line_and_say_whether_the_file_was_read() {
    let e = Config::from_file(Path::new("no/such/file.toml")).unwrap_err();
    assert!(e.is_read_error());
    assert!(
        e.to_string()
            .starts_with("cannot read config no/such/file.toml: "),
        "{e}"
    );
    let e = Config::from_str("version = 1\nversion = 2", Path::new("x.toml")).unwrap_err();
    assert!(!e.is_read_error());
    assert_eq!(e.len(), 1);
    assert!(
        e.to_string().starts_with("x.toml: line 2, column 1: "),
        "{e}"
    );
    let e = Config::from_str("[[pipeline]]\nname = \"A\"", Path::new("x.toml")).unwrap_err();
    assert_eq!(e.to_string().lines().count(), e.len());
}

#[test]
fn live_sections_resolve_with_their_defaults_and_settings() {
    let defaults = Config::from_str(MINIMAL, Path::new("cfg/test.toml")).unwrap();
    assert_eq!(defaults.source, Source::default());
    assert_eq!(defaults.storage, Storage::default());
    assert_eq!(defaults.upstream, None);
    assert_eq!(defaults.pipelines[0].guarantee, Guarantee::EffectivelyOnce);
    assert_eq!(defaults.pipelines[0].dedup, Dedup::default());

    let c = Config::from_str(LIVE, Path::new("cfg/test.toml")).unwrap_or_else(|e| panic!("{e}"));
    let s = &c.source;
    assert_eq!(
        (s.broker.endpoint.host.as_str(), s.broker.endpoint.port),
        ("127.0.0.1", 1883)
    );
    assert_eq!(s.broker.endpoint.protocol, crate::mqtt::Protocol::V311);
    assert_eq!((s.qos, s.broker.endpoint.clean_session), (2, true));
    assert_eq!(s.max_message_bytes, 64 * 1024);
    assert_eq!(
        (s.batch_max_messages, s.batch_linger),
        (500, Duration::from_millis(5))
    );
    assert_eq!(s.dead_letter, "gw-7/unmatched");
    let u = c.upstream.as_ref().unwrap();
    assert_eq!(
        (u.broker.endpoint.host.as_str(), u.broker.endpoint.port),
        ("::1", 8883)
    );
    assert_eq!((u.max_inflight, u.drain_rate_per_s), (65535, Some(500)));
    assert_eq!(u.id_property, "x-id");
    assert_eq!(u.broker.endpoint.reconnect.max, Duration::from_secs(60));
    assert_eq!(c.storage.data_dir, Path::new("cfg/data"));
    assert_eq!(
        (c.storage.commit_interval, c.storage.checkpoint_interval),
        (Duration::from_millis(250), Duration::from_secs(1))
    );
    assert_eq!(c.storage.on_full, crate::store::OnFull::DropOldest);
    assert_eq!(c.storage.max_outbox_bytes, 1 << 30);
    let p = &c.pipelines[0];
    assert_eq!(p.guarantee, Guarantee::AtMostOnce);
    assert_eq!(p.dedup.field.as_deref(), Some("msg_id"));
    assert_eq!(
        (p.dedup.horizon, p.dedup.max_entries),
        (Duration::from_secs(3600), 5000)
    );
}

const LIVE: &str = r#"# Every live setting, valid: no errors.
version = 1

[source]
broker = "127.0.0.1:1883"
client_id = "gw-7"
mqtt_version = "3.1.1"
qos = 2
clean_session = true
keep_alive = "10s"
max_message_bytes = "64KiB"
batch_max_messages = 500
batch_linger = "5ms"
dead_letter = "gw-7/unmatched"

[upstream]
broker = "[::1]:8883"
mqtt_version = "5"
max_inflight = 65535
drain_rate = 500
id_property = "x-id"
reconnect = { initial = "1s", max = "1m" }

[storage]
data_dir = "data"
commit_interval = "250ms"
checkpoint_interval = "1s"
max_outbox = "1GiB"
on_full = "drop-oldest"

[[pipeline]]
name = "relay"
topics = ["sensors/#"]
guarantee = "at-most-once"
dedup = { field = "msg_id", horizon = "1h", max_entries = 5000 }

[pipeline.decode]
json = { key = "sensor", time = "ts", time_format = "ms" }

[pipeline.output]
topic = "relay/{key}"
"#;

#[test]
fn a_commit_interval_is_more_than_zero_and_at_most_ten_seconds() {
    for (value, says) in [("\"0s\"", "more than zero"), ("\"11s\"", "longer than 10s")] {
        let text = format!("{MINIMAL}\n[storage]\ncommit_interval = {value}\n");
        let errors = errors(&text);
        assert!(
            errors
                .iter()
                .any(|e| e.contains("storage.commit_interval") && e.contains(says)),
            "{value}: {errors:?}"
        );
    }
    let text = format!("{MINIMAL}\n[storage]\ncommit_interval = \"10s\"\n");
    let c = Config::from_str(&text, Path::new("cfg/test.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.storage.commit_interval, Duration::from_secs(10));
}

#[test]
fn a_fleet_section_takes_its_defaults_and_needs_upstream_and_keys() {
    let key = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
    let text = format!(
        "{MINIMAL}\n[upstream]\nbroker = \"up.example.com:8883\"\n\n[fleet]\nkeys = [\"{key}\"]\n"
    );
    let config = Config::from_str(&text, Path::new("cfg/test.toml")).unwrap();
    let fleet = config.fleet.expect("a [fleet] section");
    assert_eq!(fleet.id, super::live::hostname());
    assert_eq!(
        fleet.keys,
        vec![crate::fleet::parse_public_key(key).unwrap()]
    );
    assert_eq!(fleet.topic_prefix, "weir/fleet");
    assert_eq!(fleet.status_interval, Duration::from_secs(300));
    assert_eq!(fleet.artifact_timeout, Duration::from_secs(600));
    assert!(
        Config::from_str(MINIMAL, Path::new("cfg/test.toml"))
            .unwrap()
            .fleet
            .is_none()
    );
}
