//! `weir plugin check` and `weir plugin run` (`weir plugin list|swap|rollback`, the admin API's
//! clients, are in `status.rs`).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use base64::Engine as _;

use crate::batch::{Batch, Builder, Value};
use crate::runtime::{
    DeadInput, Limits, Operator, OperatorSpec, Outcome, Permissions, Runtime, RuntimeConfig, World,
    bindings::Message, config_json,
};

pub(super) fn check(file: &Path, sha256: Option<&str>) -> anyhow::Result<ExitCode> {
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let plugin = runtime.load(file, sha256)?;
    println!("{}", plugin.path.display());
    println!(
        "  world     {} ({}@{})",
        plugin.world,
        crate::runtime::PACKAGE,
        plugin.version
    );
    println!("  sha256    {}", plugin.sha256);
    println!("  size      {} bytes", plugin.size_bytes);
    println!("  compiled  in {:.1?}", plugin.load_time);
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub(super) struct CompileArgs {
    /// The components (.wasm).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The gateway's target triple: aarch64-unknown-linux-gnu for 64-bit Raspberry Pi OS (the
    /// code then uses only the baseline of the architecture). Default: this machine, with every
    /// CPU feature it has.
    #[arg(long)]
    target: Option<String>,
    /// Where to write the compiled files.
    #[arg(long, default_value = ".")]
    out: PathBuf,
}

#[cfg(feature = "compiler")]
pub(super) fn compile(args: CompileArgs) -> anyhow::Result<ExitCode> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    for file in &args.files {
        // How long a compile takes is shown to the person running it: a live edge.
        #[allow(clippy::disallowed_methods)]
        let started = std::time::Instant::now();
        let wasm = crate::runtime::component_bytes(file)?;
        let (name, bytes) = crate::runtime::precompile(&wasm, args.target.as_deref())
            .with_context(|| format!("cannot compile {}", file.display()))?;
        let path = args.out.join(&name);
        crate::runtime::write_artifact(&args.out, &path, &bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!(
            "{} -> {} ({} KiB, {:.1?})",
            file.display(),
            path.display(),
            bytes.len() / 1024,
            started.elapsed()
        );
    }
    let target = args.target.unwrap_or_else(crate::runtime::host_triple);
    eprintln!(
        "weir plugin compile: for weir {} on {target}; copy the files into the gateway's \
         <data_dir>/plugin-cache, owned by the user weir runs as and writable by nobody else \
         (e.g. install -o weir -g weir -m 600 FILE /var/lib/weir/plugin-cache/)",
        env!("CARGO_PKG_VERSION")
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "compiler"))]
pub(super) fn compile(_args: CompileArgs) -> anyhow::Result<ExitCode> {
    bail!(
        "this weir is built without the compiler (cargo feature `compiler`); run `weir plugin \
         compile` with a full weir {} on another machine",
        env!("CARGO_PKG_VERSION")
    )
}

#[derive(Debug, clap::Args)]
pub(super) struct RunArgs {
    /// The component (.wasm).
    file: PathBuf,
    /// The step's config, as a TOML inline table: '{ field = "humidity", min = 0.0 }'.
    #[arg(long, default_value = "{}")]
    config: String,
    /// Read input from this file instead of standard input.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Events (or messages) per call into the plugin.
    #[arg(long, default_value_t = 1024)]
    batch: usize,
}

