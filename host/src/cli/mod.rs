//! The command line: one module per subcommand.

mod bench;
mod check;
mod demo;
mod fleet;
mod plugin;
mod replay;
mod run;
mod scaffold;
mod simulate;
mod status;
mod tail;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// weir: a streaming host for edge gateways.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect and run operator plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Measure the cost of running operators as Wasm components against native Rust.
    Bench(bench::BenchArgs),
    /// Validate a pipeline config, and load and check every plugin it names.
    ///
    /// Prints what each pipeline does, or every problem found, one per line: exit code 2 for an
    /// invalid config, 1 if the file cannot be read.
    Check(check::CheckArgs),
    /// Run a config's pipelines over recorded input (JSON lines: messages and `{"watermark":
    /// ms}` markers) and print every record they emit as JSON lines, tagged with its output
    /// (`main`, `late`, `dead-letter`); open windows fire at the end. Deterministic.
    Replay(replay::ReplayArgs),
    /// Run a config's pipelines live: subscribe to the source broker, log every message durably
    /// before acknowledging it, checkpoint, and forward results upstream with QoS 1 until SIGINT
    /// or SIGTERM (then: a last checkpoint, exit 0).
    Run(run::RunArgs),
    /// Subscribe to a broker (QoS 1) and print what arrives, dropping repeats by id (the
    /// `weir-id` user property, else the payload's `"id"`), one JSON line per record or a table.
    Tail(tail::TailArgs),
    /// Publish a simulated farm to a broker: sensors over locations at a rate, with clock
    /// jitter, readings out of order, resent, sensors going silent and coming back, and a few
    /// garbage payloads; deterministic from the seed. Progress on stderr every second. `--write`
    /// also writes the messages as `weir replay` input (alone with `--no-publish`).
    Simulate(simulate::SimulateArgs),
    /// The whole mission on this machine, nothing to install: embedded brokers for the sensors
    /// and the cloud, an uplink that goes down and comes back, the farm simulator, the farm
    /// pipelines with the example plugins and a hot swap midway, a live view; at the end, a
    /// check that every record reached the cloud exactly once and as `weir replay` computes it.
    Demo(demo::DemoArgs),
    /// Show what a running weir is doing (through its admin API): uplink, outbox, checkpoints,
    /// each pipeline's watermark and windows, each plugin's calls, errors, time and limits.
    Status(status::StatusArgs),
    /// Roll plugins out to gateways through the upstream broker, signed, and see what the
    /// gateways report (their `[fleet]` section).
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Load a plugin and say what it is: world, contract version, sha256, load time.
    Check {
        /// The component (.wasm).
        file: PathBuf,
        /// Refuse the file unless its sha256 is this.
        #[arg(long)]
        sha256: Option<String>,
    },
    /// Run JSON lines through a plugin and print what comes out, as JSON lines.
    ///
    /// Transformers and aggregators read events, `{"key": "s1", "ts_ms": 1700000000000,
    /// "fields": {"temp": 21.5}}`; decoders read messages, `{"topic": "farm/s1", "payload":
    /// <JSON>}` or `{"topic": ..., "payload_base64": "..."}`. Each output line carries its
    /// output, `main` or `dead-letter`. An aggregator aggregates all input per key.
    Run(plugin::RunArgs),
    /// Make a new plugin project: buildable, with a test and a README
    /// (`weir plugin new frost-alarm --kind transform`).
    New(scaffold::NewArgs),
    /// Compile plugins ahead of time, for this machine or another (a Raspberry Pi:
    /// `--target aarch64-unknown-linux-gnu`), so the gateway never compiles: copy what it writes
    /// into the gateway's `<data_dir>/plugin-cache`. The files are named for the gateway's
    /// cache (component sha256, architecture, weir version and engine settings); the gateway
    /// checks each one fits its engine when it loads it, and refuses it with the reason if not.
    Compile(plugin::CompileArgs),
    /// List the plugin steps of a running weir: file, world, sha256, calls, errors, time, limit
    /// hits, quarantine.
    List(status::AdminArgs),
    /// Hot-swap the plugin of a running pipeline step: the new version is loaded, checked and
    /// initialised off the data path, then switched in between two batches with the step's keyed
    /// state; a version that fails to load, type-check or init is refused and the old one keeps
    /// running. Outlasts restarts while the config names the same version of the step. With
    /// `--shadow`,
    /// the new version runs as a candidate beside the live one instead (see `weir plugin
    /// shadow`).
    Swap(status::SwapArgs),
    /// Swap back to the version that ran before the last swap.
    Rollback(status::RollbackArgs),
    /// What the candidates in the shadow of live steps do, beside the live versions: events in
    /// and out, dead letters, time per batch, and samples of batches whose outputs differ.
    Shadow(status::AdminArgs),
    /// Make the candidate in a step's shadow the live version, with the state it built.
    Promote(status::RollbackArgs),
    /// Drop the candidate in a step's shadow.
    Discard(status::RollbackArgs),
}

impl Cli {
    /// The log filter when `WEIR_LOG` is not set: `weir demo` redraws a live view on the
    /// terminal, so only errors interrupt it.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Demo(_) => "error",
            _ => "warn",
        }
    }
}

/// Reads and validates a config, printing every problem on stderr; the exit code when it is not
/// valid (2, or 1 when it cannot be read).
fn load_config(path: &std::path::Path) -> Result<crate::config::Config, ExitCode> {
    crate::config::Config::from_file(path).map_err(|errors| {
        for e in errors.iter() {
            eprintln!("error: {e}");
        }
        ExitCode::from(if errors.is_read_error() { 1 } else { 2 })
    })
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Plugin(PluginCommand::Check { file, sha256 }) => {
            plugin::check(&file, sha256.as_deref())
        }
        Command::Plugin(PluginCommand::Run(args)) => plugin::run(args),
        Command::Plugin(PluginCommand::New(args)) => scaffold::new(args),
        Command::Plugin(PluginCommand::Compile(args)) => plugin::compile(args),
        Command::Bench(args) => bench::run(args),
        Command::Check(args) => check::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Tail(args) => tail::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Run(args) => run::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Status(args) => status::status(args),
        Command::Fleet(command) => fleet::run(command),
        Command::Plugin(PluginCommand::List(args)) => status::list(args),
        Command::Plugin(PluginCommand::Swap(args)) => status::swap(args),
        Command::Plugin(PluginCommand::Rollback(args)) => status::rollback(args),
        Command::Plugin(PluginCommand::Shadow(args)) => status::shadow(args),
        Command::Plugin(PluginCommand::Promote(args)) => status::change_shadow(args, "promote"),
        Command::Plugin(PluginCommand::Discard(args)) => status::change_shadow(args, "discard"),
    }
}
