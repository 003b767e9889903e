//! `weir bench`: what running an operator as a Wasm component costs, measured against the same
//! operator in native Rust, in one run on this machine.
//!
//! The operator filters events on a field and maps it (`plugins/bench-filter-map`). Each figure
//! is the median over `--runs` runs; ratios are taken within one run of the command, so a noisy
//! machine shifts both sides alike.

// A benchmark measures time: it reads the wall clock.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::batch::{Batch, Builder, Value, Values};
use crate::runtime::{
    CacheOutcome, Limits, Operator, OperatorSpec, Permissions, Runtime, RuntimeConfig,
};

#[derive(Debug, clap::Args)]
pub(super) struct BenchArgs {
    /// The filter+map component.
    #[arg(long, default_value = "plugins/target/wasm/bench_filter_map.wasm")]
    plugin: PathBuf,
    /// Events per measurement (batch size 1 uses a tenth of them).
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Distinct keys among the events.
    #[arg(long, default_value_t = 100)]
    keys: usize,
    /// Runs per figure; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The same operator in Python and in JavaScript, written event by event on the helper
    /// packages (`guest-sdk/python`, `guest-sdk/js`): measured over a tenth of the events when
    /// built.
    #[arg(long, default_values = [
        "plugins/target/wasm/bench_filter_map_py.wasm",
        "plugins/target/wasm/bench_filter_map_js.wasm",
    ])]
    other: Vec<PathBuf>,
    /// Other components whose load time to measure (cold compile vs from the cache).
    #[arg(long = "load")]
    load: Vec<PathBuf>,
    /// Measure a whole pipeline instead: JSON decode, the range filter plugin, a keyed
    /// one-minute tumbling window with five aggregates, over this many events (e.g. 1000000).
    #[arg(long)]
    pipeline: Option<usize>,
    /// Distinct keys for `--pipeline`.
    #[arg(long, default_value_t = 10_000)]
    pipeline_keys: usize,
}

const MIN: f64 = -1000.0;
const MAX: f64 = 1000.0;
const SCALE: f64 = 1.8;
const OFFSET: f64 = 32.0;
const FIELD: &str = "value";

/// The operator, natively, on the same columnar batches the host hands to a plugin.
fn native_filter_map(batch: &Batch) -> Batch {
    let Some(Values::Float(values)) = batch.column(FIELD) else {
        return Batch::empty();
    };
    let keep: Vec<usize> = values
        .iter()
        .enumerate()
        .filter(|(_, x)| matches!(x, Some(x) if (MIN..=MAX).contains(x)))
        .map(|(i, _)| i)
        .collect();
    let mut out = batch.take(&keep);
    for c in &mut out.columns {
        if c.name == FIELD
            && let Values::Float(v) = &mut c.values
        {
            for x in v.iter_mut().flatten() {
                *x = *x * SCALE + OFFSET;
            }
        }
    }
    out
}

