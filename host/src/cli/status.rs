//! `weir status`, `weir plugin list|swap|rollback`: clients of a running weir's admin API.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::admin::client;

/// Where the admin API is, and the token for changes.
#[derive(Debug, clap::Args)]
pub(super) struct AdminArgs {
    /// The admin API's address (`[admin] listen`).
    #[arg(long, default_value = "127.0.0.1:9464")]
    admin: String,
    /// A file holding the token (first line); or set WEIR_ADMIN_TOKEN.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

impl AdminArgs {
    fn token(&self) -> anyhow::Result<Option<String>> {
        if let Ok(t) = std::env::var("WEIR_ADMIN_TOKEN")
            && !t.is_empty()
        {
            return Ok(Some(t));
        }
        match &self.token_file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                Ok(Some(
                    text.lines().next().unwrap_or_default().trim().to_owned(),
                ))
            }
            None => Ok(None),
        }
    }
}

#[derive(Debug, clap::Args)]
pub(super) struct StatusArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
}

fn ms_text(ms: Option<i64>, now: i64) -> String {
    match ms {
        None => "none yet".into(),
        Some(ms) => format!("{ms} ({} behind)", human_ms(now - ms)),
    }
}

fn human_ms(ms: i64) -> String {
    match ms.unsigned_abs() {
        m if m < 10_000 => format!("{ms} ms"),
        m if m < 600_000 => format!("{} s", ms / 1000),
        m if m < 172_800_000 => format!("{} min", ms / 60_000),
        _ => format!("{} d", ms / 86_400_000),
    }
}

pub(super) fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let status = client::get(&args.admin.admin, "/status")?.json()?;
    let plugins = client::get(&args.admin.admin, "/plugins")?.json()?;
    if args.json {
        println!("{}", json!({ "status": status, "plugins": plugins }));
        return Ok(ExitCode::SUCCESS);
    }
    let now = status["now_ms"].as_i64().unwrap_or_default();
    let up = &status["uplink"];
    let outbox = &status["outbox"];
    println!(
        "uplink      {} (forwarded {}, acknowledged {}, in flight {}, reconnects {})",
        if up["connected"].as_bool() == Some(true) {
            "up"
        } else {
            "DOWN"
        },
        up["forwarded"],
        up["acked"],
        up["inflight"],
        up["reconnects"]
    );
    println!(
        "outbox      {} records, {} bytes{}{}",
        outbox["records"],
        outbox["bytes"],
        outbox["cap_bytes"]
            .as_u64()
            .map_or(String::new(), |c| format!(" (cap {c})")),
        if outbox["ingest_blocked"].as_bool() == Some(true) {
            ", INGEST BLOCKED (outbox full)"
        } else {
            ""
        }
    );
    let last = status["last_checkpoint_ms"].as_i64().filter(|&m| m > 0);
    println!(
        "checkpoint  last {}",
        last.map_or("none yet".into(), |m| format!("{} ago", human_ms(now - m)))
    );
    println!("messages in {}", status["messages_in"]);
    for p in status["pipelines"].as_array().into_iter().flatten() {
        let sources = p["sources"].as_object().map_or(0, |s| s.len());
        let idle = p["sources"]
            .as_object()
            .map_or(0, |s| s.values().filter(|v| v["active"] == false).count());
        println!(
            "pipeline {} ({})",
            p["name"].as_str().unwrap_or_default(),
            p["guarantee"].as_str().unwrap_or_default()
        );
        println!("  watermark   {}", ms_text(p["watermark_ms"].as_i64(), now));
        println!("  sources     {sources} ({idle} idle)");
        println!(
            "  windows     {} open over {} keys; dedup remembers {}",
            p["open_windows"], p["keys"], p["dedup_entries"]
        );
    }
    print_plugins(&plugins);
    Ok(ExitCode::SUCCESS)
}

fn print_plugins(plugins: &Value) {
    let list = plugins.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("plugins     none");
        return;
    }
    println!(
        "{:<28} {:<22} {:<12} {:<12} {:>9} {:>7} {:>10} {:>6}  quarantine",
        "step", "plugin", "world", "sha256", "calls", "errors", "time ms", "limits"
    );
    for p in list {
        let file = p["plugin"].as_str().unwrap_or_default();
        let file = std::path::Path::new(file)
            .file_name()
            .map_or(file.to_owned(), |f| f.to_string_lossy().into_owned());
        println!(
            "{:<28} {:<22} {:<12} {:<12} {:>9} {:>7} {:>10.1} {:>6}  {}",
            p["step"].as_str().unwrap_or_default(),
            file,
            p["world"].as_str().unwrap_or_default(),
            &p["sha256"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .take(12)
                .collect::<String>(),
            p["calls"],
            p["errors"],
            p["time_ms"].as_f64().unwrap_or(0.0),
            p["limit_hits"],
            if p["quarantined_until_ms"].is_null() {
                "-".to_owned()
            } else {
                format!("until {}", p["quarantined_until_ms"])
            }
        );
    }
}

pub(super) fn list(args: AdminArgs) -> anyhow::Result<ExitCode> {
    print_plugins(&client::get(&args.admin, "/plugins")?.json()?);
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub(super) struct SwapArgs {
    /// The pipeline's name.
    pipeline: String,
    /// The plugin step: `decode`, or `transform[i]` (0 first), as `weir plugin list` shows.
    step: String,
    /// The new version (.wasm).
    file: PathBuf,
    /// Refuse the file unless its sha256 is this.
    #[arg(long)]
    sha256: Option<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub(super) struct RollbackArgs {
    pipeline: String,
    step: String,
    #[command(flatten)]
    admin: AdminArgs,
}

fn changed(response: client::Response) -> anyhow::Result<ExitCode> {
    let v = response.json()?;
    if response.status == 200 {
        println!(
            "{}: {} → {} (prepared in {:.1} ms off the data path, pause {:.0} µs)",
            v["step"].as_str().unwrap_or_default(),
            &v["from_sha256"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .take(12)
                .collect::<String>(),
            &v["to_sha256"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .take(12)
                .collect::<String>(),
            v["prepare_ms"].as_f64().unwrap_or(0.0),
            v["pause_us"].as_f64().unwrap_or(0.0)
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("refused: {}", v["error"].as_str().unwrap_or(&response.body));
        Ok(ExitCode::FAILURE)
    }
}

pub(super) fn swap(args: SwapArgs) -> anyhow::Result<ExitCode> {
    let path = std::fs::canonicalize(&args.file)
        .with_context(|| format!("cannot find {}", args.file.display()))?;
    let body = json!({ "pipeline": args.pipeline, "step": args.step, "path": path, "sha256": args.sha256 });
    changed(client::post(
        &args.admin.admin,
        "/plugins/swap",
        args.admin.token()?.as_deref(),
        &body,
    )?)
}

pub(super) fn rollback(args: RollbackArgs) -> anyhow::Result<ExitCode> {
    let body = json!({ "pipeline": args.pipeline, "step": args.step });
    changed(client::post(
        &args.admin.admin,
        "/plugins/rollback",
        args.admin.token()?.as_deref(),
        &body,
    )?)
}
