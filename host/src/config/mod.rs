//! The pipeline configuration: a TOML file read into raw serde structs that mirror it (unknown
//! fields refused), then validated into the resolved [`Config`] before anything starts.
//! Validation reports every problem it finds, each naming the file, the field
//! (`pipeline[0] (farm).window.slide`) and what to do; `configs/README.md` documents every field.
//!
//! [`Config::from_file`] and [`Config::from_str`] check everything that needs no plugin: syntax,
//! shape, units, topics, templates, windows, aggregates and the enrichment tables.
//! [`check_plugins`] then loads every plugin and checks that it implements the world its step
//! needs (and the pinned sha256); `weir check` does both.

mod environment;
mod live;
mod plugins;
mod raw;
pub mod topic;
pub mod units;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use environment::{check_files, start_plugins};
pub use live::{
    Admin, Broker, DEFAULT_COMMIT_INTERVAL, Dedup, Fleet, Guarantee, Source, Storage, Upstream,
};
pub(crate) use plugins::load_plugins;
pub use plugins::{PluginUse, check_machine, check_plugins, plugin_uses};
pub use units::{parse_duration, parse_size};
pub(crate) use validate::Validated;

use crate::decode::JsonMapping;
use crate::enrich::OnMissing;
use crate::runtime::{Limits, Permissions};

/// The config versions this weir reads (the top-level `version` field).
pub const SUPPORTED_VERSIONS: &[i64] = &[1];

/// The most windows one event may be in (sliding and count windows: size / slide, rounded up):
/// each is an accumulator per key, so a tiny slide costs memory and time on every event.
pub use crate::window::MAX_WINDOWS_PER_EVENT;

/// A validated config: every pipeline, ready to start.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it was read from, as given; relative paths in it were resolved against its
    /// directory.
    pub file: PathBuf,
    pub pipelines: Vec<Pipeline>,
    /// `[source]`: the sensors' broker (defaults: 127.0.0.1:1883).
    pub source: Source,
    /// `[upstream]`: where results go; `weir run` needs it.
    pub upstream: Option<Upstream>,
    /// `[storage]`: the durable store.
    pub storage: Storage,
    /// `[admin]`: the admin API.
    pub admin: Admin,
    /// `[fleet]`: rollouts over the upstream broker; `None`: none.
    pub fleet: Option<Fleet>,
}

/// One pipeline: topic filters → decode → transforms → enrichment → key by → window and
/// aggregates (or straight out) → outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    /// Unique in the config; lowercase letters, digits, `_` and `-`.
    pub name: String,
    /// MQTT topic filters feeding it.
    pub topics: Vec<String>,
    pub decode: Decode,
    /// Transformer plugins, in order.
    pub transforms: Vec<PluginStep>,
    pub enrich: Option<Enrich>,
    /// The field whose value becomes the grouping key (after enrichment); `None` keeps the
    /// event's key.
    pub key: Option<String>,
    /// `None`: events are forwarded as they come (and there are no aggregates).
    pub window: Option<Window>,
    /// At least one when there is a window, none otherwise.
    pub aggregates: Vec<Aggregate>,
    pub output: Output,
    pub guarantee: Guarantee,
    pub dedup: Dedup,
    /// The longest key (in UTF-8 bytes) an event may have, wherever its key is made (decoder,
    /// plugin, key by); longer ones go to the dead-letter output.
    pub max_key_bytes: usize,
}

/// The default `max_key_bytes`.
pub const DEFAULT_MAX_KEY_BYTES: usize = 1024;
/// The largest `max_key_bytes`: an MQTT topic holds at most 65 535 bytes, keys included.
pub const MAX_KEY_BYTES_LIMIT: u64 = 16 << 10;

/// How a pipeline turns messages into events.
#[derive(Clone, Debug, PartialEq)]
pub enum Decode {
    /// The built-in JSON decoder.
    Json(JsonMapping),
    /// A decoder plugin.
    Plugin(PluginStep),
}

/// A plugin in a pipeline, with its config, pin, limits and grants.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginStep {
    /// The component, resolved against the config file's directory.
    pub path: PathBuf,
    /// The step's config table, handed to the plugin's `init` (as JSON). Empty if not given.
    pub config: toml::Value,
    /// The sha256 the component must have (lowercase hex), if pinned.
    pub sha256: Option<String>,
    /// `watch = true`: `weir run` swaps the step to the file's new content when it changes
    /// (never with a `sha256` pin; decoder and transform steps only).
    pub watch: bool,
    pub limits: Limits,
    pub permissions: Permissions,
}

/// Enrichment: a join with a reference table by key.
#[derive(Clone, Debug, PartialEq)]
pub struct Enrich {
    /// The table (.csv or .json), resolved against the config file's directory.
    pub table: PathBuf,
    /// The table column matched against the event key.
    pub on: String,
    /// The columns added to events.
    pub fields: Vec<String>,
    pub on_missing: OnMissing,
}