pub(super) fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config: toml::Table = toml::from_str(&format!("config = {}", args.config))
        .context("--config is not a TOML inline table")?;
    let config = config_json(&config["config"]);
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let plugin = runtime.load(&args.file, None)?;
    let step = plugin
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let spec = OperatorSpec {
        runtime,
        step: step.into(),
        world: plugin.world,
        limits: Limits::default(),
        permissions: Permissions::default(),
    };
    let mut op = Operator::start(spec, plugin.clone(), &config)?;
    // A named input is a regular file (a stream comes on standard input); lines are capped.
    let mut input: Box<dyn BufRead> = match &args.input {
        Some(path) => Box::new(std::io::BufReader::new(
            crate::fsutil::open_regular(path, "input file", u64::MAX)?.0,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut out = std::io::stdout().lock();
    let mut lines = Vec::new();
    let mut line = Vec::new();
    let mut n = 0;
    while crate::fsutil::read_line_capped(&mut input, &mut line, crate::fsutil::caps::INPUT_LINE)
        .with_context(|| format!("input line {}", n + 1))?
    {
        n += 1;
        if line.trim_ascii().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_slice(&line).with_context(|| format!("input line {n} is not JSON"))?;
        lines.push((n, value));
        if lines.len() >= args.batch.max(1) && plugin.world != World::Aggregator {
            run_batch(&mut op, plugin.world, std::mem::take(&mut lines), &mut out)?;
        }
    }
    if plugin.world == World::Aggregator {
        aggregate(&mut op, lines, &mut out)?;
    } else if !lines.is_empty() {
        run_batch(&mut op, plugin.world, lines, &mut out)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn events(lines: &[(usize, serde_json::Value)]) -> anyhow::Result<Batch> {
    let mut b = Builder::new();
    for (n, v) in lines {
        let key = v["key"]
            .as_str()
            .with_context(|| format!("line {n}: no \"key\" string"))?;
        let ts_ms = v["ts_ms"]
            .as_i64()
            .with_context(|| format!("line {n}: no \"ts_ms\" integer"))?;
        let fields = match v.get("fields") {
            Some(serde_json::Value::Object(m)) => m
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), Value::from_json(v)?)))
                .collect(),
            None => Vec::new(),
            Some(_) => bail!("line {n}: \"fields\" is not an object"),
        };
        b.push(key, ts_ms, fields);
    }
    Ok(b.finish())
}

fn messages(lines: &[(usize, serde_json::Value)]) -> anyhow::Result<Vec<Message>> {
    lines
        .iter()
        .map(|(n, v)| {
            let topic = v["topic"]
                .as_str()
                .with_context(|| format!("line {n}: no \"topic\" string"))?;
            let payload = match (v.get("payload"), v.get("payload_base64")) {
                (_, Some(b)) => base64::engine::general_purpose::STANDARD
                    .decode(b.as_str().unwrap_or_default())
                    .with_context(|| format!("line {n}: \"payload_base64\" is not base64"))?,
                (Some(p), None) => serde_json::to_vec(p)?,
                (None, None) => bail!("line {n}: no \"payload\" or \"payload_base64\""),
            };
            Ok(Message {
                topic: topic.to_owned(),
                payload,
                received_ms: v["received_ms"].as_i64().unwrap_or(0),
            })
        })
        .collect()
}

fn run_batch(
    op: &mut Operator,
    world: World,
    lines: Vec<(usize, serde_json::Value)>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let outcome = match world {
        World::Transformer => op.transform(events(&lines)?),
        World::Decoder => op.decode(messages(&lines)?),
        World::Aggregator => unreachable!("aggregators run through `aggregate`"),
    };
    print_outcome(&outcome, out)
}

fn print_outcome(outcome: &Outcome, out: &mut impl Write) -> anyhow::Result<()> {
    for i in 0..outcome.events.len() {
        let mut e = outcome.events.event_json(i);
        e["output"] = "main".into();
        writeln!(out, "{e}")?;
    }
    for d in &outcome.dead_letters {
        let input: Vec<serde_json::Value> = match &d.input {
            DeadInput::Events(b) => (0..b.len()).map(|i| b.event_json(i)).collect(),
            DeadInput::Messages(m) => m
                .iter()
                .map(|m| serde_json::json!({"topic": m.topic, "payload_base64": base64::engine::general_purpose::STANDARD.encode(&m.payload)}))
                .collect(),
        };
        let line = serde_json::json!({
            "output": "dead-letter", "step": &*d.step, "reason": d.reason, "detail": d.detail, "input": input,
        });
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn aggregate(
    op: &mut Operator,
    lines: Vec<(usize, serde_json::Value)>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let batch = events(&lines)?;
    let mut groups: BTreeMap<Arc<str>, u32> = BTreeMap::new();
    let mut group = Vec::with_capacity(batch.len());
    for i in 0..batch.len() {
        let next = groups.len() as u32;
        group.push(*groups.entry(batch.key_of(i)).or_insert(next));
    }
    let acc = op.create_accumulator()?;
    let accs = vec![acc; groups.len()];
    let accs = op.add_to_accumulators(&accs, &batch, &group)?;
    let results = op.finish_accumulators(&accs)?;
    let by_key: BTreeMap<&Arc<str>, _> = groups
        .iter()
        .map(|(key, &g)| (key, results[g as usize].clone()))
        .collect();
    for (key, fields) in by_key {
        let fields: serde_json::Map<String, serde_json::Value> = fields
            .into_iter()
            .map(|f| (f.name, f.value.to_json()))
            .collect();
        writeln!(
            out,
            "{}",
            serde_json::json!({"output": "main", "key": &**key, "fields": fields})
        )?;
    }
    Ok(())
}
