//! What weir's integration tests share: the plugins, built from source once per test run, and a
//! runtime whose compiled-plugin cache is shared by every test (Python and JavaScript components
//! take seconds to compile).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use weir::batch::{Batch, Builder, Value};
use weir::runtime::{
    Limits, Operator, OperatorSpec, Permissions, Plugin, Runtime, RuntimeConfig, config_json,
};

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_owned()
}

/// The folder of built components, after building every plugin from source (once per process;
/// `plugins/build` itself is incremental and takes a lock, so test processes may race).
pub fn plugins() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script = repo().join("plugins/build");
        let status = Command::new("bash")
            .arg(&script)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            status.success(),
            "{} failed: the plugins must build from source (see its output above)",
            script.display()
        );
        repo().join("plugins/target/wasm")
    })
}

/// The path of a built component, by file stem (`range_filter`).
pub fn plugin_path(name: &str) -> PathBuf {
    let path = plugins().join(format!("{name}.wasm"));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A runtime with the shared compiled-plugin cache.
pub fn runtime() -> Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            Runtime::new(RuntimeConfig {
                cache_dir: Some(repo().join("target/weir-test-cache")),
                ..RuntimeConfig::default()
            })
            .expect("runtime starts")
        })
        .clone()
}

/// Loads a built plugin by name.
pub fn load(name: &str) -> Arc<Plugin> {
    runtime()
        .load(&plugin_path(name), None)
        .unwrap_or_else(|e| panic!("{name} loads: {e}"))
}

/// An operator spec for `plugin` with `limits`.
pub fn spec(step: &str, plugin: &Plugin, limits: Limits) -> OperatorSpec {
    OperatorSpec {
        runtime: runtime(),
        step: step.into(),
        world: plugin.world,
        limits,
        permissions: Permissions::default(),
    }
}

/// Starts `name` with a TOML inline-table config and default limits.
pub fn operator(name: &str, config: &str) -> Operator {
    operator_with(name, config, Limits::default())
}

/// Starts `name` with a TOML inline-table config and `limits`.
pub fn operator_with(name: &str, config: &str, limits: Limits) -> Operator {
    let plugin = load(name);
    Operator::start(spec(name, &plugin, limits), plugin, &json_config(config))
        .unwrap_or_else(|e| panic!("{name} starts: {e}"))
}

/// A TOML inline table (`{ a = 1 }`) as the JSON a plugin's init receives.
pub fn json_config(inline_table: &str) -> String {
    let doc: toml::Table = toml::from_str(&format!("config = {inline_table}"))
        .unwrap_or_else(|e| panic!("bad test config {inline_table}: {e}"));
    config_json(&doc["config"])
}

/// A batch of events `(key, ts_ms, [(field, value)])`.
pub fn batch<'a>(events: impl IntoIterator<Item = (&'a str, i64, Vec<(&'a str, Value)>)>) -> Batch {
    let mut b = Builder::new();
    for (key, ts, fields) in events {
        b.push(key, ts, fields);
    }
    b.finish()
}

/// The float values of column `name`, one per event.
pub fn floats(batch: &Batch, name: &str) -> Vec<Option<f64>> {
    (0..batch.len())
        .map(|i| match batch.column(name).and_then(|c| c.get(i)) {
            Some(Value::Float(x)) => Some(x),
            Some(Value::Int(x)) => Some(x as f64),
            _ => None,
        })
        .collect()
}

/// Value of column `name` for event `i`.
pub fn value(batch: &Batch, name: &str, i: usize) -> Option<Value> {
    batch.column(name).and_then(|c| c.get(i))
}

pub mod apt;
pub mod bench;
pub mod mosquitto;
pub mod mqtt_client;
pub mod process;
pub mod proxy;
pub mod tmpfs;

/// The location of each sensor, from `configs/sensors.csv` (the table the farm config enriches
/// with).
pub fn locations() -> std::collections::BTreeMap<String, String> {
    let text = std::fs::read_to_string(repo().join("configs/sensors.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            (cells[0].to_owned(), cells[1].to_owned())
        })
        .collect()
}
