//! `weir tail`: subscribe to a broker (upstream, usually), drop repeats by id, print.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use crate::mqtt::tail::{TailOptions, TailRecord, tail};
use crate::mqtt::{Backoff, Endpoint, Protocol, Tls};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Format {
    /// One JSON object per line: `{"topic": ..., <the payload's fields>}`.
    Json,
    /// Aligned columns: time, topic, key, revision, id, values.
    Table,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum MqttVersion {
    #[value(name = "3.1.1")]
    V311,
    #[value(name = "5")]
    V5,
}

#[derive(Debug, clap::Args)]
pub(super) struct TailArgs {
    /// The broker, HOST:PORT.
    #[arg(long, default_value = "localhost:1883")]
    broker: String,
    /// The topic filter to subscribe to (QoS 1).
    #[arg(long, default_value = "#")]
    topic: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    format: Format,
    /// Exit after this many distinct records.
    #[arg(long)]
    count: Option<u64>,
    /// Exit when nothing arrived for this long, e.g. "5s".
    #[arg(long, value_parser = crate::config::parse_duration)]
    idle: Option<Duration>,
    /// Print repeats too (records whose id was already seen).
    #[arg(long)]
    no_dedup: bool,
    #[command(flatten)]
    connection: ConnectionArgs,
    /// The MQTT client id (default: weir-tail-<process id>).
    #[arg(long)]
    client_id: Option<String>,
}

/// How to reach a broker besides its address: `weir tail` and `weir fleet` share them.
#[derive(Debug, clap::Args)]
pub(super) struct ConnectionArgs {
    /// The MQTT version to speak.
    #[arg(long, value_enum, default_value = "5")]
    mqtt_version: MqttVersion,
    /// The user name to log in with.
    #[arg(long)]
    username: Option<String>,
    /// A file holding the password (its trailing newline is ignored).
    #[arg(long, requires = "username")]
    password_file: Option<PathBuf>,
    /// Use TLS, trusting the system's root certificates (implied by --ca-file).
    #[arg(long)]
    tls: bool,
    /// Use TLS, trusting the CA certificates in this PEM file.
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

impl ConnectionArgs {
    /// The endpoint of `broker` (HOST:PORT), as client `client_id`, with a clean session.
    pub(super) fn endpoint(&self, broker: &str, client_id: String) -> anyhow::Result<Endpoint> {
        let (host, port) = parse_broker(broker)?;
        let password = match &self.password_file {
            Some(path) => Some(crate::fsutil::read_secret(path, "password file")?),
            None => None,
        };
        let tls = (self.tls || self.ca_file.is_some()).then(|| Tls {
            ca_file: self.ca_file.clone(),
            ..Tls::default()
        });
        Ok(Endpoint {
            host,
            port,
            client_id,
            protocol: match self.mqtt_version {
                MqttVersion::V311 => Protocol::V311,
                MqttVersion::V5 => Protocol::V5,
            },
            keep_alive: Duration::from_secs(30),
            clean_session: true,
            username: self.username.clone(),
            password,
            tls,
            reconnect: Backoff {
                initial: Duration::from_millis(250),
                max: Duration::from_secs(10),
            },
        })
    }
}

/// Splits `HOST:PORT` (`[v6]:PORT` for IPv6 addresses).
pub(super) fn parse_broker(text: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = text
        .rsplit_once(':')
        .with_context(|| format!("--broker {text:?}: expected HOST:PORT, e.g. localhost:1883"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .with_context(|| format!("--broker {text:?}: {port:?} is not a port number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        anyhow::bail!("--broker {text:?}: the host is missing");
    }
    Ok((host.to_owned(), port))
}

pub(super) fn run(args: TailArgs) -> anyhow::Result<ExitCode> {
    let endpoint = args.connection.endpoint(
        &args.broker,
        args.client_id
            .clone()
            .unwrap_or_else(|| format!("weir-tail-{}", std::process::id())),
    )?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut options = TailOptions::new(endpoint, args.topic.clone());
    options.dedup = !args.no_dedup;
    options.idle = args.idle;
    options.stop = Some(stop_rx);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printer = Printer::new(args.format);
    let mut printed = 0u64;
    let mut write_error = None;
    let stats = runtime.block_on(async {
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                let _ = stop_tx.send(true);
            }
        });
        tail(options, |record| {
            let written = printer.print(&mut out, &record).and_then(|()| out.flush());
            if let Err(e) = written {
                // A closed pipe (`weir tail | head`) ends tail quietly.
                write_error = Some(e);
                return false;
            }
            printed += 1;
            args.count.is_none_or(|n| printed < n)
        })
        .await
    })?;
    drop(out);
    let repeats = if args.no_dedup {
        "repeats seen (printed)"
    } else {
        "repeats dropped"
    };
    eprintln!(
        "tail: {} records, {} {}{}",
        stats.records,
        stats.duplicates,
        repeats,
        if stats.idle_timeout {
            format!(
                ", idle for {}",
                crate::config::units::format_duration(args.idle.unwrap_or_default())
            )
        } else {
            String::new()
        }
    );
    match write_error {
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to standard output")
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

struct Printer {
    format: Format,
    header_done: bool,
}

const TABLE_WIDTHS: [usize; 5] = [19, 30, 16, 3, 16];

impl Printer {
    fn new(format: Format) -> Self {
        Printer {
            format,
            header_done: false,
        }
    }

    fn print(&mut self, out: &mut impl Write, record: &TailRecord) -> std::io::Result<()> {
        match self.format {
            Format::Json => writeln!(out, "{}", json_line(record)),
            Format::Table => {
                if !self.header_done {
                    self.header_done = true;
                    writeln!(
                        out,
                        "{}",
                        table_row(["TIME", "TOPIC", "KEY", "REV", "ID"], "VALUES")
                    )?;
                }
                writeln!(out, "{}", table_line(record))
            }
        }
    }
}

/// `{"topic": ..., <the payload's fields>}`; a payload that is not a JSON object goes under
/// `"payload"` (or `"payload_text"` if it is not JSON at all), as does an object with its own
/// `"topic"` field.
fn json_line(record: &TailRecord) -> String {
    let topic = serde_json::Value::String(record.topic.clone()).to_string();
    match &record.payload {
        serde_json::Value::Object(map) if !map.contains_key("topic") => {
            let body = record.payload.to_string();
            if map.is_empty() {
                format!("{{\"topic\":{topic}}}")
            } else {
                // `body` starts with `{`: splice the topic in front of the payload's fields.
                format!("{{\"topic\":{topic},{}", &body[1..])
            }
        }
        other if record.is_json => format!("{{\"topic\":{topic},\"payload\":{other}}}"),
        other => format!("{{\"topic\":{topic},\"payload_text\":{other}}}"),
    }
}

fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        format!("{text:<width$}")
    } else {
        let mut s: String = text.chars().take(width.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

fn table_row(cells: [&str; 5], last: &str) -> String {
    let mut line = String::new();
    for (cell, width) in cells.iter().zip(TABLE_WIDTHS) {
        line.push_str(&fit(cell, width));
        line.push_str("  ");
    }
    line.push_str(last);
    line.trim_end().to_owned()
}

fn table_line(record: &TailRecord) -> String {
    let p = &record.payload;
    let time = ["start_ms", "ts_ms", "end_ms"]
        .iter()
        .find_map(|k| p.get(k).and_then(|v| v.as_i64()))
        .map(crate::clock::utc_s)
        .unwrap_or_else(|| "-".to_owned());
    let text = |k: &str| match p.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) if !v.is_null() => v.to_string(),
        _ => "-".to_owned(),
    };
    let key = text("key");
    let revision = text("revision");
    let id = record.id.clone().unwrap_or_else(|| "-".to_owned());
    let mut summary = match p {
        serde_json::Value::Object(_) => {
            let mut parts = Vec::new();
            if let Some(count) = p.get("count") {
                parts.push(format!("count={count}"));
            }
            if let Some(values) = p.get("values").or_else(|| p.get("fields")) {
                summarize(values, "", &mut parts);
            }
            if parts.is_empty() {
                summarize(p, "", &mut parts);
            }
            parts.join(" ")
        }
        serde_json::Value::String(s) if !record.is_json => s.clone(),
        other => other.to_string(),
    };
    if record.duplicate {
        summary.insert_str(0, "(repeat) ");
    }
    table_row(
        [&time, &record.topic, &key, &revision, &id],
        &fit(&summary, 100),
    )
}

/// `name=value` pairs, nested objects as `outer.inner`, numbers rounded to 3 decimals.
fn summarize(value: &serde_json::Value, prefix: &str, parts: &mut Vec<String>) {
    let serde_json::Value::Object(map) = value else {
        parts.push(format!("{prefix}={}", short(value)));
        return;
    };
    for (k, v) in map {
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            serde_json::Value::Object(_) => summarize(v, &name, parts),
            _ => parts.push(format!("{name}={}", short(v))),
        }
    }
}

fn short(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Number(n) if n.is_f64() => {
            let s = format!("{:.3}", n.as_f64().unwrap_or_default());
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        }
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: serde_json::Value, is_json: bool) -> TailRecord {
        TailRecord {
            topic: "up/farm".into(),
            id: payload
                .get("id")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            payload,
            is_json,
            duplicate: false,
        }
    }

    #[test]
    fn json_lines_put_the_topic_first() {
        let r = record(serde_json::json!({"id": "a1", "count": 3}), true);
        let line = json_line(&r);
        assert!(line.starts_with("{\"topic\":\"up/farm\","), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"topic": "up/farm", "id": "a1", "count": 3})
        );
        let text = record(serde_json::Value::String("hi \"there\"".into()), false);
        let v: serde_json::Value = serde_json::from_str(&json_line(&text)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"topic": "up/farm", "payload_text": "hi \"there\""})
        );
        let empty = record(serde_json::json!({}), true);
        assert_eq!(json_line(&empty), "{\"topic\":\"up/farm\"}");
    }

    #[test]
    fn table_lines_summarize_windows() {
        let r = record(
            serde_json::json!({"id": "abc", "key": "s1", "start_ms": 1_700_000_000_000i64,
                               "revision": 0, "count": 2, "values": {"temp": {"mean": 21.25}}}),
            true,
        );
        let line = table_line(&r);
        assert!(line.starts_with("2023-11-14 22:13:20"), "{line}");
        assert!(line.contains("count=2 temp.mean=21.25"), "{line}");
    }

    #[test]
    fn brokers_parse() {
        assert_eq!(
            parse_broker("localhost:1883").unwrap(),
            ("localhost".into(), 1883)
        );
        assert_eq!(parse_broker("[::1]:8883").unwrap(), ("::1".into(), 8883));
        assert!(parse_broker("localhost").is_err());
        assert!(parse_broker(":1883").is_err());
    }
}
