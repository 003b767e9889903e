//! `weir replay CONFIG [--input FILE]`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub(super) struct ReplayArgs {
    /// The pipeline config.
    config: PathBuf,
    /// Recorded input (JSON lines); standard input if not given.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Leave windows still open at the end unfired, as a live run that stops does (to compare
    /// with a session recorded by `weir run --record-input`).
    #[arg(long)]
    keep_open: bool,
}

pub(super) fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let config = match super::load_config(&args.config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let mut input: Box<dyn BufRead> = match &args.input {
        Some(path) => Box::new(BufReader::new(std::fs::File::open(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the input {}: {}",
                path.display(),
                crate::fsutil::describe_io(&e)
            )
        })?)),
        None => Box::new(std::io::stdin().lock()),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let options = crate::replay::Options {
        flush_at_end: !args.keep_open,
        ..crate::replay::Options::default()
    };
    let summary = crate::replay::run_with(&config, &mut input, &mut out, options)?;
    out.flush()?;
    eprintln!(
        "replayed {} messages: {} records, {} late, {} dead letters",
        summary.messages, summary.records, summary.late, summary.dead_letters
    );
    Ok(ExitCode::SUCCESS)
}
