//! Validation of a pipeline's window and aggregates: which measures each kind of window takes,
//! their units and bounds, the time settings, and built-in or plugin aggregates.

use std::collections::HashMap;
use std::time::Duration;

use super::{Validator, shown};
use crate::config::raw::{
    Part, RawAggregate, RawAggregateFn, RawPlugin, RawWindow, RawWindowKind, RawWindowTime,
};
use crate::config::{
    Aggregate, AggregateFn, MAX_WINDOWS_PER_EVENT, Window, WindowKind, WindowTime,
};
use crate::runtime::World;

impl Validator<'_> {
    pub(super) fn window(&mut self, at: &str, part: Part<RawWindow>) -> Option<Window> {
        let raw = match part {
            Part::Ok(raw) => raw,
            Part::Bad { error, .. } => {
                self.serde_error(at, &error);
                return None;
            }
        };
        let before = self.errors.len();
        let field = |name: &str| format!("{at}.{name}");
        let kind_name = match raw.kind {
            RawWindowKind::Tumbling => "tumbling",
            RawWindowKind::Sliding => "sliding",
            RawWindowKind::Session => "session",
            RawWindowKind::Count => "count",
        };
        let measures = [
            ("size", &raw.size),
            ("slide", &raw.slide),
            ("offset", &raw.offset),
            ("gap", &raw.gap),
            ("count", &raw.count),
        ];
        for (name, value) in measures {
            if value.is_some() && !window_takes(raw.kind, name) {
                self.error(field(name), not_taken(raw.kind, kind_name, name));
            }
        }
        let required = |this: &mut Self, name: &str, value: &Option<toml::Value>, example: &str| {
            if value.is_none() {
                this.error(
                    field(name),
                    format!("missing; a {kind_name} window needs {example}"),
                );
            }
        };
        let kind = match raw.kind {
            RawWindowKind::Tumbling => {
                required(self, "size", &raw.size, "a size, e.g. size = \"1m\"");
                let size = self.window_size(&field("size"), raw.size.as_ref());
                let offset = self.offset(
                    &field("offset"),
                    raw.offset.as_ref(),
                    size,
                    &raw.size,
                    "size",
                );
                size.zip(offset)
                    .map(|(size, offset)| WindowKind::Tumbling { size, offset })
            }
            RawWindowKind::Sliding => {
                required(self, "size", &raw.size, "a size, e.g. size = \"1h\"");
                required(self, "slide", &raw.slide, "a slide, e.g. slide = \"10m\"");
                let size = self.window_size(&field("size"), raw.size.as_ref());
                let slide = self.window_size(&field("slide"), raw.slide.as_ref());
                if let (Some(size), Some(slide), Some(size_v), Some(slide_v)) =
                    (size, slide, &raw.size, &raw.slide)
                    && slide > size
                {
                    self.error(
                        field("slide"),
                        format!(
                            "{} is longer than size {}; a sliding window's slide must be at most \
                             its size",
                            shown(slide_v),
                            shown(size_v)
                        ),
                    );
                }
                if let (Some(size), Some(slide), Some(slide_v)) = (size, slide, &raw.slide) {
                    let (size, slide) = (size.as_millis() as u64, slide.as_millis() as u64);
                    self.windows_per_event(&field("slide"), size, slide, &shown(slide_v));
                }
                let offset = self.offset(
                    &field("offset"),
                    raw.offset.as_ref(),
                    slide,
                    &raw.slide,
                    "slide",
                );
                match (size, slide, offset) {
                    (Some(size), Some(slide), Some(offset)) => Some(WindowKind::Sliding {
                        size,
                        slide,
                        offset,
                    }),
                    _ => None,
                }
            }
            RawWindowKind::Session => {
                required(self, "gap", &raw.gap, "a gap, e.g. gap = \"30m\"");
                let gap = self.window_size(&field("gap"), raw.gap.as_ref());
                gap.map(|gap| WindowKind::Session { gap })
            }
            RawWindowKind::Count => {
                required(
                    self,
                    "count",
                    &raw.count,
                    "a count of events, e.g. count = 100",
                );
                let count = raw
                    .count
                    .as_ref()
                    .and_then(|v| self.count(&field("count"), v));
                let slide = match (&raw.slide, count) {
                    (None, count) => count,
                    (Some(v), count) => self.count_slide(&field("slide"), v, count),
                };
                if let (Some(count), Some(slide), Some(_)) = (count, slide, &raw.slide) {
                    self.windows_per_event(&field("slide"), count, slide, &slide.to_string());
                }
                count
                    .zip(slide)
                    .map(|(count, slide)| WindowKind::Count { count, slide })
            }
        };

        let time = match raw.time {
            None | Some(RawWindowTime::Event) => WindowTime::Event,
            Some(RawWindowTime::Processing) => WindowTime::Processing,
        };
        let event_time_only = [
            ("out_of_orderness", &raw.out_of_orderness),
            ("idle_timeout", &raw.idle_timeout),
            ("allowed_lateness", &raw.allowed_lateness),
            ("max_future", &raw.max_future),
        ];
        if time == WindowTime::Processing {
            for (name, _) in event_time_only.iter().filter(|(_, v)| v.is_some()) {
                self.error(
                    field(name),
                    "has no effect with time = \"processing\" (events are put in windows when \
                     they arrive); remove it, or use time = \"event\"",
                );
            }
        }
        let duration_or =
            |this: &mut Self, name: &str, value: &Option<toml::Value>, default| match value {
                None => Some(default),
                Some(v) => this.duration(&field(name), v),
            };
        let out_of_orderness = duration_or(
            self,
            "out_of_orderness",
            &raw.out_of_orderness,
            Duration::ZERO,
        );
        let idle_timeout = match &raw.idle_timeout {
            None => Some(Duration::from_secs(60)),
            Some(v) => self.positive_duration(&field("idle_timeout"), v),
        };
        let allowed_lateness = duration_or(
            self,
            "allowed_lateness",
            &raw.allowed_lateness,
            Duration::ZERO,
        );
        let max_future = duration_or(
            self,
            "max_future",
            &raw.max_future,
            Duration::from_secs(600),
        );

        if self.errors.len() > before {
            return None;
        }
        Some(Window {
            kind: kind?,
            time,
            out_of_orderness: out_of_orderness?,
            idle_timeout: idle_timeout?,
            allowed_lateness: allowed_lateness?,
            max_future: max_future?,
        })
    }

    /// A window's size, slide or gap: a duration of more than zero.
    pub(super) fn window_size(
        &mut self,
        at: &str,
        value: Option<&toml::Value>,
    ) -> Option<Duration> {
        self.positive_duration(at, value?)
    }

    /// A window's offset (default 0), less than its `base` (the size or slide).
    pub(super) fn offset(
        &mut self,
        at: &str,
        value: Option<&toml::Value>,
        base: Option<Duration>,
        base_value: &Option<toml::Value>,
        base_name: &str,
    ) -> Option<Duration> {
        let Some(value) = value else {
            return Some(Duration::ZERO);
        };
        let offset = self.duration(at, value)?;
        if let (Some(base), Some(base_value)) = (base, base_value)
            && offset >= base
        {
            self.error(
                at,
                format!(
                    "{} is not shorter than {base_name} {}; an offset shifts windows by less than \
                     their {base_name}",
                    shown(value),
                    shown(base_value)
                ),
            );
            return None;
        }
        Some(offset)
    }

    /// Checks that `size / slide` windows per event stay within [`MAX_WINDOWS_PER_EVENT`].
    pub(super) fn windows_per_event(&mut self, at: &str, size: u64, slide: u64, shown_slide: &str) {
        let n = size.div_ceil(slide.max(1));
        if n > MAX_WINDOWS_PER_EVENT {
            self.error(
                at,
                format!(
                    "{shown_slide} is too small: every event would be in {n} windows, more than \
                     {MAX_WINDOWS_PER_EVENT}; use a larger slide"
                ),
            );
        }
    }

    /// A number of events, at least 1.
    pub(super) fn count(&mut self, at: &str, value: &toml::Value) -> Option<u64> {
        match value {
            toml::Value::Integer(n) if *n >= 1 => Some(*n as u64),
            toml::Value::Integer(n) => {
                self.error(at, format!("{n} must be at least 1"));
                None
            }
            other => {
                self.error(
                    at,
                    format!(
                        "{} is not a number of events; write a whole number, e.g. count = 100",
                        shown(other)
                    ),
                );
                None
            }
        }
    }

    pub(super) fn count_slide(
        &mut self,
        at: &str,
        value: &toml::Value,
        count: Option<u64>,
    ) -> Option<u64> {
        if let toml::Value::String(s) = value {
            self.error(
                at,
                format!(
                    "{s:?} is a duration, but a count window slides by a number of events, e.g. \
                     slide = 10"
                ),
            );
            return None;
        }
        let slide = self.count(at, value)?;
        if let Some(count) = count
            && slide > count
        {
            self.error(
                at,
                format!(
                    "{slide} is more than count {count}; a count window's slide must be at most \
                     its count"
                ),
            );
            return None;
        }
        Some(slide)
    }

    pub(super) fn aggregate(
        &mut self,
        label: &str,
        k: usize,
        part: Part<RawAggregate>,
        outputs: &mut HashMap<String, usize>,
    ) -> Option<Aggregate> {
        let at = format!("{label}.aggregate[{k}]");
        let raw = match part {
            Part::Ok(raw) => raw,
            Part::Bad { error, .. } => {
                self.serde_error(&at, &error);
                return None;
            }
        };
        let RawAggregate {
            func,
            field,
            output,
            plugin,
            config,
            sha256,
            watch,
            limits,
            allow,
        } = raw;
        match (func, plugin) {
            (Some(_), Some(_)) => {
                self.error(
                    &at,
                    "has both fn and plugin; an aggregate is a built-in fn or an aggregator \
                     plugin: remove one",
                );
                None
            }
            (None, None) => {
                self.error(
                    &at,
                    "has neither fn nor plugin; add fn = \"mean\" (count, sum, min, max, mean, \
                     first, last or stddev) or plugin = \"aggregator.wasm\"",
                );
                None
            }
            (Some(func), None) => {
                let before = self.errors.len();
                let plugin_only = [
                    ("config", config.is_some()),
                    ("sha256", sha256.is_some()),
                    ("watch", watch.is_some()),
                    ("limits", limits.is_some()),
                    ("allow", allow.is_some()),
                ];
                for (name, _) in plugin_only.iter().filter(|(_, given)| *given) {
                    self.error(
                        format!("{at}.{name}"),
                        format!("only an aggregator plugin takes {name}; remove it"),
                    );
                }
                let func = match func {
                    RawAggregateFn::Count => AggregateFn::Count,
                    RawAggregateFn::Sum => AggregateFn::Sum,
                    RawAggregateFn::Min => AggregateFn::Min,
                    RawAggregateFn::Max => AggregateFn::Max,
                    RawAggregateFn::Mean => AggregateFn::Mean,
                    RawAggregateFn::First => AggregateFn::First,
                    RawAggregateFn::Last => AggregateFn::Last,
                    RawAggregateFn::Stddev => AggregateFn::StdDev,
                };
                match field.as_deref() {
                    None if func != AggregateFn::Count => self.error(
                        format!("{at}.field"),
                        format!(
                            "missing; fn = \"{func}\" needs the field to aggregate, e.g. field = \
                             \"temp\""
                        ),
                    ),
                    Some("") => {
                        self.error(format!("{at}.field"), "empty; name the field to aggregate")
                    }
                    _ => {}
                }
                let as_given = output.is_some();
                let name = output.unwrap_or_else(|| match &field {
                    Some(field) => format!("{func}_{field}"),
                    None => func.to_string(),
                });
                let name_at = if as_given {
                    format!("{at}.as")
                } else {
                    at.clone()
                };
                if name.is_empty() {
                    self.error(&name_at, "empty; name the result, or leave as out");
                } else if let Some(first) = outputs.get(&name) {
                    self.error(
                        &name_at,
                        format!(
                            "the result {name:?} is also the result of aggregate[{first}]; give \
                             each its own name with as = \"...\""
                        ),
                    );
                } else {
                    outputs.insert(name.clone(), k);
                }
                (self.errors.len() == before).then_some(Aggregate::Builtin {
                    func,
                    field,
                    output: name,
                })
            }
            (None, Some(plugin)) => {
                if field.is_some() {
                    self.error(
                        format!("{at}.field"),
                        "an aggregator plugin takes its field in its config, e.g. config = { \
                         field = \"temp\" }; remove field",
                    );
                }
                if output.is_some() {
                    self.error(
                        format!("{at}.as"),
                        "an aggregator plugin names its own results (see its README); remove as",
                    );
                }
                let step = RawPlugin {
                    plugin,
                    config,
                    sha256,
                    watch,
                    limits,
                    allow,
                };
                let step = self.plugin_step(&at, step, World::Aggregator);
                (field.is_none() && output.is_none()).then_some(Aggregate::Plugin(Box::new(step?)))
            }
        }
    }
}