/// A pipeline's window.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub kind: WindowKind,
    pub time: WindowTime,
    /// How far behind the newest event time of a source its events may arrive (event time).
    pub out_of_orderness: Duration,
    /// A source silent this long no longer holds the watermark back.
    pub idle_timeout: Duration,
    /// How long after a window closed a late event still updates it (a new revision).
    pub allowed_lateness: Duration,
    /// Events further ahead of the gateway clock than this go to the dead-letter output.
    pub max_future: Duration,
}

/// The kind of a window, with its measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    /// Back-to-back windows of `size`, starting at multiples of `size` plus `offset`.
    Tumbling { size: Duration, offset: Duration },
    /// Windows of `size` starting every `slide` (plus `offset`); an event is in several.
    Sliding {
        size: Duration,
        slide: Duration,
        offset: Duration,
    },
    /// Per key, a window that closes after `gap` without events.
    Session { gap: Duration },
    /// Per key, windows of `count` events, starting every `slide` events.
    Count { count: u64, slide: u64 },
}

impl WindowKind {
    /// Its name in the config (`tumbling`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            WindowKind::Tumbling { .. } => "tumbling",
            WindowKind::Sliding { .. } => "sliding",
            WindowKind::Session { .. } => "session",
            WindowKind::Count { .. } => "count",
        }
    }
}

/// Which clock puts events into windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowTime {
    /// The time in the event, with watermarks.
    Event,
    /// The gateway clock when the event arrives.
    Processing,
}

/// One aggregate of a window.
#[derive(Clone, Debug, PartialEq)]
pub enum Aggregate {
    /// A built-in function of a field, named `output` in results.
    Builtin {
        func: AggregateFn,
        /// The field aggregated; `None` only for `count` (every event).
        field: Option<String>,
        output: String,
    },
    /// An aggregator plugin; it names its own results.
    Plugin(Box<PluginStep>),
}

/// The built-in aggregate functions (the window engine's own).
pub use crate::window::AggFn as AggregateFn;

impl fmt::Display for AggregateFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a pipeline publishes: topic templates with placeholders ([`topic::Placeholder`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// Results (or, without a window, events).
    pub topic: String,
    /// Events too late for their window. Default `{pipeline}/late`.
    pub late: String,
    /// Dead letters. Default `{pipeline}/dead-letter`.
    pub dead_letter: String,
}

/// One problem with a config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file itself could not be read (the message names it and says why once).
    #[error("{0}")]
    Read(crate::fsutil::ReadError),
    /// The file is not TOML.
    #[error("{file}: line {line}, column {column}: {message}; the file is not valid TOML")]
    Syntax {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A field is missing, malformed, or does not fit with the others.
    #[error("{file}: {at}{sep}{message}", sep = if at.is_empty() { "" } else { ": " })]
    Invalid {
        file: PathBuf,
        /// The field path, e.g. `pipeline[0] (farm).window.slide`.
        at: String,
        message: String,
    },
}

/// Every problem found in a config (at least one).
#[derive(Debug)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    pub(crate) fn new(errors: Vec<ConfigError>) -> Self {
        debug_assert!(!errors.is_empty());
        ConfigErrors(errors)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the config file could not be read at all (rather than being invalid).
    pub fn is_read_error(&self) -> bool {
        self.0.iter().any(|e| matches!(e, ConfigError::Read(_)))
    }

    pub fn into_vec(self) -> Vec<ConfigError> {
        self.0
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl Config {
    /// Reads and validates the config at `path`. Relative paths in it are resolved against its
    /// directory; messages name `path` as given.
    pub fn from_file(path: &Path) -> Result<Config, ConfigErrors> {
        let text = read(path)?;
        Config::from_str(&text, path)
    }

    /// Validates config text, as if read from `path` (named in messages; relative paths in the
    /// config are resolved against its directory).
    pub fn from_str(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let validated = validate::validate(text, path);
        match validated.config {
            Some(config) if validated.errors.is_empty() => Ok(config),
            _ => Err(ConfigErrors::new(validated.errors)),
        }
    }
}

/// Reads a config file's text.
pub(crate) fn read(path: &Path) -> Result<String, ConfigErrors> {
    crate::fsutil::read_text_capped(path, "config", crate::fsutil::caps::CONFIG)
        .map_err(|e| ConfigErrors::new(vec![ConfigError::Read(e)]))
}

/// Validates config text, keeping the plugins it names even when it is invalid, so `weir check`
/// can report their problems too.
pub(crate) fn validate(text: &str, path: &Path) -> Validated {
    validate::validate(text, path)
}

/// How a pipeline is named in field paths: `pipeline[0] (farm)`, or `pipeline[0]` without a
/// name.
pub(crate) fn pipeline_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("pipeline[{index}] ({name})"),
        None => format!("pipeline[{index}]"),
    }
}

#[cfg(test)]
mod tests;
