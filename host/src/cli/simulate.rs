//! `weir simulate`: publish a simulated farm to a broker, and/or write it for `weir replay`.

// The simulator paces messages by the wall clock: an edge.
#![allow(clippy::disallowed_methods)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::tail::{MqttVersion, parse_broker};
use crate::mqtt::{Backoff, Endpoint, Protocol};
use crate::sim::{Farm, FarmOptions, KindCounts, Limit, PublishProgress};

#[derive(Debug, clap::Args)]
pub(super) struct SimulateArgs {
    /// The broker to publish to, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
    /// Sensors. With the default 1000 (or fewer) and the default locations, the sensors are those
    /// of configs/sensors.csv; otherwise a table is generated (see --write-table).
    #[arg(long, default_value_t = FarmOptions::default().sensors)]
    sensors: usize,
    /// Locations the sensors are spread over.
    #[arg(long, default_value_t = FarmOptions::default().locations)]
    locations: usize,
    /// Messages per second, all sensors together.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// The seed: the same seed, the same messages.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Sensor clocks are off by up to this much, either way, e.g. "2s".
    #[arg(long, default_value = "2s", value_parser = crate::config::parse_duration)]
    jitter: Duration,
    /// The fraction of readings published after later ones.
    #[arg(long, default_value_t = 0.02)]
    out_of_order: f64,
    /// The fraction of readings published twice.
    #[arg(long, default_value_t = 0.01)]
    resent: f64,
    /// The fraction of sensors that go silent for a while, now and then.
    #[arg(long, default_value_t = 0.05)]
    silent: f64,
    /// The fraction of messages that are not JSON.
    #[arg(long, default_value_t = 0.001)]
    garbage: f64,
    /// The first topic level: topics are PREFIX/<location>/sensors/<sensor id>.
    #[arg(long, default_value = "farm")]
    topic_prefix: String,
    /// The event time of the first reading, ms since the Unix epoch (default: now when
    /// publishing; 1700000000000 with --no-publish, so that files are reproducible).
    #[arg(long)]
    start_ms: Option<i64>,
    /// Stop after this many messages (resends included).
    #[arg(long, conflicts_with = "duration")]
    count: Option<u64>,
    /// Stop after this long, e.g. "60s" (simulated time with --no-publish).
    #[arg(long, value_parser = crate::config::parse_duration)]
    duration: Option<Duration>,
    /// The QoS to publish with (0 or 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// The MQTT version to speak.
    #[arg(long, value_enum, default_value = "5")]
    mqtt_version: MqttVersion,
    /// Also write the messages to FILE as `weir replay` input (JSON lines, received at
    /// start + due time).
    #[arg(long)]
    write: Option<PathBuf>,
    /// Write the sensor table (CSV, like configs/sensors.csv) to FILE.
    #[arg(long)]
    write_table: Option<PathBuf>,
    /// Do not publish: only write (--write), as fast as possible; no broker needed.
    #[arg(long, requires = "write")]
    no_publish: bool,
    /// The MQTT client id (default: weir-simulate-<process id>).
    #[arg(long)]
    client_id: Option<String>,
}

fn check_fraction(name: &str, value: f64) -> anyhow::Result<()> {
    if !(0.0..=0.5).contains(&value) {
        anyhow::bail!("--{name} {value}: expected a fraction from 0 to 0.5");
    }
    Ok(())
}