/// Whether a window of `kind` takes the measure `name`.
fn window_takes(kind: RawWindowKind, name: &str) -> bool {
    match kind {
        RawWindowKind::Tumbling => matches!(name, "size" | "offset"),
        RawWindowKind::Sliding => matches!(name, "size" | "slide" | "offset"),
        RawWindowKind::Session => name == "gap",
        RawWindowKind::Count => matches!(name, "count" | "slide"),
    }
}

/// What to say about a measure a window of `kind` does not take.
fn not_taken(kind: RawWindowKind, kind_name: &str, name: &str) -> String {
    match (kind, name) {
        (RawWindowKind::Session, "size") => "a session window has no size: it closes after `gap` \
             without events; remove size, or use kind = \"tumbling\" for windows of a fixed size"
            .into(),
        (RawWindowKind::Count, "size") => "a count window is measured in events, not time: write \
             count = 100 (events per window) instead of size"
            .into(),
        (RawWindowKind::Tumbling, "slide") => "a tumbling window has no slide; use kind = \
             \"sliding\" for overlapping windows, or remove slide"
            .into(),
        (_, "gap") => {
            "only session windows have a gap; remove it, or use kind = \"session\"".into()
        }
        (_, "count") => {
            "only count windows have a count; remove it, or use kind = \"count\"".into()
        }
        _ => format!("a {kind_name} window has no {name}; remove it"),
    }
}
