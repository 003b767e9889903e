//! `weir check CONFIG`: validates a pipeline config and loads every plugin it names, then prints
//! what each pipeline does, or every problem found, one per line.
//!
//! Exit codes: 0 valid, 2 invalid, 1 when the config cannot be read at all.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::units::format_duration;
use crate::config::{
    self, Aggregate, Config, Decode, Pipeline, PluginStep, WindowKind, WindowTime,
};
use crate::enrich::OnMissing;
use crate::runtime::{Limits, Permissions, Plugin, Runtime, RuntimeConfig};

/// The exit code of an invalid config.
const INVALID: u8 = 2;

#[derive(Debug, clap::Args)]
pub(super) struct CheckArgs {
    /// The pipeline config (TOML); see configs/README.md.
    config: PathBuf,
}

pub(super) fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    check(
        &args.config,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
}

/// Checks the config at `path`: the summary goes to `out`, problems to `err`.
fn check(path: &Path, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let text = match config::read(path) {
        Ok(text) => text,
        Err(errors) => {
            for e in &errors {
                writeln!(err, "error: {e}")?;
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let validated = config::validate(&text, path);
    // Plugins compiled ahead of time are read from the gateway's cache (a weir without the
    // compiler has nothing else); check writes nothing there.
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: validated
            .config
            .as_ref()
            .map(|config| config.storage.plugin_cache()),
        cache_writes: false,
        ..RuntimeConfig::default()
    })?;
    let (plugins, mut plugin_errors) = if validated.plugins.is_empty() {
        Default::default()
    } else {
        config::load_plugins(path, &validated.plugins, &runtime)
    };
    // A config that validates, with every plugin loaded: start each step with its config, and
    // look at the files and directories weir run will use.
    if let Some(config) = &validated.config
        && validated.errors.is_empty()
        && plugin_errors.is_empty()
    {
        plugin_errors.extend(config::start_plugins(config, &plugins, &runtime));
        plugin_errors.extend(config::check_files(config));
    }
    let errors: Vec<_> = validated.errors.iter().chain(&plugin_errors).collect();
    if !errors.is_empty() {
        for e in errors {
            writeln!(err, "error: {e}")?;
        }
        return Ok(ExitCode::from(INVALID));
    }
    let config = validated
        .config
        .expect("a config without problems is resolved");
    summary(&config, &plugins, out)?;
    Ok(ExitCode::SUCCESS)
}

fn summary(
    config: &Config,
    plugins: &BTreeMap<PathBuf, Arc<Plugin>>,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let n = config.pipelines.len();
    writeln!(
        out,
        "{}: valid, {n} pipeline{}",
        config.file.display(),
        if n == 1 { "" } else { "s" }
    )?;
    live(config, out)?;
    for p in &config.pipelines {
        pipeline(p, out)?;
    }
    if !plugins.is_empty() {
        writeln!(out, "plugins")?;
        for (path, plugin) in plugins {
            let compiled = match plugin.cache {
                crate::runtime::CacheOutcome::Hit => "compiled ahead (plugin cache)",
                _ => "compiled by weir on load",
            };
            writeln!(
                out,
                "  {}  {}  sha256 {}  {compiled}",
                path.display(),
                plugin.world,
                plugin.sha256
            )?;
        }
    }
    Ok(())
}

fn pipeline(p: &Pipeline, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "pipeline {}", p.name)?;
    writeln!(out, "  topics      {}", p.topics.join(", "))?;
    let decode = match &p.decode {
        Decode::Json(m) => {
            let format = match m.time_format {
                crate::decode::TimeFormat::Millis => "ms",
                crate::decode::TimeFormat::Seconds => "s",
                crate::decode::TimeFormat::Rfc3339 => "rfc3339",
            };
            let values = match &m.values {
                Some(v) => v.join(", "),
                None => "every scalar field".into(),
            };
            let source = m.source.as_deref().unwrap_or("the topic");
            format!(
                "json: key {}, time {} ({format}), values {values}, source {source}",
                m.key, m.time
            )
        }
        Decode::Plugin(step) => format!("plugin {}", step_text(step)),
    };
    writeln!(out, "  decode      {decode}")?;
    let transforms: Vec<String> = p.transforms.iter().map(step_text).collect();
    writeln!(
        out,
        "  transforms  {}{}{}",
        transforms.len(),
        if transforms.is_empty() { "" } else { ": " },
        transforms.join(", ")
    )?;
    if let Some(e) = &p.enrich {
        let missing = match e.on_missing {
            OnMissing::Pass => "pass",
            OnMissing::DeadLetter => "dead-letter",
        };
        writeln!(
            out,
            "  enrich      {} on {}: {} (not found: {missing})",
            e.table.display(),
            e.on,
            e.fields.join(", ")
        )?;
    }
    writeln!(
        out,
        "  key         {}",
        p.key.as_deref().unwrap_or("the event key")
    )?;
    match &p.window {
        None => writeln!(out, "  window      none: events are forwarded as they come")?,
        Some(w) => {
            let d = |d| format_duration(d);
            let kind = match w.kind {
                WindowKind::Tumbling { size, offset } if offset.is_zero() => {
                    format!("tumbling {}", d(size))
                }
                WindowKind::Tumbling { size, offset } => {
                    format!("tumbling {} (offset {})", d(size), d(offset))
                }
                WindowKind::Sliding {
                    size,
                    slide,
                    offset,
                } => format!(
                    "sliding {} every {}{}",
                    d(size),
                    d(slide),
                    if offset.is_zero() {
                        String::new()
                    } else {
                        format!(" (offset {})", d(offset))
                    }
                ),
                WindowKind::Session { gap } => format!("session, gap {}", d(gap)),
                WindowKind::Count { count, slide } => {
                    format!("count {count} events, every {slide}")
                }
            };
            let time = match w.time {
                WindowTime::Processing => "processing time".to_owned(),
                WindowTime::Event => format!(
                    "event time: out of orderness {}, idle timeout {}, lateness {}, max future {}",
                    d(w.out_of_orderness),
                    d(w.idle_timeout),
                    d(w.allowed_lateness),
                    d(w.max_future)
                ),
            };
            writeln!(out, "  window      {kind}, {time}")?;
            let aggregates: Vec<String> = p
                .aggregates
                .iter()
                .map(|a| match a {
                    Aggregate::Builtin { output, .. } => output.clone(),
                    Aggregate::Plugin(step) => step_text(step),
                })
                .collect();
            writeln!(
                out,
                "  aggregates  {}: {}",
                aggregates.len(),
                aggregates.join(", ")
            )?;
        }
    }
    let o = &p.output;
    let late = if p.window.is_some() {
        format!(", late {}", o.late)
    } else {
        String::new()
    };
    writeln!(
        out,
        "  outputs     {}{late}, dead letters {}",
        o.topic, o.dead_letter
    )?;
    let dedup = if p.dedup.horizon.is_zero() {
        "off".to_owned()
    } else {
        format!(
            "by {} within {}",
            p.dedup
                .field
                .as_deref()
                .map_or("topic and payload".to_owned(), |f| format!(
                    "topic and `{f}`"
                )),
            format_duration(p.dedup.horizon)
        )
    };
    writeln!(out, "  guarantee   {}, dedup {dedup}", p.guarantee.as_str())?;
    Ok(())
}