pub(super) fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        anyhow::bail!(
            "--rate {}: expected messages per second, above 0",
            args.rate
        );
    }
    if args.sensors == 0 || args.locations == 0 {
        anyhow::bail!("--sensors and --locations must be at least 1");
    }
    for (name, value) in [
        ("out-of-order", args.out_of_order),
        ("resent", args.resent),
        ("garbage", args.garbage),
    ] {
        check_fraction(name, value)?;
    }
    if !(0.0..=1.0).contains(&args.silent) {
        anyhow::bail!("--silent {}: expected a fraction from 0 to 1", args.silent);
    }
    let limit = match (args.count, args.duration) {
        (Some(n), _) => Limit::Count(n),
        (None, Some(d)) => Limit::Duration(d),
        (None, None) => Limit::Forever,
    };
    if args.no_publish && limit == Limit::Forever {
        anyhow::bail!("--no-publish needs --count or --duration (it would write forever)");
    }
    let start_ms = args.start_ms.unwrap_or_else(|| {
        if args.no_publish {
            FarmOptions::default().start_ms
        } else {
            crate::engine::now_ms()
        }
    });
    let options = FarmOptions {
        sensors: args.sensors,
        locations: args.locations,
        rate: args.rate,
        seed: args.seed,
        jitter: args.jitter,
        out_of_order: args.out_of_order,
        resent: args.resent,
        silent: args.silent,
        garbage: args.garbage,
        topic_prefix: args.topic_prefix.clone(),
        start_ms,
    };
    let farm = Farm::new(options);
    if let Some(path) = &args.write_table {
        std::fs::write(path, farm.sensor_table())
            .with_context(|| format!("cannot write the sensor table {}", path.display()))?;
    }

    if args.no_publish {
        let path = args.write.as_ref().expect("clap requires --write");
        let began = Instant::now();
        let counts = write_file(path, farm, limit)?;
        eprintln!(
            "simulate: wrote {} messages to {} in {:.1} s: {}",
            counts.total(),
            path.display(),
            began.elapsed().as_secs_f64(),
            kinds(&counts)
        );
        return Ok(ExitCode::SUCCESS);
    }

    let (host, port) = parse_broker(&args.broker)?;
    let endpoint = Endpoint {
        host,
        port,
        client_id: args
            .client_id
            .clone()
            .unwrap_or_else(|| format!("weir-simulate-{}", std::process::id())),
        protocol: match args.mqtt_version {
            MqttVersion::V311 => Protocol::V311,
            MqttVersion::V5 => Protocol::V5,
        },
        keep_alive: Duration::from_secs(30),
        clean_session: true,
        username: None,
        password: None,
        tls: None,
        reconnect: Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(10),
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let progress = PublishProgress::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let began = Instant::now();
    eprintln!(
        "simulate: {} sensors over {} locations, {} msg/s, seed {}, to {}",
        args.sensors,
        args.locations,
        args.rate,
        args.seed,
        endpoint.address()
    );
    let published = runtime.block_on(async {
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                let _ = stop_tx.send(true);
            }
            // Keep the sender: a dropped one would read as "stop".
            std::future::pending::<()>().await;
        });
        let publishing =
            crate::sim::publish(farm.clone(), &endpoint, args.qos, limit, &progress, stop_rx);
        tokio::pin!(publishing);
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        let mut last = (Instant::now(), 0u64);
        loop {
            tokio::select! {
                result = &mut publishing => break result,
                _ = ticker.tick() => {
                    let now = Instant::now();
                    let published = progress.published.load(Relaxed);
                    let rate = (published - last.1) as f64
                        / now.duration_since(last.0).as_secs_f64().max(1e-3);
                    last = (now, published);
                    eprintln!(
                        "simulate: {:>6.0} s  published {published}  {rate:.0} msg/s  \
                         resent {}  late {}  garbage {}{}",
                        began.elapsed().as_secs_f64(),
                        progress.resent.load(Relaxed),
                        progress.late.load(Relaxed),
                        progress.garbage.load(Relaxed),
                        if progress.connected.load(Relaxed) { "" } else { "  (not connected)" },
                    );
                }
            }
        }
    });
    published?;
    let counts = KindCounts {
        normal: progress.normal.load(Relaxed),
        resent: progress.resent.load(Relaxed),
        late: progress.late.load(Relaxed),
        garbage: progress.garbage.load(Relaxed),
    };
    let acked = progress.acked.load(Relaxed);
    eprintln!(
        "simulate: published {} messages in {:.1} s: {}{}",
        counts.total(),
        began.elapsed().as_secs_f64(),
        kinds(&counts),
        if args.qos > 0 {
            format!(", {acked} acknowledged")
        } else {
            String::new()
        }
    );
    if let Some(path) = &args.write {
        // The stream is deterministic: write what was published from a fresh copy of the farm.
        write_file(path, farm, Limit::Count(counts.total()))?;
    }
    if args.qos > 0 && acked < counts.total() {
        eprintln!(
            "simulate: the broker acknowledged {acked} of {} messages",
            counts.total()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn kinds(c: &KindCounts) -> String {
    format!(
        "{} on time, {} late, {} resent, {} garbage",
        c.normal, c.late, c.resent, c.garbage
    )
}

fn write_file(path: &std::path::Path, farm: Farm, limit: Limit) -> anyhow::Result<KindCounts> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let counts = crate::sim::write_replay(farm, limit, &mut out)
        .with_context(|| format!("cannot write {}", path.display()))?;
    out.flush()?;
    Ok(counts)
}