/// Deterministic readings: `n` events over `keys` sensors, about one in six out of range.
fn readings(n: usize, keys: usize) -> Vec<Batch> {
    let mut seed: u64 = 0x5eed;
    let mut b = Builder::new();
    let names: Vec<String> = (0..keys.max(1)).map(|k| format!("sensor-{k:04}")).collect();
    for i in 0..n {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let value = (seed % 2400) as f64 - 1200.0 + 0.25;
        b.push(
            &names[i % names.len()],
            1_700_000_000_000 + i as i64,
            [(FIELD, Value::Float(value)), ("seq", Value::Int(i as i64))],
        );
    }
    vec![b.finish()]
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn runtime(time_budgets: bool, cache_dir: Option<PathBuf>) -> anyhow::Result<Runtime> {
    Runtime::new(RuntimeConfig {
        cache_dir,
        time_budgets,
        ..RuntimeConfig::default()
    })
}

fn operator(
    runtime: Runtime,
    path: &Path,
    max_batch: usize,
    config: &str,
) -> anyhow::Result<Operator> {
    let plugin = runtime.load(path, None)?;
    let spec = OperatorSpec {
        runtime,
        step: "bench".into(),
        world: plugin.world,
        limits: Limits {
            max_batch_events: max_batch,
            ..Limits::default()
        },
        permissions: Permissions::default(),
    };
    Ok(Operator::start(spec, plugin, config)?)
}

/// ns per event of `f` over `batches`, best of nothing: one pass, timed.
fn time_per_event(batches: &[Batch], mut f: impl FnMut(Batch) -> usize) -> f64 {
    let events: usize = batches.iter().map(Batch::len).sum();
    let inputs: Vec<Batch> = batches.to_vec();
    let started = Instant::now();
    let mut kept = 0;
    for b in inputs {
        kept += f(b);
    }
    black_box(kept);
    started.elapsed().as_nanos() as f64 / events as f64
}

pub(super) fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(events) = args.pipeline {
        return pipeline(events, args.pipeline_keys, args.runs.max(1));
    }
    let path = &args.plugin;
    anyhow::ensure!(
        path.exists(),
        "{} does not exist: build the plugins first (bash plugins/build)",
        path.display()
    );
    let runs = args.runs.max(1);
    println!(
        "weir bench: filter+map over {} events ({} keys), median of {runs} runs",
        args.events, args.keys
    );
    println!("native: the operator in Rust on the host's batch; by column / by event: the same");
    println!(
        "operator as a Wasm component, written over columns or event by event (the SDK's loop)"
    );
    println!();
    println!(
        "{:>6} {:>8} | {:>9} {:>7} {:>12} | {:>9} {:>7} | {:>11}",
        "batch", "native", "by column", "added", "events/s", "by event", "added", "budget cost"
    );
    let with_budget = runtime(true, None)?;
    let without_budget = runtime(false, None)?;
    const BY_COLUMN: &str = r#"{"columnar": true}"#;
    const BY_EVENT: &str = r#"{"columnar": false}"#;
    let mut other_rows = Vec::new();
    for batch in [1usize, 100, 1000] {
        let n = if batch == 1 {
            args.events / 10
        } else {
            args.events
        };
        let batches: Vec<Batch> = readings(n, args.keys)
            .into_iter()
            .flat_map(|b| b.split(batch))
            .collect();
        let mut others = Vec::new();
        for other in args.other.iter().filter(|p| p.exists()) {
            others.push(operator(with_budget.clone(), other, batch, "{}")?);
        }
        let mut columns = operator(with_budget.clone(), path, batch, BY_COLUMN)?;
        let mut events = operator(with_budget.clone(), path, batch, BY_EVENT)?;
        let mut unbudgeted = operator(without_budget.clone(), path, batch, BY_COLUMN)?;
        // Check once that every path agrees with the native operator, then warm up.
        for b in batches.iter().take(50) {
            let native = native_filter_map(b);
            for op in [&mut columns, &mut events, &mut unbudgeted]
                .into_iter()
                .chain(others.iter_mut())
            {
                let out = op.transform(b.clone());
                anyhow::ensure!(
                    out.dead_letters.is_empty(),
                    "bench plugin failed: {}",
                    out.dead_letters[0].detail
                );
                let same = out.events.len() == native.len()
                    && (0..native.len()).all(|i| out.events.event_json(i) == native.event_json(i));
                anyhow::ensure!(same, "wasm and native results differ");
            }
        }
        let mut t: [Vec<f64>; 4] = Default::default();
        for _ in 0..runs {
            t[0].push(time_per_event(&batches, |b| native_filter_map(&b).len()));
            t[1].push(time_per_event(&batches, |b| {
                columns.transform(b).events.len()
            }));
            t[2].push(time_per_event(&batches, |b| {
                events.transform(b).events.len()
            }));
            t[3].push(time_per_event(&batches, |b| {
                unbudgeted.transform(b).events.len()
            }));
        }
        // The interpreted languages are slower by far: a tenth of the events is enough.
        let fewer: Vec<Batch> = batches[..batches.len().div_ceil(10)].to_vec();
        let mut native_fewer = Vec::new();
        let mut other_times = vec![Vec::new(); others.len()];
        for _ in 0..runs {
            native_fewer.push(time_per_event(&fewer, |b| native_filter_map(&b).len()));
            for (op, times) in others.iter_mut().zip(&mut other_times) {
                times.push(time_per_event(&fewer, |b| op.transform(b).events.len()));
            }
        }
        if !others.is_empty() {
            let native = median(native_fewer);
            let cells: Vec<String> = other_times
                .into_iter()
                .map(|t| {
                    let t = median(t);
                    format!("{t:>9.1} {:>8.1}", t - native)
                })
                .collect();
            other_rows.push(format!("{batch:>6} {native:>8.1} | {}", cells.join(" | ")));
        }
        let [native, columns, events, unbudgeted] = t.map(median);
        println!(
            "{batch:>6} {native:>8.1} | {columns:>9.1} {:>7.1} {:>12.0} | {events:>9.1} {:>7.1} | {:>10.1}%",
            columns - native,
            1e9 / columns,
            events - native,
            (columns - unbudgeted) / unbudgeted * 100.0
        );
    }
    println!();
    println!("ns per event; `added` is the cost over native; `budget cost` is the time-budget");
    println!("mechanism (epoch interruption) on the by-column path.");
    println!();
    let built: Vec<String> = args
        .other
        .iter()
        .filter(|p| p.exists())
        .map(|p| {
            let stem = p.file_stem().unwrap_or_default().to_string_lossy();
            match stem.rsplit_once('_').map(|(_, lang)| lang) {
                Some("py") => "Python".to_owned(),
                Some("js") => "JavaScript".to_owned(),
                _ => stem.into_owned(),
            }
        })
        .collect();
    if !other_rows.is_empty() {
        print!("{:>6} {:>8}", "batch", "native");
        for name in &built {
            print!(" | {name:>18}");
        }
        println!();
        print!("{:>15}", "");
        for _ in &built {
            print!(" | {:>9} {:>8}", "by event", "added");
        }
        println!();
        for row in &other_rows {
            println!("{row}");
        }
        println!();
        println!("the same operator event by event on the Python and JavaScript helpers, over a");
        println!("tenth of the events (native measured over the same tenth).");
        println!();
    }
    for missing in args.other.iter().filter(|p| !p.exists()) {
        println!("{} is not built (bash plugins/build)", missing.display());
    }
    let mut components = vec![path.clone()];
    components.extend(args.load.iter().cloned());
    for component in &components {
        load_times(component, runs)?;
    }
    if let Some(rss) = peak_rss_kib() {
        println!("peak RSS: {:.1} MiB", rss as f64 / 1024.0);
    }
    Ok(ExitCode::SUCCESS)
}

