//! Validation: the config as written (`super::raw`) into the resolved [`Config`]. Every check
//! runs and every problem is kept, each with its field path and what to do; a pipeline is resolved
//! only if it has none.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_path_to_error::Segment;

use super::raw::{
    Part, RawConfig, RawDecode, RawEnrich, RawJson, RawOnMissing, RawOutput, RawPipeline,
    RawPlugin, RawTimeFormat,
};
use super::topic::{self, Placeholder};
use super::units::{duration_value, format_size, size_value};
use super::{
    Aggregate, Config, ConfigError, Decode, Enrich, Output, Pipeline, PluginStep, PluginUse,
    SUPPORTED_VERSIONS, pipeline_label,
};
use crate::decode::{JsonMapping, TimeFormat};
use crate::enrich::{Enricher, OnMissing};
use crate::runtime::World;

mod live;
mod plugin;
mod window;

const SEE: &str = "see configs/README.md";

/// The result of validating a config: the config if it is valid, the plugins it names (even when
/// it is not), and every problem found.
#[derive(Debug)]
pub(crate) struct Validated {
    pub config: Option<Config>,
    pub plugins: Vec<PluginUse>,
    pub errors: Vec<ConfigError>,
}

pub(super) fn validate(text: &str, file: &Path) -> Validated {
    let mut v = Validator {
        file,
        dir: file.parent().unwrap_or(Path::new("")),
        errors: Vec::new(),
        plugins: Vec::new(),
    };
    let config = v.config(text);
    Validated {
        config: config.filter(|_| v.errors.is_empty()),
        plugins: v.plugins,
        errors: v.errors,
    }
}

struct Validator<'a> {
    file: &'a Path,
    /// Relative paths in the config are relative to this.
    dir: &'a Path,
    errors: Vec<ConfigError>,
    plugins: Vec<PluginUse>,
}

/// A value as written, for messages: strings quoted, the rest as TOML.
/// serde's message without the names of weir's own types: "expected struct RawJson" says
/// nothing to a user, "expected a table" does; a long offending value is elided.
fn plain_serde_message(message: &str) -> String {
    let mut out = message.to_owned();
    if let Some(i) = out.find("expected struct ") {
        let end = out[i + "expected struct ".len()..]
            .find(|c: char| !c.is_alphanumeric() && c != '_')
            .map_or(out.len(), |j| i + "expected struct ".len() + j);
        out.replace_range(i..end, "expected a table");
    }
    for (internal, plain) in [
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a table"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u8", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
    ] {
        out = out.replace(internal, plain);
    }
    // "unknown variant `<a megabyte>`, expected ...": keep the start of a long quoted value and
    // the rest of the message.
    let parts: Vec<&str> = out.split('`').collect();
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 && i + 1 < parts.len() {
                crate::fsutil::elide(part, 40)
            } else {
                (*part).to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("`")
}

fn shown(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// An optional section, once validated: `None` if it is present but invalid.
fn valid_if_present<T>(section: Option<Option<T>>) -> Option<Option<T>> {
    match section {
        Some(None) => None,
        section => Some(section.flatten()),
    }
}

/// The repeats in `items`: (index of the repeat, index of the first, the item).
fn duplicates<'s>(items: impl IntoIterator<Item = &'s str>) -> Vec<(usize, usize, &'s str)> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut dups = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        if let Some(&first) = seen.get(item) {
            dups.push((i, first, item));
        } else {
            seen.insert(item, i);
        }
    }
    dups
}

