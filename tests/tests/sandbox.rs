//! Hostile and broken plugins: every limit is hit by a real component, the host stays up, the
//! input goes to the dead-letter output with the reason, and other plugins keep running.

use std::time::{Duration, Instant};

use weir::batch::{Batch, Value};
use weir::runtime::{
    CacheOutcome, DirGrant, Limits, LoadError, Operator, Permissions, Reason, Runtime,
    RuntimeConfig, StartError,
};
use weir_tests::{batch, json_config, load, operator, operator_with, plugin_path, spec};

fn readings(n: i64) -> Batch {
    batch((0..n).map(|i| ("s1", i, vec![("temp", Value::Float(i as f64))])))
}

fn assert_all_dead(out: &weir::runtime::Outcome, n: usize, reason: Reason) -> String {
    assert!(out.events.is_empty(), "no output from a failed call");
    assert_eq!(out.dead_letters.len(), 1);
    let d = &out.dead_letters[0];
    assert_eq!(d.reason, reason, "{}", d.detail);
    assert_eq!(d.input.len(), n, "the whole batch is dead-lettered");
    d.detail.clone()
}

#[test]
fn an_infinite_loop_is_stopped_within_its_budget_and_the_plugin_recovers() {
    let limits = Limits {
        time_budget: Duration::from_millis(100),
        ..Limits::default()
    };
    let mut op = operator_with("hostile_loop", "{}", limits);
    let started = Instant::now();
    let out = op.transform(readings(3));
    let took = started.elapsed();
    let detail = assert_all_dead(&out, 3, Reason::TimeLimit);
    assert!(detail.contains("time budget of 100ms"), "{detail}");
    assert!(
        // Under an emulator the budgets are scaled (WEIR_TIME_BUDGET_SCALE), and so is this.
        took < Duration::from_secs(5) * weir::runtime::time_budget_scale(),
        "stopped, not left running ({took:?})"
    );
    // A second batch gets a fresh instance, which is stopped the same way.
    let again = op.transform(readings(2));
    assert_all_dead(&again, 2, Reason::TimeLimit);
    let m = op.metrics().snapshot();
    assert_eq!((m.time_limit_hits, m.rebuilds, m.dead_lettered), (2, 1, 5));
}

#[test]
fn a_memory_bomb_hits_the_cap_without_hurting_the_host() {
    let limits = Limits {
        max_memory_bytes: 16 << 20,
        ..Limits::default()
    };
    let mut op = operator_with("hostile_memory", "{}", limits);
    let out = op.transform(readings(1));
    let detail = assert_all_dead(&out, 1, Reason::MemoryLimit);
    assert!(detail.contains("memory cap of 16MiB"), "{detail}");
    assert_eq!(op.metrics().snapshot().memory_limit_hits, 1);
}

#[test]
fn a_panic_dead_letters_its_batch_with_the_message_and_the_next_batch_runs_on_a_new_instance() {
    let mut op = operator("hostile_panic", "{}");
    let mut filter = operator(
        "range_filter",
        r#"{ field = "temp", min = 0.0, max = 10.0 }"#,
    );
    let boom = batch([
        ("s1", 1, vec![("boom", Value::Flag(true))]),
        ("s1", 2, vec![]),
    ]);
    let detail = assert_all_dead(&op.transform(boom), 2, Reason::Trap);
    assert!(
        detail.contains("event has field \"boom\""),
        "the panic message is kept: {detail}"
    );
    // Other plugins were not affected, and this one runs again.
    assert_eq!(filter.transform(readings(20)).events.len(), 11);
    let fine = op.transform(readings(4));
    assert!(fine.dead_letters.is_empty());
    assert_eq!(fine.events.len(), 4);
    let m = op.metrics().snapshot();
    assert_eq!((m.traps, m.rebuilds), (1, 1));
}

