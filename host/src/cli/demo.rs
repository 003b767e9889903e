//! `weir demo`: the farm, live, on this machine, with a check at the end (see `crate::demo`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::demo::{self, DemoOptions, Outcome};

#[derive(Debug, clap::Args)]
pub(super) struct DemoArgs {
    /// How long the sensors publish, e.g. "60s" or "5m"; Ctrl-C ends it early (the check still
    /// runs; a second Ctrl-C quits at once).
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "60s")]
    duration: Duration,
    /// Sensor messages per second, all sensors together.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// How many sensors.
    #[arg(long, default_value_t = 1000)]
    sensors: usize,
    /// The simulator's seed: the same seed, the same farm.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The compiled example plugins (default: plugins/target/wasm of the repository weir was
    /// built in, else of the current directory).
    #[arg(long, value_name = "DIR")]
    plugins: Option<PathBuf>,
    /// Keep the config, weir's store and the recorded input in this directory, new or empty
    /// (default: a temporary directory, removed at the end).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Use this MQTT broker for the sensors instead of an embedded one (MQTT 5).
    #[arg(long, value_name = "HOST:PORT")]
    sensor_broker: Option<String>,
    /// Use this MQTT broker as the cloud instead of an embedded one (MQTT 5).
    #[arg(long, value_name = "HOST:PORT")]
    cloud_broker: Option<String>,
    /// The link to the cloud goes down this often...
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "20s")]
    outage_every: Duration,
    /// ...for this long.
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "5s")]
    outage: Duration,
}

pub(super) fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.rate.is_finite() && args.rate > 0.0,
        "--rate must be above 0"
    );
    anyhow::ensure!(args.sensors > 0, "--sensors must be at least 1");
    anyhow::ensure!(
        args.outage < args.outage_every,
        "--outage ({:?}) must be shorter than --outage-every ({:?})",
        args.outage,
        args.outage_every
    );
    let plugins = match args.plugins {
        Some(p) => p,
        None => default_plugins()?,
    };
    let stop = ctrl_c()?;
    let outcome = demo::run(
        DemoOptions {
            duration: args.duration,
            rate: args.rate,
            sensors: args.sensors,
            seed: args.seed,
            data_dir: args.data_dir,
            plugins,
            sensor_broker: args.sensor_broker,
            cloud_broker: args.cloud_broker,
            outage_every: args.outage_every,
            outage: args.outage,
        },
        stop,
    )?;
    print_outcome(&outcome);
    Ok(if outcome.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A flag that turns true at the first SIGINT or SIGTERM; a second one exits at once (130).
fn ctrl_c() -> anyhow::Result<tokio::sync::watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Installed here, so a signal right after start is not missed.
    let (mut term, mut int) = {
        let _guard = rt.enter();
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        )
    };
    std::thread::Builder::new()
        .name("weir-signals".into())
        .spawn(move || {
            rt.block_on(async {
                for n in 0.. {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                    if n > 0 {
                        eprintln!("interrupted again: quitting without the check");
                        std::process::exit(130);
                    }
                    let _ = stop_tx.send(true);
                }
            });
        })?;
    Ok(stop_rx)
}

fn print_outcome(o: &Outcome) {
    let c = &o.comparison;
    println!();
    println!(
        "sensors: {} messages published, {} acknowledged by the broker; weir took in {} ({} resends dropped)",
        o.published, o.acked_by_broker, o.messages_in, o.deduped
    );
    println!("uplink: went down {} times", o.outages);
    match &o.swap {
        Some(Ok(report)) => println!("hot swap: {report}"),
        Some(Err(e)) => println!("hot swap: FAILED: {e}"),
        None => println!("hot swap: not done (interrupted before half time)"),
    }
    if !o.settled {
        println!(
            "weir had not finished its work (open windows or a non-empty outbox) when it was stopped"
        );
    }
    println!(
        "upstream: {} records, each delivered exactly once after dropping {} repeats by id ({} repeats differed from the first copy)",
        c.delivered, c.repeats, c.repeats_differing
    );
    println!(
        "  of which {} window results computed with counter v1 and {} with v2, and {} cold alerts",
        o.windows_by_version[0], o.windows_by_version[1], o.alerts
    );
    println!(
        "weir replay --keep-open of the recorded input: {} records; {} missing upstream, {} unexpected, {} different",
        c.replayed,
        c.missing.len(),
        c.unexpected.len(),
        c.different.len()
    );
    for (what, ids) in [
        ("missing", &c.missing),
        ("unexpected", &c.unexpected),
        ("different", &c.different),
    ] {
        if !ids.is_empty() {
            let some: Vec<&str> = ids.iter().take(5).map(String::as_str).collect();
            println!(
                "  {what}: {}{}",
                some.join(", "),
                if ids.len() > 5 { ", …" } else { "" }
            );
        }
    }
    if o.kept {
        println!(
            "kept in {}: demo.toml, input.jsonl (try `weir replay {0}/demo.toml --input {0}/input.jsonl --keep-open`), data/",
            o.dir.display()
        );
    }
    println!(
        "peak memory (VmHWM) of the whole demo: brokers, simulator, weir and the replay: {:.1} MiB",
        o.peak_rss_mib
    );
    if o.passed() {
        println!(
            "PASS: every record delivered upstream exactly once after dedup by id, and the same as weir replay computes"
        );
    } else {
        println!("FAIL: see above");
    }
}

/// plugins/target/wasm of the repository this binary was built in, else of the current
/// directory.
fn default_plugins() -> anyhow::Result<PathBuf> {
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/target/wasm");
    let here = Path::new("plugins/target/wasm");
    for dir in [built_in.as_path(), here] {
        if dir.join(demo::PLUGINS[0]).is_file() {
            return Ok(dir.to_path_buf());
        }
    }
    anyhow::bail!(
        "the example plugins are not built: run `bash plugins/build rust` in the repository \
         (Rust only; it needs the wasm32-wasip2 target, which it installs), or name their \
         directory with --plugins"
    )
}