impl Validator<'_> {
    fn error(&mut self, at: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::Invalid {
            file: self.file.to_owned(),
            at: at.into(),
            message: message.into(),
        });
    }

    fn config(&mut self, text: &str) -> Option<Config> {
        let mut table: toml::Table = match text.parse() {
            Ok(table) => table,
            Err(e) => {
                self.syntax_error(text, &e);
                return None;
            }
        };
        let single_table = table.get("pipeline").is_some_and(toml::Value::is_table);
        if single_table {
            self.error(
                "pipeline",
                "`[pipeline]` is a single table; write each pipeline as `[[pipeline]]` (an array \
                 of tables), and its parts as [pipeline.decode], [[pipeline.transform]], ...",
            );
            table.remove("pipeline");
        }
        let raw: RawConfig = match serde_path_to_error::deserialize(toml::Value::Table(table)) {
            Ok(raw) => raw,
            Err(e) => {
                self.serde_error("", &e);
                return None;
            }
        };
        if !self.version(raw.version.as_ref()) {
            return None;
        }
        if raw.pipeline.is_empty() && !single_table {
            self.error(
                "pipeline",
                "missing; add at least one [[pipeline]] (see configs/farm.toml for an example)",
            );
        }
        let source = self.source(raw.source);
        let upstream = self.upstream(raw.upstream);
        let storage = self.storage(raw.storage);
        let admin = self.admin(raw.admin);
        let fleet = self.fleet(raw.fleet, upstream.as_ref());
        let mut names = HashMap::new();
        let pipelines: Vec<Option<Pipeline>> = raw
            .pipeline
            .into_iter()
            .enumerate()
            .map(|(i, part)| self.pipeline(i, part, &mut names))
            .collect();
        Some(Config {
            file: self.file.to_owned(),
            pipelines: pipelines.into_iter().collect::<Option<_>>()?,
            source: source?,
            upstream: upstream?,
            storage: storage?,
            admin: admin?,
            fleet: fleet?,
        })
    }

    fn syntax_error(&mut self, text: &str, e: &toml::de::Error) {
        let start = e.span().map_or(0, |s| s.start).min(text.len());
        let before = &text[..start];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        self.errors.push(ConfigError::Syntax {
            file: self.file.to_owned(),
            line,
            column,
            message: e.message().trim_end().to_owned(),
        });
    }

    /// A problem serde found in the shape of a section at `base`.
    fn serde_error(&mut self, base: &str, e: &serde_path_to_error::Error<toml::de::Error>) {
        let mut at = base.to_owned();
        let mut last_key = None;
        for segment in e.path() {
            match segment {
                Segment::Map { key } | Segment::Enum { variant: key } => {
                    if !at.is_empty() {
                        at.push('.');
                    }
                    at.push_str(key);
                    last_key = Some(key.as_str());
                }
                Segment::Seq { index } => at.push_str(&format!("[{index}]")),
                Segment::Unknown => {}
            }
        }
        let message = plain_serde_message(e.inner().message().trim_end());
        let message = message.as_str();
        let hint = match last_key {
            _ if !message.starts_with("unknown field") => SEE.to_owned(),
            Some("version") if at != "version" => {
                "`version` belongs at the top of the file, above \
                 the first [[pipeline]] (TOML puts every line below a table header into that table)"
                    .to_owned()
            }
            Some(key @ ("name" | "topics" | "key")) if base.contains('.') => {
                // `base` ends with the section: `enrich`, `transform[1]`, ...
                let section = base.rsplit('.').next().unwrap_or_default();
                let section = section.split('[').next().unwrap_or_default();
                let header = match section {
                    "transform" | "aggregate" => format!("[[pipeline.{section}]]"),
                    _ => format!("[pipeline.{section}]"),
                };
                format!(
                    "`{key}` is a field of the pipeline, but in TOML every line below the {header} \
                     header belongs to that table: move it above the pipeline's first [pipeline.*] \
                     header"
                )
            }
            _ => format!("check the spelling; {SEE}"),
        };
        self.error(at, format!("{message}; {hint}"));
    }

    /// Checks the version; `false` if the rest cannot be read as a config this weir knows.
    fn version(&mut self, version: Option<&toml::Value>) -> bool {
        let supported = SUPPORTED_VERSIONS
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(" or ");
        match version {
            None => {
                self.error(
                    "version",
                    format!(
                        "missing; add `version = 1` at the top of the file (this weir supports \
                         config version {supported})"
                    ),
                );
                true
            }
            Some(toml::Value::Integer(n)) if SUPPORTED_VERSIONS.contains(n) => true,
            Some(toml::Value::Integer(n)) => {
                // Another version may mean other fields: nothing else can be checked.
                self.error(
                    "version",
                    format!(
                        "config version {n} is not supported; this weir supports config version \
                         {supported}"
                    ),
                );
                false
            }
            Some(other) => {
                self.error(
                    "version",
                    format!(
                        "{} is not a version number; write `version = 1` (this weir supports \
                         config version {supported})",
                        shown(other)
                    ),
                );
                true
            }
        }
    }

    fn pipeline(
        &mut self,
        i: usize,
        part: Part<RawPipeline>,
        names: &mut HashMap<String, usize>,
    ) -> Option<Pipeline> {
        let raw = match part {
            Part::Ok(raw) => raw,
            Part::Bad { error, name } => {
                self.serde_error(&pipeline_label(i, name.as_deref()), &error);
                return None;
            }
        };
        let before = self.errors.len();
        let label = pipeline_label(i, raw.name.as_deref());
        let at = |field: &str| format!("{label}.{field}");

        let name = self.name(&at("name"), raw.name, i, names);
        let topics = self.topics(&at("topics"), raw.topics);
        if raw.key.as_deref().is_some_and(str::is_empty) {
            self.error(
                at("key"),
                "empty; name the field to group by, or leave key out to keep the event key",
            );
        }
        let max_key_bytes = self.max_key_bytes(&at("max_key_bytes"), raw.max_key_bytes);
        let guarantee = self.guarantee(raw.guarantee);
        let dedup = self.dedup(&at("dedup"), raw.dedup);
        let decode = self.decode(&at("decode"), raw.decode);
        let transforms: Vec<Option<PluginStep>> = raw
            .transform
            .into_iter()
            .enumerate()
            .map(|(j, part)| self.transform(&at(&format!("transform[{j}]")), part))
            .collect();
        let enrich = raw.enrich.map(|part| self.enrich(&at("enrich"), part));
        let has_window = raw.window.is_some();
        let window = raw.window.map(|part| self.window(&at("window"), part));
        let has_aggregates = !raw.aggregate.is_empty();
        let mut outputs = HashMap::new();
        let aggregates: Vec<Option<Aggregate>> = raw
            .aggregate
            .into_iter()
            .enumerate()
            .map(|(k, part)| self.aggregate(&label, k, part, &mut outputs))
            .collect();
        if has_window && !has_aggregates {
            self.error(
                at("window"),
                "a window needs at least one [[pipeline.aggregate]] to compute, e.g. \
                 fn = \"count\"; to forward events as they come, remove the window",
            );
        }
        if has_aggregates && !has_window {
            self.error(
                at("aggregate"),
                "aggregates need a [pipeline.window] to aggregate over; add one, or remove the \
                 aggregates to forward events as they come",
            );
        }
        let output = self.output(&at("output"), raw.output, has_window);

        if self.errors.len() > before {
            return None;
        }
        Some(Pipeline {
            name: name?,
            topics: topics?,
            decode: decode?,
            transforms: transforms.into_iter().collect::<Option<_>>()?,
            enrich: valid_if_present(enrich)?,
            key: raw.key,
            window: valid_if_present(window)?,
            aggregates: aggregates.into_iter().collect::<Option<_>>()?,
            output: output?,
            guarantee,
            dedup: dedup?,
            max_key_bytes: max_key_bytes?,
        })
    }

    fn max_key_bytes(&mut self, at: &str, value: Option<toml::Value>) -> Option<usize> {
        let Some(value) = value else {
            return Some(crate::config::DEFAULT_MAX_KEY_BYTES);
        };
        let bytes = self.size(at, &value)?;
        let max = crate::config::MAX_KEY_BYTES_LIMIT;
        if !(1..=max).contains(&bytes) {
            self.error(
                at,
                format!(
                    "{} is out of range; keys may be 1B to {} long (they become part of MQTT \
                     topics, which hold at most 65535 bytes)",
                    shown(&value),
                    format_size(max)
                ),
            );
            return None;
        }
        Some(bytes as usize)
    }

    fn name(
        &mut self,
        at: &str,
        name: Option<String>,
        i: usize,
        names: &mut HashMap<String, usize>,
    ) -> Option<String> {
        let Some(name) = name else {
            self.error(
                at,
                "missing; give the pipeline a unique name, e.g. name = \"farm\"",
            );
            return None;
        };
        if !is_valid_name(&name) {
            self.error(
                at,
                format!(
                    "{name:?} is not a valid name; use lowercase letters, digits, '_' and '-' \
                     (e.g. \"farm-north\")"
                ),
            );
            return None;
        }
        if let Some(first) = names.get(&name) {
            self.error(
                at,
                format!(
                    "{name:?} is also the name of pipeline[{first}]; pipeline names must be unique"
                ),
            );
            return None;
        }
        names.insert(name.clone(), i);
        Some(name)
    }

    fn topics(&mut self, at: &str, topics: Option<Vec<String>>) -> Option<Vec<String>> {
        let help = "list the MQTT topic filters that feed the pipeline, e.g. topics = \
                    [\"farm/+/sensors/#\"]";
        let topics = match topics {
            None => {
                self.error(at, format!("missing; {help}"));
                return None;
            }
            Some(t) if t.is_empty() => {
                self.error(at, format!("empty; {help}"));
                return None;
            }
            Some(t) => t,
        };
        let before = self.errors.len();
        for (j, filter) in topics.iter().enumerate() {
            if let Err(e) = topic::check_filter(filter) {
                self.error(format!("{at}[{j}]"), e);
            }
        }
        for (j, first, filter) in duplicates(topics.iter().map(String::as_str)) {
            self.error(
                format!("{at}[{j}]"),
                format!("{filter:?} is listed twice (also {at}[{first}]); remove one"),
            );
        }
        (self.errors.len() == before).then_some(topics)
    }

    fn decode(&mut self, at: &str, part: Option<Part<RawDecode>>) -> Option<Decode> {
        let raw = match part {
            None => {
                self.error(
                    at,
                    "missing; add [pipeline.decode] with json = { key = \"...\", time = \"...\", \
                     time_format = \"ms\" } for JSON payloads, or plugin = \"decoder.wasm\"",
                );
                return None;
            }
            Some(Part::Bad { error, .. }) => {
                self.serde_error(at, &error);
                return None;
            }
            Some(Part::Ok(raw)) => raw,
        };
        match (raw.json, raw.plugin) {
            (Some(_), Some(_)) => {
                self.error(
                    at,
                    "has both json and plugin; a pipeline decodes with one of them: remove the \
                     other",
                );
                None
            }
            (None, None) => {
                self.error(
                    at,
                    "has neither json nor plugin; add json = { key = \"...\", time = \"...\", \
                     time_format = \"ms\" } for JSON payloads, or plugin = \"decoder.wasm\"",
                );
                None
            }
            (Some(json), None) => {
                let plugin_only = [
                    ("config", raw.config.is_some()),
                    ("sha256", raw.sha256.is_some()),
                    ("watch", raw.watch.is_some()),
                    ("limits", raw.limits.is_some()),
                    ("allow", raw.allow.is_some()),
                ];
                for (field, _) in plugin_only.iter().filter(|(_, given)| *given) {
                    self.error(
                        format!("{at}.{field}"),
                        format!(
                            "only a decoder plugin takes {field}; the built-in JSON decoder is set \
                             up by json = {{ ... }}: remove {field}"
                        ),
                    );
                }
                let mapping = self.json(&format!("{at}.json"), json);
                plugin_only
                    .iter()
                    .all(|(_, given)| !given)
                    .then_some(Decode::Json(mapping?))
            }
            (None, Some(plugin)) => {
                let step = RawPlugin {
                    plugin,
                    config: raw.config,
                    sha256: raw.sha256,
                    watch: raw.watch,
                    limits: raw.limits,
                    allow: raw.allow,
                };
                self.plugin_step(at, step, World::Decoder)
                    .map(Decode::Plugin)
            }
        }
    }

    fn json(&mut self, at: &str, raw: RawJson) -> Option<JsonMapping> {
        let before = self.errors.len();
        for (field, value) in [("key", &raw.key), ("time", &raw.time)] {
            if value.is_empty() {
                self.error(
                    format!("{at}.{field}"),
                    format!("empty; name the payload field holding the event's {field}"),
                );
            }
        }
        if let Some(values) = &raw.values {
            if values.is_empty() {
                self.error(
                    format!("{at}.values"),
                    "empty, so events would carry no values; list the fields to keep, or leave \
                     values out to keep every scalar field",
                );
            }
            for (j, first, field) in duplicates(values.iter().map(String::as_str)) {
                self.error(
                    format!("{at}.values[{j}]"),
                    format!("{field:?} is listed twice (also values[{first}]); remove one"),
                );
            }
        }
        if raw.source.as_deref().is_some_and(str::is_empty) {
            self.error(
                format!("{at}.source"),
                "empty; name the field naming the watermark source, or leave source out to use \
                 the message's topic",
            );
        }
        (self.errors.len() == before).then_some(JsonMapping {
            key: raw.key,
            time: raw.time,
            time_format: match raw.time_format {
                RawTimeFormat::Millis => TimeFormat::Millis,
                RawTimeFormat::Seconds => TimeFormat::Seconds,
                RawTimeFormat::Rfc3339 => TimeFormat::Rfc3339,
            },
            values: raw.values,
            source: raw.source,
        })
    }

    fn duration(&mut self, at: &str, value: &toml::Value) -> Option<Duration> {
        duration_value(value).map_err(|e| self.error(at, e)).ok()
    }

    /// A duration that must be more than zero.
    fn positive_duration(&mut self, at: &str, value: &toml::Value) -> Option<Duration> {
        let d = self.duration(at, value)?;
        if d.is_zero() {
            self.error(at, format!("{} must be more than zero", shown(value)));
            return None;
        }
        Some(d)
    }

    fn size(&mut self, at: &str, value: &toml::Value) -> Option<u64> {
        size_value(value).map_err(|e| self.error(at, e)).ok()
    }

    /// A count that must be at least 1.
    fn positive(&mut self, at: &str, n: u64) -> Option<usize> {
        if n == 0 {
            self.error(at, "0 must be at least 1");
            return None;
        }
        usize::try_from(n)
            .map_err(|_| self.error(at, format!("{n} is too large")))
            .ok()
    }

    fn enrich(&mut self, at: &str, part: Part<RawEnrich>) -> Option<Enrich> {
        let raw = match part {
            Part::Ok(raw) => raw,
            Part::Bad { error, .. } => {
                self.serde_error(at, &error);
                return None;
            }
        };
        let before = self.errors.len();
        let table = self.dir.join(&raw.table);
        let extension = table.extension().and_then(|x| x.to_str());
        if !matches!(extension, Some("csv" | "json")) {
            self.error(
                format!("{at}.table"),
                format!(
                    "{:?} is neither .csv nor .json; a table is a CSV file with a header row or a \
                     JSON array of objects",
                    raw.table
                ),
            );
        }
        if raw.on.is_empty() {
            self.error(
                format!("{at}.on"),
                "empty; name the table column matched against the event key",
            );
        }
        if raw.fields.is_empty() {
            self.error(
                format!("{at}.fields"),
                "empty; list the table columns to add to events",
            );
        }
        for (k, first, field) in duplicates(raw.fields.iter().map(String::as_str)) {
            self.error(
                format!("{at}.fields[{k}]"),
                format!("{field:?} is listed twice (also fields[{first}]); remove one"),
            );
        }
        let on_missing = match raw.on_missing {
            None | Some(RawOnMissing::Pass) => OnMissing::Pass,
            Some(RawOnMissing::DeadLetter) => OnMissing::DeadLetter,
        };
        if self.errors.len() == before {
            self.check_table(at, &table, &raw.on, &raw.fields, on_missing);
        }
        (self.errors.len() == before).then_some(Enrich {
            table,
            on: raw.on,
            fields: raw.fields,
            on_missing,
        })
    }

    /// Reads the table as the pipeline will, and checks it has the `on` column and every field.
    fn check_table(
        &mut self,
        at: &str,
        table: &Path,
        on: &str,
        fields: &[String],
        on_missing: OnMissing,
    ) {
        if !table.exists() {
            self.error(
                format!("{at}.table"),
                format!(
                    "{} does not exist; the path is relative to the config file's directory",
                    table.display()
                ),
            );
            return;
        }
        let before = self.errors.len();
        if let Some(columns) = table_columns(table) {
            let listed = columns.join(", ");
            let missing = |c: &str| !columns.iter().any(|x| x == c);
            if missing(on) {
                self.error(
                    format!("{at}.on"),
                    format!(
                        "table {} has no column {on:?}; its columns are {listed}",
                        table.display()
                    ),
                );
            }
            for (k, field) in fields.iter().enumerate().filter(|(_, f)| missing(f)) {
                self.error(
                    format!("{at}.fields[{k}]"),
                    format!(
                        "table {} has no column {field:?}; its columns are {listed}",
                        table.display()
                    ),
                );
            }
        }
        if self.errors.len() == before
            && let Err(e) = Enricher::open(table, on, fields.to_vec(), on_missing)
        {
            self.error(format!("{at}.table"), e);
        }
    }

    fn output(
        &mut self,
        at: &str,
        part: Option<Part<RawOutput>>,
        has_window: bool,
    ) -> Option<Output> {
        let raw = match part {
            None => {
                self.error(
                    at,
                    "missing; add [pipeline.output] with the topic to publish to, e.g. topic = \
                     \"farm/{key}/agg\"",
                );
                return None;
            }
            Some(Part::Bad { error, .. }) => {
                self.serde_error(at, &error);
                return None;
            }
            Some(Part::Ok(raw)) => raw,
        };
        let before = self.errors.len();
        let main_allows: &[Placeholder] = if has_window {
            &Placeholder::ALL
        } else {
            &[Placeholder::Pipeline, Placeholder::Key]
        };
        self.template(&format!("{at}.topic"), &raw.topic, main_allows, |p| {
            format!(
                "{{{p}}} is known only for window results, and this pipeline has no \
                 [pipeline.window]; use {{pipeline}} or {{key}}"
            )
        });
        if let Some(late) = &raw.late {
            if has_window {
                self.template(
                    &format!("{at}.late"),
                    late,
                    &[Placeholder::Pipeline, Placeholder::Key],
                    |p| {
                        format!(
                            "{{{p}}} is not known for a late event (it missed its window); use \
                             {{pipeline}} or {{key}}"
                        )
                    },
                );
            } else {
                self.error(
                    format!("{at}.late"),
                    "only a pipeline with a window has late events; remove late",
                );
            }
        }
        if let Some(dead_letter) = &raw.dead_letter {
            self.template(
                &format!("{at}.dead_letter"),
                dead_letter,
                &[Placeholder::Pipeline],
                |p| {
                    format!(
                        "{{{p}}} is not known for every dead letter (a message that cannot be \
                         decoded has no key); use {{pipeline}} or a fixed topic"
                    )
                },
            );
        }
        (self.errors.len() == before).then(|| Output {
            topic: raw.topic,
            late: raw.late.unwrap_or_else(|| "{pipeline}/late".into()),
            dead_letter: raw
                .dead_letter
                .unwrap_or_else(|| "{pipeline}/dead-letter".into()),
        })
    }

    /// Checks a topic template: known placeholders, only those in `allowed`, and MQTT syntax.
    fn template(
        &mut self,
        at: &str,
        template: &str,
        allowed: &[Placeholder],
        not_allowed: impl Fn(&str) -> String,
    ) {
        match topic::placeholders(template) {
            Err(e) => self.error(at, e),
            Ok(found) => {
                if let Some(p) = found.iter().find(|p| !allowed.contains(p)) {
                    self.error(at, format!("{template:?}: {}", not_allowed(p.name())));
                } else if let Err(e) = topic::check_template_topic(template) {
                    self.error(at, e);
                }
            }
        }
    }
}

/// The columns of a table as its first row (or object) names them; `None` if that cannot be
/// told (an empty or unreadable table: reading it again says why).
fn table_columns(path: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    if path.extension().is_some_and(|x| x == "json") {
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        let first = json.as_array()?.first()?.as_object()?;
        Some(first.keys().cloned().collect())
    } else {
        let header = text.lines().find(|l| !l.trim().is_empty())?;
        Some(
            header
                .split(',')
                .map(|c| c.trim().trim_matches('"').to_owned())
                .collect(),
        )
    }
}
