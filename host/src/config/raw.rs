//! The config file as written: serde structs that mirror the TOML, refusing unknown fields. Nothing
//! here is checked beyond its shape; `validate` turns these into the resolved [`super::Config`].
//!
//! Each section of a pipeline (decode, each transform, enrich, window, each aggregate, output) is
//! a [`Part`]: it is deserialized on its own, so a malformed section is reported without hiding
//! the problems of the others. Durations and sizes are kept as TOML values and parsed during
//! validation, for the same reason.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer};

/// A section deserialized on its own: its value, or why it did not deserialize.
#[derive(Debug)]
pub(super) enum Part<T> {
    Ok(T),
    Bad {
        error: serde_path_to_error::Error<toml::de::Error>,
        /// The section's `name`, if it has one (pipelines do), to name it in messages.
        name: Option<String>,
    },
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Part<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = toml::Value::deserialize(deserializer)?;
        let name = value
            .get("name")
            .and_then(|n| n.as_str())
            .map(str::to_owned);
        Ok(match serde_path_to_error::deserialize(value) {
            Ok(t) => Part::Ok(t),
            Err(error) => Part::Bad { error, name },
        })
    }
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub version: Option<toml::Value>,
    #[serde(default)]
    pub pipeline: Vec<Part<RawPipeline>>,
    pub source: Option<Part<RawMqtt>>,
    pub upstream: Option<Part<RawMqtt>>,
    pub storage: Option<Part<RawStorage>>,
    pub admin: Option<Part<RawAdmin>>,
    pub fleet: Option<Part<RawFleet>>,
}

/// `[fleet]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    pub id: Option<String>,
    pub keys: Option<Vec<String>>,
    pub topic_prefix: Option<String>,
    pub status_interval: Option<toml::Value>,
    pub artifact_timeout: Option<toml::Value>,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub listen: Option<String>,
    pub token_file: Option<String>,
    pub plugin_dirs: Option<Vec<String>>,
}

/// `[source]` or `[upstream]`: a broker connection. Some fields belong to one side only; which is
/// checked in validation, to say where they go.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMqtt {
    pub broker: Option<String>,
    pub client_id: Option<String>,
    pub mqtt_version: Option<String>,
    pub keep_alive: Option<toml::Value>,
    pub clean_session: Option<bool>,
    pub username: Option<String>,
    pub password_file: Option<String>,
    pub tls: Option<RawTls>,
    pub reconnect: Option<RawReconnect>,
    // [source] only
    pub qos: Option<u8>,
    pub max_message_bytes: Option<toml::Value>,
    pub batch_max_messages: Option<u64>,
    pub batch_linger: Option<toml::Value>,
    pub dead_letter: Option<String>,
    // [upstream] only
    pub max_inflight: Option<u64>,
    pub drain_rate: Option<u64>,
    pub id_property: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub ca_file: Option<String>,
    pub client_cert_file: Option<String>,
    pub client_key_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReconnect {
    pub initial: Option<toml::Value>,
    pub max: Option<toml::Value>,
}

/// `[storage]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    pub data_dir: Option<String>,
    pub commit_interval: Option<toml::Value>,
    pub checkpoint_interval: Option<toml::Value>,
    pub max_outbox: Option<toml::Value>,
    pub on_full: Option<RawOnFull>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RawOnFull {
    Block,
    DropOldest,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RawGuarantee {
    EffectivelyOnce,
    AtMostOnce,
}

/// `dedup = {...}` of a pipeline.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDedup {
    pub field: Option<String>,
    pub horizon: Option<toml::Value>,
    pub max_entries: Option<u64>,
}

/// One `[[pipeline]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPipeline {
    pub name: Option<String>,
    pub topics: Option<Vec<String>>,
    pub key: Option<String>,
    pub max_key_bytes: Option<toml::Value>,
    pub guarantee: Option<RawGuarantee>,
    pub dedup: Option<RawDedup>,
    pub decode: Option<Part<RawDecode>>,
    #[serde(default)]
    pub transform: Vec<Part<RawPlugin>>,
    pub enrich: Option<Part<RawEnrich>>,
    pub window: Option<Part<RawWindow>>,
    #[serde(default)]
    pub aggregate: Vec<Part<RawAggregate>>,
    pub output: Option<Part<RawOutput>>,
}