/// The live sections: where messages come from and go, and where state is kept.
fn live(config: &Config, out: &mut dyn Write) -> std::io::Result<()> {
    let version = |p: crate::mqtt::Protocol| match p {
        crate::mqtt::Protocol::V5 => "MQTT 5",
        crate::mqtt::Protocol::V311 => "MQTT 3.1.1",
    };
    let s = &config.source;
    writeln!(
        out,
        "source        {} ({}, QoS {}, {} session{})",
        s.broker.address(),
        version(s.broker.endpoint.protocol),
        s.qos,
        if s.broker.endpoint.clean_session {
            "clean"
        } else {
            "persistent"
        },
        if s.broker.endpoint.tls.is_some() {
            ", TLS"
        } else {
            ""
        }
    )?;
    match &config.upstream {
        Some(u) => writeln!(
            out,
            "upstream      {} ({}, QoS 1, at most {} in flight{})",
            u.broker.address(),
            version(u.broker.endpoint.protocol),
            u.max_inflight,
            if u.broker.endpoint.tls.is_some() {
                ", TLS"
            } else {
                ""
            }
        )?,
        None => writeln!(
            out,
            "upstream      none: `weir run` needs an [upstream] broker"
        )?,
    }
    let st = &config.storage;
    writeln!(
        out,
        "storage       {} (commit every {}, checkpoint every {}, outbox cap {} bytes, on full: {})",
        st.data_dir.display(),
        format_duration(st.commit_interval),
        format_duration(st.checkpoint_interval),
        st.max_outbox_bytes,
        match st.on_full {
            crate::store::OnFull::Block => "block",
            crate::store::OnFull::DropOldest => "drop-oldest",
        }
    )
}

