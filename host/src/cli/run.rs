//! `weir run CONFIG`: the live gateway, until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::engine::{self, Metrics};

#[derive(Debug, clap::Args)]
pub(super) struct RunArgs {
    /// The pipeline config.
    config: PathBuf,
    /// Also write the input as weir takes it (messages with their receive time, clock ticks,
    /// hot swaps) to this file, in the format `weir replay` reads.
    #[arg(long, value_name = "FILE")]
    record_input: Option<PathBuf>,
}

pub(super) fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = match super::load_config(&args.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Signals are waited for on a thread of their own, so a slow shutdown never misses them.
    std::thread::Builder::new()
        .name("weir-signals".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a signal runtime");
            rt.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
                let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                tracing::info!("shutting down: last checkpoint, then the uplink gets a moment");
                let _ = stop_tx.send(true);
            });
        })?;
    let options = engine::RunOptions {
        record_input: args.record_input,
        ..Default::default()
    };
    engine::run_with(config, Metrics::default(), stop_rx, options)?;
    Ok(ExitCode::SUCCESS)
}