/// `[pipeline.decode]`: `json = {...}` or a decoder plugin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDecode {
    pub json: Option<RawJson>,
    pub plugin: Option<String>,
    pub config: Option<toml::Value>,
    pub sha256: Option<String>,
    pub watch: Option<bool>,
    pub limits: Option<RawLimits>,
    pub allow: Option<RawAllow>,
}

/// The built-in JSON decoder's field mapping.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJson {
    pub key: String,
    pub time: String,
    pub time_format: RawTimeFormat,
    pub values: Option<Vec<String>>,
    pub source: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub(super) enum RawTimeFormat {
    #[serde(rename = "ms")]
    Millis,
    #[serde(rename = "s")]
    Seconds,
    #[serde(rename = "rfc3339")]
    Rfc3339,
}

/// A plugin step: `[[pipeline.transform]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlugin {
    pub plugin: String,
    pub config: Option<toml::Value>,
    pub sha256: Option<String>,
    /// Swap to the file's new content when it changes (`weir run`).
    pub watch: Option<bool>,
    pub limits: Option<RawLimits>,
    pub allow: Option<RawAllow>,
}

/// `limits = {...}` of a plugin step; each one optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub time_budget: Option<toml::Value>,
    pub max_memory: Option<toml::Value>,
    pub max_batch_events: Option<u64>,
    pub max_output_events: Option<u64>,
    pub max_output_bytes: Option<toml::Value>,
    pub quarantine_after_failures: Option<u32>,
    pub quarantine_backoff: Option<toml::Value>,
    pub quarantine_backoff_max: Option<toml::Value>,
}

/// `allow = {...}` of a plugin step: what it may reach outside its sandbox.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAllow {
    #[serde(default)]
    pub dirs: Vec<RawDir>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub connect: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDir {
    pub host: String,
    pub guest: String,
    #[serde(default)]
    pub writable: bool,
}

/// `[pipeline.enrich]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnrich {
    pub table: String,
    pub on: String,
    pub fields: Vec<String>,
    pub on_missing: Option<RawOnMissing>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RawOnMissing {
    Pass,
    DeadLetter,
}

/// `[pipeline.window]`. Which fields a kind takes is checked in validation, to say what to write
/// instead.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWindow {
    pub kind: RawWindowKind,
    pub size: Option<toml::Value>,
    pub slide: Option<toml::Value>,
    pub offset: Option<toml::Value>,
    pub gap: Option<toml::Value>,
    pub count: Option<toml::Value>,
    pub time: Option<RawWindowTime>,
    pub out_of_orderness: Option<toml::Value>,
    pub idle_timeout: Option<toml::Value>,
    pub allowed_lateness: Option<toml::Value>,
    pub max_future: Option<toml::Value>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawWindowKind {
    Tumbling,
    Sliding,
    Session,
    Count,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawWindowTime {
    Event,
    Processing,
}

/// `[[pipeline.aggregate]]`: a built-in function (`fn`) or an aggregator plugin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAggregate {
    #[serde(rename = "fn")]
    pub func: Option<RawAggregateFn>,
    pub field: Option<String>,
    #[serde(rename = "as")]
    pub output: Option<String>,
    pub plugin: Option<String>,
    pub config: Option<toml::Value>,
    pub sha256: Option<String>,
    pub watch: Option<bool>,
    pub limits: Option<RawLimits>,
    pub allow: Option<RawAllow>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawAggregateFn {
    Count,
    Sum,
    Min,
    Max,
    Mean,
    First,
    Last,
    Stddev,
}

/// `[pipeline.output]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutput {
    pub topic: String,
    pub late: Option<String>,
    pub dead_letter: Option<String>,
}