/// A plugin step in a summary: its file name, and whether it has limits, grants or a pin.
fn step_text(step: &PluginStep) -> String {
    let name = step.path.file_name().map_or_else(
        || step.path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let notes: Vec<&str> = [
        ("limits", step.limits != Limits::default()),
        ("grants", step.permissions != Permissions::default()),
        ("pinned", step.sha256.is_some()),
    ]
    .into_iter()
    .filter_map(|(note, set)| set.then_some(note))
    .collect();
    if notes.is_empty() {
        name
    } else {
        format!("{name} ({})", notes.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_check(text: &str) -> (ExitCode, String, String) {
        // One folder per call: tests run in parallel.
        static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("weir-check-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pipeline.toml");
        std::fs::write(&path, text).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = check(&path, &mut out, &mut err).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    const VALID: &str = r#"
version = 1
[[pipeline]]
name = "farm"
topics = ["farm/+/sensors/#"]
[pipeline.decode]
json = { key = "sensor_id", time = "ts", time_format = "ms" }
[pipeline.window]
kind = "tumbling"
size = "1m"
[[pipeline.aggregate]]
fn = "count"
[pipeline.output]
topic = "farm/{key}/agg"
"#;

    #[test]
    fn a_valid_config_is_summarised_and_exits_0() {
        let (code, out, err) = run_check(VALID);
        assert_eq!(code, ExitCode::SUCCESS, "{err}");
        assert!(err.is_empty());
        assert!(out.contains(": valid, 1 pipeline\nsource "), "{out}");
        assert!(out.contains("\npipeline farm\n"), "{out}");
        assert!(
            out.contains("upstream      none: `weir run` needs an [upstream] broker"),
            "{out}"
        );
        assert!(
            out.contains("  guarantee   effectively-once, dedup by topic and payload within 10m"),
            "{out}"
        );
        assert!(
            out.contains("  window      tumbling 1m, event time"),
            "{out}"
        );
        assert!(out.contains("  aggregates  1: count\n"), "{out}");
    }

    #[test]
    fn an_invalid_config_lists_every_problem_and_exits_2() {
        let text = VALID
            .replace("size = \"1m\"", "size = \"1 fortnight\"")
            .replace("farm/{key}/agg", "farm/{sensor}/agg");
        let (code, out, err) = run_check(&text);
        assert_eq!(code, ExitCode::from(INVALID));
        assert!(out.is_empty());
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{err}");
        assert!(lines.iter().all(|l| l.starts_with("error: ")), "{err}");
        assert!(
            lines[0].ends_with(
                "pipeline.toml: pipeline[0] (farm).window.size: \"1 fortnight\" is not a duration \
                 (unknown time unit \"fortnight\", supported units: ns, us/µs, ms, sec, min, \
                 hours, days, weeks, months, years (and few variations)); durations take ms, s, \
                 m (minutes), h or d, e.g. \"30s\" or \"1h 30m\""
            ),
            "{err}"
        );
        assert!(lines[1].contains("unknown placeholder {sensor}"), "{err}");
    }

    #[test]
    fn a_missing_config_exits_1() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = check(Path::new("no/such/weir.toml"), &mut out, &mut err).unwrap();
        assert_eq!(code, ExitCode::FAILURE);
        let err = String::from_utf8(err).unwrap();
        assert!(
            err.starts_with("error: cannot read config no/such/weir.toml: "),
            "{err}"
        );
    }
}
