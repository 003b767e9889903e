//! `weir status`, `weir plugin list|swap|rollback`: clients of a running weir's admin API.

// `weir status` shows how long ago things were: an edge.
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{Value, json};

use crate::admin::client;

/// `println!` that stops quietly when stdout is closed (`weir status | head`) instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

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
                let token = crate::fsutil::read_secret(p, "admin token file")?
                    .trim()
                    .to_owned();
                anyhow::ensure!(
                    !token.is_empty(),
                    "the admin token file {} is empty; write the token on its first line",
                    p.display()
                );
                Ok(Some(token))
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

/// A watermark (or other event time): UTC, and how far behind `now` it is.
fn time_text(ms: Option<i64>, now: i64) -> String {
    match ms.filter(|&m| m > i64::MIN / 2) {
        None => "none yet".into(),
        Some(ms) if now == 0 => crate::clock::utc_ms(ms),
        Some(ms) if ms > now => format!(
            "{} ({} ahead)",
            crate::clock::utc_ms(ms),
            human_ms(ms - now)
        ),
        Some(ms) => format!(
            "{} ({} behind)",
            crate::clock::utc_ms(ms),
            human_ms(now - ms)
        ),
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

/// The first 12 hex digits of a sha256 (or `-`).
fn short_sha(v: &Value) -> String {
    v.as_str()
        .map_or_else(|| "-".to_owned(), |s| s.chars().take(12).collect())
}

/// The engine's `{"error": ...}` (it did not answer in time, say), as an error.
fn engine_error(v: &Value) -> anyhow::Result<()> {
    match v.get("error").and_then(Value::as_str) {
        Some(e) => anyhow::bail!("weir's admin API answered: {e}"),
        None => Ok(()),
    }
}

pub(super) fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let status = client::get(&args.admin.admin, "/status")?.json()?;
    let plugins = client::get(&args.admin.admin, "/plugins")?.json()?;
    if args.json {
        say!("{}", json!({ "status": status, "plugins": plugins }));
        return Ok(ExitCode::SUCCESS);
    }
    engine_error(&status)?;
    let now = status["now_ms"].as_i64().unwrap_or_default();
    if now > 0 {
        say!("now         {}", crate::clock::utc_ms(now));
    }
    if status["engine"] == "busy" {
        say!(
            "engine      BUSY: {}; pipelines not shown",
            status["engine_detail"]
                .as_str()
                .unwrap_or("it did not answer in time")
        );
    }
    let up = &status["uplink"];
    let outbox = &status["outbox"];
    say!(
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
    say!(
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
    say!(
        "checkpoint  last {}",
        last.map_or("none yet".into(), |m| format!(
            "{} ago, at {}",
            human_ms(now - m),
            crate::clock::utc_ms(m)
        ))
    );
    say!("messages in {}", status["messages_in"]);
    if let Some(n) = status["store_errors"].as_u64().filter(|n| *n > 0) {
        say!("store       {n} failed writes (retried; see weir's log)");
    }
    for p in status["pipelines"].as_array().into_iter().flatten() {
        say!(
            "pipeline {} ({})",
            p["name"].as_str().unwrap_or_default(),
            p["guarantee"].as_str().unwrap_or_default()
        );
        say!(
            "  watermark   {}",
            time_text(p["watermark_ms"].as_i64(), now)
        );
        let sources = p["sources"].as_object().cloned().unwrap_or_default();
        let idle = sources.values().filter(|v| v["active"] == false).count();
        if !sources.is_empty() {
            say!("  sources     {} ({idle} idle)", sources.len());
        }
        for (name, s) in &sources {
            say!(
                "    {name:<20} {}{}",
                time_text(s["watermark_ms"].as_i64(), now),
                if s["active"] == false { ", idle" } else { "" }
            );
        }
        if let Some(newest) = p["newest_event_ms"].as_i64() {
            say!("  newest      {}", time_text(Some(newest), now));
        }
        say!(
            "  windows     {} open over {} keys; dedup remembers {}",
            p["open_windows"],
            p["keys"],
            p["dedup_entries"]
        );
    }
    print_plugins(&plugins, now)
}

fn print_plugins(plugins: &Value, now: i64) -> anyhow::Result<ExitCode> {
    engine_error(plugins)?;
    let list = plugins.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        say!("plugins     none");
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "{:<28} {:<22} {:<12} {:<12} {:>9} {:>7} {:>10} {:>6}  quarantine",
        "step",
        "plugin",
        "world",
        "sha256",
        "calls",
        "errors",
        "time ms",
        "limits"
    );
    for p in list {
        let file = p["plugin"].as_str().unwrap_or_default();
        let file = std::path::Path::new(file)
            .file_name()
            .map_or(file.to_owned(), |f| f.to_string_lossy().into_owned());
        // The engine names steps `pipeline/step`; add the pipeline if it does not.
        let step = p["step"].as_str().unwrap_or_default();
        let step = match p["pipeline"].as_str() {
            Some(pipeline) if !step.starts_with(&format!("{pipeline}/")) => {
                format!("{pipeline}/{step}")
            }
            _ => step.to_owned(),
        };
        let quarantine = match p["quarantined_until_ms"].as_i64() {
            None => "-".to_owned(),
            Some(until) if now > 0 => {
                format!(
                    "until {} ({} left)",
                    crate::clock::utc_ms(until),
                    human_ms(until - now)
                )
            }
            Some(until) => format!("until {}", crate::clock::utc_ms(until)),
        };
        say!(
            "{:<28} {:<22} {:<12} {:<12} {:>9} {:>7} {:>10.1} {:>6}  {quarantine}",
            step,
            file,
            p["world"].as_str().unwrap_or_default(),
            short_sha(&p["sha256"]),
            p["calls"].as_u64().unwrap_or(0),
            p["errors"].as_u64().unwrap_or(0),
            p["time_ms"].as_f64().unwrap_or(0.0),
            p["limit_hits"].as_u64().unwrap_or(0),
        );
        if let Some(previous) = p["previous_sha256"].as_str() {
            say!(
                "{:<28} (rollback to {})",
                "",
                short_sha(&Value::from(previous))
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The current time, as Unix epoch milliseconds.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(super) fn list(args: AdminArgs) -> anyhow::Result<ExitCode> {
    print_plugins(&client::get(&args.admin, "/plugins")?.json()?, now_ms())
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
    /// Run the new version beside the live one, on the same batches and a copy of the state,
    /// emitting nothing, until `weir plugin promote` or `weir plugin discard`.
    #[arg(long)]
    shadow: bool,
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

/// Prints a swap's (or rollback's) report, or why it was refused (exit code 1).
fn changed(response: client::Response) -> anyhow::Result<ExitCode> {
    let v: Value = serde_json::from_str(&response.body).unwrap_or(Value::Null);
    if response.status == 200 {
        say!(
            "{}: {} → {} (prepared in {:.1} ms off the data path, pause {:.0} µs)",
            v["step"].as_str().unwrap_or_default(),
            short_sha(&v["from_sha256"]),
            short_sha(&v["to_sha256"]),
            v["prepare_ms"].as_f64().unwrap_or(0.0),
            v["pause_us"].as_f64().unwrap_or(0.0)
        );
        let (from, to) = (&v["from_layout"], &v["to_layout"]);
        if from != to {
            say!(
                "  state converted from layout {from} → {to}: {} keys in {:.1} ms",
                v["migrated"].as_u64().unwrap_or(0),
                v["migrate_ms"].as_f64().unwrap_or(0.0)
            );
        }
        Ok(ExitCode::SUCCESS)
    } else {
        let why = v["error"].as_str().unwrap_or(response.body.trim());
        match response.status {
            401 | 403 => eprintln!("refused ({}): {why}", response.status),
            404 => eprintln!("refused: {why} (see `weir plugin list`)"),
            _ => eprintln!("refused: {why}"),
        }
        Ok(ExitCode::FAILURE)
    }
}

pub(super) fn swap(args: SwapArgs) -> anyhow::Result<ExitCode> {
    // weir resolves the path on its side: send it absolute.
    let path = match std::fs::canonicalize(&args.file) {
        Ok(p) if p.is_file() => p,
        Ok(p) => {
            eprintln!("error: {} is not a file", p.display());
            return Ok(ExitCode::from(2));
        }
        Err(e) => {
            eprintln!("error: cannot find {}: {e}", args.file.display());
            return Ok(ExitCode::from(2));
        }
    };
    if let Some(h) = &args.sha256
        && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        eprintln!("error: --sha256 must be 64 hex digits");
        return Ok(ExitCode::from(2));
    }
    let body = json!({ "pipeline": args.pipeline, "step": args.step, "path": path, "sha256": args.sha256, "shadow": args.shadow });
    if args.shadow {
        let response = client::post(
            &args.admin.admin,
            "/plugins/swap",
            args.admin.token()?.as_deref(),
            &body,
        )?;
        if response.status != 200 {
            return changed(response);
        }
        let v: Value = serde_json::from_str(&response.body).unwrap_or(Value::Null);
        say!(
            "{}: candidate {} runs in the shadow; see `weir plugin shadow`, then `weir plugin \
             promote` or `weir plugin discard`",
            v["step"].as_str().unwrap_or_default(),
            short_sha(&v["candidate_sha256"])
        );
        return Ok(ExitCode::SUCCESS);
    }
    changed(client::post(
        &args.admin.admin,
        "/plugins/swap",
        args.admin.token()?.as_deref(),
        &body,
    )?)
}

/// `weir plugin shadow`: live vs candidate, per step with a candidate.
pub(super) fn shadow(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let response = client::get(&args.admin, "/plugins/shadow")?;
    if response.status != 200 {
        eprintln!("error: {}", response.body.trim());
        return Ok(ExitCode::FAILURE);
    }
    let shadows: Value = response.json()?;
    let Some(shadows) = shadows.as_array().filter(|s| !s.is_empty()) else {
        say!("no candidate runs in a shadow");
        return Ok(ExitCode::SUCCESS);
    };
    for s in shadows {
        say!(
            "{}: live {} vs candidate {} (layout {})",
            s["step"].as_str().unwrap_or_default(),
            short_sha(&s["live_sha256"]),
            short_sha(&s["candidate_sha256"]),
            s["candidate_layout"]
        );
        say!(
            "  {:<10} {:>8} {:>10} {:>11} {:>13} {:>7} {:>15}",
            "",
            "batches",
            "events in",
            "events out",
            "dead letters",
            "errors",
            "µs per batch"
        );
        for side in ["live", "candidate"] {
            let x = &s[side];
            // (serde_json's numbers ignore widths: format them as numbers.)
            let n = |field: &str| x[field].as_u64().unwrap_or(0);
            say!(
                "  {:<10} {:>8} {:>10} {:>11} {:>13} {:>7} {:>15.1}",
                side,
                n("batches"),
                n("events_in"),
                n("events_out"),
                n("dead_letters"),
                n("errors"),
                x["time_per_batch_us"].as_f64().unwrap_or(0.0)
            );
        }
        say!(
            "  batches whose outputs differ: {}; skipped by the candidate: {}",
            s["differing_batches"],
            s["skipped_batches"]
        );
        for sample in s["samples"].as_array().into_iter().flatten() {
            say!(
                "  differs at batch {}: live {} / candidate {}",
                sample["batch"],
                sample["live"],
                sample["candidate"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `weir plugin promote` and `weir plugin discard`.
pub(super) fn change_shadow(args: RollbackArgs, what: &str) -> anyhow::Result<ExitCode> {
    let body = json!({ "pipeline": args.pipeline, "step": args.step });
    let response = client::post(
        &args.admin.admin,
        &format!("/plugins/{what}"),
        args.admin.token()?.as_deref(),
        &body,
    )?;
    if what == "discard" && response.status == 200 {
        say!("{}: the shadow's candidate is discarded", args.step);
        return Ok(ExitCode::SUCCESS);
    }
    changed(response)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_in_utc_with_their_lag() {
        assert_eq!(crate::clock::utc_ms(0), "1970-01-01 00:00:00.000Z");
        assert_eq!(
            crate::clock::utc_ms(951_782_400_000),
            "2000-02-29 00:00:00.000Z"
        );
        assert_eq!(
            crate::clock::utc_ms(1_700_000_000_250),
            "2023-11-14 22:13:20.250Z"
        );
        assert_eq!(crate::clock::utc_ms(-1), "1969-12-31 23:59:59.999Z");
        assert_eq!(
            time_text(Some(1_700_000_000_000), 1_700_000_042_000),
            "2023-11-14 22:13:20.000Z (42 s behind)"
        );
        assert_eq!(
            time_text(Some(1_700_000_000_000), 1_699_999_999_000),
            "2023-11-14 22:13:20.000Z (1000 ms ahead)"
        );
        assert_eq!(time_text(None, 5), "none yet");
        assert_eq!(time_text(Some(i64::MIN), 5), "none yet");
        assert_eq!(short_sha(&Value::from("0123456789abcdef")), "0123456789ab");
        assert_eq!(short_sha(&Value::Null), "-");
    }
}