/// Load time of a component compiled from scratch vs taken from the compiled-plugin cache.
fn load_times(path: &Path, runs: usize) -> anyhow::Result<()> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let dir =
            std::env::temp_dir().join(format!("weir-bench-cache-{}-{run}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rt = runtime(true, Some(dir.clone()))?;
        let started = Instant::now();
        let p = rt.load(path, None)?;
        cold.push(ms(started.elapsed()));
        anyhow::ensure!(p.cache == CacheOutcome::Compiled, "expected a cold compile");
        let rt = runtime(true, Some(dir.clone()))?;
        let started = Instant::now();
        let p = rt.load(path, None)?;
        warm.push(ms(started.elapsed()));
        anyhow::ensure!(p.cache == CacheOutcome::Hit, "expected a cache hit");
        std::fs::remove_dir_all(&dir)?;
    }
    println!(
        "load {} ({} KiB): compile {:.1} ms, from cache {:.2} ms",
        path.file_name().unwrap_or_default().to_string_lossy(),
        size / 1024,
        median(cold),
        median(warm)
    );
    Ok(())
}

/// Peak resident set size of this process, in KiB (Linux).
pub(crate) fn peak_rss_kib() -> Option<u64> {
    rss_kib("VmHWM:")
}

/// A memory figure of this process from /proc/self/status, in KiB (Linux).
fn rss_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Replay throughput of a whole pipeline: JSON messages in, window records out.
fn pipeline(events: usize, keys: usize, runs: usize) -> anyhow::Result<ExitCode> {
    let filter = std::env::current_dir()?.join("plugins/target/wasm/range_filter.wasm");
    anyhow::ensure!(
        filter.exists(),
        "{} does not exist: build the plugins first (bash plugins/build)",
        filter.display()
    );
    let config = format!(
        r#"
version = 1
[[pipeline]]
name = "bench"
topics = ["farm/#"]
[pipeline.decode]
json = {{ key = "sensor", time = "ts", time_format = "ms", values = ["temp", "humidity"] }}
[[pipeline.transform]]
plugin = "{}"
config = {{ field = "humidity", min = 0.0, max = 100.0 }}
[pipeline.window]
kind = "tumbling"
size = "1m"
out_of_orderness = "2s"
idle_timeout = "1h"
max_future = "3650d"
[[pipeline.aggregate]]
fn = "count"
[[pipeline.aggregate]]
fn = "mean"
field = "temp"
[[pipeline.aggregate]]
fn = "min"
field = "temp"
[[pipeline.aggregate]]
fn = "max"
field = "temp"
[[pipeline.aggregate]]
fn = "stddev"
field = "humidity"
[pipeline.output]
topic = "farm/{{key}}/agg"
"#,
        filter.display()
    );
    let config = crate::config::Config::from_str(&config, Path::new("bench.toml"))
        .map_err(|e| anyhow::anyhow!("bench config: {e}"))?;
    // A reading every 0.6 ms of event time, round-robin over the keys, so windows close as time
    // passes (1M readings span 10 minutes: about 10 readings per key and window).
    let messages: Vec<crate::runtime::bindings::Message> = (0..events)
        .map(|i| {
            let payload = serde_json::json!({
                "sensor": format!("s{:05}", i % keys),
                "ts": 1_700_000_000_000i64 + (i as i64) * 6 / 10,
                "temp": 15.0 + (i % 200) as f64 * 0.1,
                "humidity": 40.0 + (i % 70) as f64,
            });
            crate::runtime::bindings::Message {
                topic: format!("farm/s{:05}", i % keys),
                payload: serde_json::to_vec(&payload).expect("JSON"),
                received_ms: i64::MIN,
            }
        })
        .collect();
    let input_rss = rss_kib("VmRSS:").unwrap_or(0);
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let mut rates = Vec::new();
    let mut records = 0;
    for _ in 0..runs {
        let mut p = crate::pipeline::Pipeline::start(&config.pipelines[0], &runtime)?;
        let started = Instant::now();
        records = 0;
        for (n, chunk) in messages.chunks(1024).enumerate() {
            // The gateway clock keeps pace with the readings' time.
            let now = 1_700_000_000_000 + ((n + 1) * 1024 * 6 / 10) as i64;
            records += p
                .process(chunk, crate::pipeline::GatewayClock::At(now))
                .len();
        }
        records += p.flush().len();
        rates.push(events as f64 / started.elapsed().as_secs_f64());
    }
    println!(
        "weir bench --pipeline: {events} JSON events over {keys} keys → range filter (Wasm) → \
         1-minute tumbling window, 5 aggregates"
    );
    println!(
        "median of {runs} runs: {:.0} events/s, {records} records",
        median(rates)
    );
    if let Some(rss) = peak_rss_kib() {
        println!(
            "peak RSS: {:.1} MiB, of which {:.1} MiB is the input held in memory before the run",
            rss as f64 / 1024.0,
            input_rss as f64 / 1024.0
        );
    }
    Ok(ExitCode::SUCCESS)
}
