//! `weir fleet`: on the operator's machine, sign and publish a plugin rollout to gateways through
//! the upstream broker, and show what the gateways report.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use super::tail::ConnectionArgs;
use crate::fleet::{self, Manifest, Policy, SigningKey, Topics, client};

#[derive(Debug, clap::Subcommand)]
pub(super) enum FleetCommand {
    /// Make a signing key: the secret goes to FILE (mode 600), the public key is printed for the
    /// gateways' `[fleet] keys`.
    Keygen {
        /// Where to write the secret key; never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a rollout of a plugin to a step on some gateways, publish it and the plugin (retained)
    /// on the broker, and show each gateway's outcome as it reports: exit 0 when all promoted.
    ///
    /// Each gateway runs the plugin in the step's shadow for --shadow, then promotes it if its
    /// dead-letter and error rates stayed within the bounds, else discards it (the live version
    /// never stopped).
    Rollout(RolloutArgs),
    /// Show the gateways' statuses (retained on the broker): online, plugins, uplink, outbox,
    /// the last rollout and the last refusals.
    Status(StatusArgs),
}

#[derive(Debug, clap::Args)]
pub(super) struct Where {
    /// The broker the gateways forward to (their [upstream]), HOST:PORT.
    #[arg(long, default_value = "localhost:1883")]
    broker: String,
    #[command(flatten)]
    connection: ConnectionArgs,
    /// The gateways' `[fleet] topic_prefix`.
    #[arg(long, default_value = "weir/fleet")]
    topic_prefix: String,
}

impl Where {
    fn endpoint(&self) -> anyhow::Result<crate::mqtt::Endpoint> {
        self.connection.endpoint(
            &self.broker,
            format!("weir-fleet-cli-{}", std::process::id()),
        )
    }
}

#[derive(Debug, clap::Args)]
pub(super) struct RolloutArgs {
    /// The plugin (.wasm): it is loaded here first, so what cannot load is not sent.
    plugin: PathBuf,
    #[command(flatten)]
    at: Where,
    /// The secret key file from `weir fleet keygen`.
    #[arg(long)]
    key: PathBuf,
    /// A gateway id (`[fleet] id`); repeat, or separate with commas.
    #[arg(long = "gateway", required = true, value_delimiter = ',')]
    gateways: Vec<String>,
    /// The pipeline of the step.
    #[arg(long)]
    pipeline: String,
    /// The step, e.g. `range` or `aggregate`.
    #[arg(long)]
    step: String,
    /// How long the candidate runs in the shadow before the decision.
    #[arg(long, default_value = "5m", value_parser = crate::config::parse_duration)]
    shadow: Duration,
    /// Promote only if dead letters per event stayed at or below this.
    #[arg(long, default_value_t = 0.01)]
    max_dead_letter_rate: f64,
    /// Promote only if failures (traps, limits) per event stayed at or below this.
    #[arg(long, default_value_t = 0.0)]
    max_error_rate: f64,
    /// Promote only if the candidate saw at least this many events.
    #[arg(long, default_value_t = 1)]
    min_events: u64,
    /// The rollout's sequence number; it must be higher than any before (default: the time in
    /// milliseconds).
    #[arg(long)]
    seq: Option<u64>,
    /// How long to wait for the gateways' outcomes (0: publish and exit).
    #[arg(long, default_value = "30m", value_parser = crate::config::parse_duration)]
    wait: Duration,
}

#[derive(Debug, clap::Args)]
pub(super) struct StatusArgs {
    #[command(flatten)]
    at: Where,
    /// Only these gateways (repeat, or separate with commas); default: every gateway.
    #[arg(long = "gateway", value_delimiter = ',')]
    gateways: Vec<String>,
    /// How long to collect statuses (all listed gateways reporting ends it sooner).
    #[arg(long, default_value = "2s", value_parser = crate::config::parse_duration)]
    wait: Duration,
    /// Print each status as a JSON line.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(command: FleetCommand) -> anyhow::Result<ExitCode> {
    match command {
        FleetCommand::Keygen { out } => keygen(&out),
        FleetCommand::Rollout(args) => rollout(args),
        FleetCommand::Status(args) => status(args),
    }
}

fn keygen(out: &std::path::Path) -> anyhow::Result<ExitCode> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = SigningKey::generate().context("cannot read the system's randomness")?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| {
            format!(
                "cannot create {} (an existing key is never overwritten)",
                out.display()
            )
        })?;
    file.write_all(key.to_text().as_bytes())?;
    file.sync_all()?;
    let public = fleet::public_key_text(&key.public_key());
    println!("{public}");
    eprintln!(
        "weir fleet keygen: secret key in {} (keep it off the gateways); on each gateway:\n  [fleet]\n  keys = [\"{public}\"]",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn rollout(args: RolloutArgs) -> anyhow::Result<ExitCode> {
    let key_text = crate::fsutil::read_secret(&args.key, "key file")?;
    let key = SigningKey::from_text(&key_text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.key.display()))?;
    for id in &args.gateways {
        anyhow::ensure!(
            fleet::valid_level(id),
            "--gateway {id:?} is not a gateway id (one MQTT topic level)"
        );
    }
    let bytes = crate::fsutil::read_capped(&args.plugin, "plugin", crate::fsutil::caps::PLUGIN)?;
    let wasm = crate::runtime::Runtime::new(crate::runtime::RuntimeConfig::default())?;
    let plugin = wasm
        .load_bytes(&args.plugin, &bytes, None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let seq = match args.seq {
        Some(seq) => seq,
        None => crate::engine::now_ms().max(0) as u64,
    };
    let manifest = Manifest {
        seq,
        gateways: args.gateways.clone(),
        pipeline: args.pipeline.clone(),
        step: args.step.clone(),
        world: plugin.world.to_string(),
        sha256: plugin.sha256.clone(),
        size: bytes.len() as u64,
        chunks: bytes.len().div_ceil(fleet::CHUNK_BYTES) as u32,
        policy: Policy {
            shadow_ms: args.shadow.as_millis() as u64,
            max_dead_letter_rate: args.max_dead_letter_rate,
            max_error_rate: args.max_error_rate,
            min_events: args.min_events,
        },
    };
    let envelope = key.sign(&manifest);
    let topics = Topics::new(&args.at.topic_prefix);
    let endpoint = args.at.endpoint()?;
    let rt = runtime()?;
    rt.block_on(client::publish(
        &endpoint,
        &topics,
        Some(&bytes),
        Some((&envelope, &args.gateways)),
        Duration::from_secs(120),
    ))?;
    eprintln!(
        "weir fleet rollout {seq}: {} ({}, sha256 {}) to {}/{} on {} gateway(s), shadow {}",
        args.plugin.display(),
        plugin.world,
        plugin.sha256,
        args.pipeline,
        args.step,
        args.gateways.len(),
        humantime::format_duration(args.shadow)
    );
    if args.wait.is_zero() {
        return Ok(ExitCode::SUCCESS);
    }
    let mut reported = std::collections::HashSet::new();
    let statuses = rt.block_on(client::watch(
        &endpoint,
        &topics,
        &args.gateways,
        args.wait,
        |seen| {
            for (id, status) in seen {
                if let Some(end) = client::rollout_end(status, seq)
                    && reported.insert(id.clone())
                {
                    println!("{id}\t{end}\t{}", outcome_detail(status, seq));
                }
            }
            reported.len() == args.gateways.len()
        },
    ))?;
    let mut all_promoted = true;
    for id in &args.gateways {
        let end = statuses.get(id).and_then(|s| client::rollout_end(s, seq));
        if end != Some("promoted") {
            all_promoted = false;
        }
        if end.is_none() {
            let state = statuses.get(id).map_or("no status", |s| {
                s["rollout"]["state"].as_str().unwrap_or("waiting")
            });
            println!(
                "{id}\tunfinished\t{state} after {}",
                humantime::format_duration(args.wait)
            );
        }
    }
    Ok(if all_promoted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The rollout's detail, or the refusal that names `seq`.
fn outcome_detail(status: &Value, seq: u64) -> String {
    if status["rollout"]["seq"].as_u64() == Some(seq) {
        return status["rollout"]["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }
    status["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .find(|e| e["seq"].as_u64() == Some(seq))
        .and_then(|e| e["error"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let topics = Topics::new(&args.at.topic_prefix);
    let endpoint = args.at.endpoint()?;
    let wanted = args.gateways.len();
    let statuses: BTreeMap<String, Value> = runtime()?.block_on(client::watch(
        &endpoint,
        &topics,
        &args.gateways,
        args.wait,
        |seen| wanted > 0 && seen.len() == wanted,
    ))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        for status in statuses.values() {
            writeln!(out, "{status}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<20} {:<8} {:<9} {:>8} {:<34} last error",
        "GATEWAY", "ONLINE", "UPLINK", "OUTBOX", "ROLLOUT"
    )?;
    for (id, s) in &statuses {
        let online = if s["online"].as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        };
        let uplink = match s["uplink"]["connected"].as_bool() {
            Some(true) => "up",
            Some(false) => "down",
            None => "-",
        };
        let outbox = s["outbox"]["records"]
            .as_u64()
            .map_or("-".to_owned(), |n| n.to_string());
        let rollout = match s["rollout"]["seq"].as_u64() {
            Some(seq) => format!("{seq} {}", s["rollout"]["state"].as_str().unwrap_or("?")),
            None => "-".to_owned(),
        };
        let last_error = s["errors"]
            .as_array()
            .and_then(|e| e.last())
            .and_then(|e| e["error"].as_str())
            .unwrap_or("");
        writeln!(
            out,
            "{id:<20} {online:<8} {uplink:<9} {outbox:>8} {rollout:<34} {last_error}"
        )?;
    }
    for id in &args.gateways {
        if !statuses.contains_key(id) {
            writeln!(
                out,
                "{id:<20} never reported (no retained status on {})",
                topics.status(id)
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