#[test]
fn an_oversized_output_is_refused() {
    // A budget far beyond what the copies take, even under qemu on a busy machine: this is
    // about the output limit, not time.
    let limits = Limits {
        time_budget: Duration::from_secs(30),
        ..Limits::default()
    };
    let mut op = operator_with("hostile_flood", "{ copies = 100000 }", limits);
    let detail = assert_all_dead(&op.transform(readings(1)), 1, Reason::OutputLimit);
    assert!(detail.contains("max_output_events (65536)"), "{detail}");
    assert_eq!(op.metrics().snapshot().output_limit_hits, 1);
}

#[test]
fn a_plugin_cannot_read_files_open_sockets_or_see_the_environment_unless_granted() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = std::env::temp_dir().join(format!("weir-escape-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("calibration.csv"), "s1,0.5\n").unwrap();
    let config = format!(r#"{{ file = "/data/calibration.csv", connect = "{addr}" }}"#);

    let mut denied = operator("hostile_escape", &config);
    let out = denied.transform(readings(1));
    let text = |name| match weir_tests::value(&out.events, name, 0) {
        Some(Value::Text(t)) => t,
        other => panic!("{name}: {other:?}"),
    };
    assert!(text("file").starts_with("denied"), "{}", text("file"));
    assert!(text("socket").starts_with("denied"), "{}", text("socket"));
    assert_eq!(
        weir_tests::value(&out.events, "env", 0),
        Some(Value::Int(0))
    );

    let plugin = load("hostile_escape");
    let mut granted_spec = spec("escape", &plugin, Limits::default());
    granted_spec.permissions = Permissions {
        dirs: vec![DirGrant {
            host: dir.clone(),
            guest: "/data".into(),
            writable: false,
        }],
        env: vec![("FARM".into(), "north".into())],
        connect: vec![addr],
    };
    let mut granted = Operator::start(granted_spec, plugin, &json_config(&config)).unwrap();
    let out = granted.transform(readings(1));
    assert_eq!(
        weir_tests::value(&out.events, "file", 0),
        Some(Value::Text("read 7 bytes".into()))
    );
    assert_eq!(
        weir_tests::value(&out.events, "socket", 0),
        Some(Value::Text("connected".into()))
    );
    assert_eq!(
        weir_tests::value(&out.events, "env", 0),
        Some(Value::Int(1))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_plugin_that_keeps_failing_is_quarantined_with_backoff() {
    let limits = Limits {
        quarantine_after_failures: 2,
        quarantine_backoff: Duration::from_millis(50),
        ..Limits::default()
    };
    let mut op = operator_with("hostile_panic", "{}", limits);
    // Quarantines follow the gateway clock the pipeline gives (so a replay quarantines where
    // the live run did): here, a clock of the test's own.
    let t0 = 1_700_000_000_000;
    op.set_clock(t0);
    let boom = || batch([("s1", 1, vec![("boom", Value::Int(1))])]);
    assert_all_dead(&op.transform(boom()), 1, Reason::Trap);
    assert!(
        op.quarantined_until().is_none(),
        "one failure is not enough"
    );
    assert_all_dead(&op.transform(boom()), 1, Reason::Trap);
    let until = op
        .quarantined_until()
        .expect("quarantined after two failures");
    assert_eq!(until, t0 + 50);
    // While quarantined, even good batches are dead-lettered without calling the plugin.
    let calls = op.metrics().snapshot().calls;
    op.set_clock(until - 1);
    assert_all_dead(&op.transform(readings(3)), 3, Reason::Quarantined);
    assert_eq!(op.metrics().snapshot().calls, calls);
    // After the backoff, one failure quarantines it again, for twice as long.
    op.set_clock(until);
    assert_all_dead(&op.transform(boom()), 1, Reason::Trap);
    let again = op.quarantined_until().expect("quarantined again at once");
    assert_eq!(again, until + 100, "the backoff doubled");
    op.set_clock(again);
    // Then a good batch goes through and the plugin is healthy.
    assert_eq!(op.transform(readings(3)).events.len(), 3);
    assert!(op.quarantined_until().is_none());
    assert_eq!(op.metrics().snapshot().quarantines, 2);
}

fn load_error(path: &std::path::Path) -> String {
    weir_tests::runtime()
        .load(path, None)
        .unwrap_err()
        .to_string()
}

#[test]
fn plugins_of_another_contract_version_kind_or_format_are_refused_with_what_to_do() {
    let future = plugin_path("future_version");
    assert_eq!(
        load_error(&future),
        format!(
            "plugin {} is built for weir:operator@0.3.0, but this weir supports weir:operator@0.1.0 \
             and @0.2.0; rebuild it against a supported weir-guest (or WIT package) version",
            future.display()
        )
    );

    let dir = std::env::temp_dir().join(format!("weir-bad-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let core = dir.join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    assert!(
        load_error(&core).contains("is a core WebAssembly module"),
        "{}",
        load_error(&core)
    );
    let text = dir.join("notes.wasm");
    std::fs::write(&text, b"hello").unwrap();
    assert!(load_error(&text).contains(
        "is not WebAssembly, not a WebAssembly component; build it for the wasm32-wasip2 target"
    ));
    let missing = dir.join("missing.wasm");
    assert!(load_error(&missing).starts_with(&format!("cannot read plugin {}", missing.display())));
    std::fs::remove_dir_all(&dir).unwrap();

    let p95 = load("p95_aggregator");
    let mut s = spec("farm/transform[0]", &p95, Limits::default());
    s.world = weir::runtime::World::Transformer;
    let err = Operator::start(s, p95, "{}").unwrap_err();
    assert!(
        err.to_string().ends_with(
            "implements the aggregator world, but this step needs a plugin of the transformer world"
        ),
        "{err}"
    );
}

#[test]
fn a_pinned_hash_that_does_not_match_is_refused() {
    let path = plugin_path("range_filter");
    let err = weir_tests::runtime()
        .load(&path, Some(&"0".repeat(64)))
        .unwrap_err();
    assert!(matches!(err, LoadError::HashMismatch { .. }), "{err}");
    let real = weir::runtime::sha256_hex(&std::fs::read(&path).unwrap());
    assert!(weir_tests::runtime().load(&path, Some(&real)).is_ok());
}

#[test]
fn config_errors_are_reported_at_load_time_naming_the_plugin() {
    let plugin = load("range_filter");
    let err = Operator::start(
        spec("farm/transform[0]", &plugin, Limits::default()),
        plugin.clone(),
        &json_config(r#"{ field = "h", min = 5.0, max = 1.0 }"#),
    )
    .unwrap_err();
    assert!(matches!(err, StartError::Config { .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "plugin {} rejected its config for step farm/transform[0]: min (5) is above max (1)",
            plugin.path.display()
        )
    );
}

#[test]
fn compiled_plugins_are_cached_by_content_and_a_corrupt_cache_entry_is_replaced() {
    let dir = std::env::temp_dir().join(format!("weir-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let new_runtime = || {
        Runtime::new(RuntimeConfig {
            cache_dir: Some(dir.clone()),
            ..RuntimeConfig::default()
        })
        .unwrap()
    };
    let path = plugin_path("range_filter");
    assert_eq!(
        new_runtime().load(&path, None).unwrap().cache,
        CacheOutcome::Compiled
    );
    assert_eq!(
        new_runtime().load(&path, None).unwrap().cache,
        CacheOutcome::Hit
    );
    let entry = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&entry, b"not a compiled component").unwrap();
    let plugin = new_runtime().load(&path, None).unwrap();
    assert_eq!(
        plugin.cache,
        CacheOutcome::Compiled,
        "recompiled over the corrupt entry"
    );
    assert_eq!(
        new_runtime().load(&path, None).unwrap().cache,
        CacheOutcome::Hit
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What `weir plugin compile --target <this machine's triple>` writes (code for the
/// architecture's baseline, compiled by an engine that is not the gateway's) is picked up by the
/// gateway's cache without compiling, and computes what a plugin compiled on load computes. Under
/// qemu-user this is an aarch64 artifact loaded by weir for aarch64.
#[test]
fn a_plugin_compiled_ahead_for_this_architecture_loads_from_the_cache_and_runs() {
    let dir = std::env::temp_dir().join(format!("weir-ahead-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = plugin_path("range_filter");
    let wasm = std::fs::read(&path).unwrap();
    let triple = weir::runtime::host_triple();
    let (name, bytes) = weir::runtime::precompile(&wasm, Some(&triple)).unwrap();
    assert!(
        name.starts_with(&weir::runtime::sha256_hex(&wasm)),
        "{name}"
    );
    std::fs::write(dir.join(&name), bytes).unwrap();
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(dir.clone()),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let plugin = runtime.load(&path, None).unwrap();
    assert_eq!(plugin.cache, CacheOutcome::Hit, "{name} was picked up");
    let config = json_config("{ field = \"temp\", min = 2.0, max = 5.0 }");
    let spec = weir::runtime::OperatorSpec {
        runtime: runtime.clone(),
        step: "range".into(),
        world: plugin.world,
        limits: Limits::default(),
        permissions: Permissions::default(),
    };
    let mut ahead = Operator::start(spec, plugin, &config).unwrap();
    let mut on_load = operator("range_filter", "{ field = \"temp\", min = 2.0, max = 5.0 }");
    let (a, b) = (ahead.transform(readings(8)), on_load.transform(readings(8)));
    assert_eq!(a.events.ts_ms, vec![2, 3, 4, 5]);
    assert_eq!(a.events.ts_ms, b.events.ts_ms);
    assert_eq!(a.dead_letters.len(), b.dead_letters.len());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A Raspberry Pi's 64-bit kernel gives a process 39 bits of address space (512 GiB), and every
/// plugin memory reserves address space up front. 120 plugin steps, all instantiated at once,
/// run through `weir replay` with the address space capped at 256 GiB (half of what such a
/// kernel gives, for the rest of the process); with wasmtime's default of 4 GiB and guards per
/// memory they would need about 490 GiB.
#[test]
fn many_plugin_steps_fit_in_the_address_space_of_a_39_bit_arm64_kernel() {
    use std::fmt::Write as _;
    let prlimit = weir_tests::apt::ensure("prlimit", "util-linux");
    let dir = weir_tests::process::TempDir::new("weir-address-space");
    let filter = plugin_path("range_filter");
    let mut config = String::from(
        "version = 1\n\n[[pipeline]]\nname = \"many\"\ntopics = [\"s/#\"]\n\n\
         [pipeline.decode]\njson = { key = \"id\", time = \"ts\", time_format = \"ms\" }\n",
    );
    let steps = 120;
    for i in 0..steps {
        write!(
            config,
            "\n[[pipeline.transform]]\nplugin = {filter:?}\nconfig = {{ field = \"v\", min = {}, max = 1000.0 }}\n",
            -(i as f64) - 1.0
        )
        .unwrap();
    }
    config.push_str("\n[pipeline.output]\ntopic = \"out/{key}\"\n");
    let config_path = dir.path().join("many.toml");
    std::fs::write(&config_path, config).unwrap();
    let input = dir.path().join("input.jsonl");
    std::fs::write(
        &input,
        (0..10)
            .map(|i| {
                format!(
                    "{{\"topic\":\"s/a\",\"payload\":{{\"id\":\"a\",\"ts\":{},\"v\":{i}}}}}\n",
                    1_700_000_000_000i64 + i
                )
            })
            .collect::<String>(),
    )
    .unwrap();
    // prlimit sets the limit and execs weir (through the test runner's emulator, if any, which
    // then holds the guest's whole address space within the limit).
    let weir = weir_tests::process::weir_command();
    let out = std::process::Command::new(prlimit)
        .arg(format!("--as={}", 256u64 << 30))
        .arg("--")
        .arg(weir.get_program())
        .args(weir.get_args())
        .args([
            "replay",
            config_path.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ])
        .output()
        .expect("prlimit runs weir");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "weir replay with {steps} plugin steps in 256 GiB of address space: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.contains("\"main\"")).count(),
        10,
        "every reading passes the {steps} filters:\n{stdout}"
    );
}
