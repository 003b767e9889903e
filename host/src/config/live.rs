//! The parts of a config that only `weir run` needs: the sensors' broker (`[source]`), the
//! upstream broker (`[upstream]`), the durable store (`[storage]`), and each pipeline's delivery
//! guarantee and ingest dedup. All have defaults, so a config without them still validates (and
//! `weir replay` ignores them).

use std::path::PathBuf;
use std::time::Duration;

use crate::mqtt::{Backoff, Endpoint, Protocol};
use crate::store::OnFull;

/// A broker weir connects to, as configured: the endpoint, and where its password is.
#[derive(Clone, Debug, PartialEq)]
pub struct Broker {
    /// Everything but the password (`None` here).
    pub endpoint: Endpoint,
    /// The file holding the password (its first line), read at start.
    pub password_file: Option<PathBuf>,
}

impl Broker {
    /// `host:port`, for messages.
    pub fn address(&self) -> String {
        self.endpoint.address()
    }

    /// The endpoint to connect to, with the password read from its file.
    pub fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let mut endpoint = self.endpoint.clone();
        if let Some(path) = &self.password_file {
            let password = crate::fsutil::read_secret(path, "password file")
                .map_err(|e| anyhow::anyhow!("{e} (the password of broker {})", self.address()))?;
            endpoint.password = Some(password);
        }
        Ok(endpoint)
    }
}

/// `[source]`: where sensor messages come from.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    pub broker: Broker,
    /// The QoS of the subscriptions (0, 1 or 2).
    pub qos: u8,
    /// Larger messages are dead letters (their first KiB kept, with their size).
    pub max_message_bytes: u64,
    /// At most this many messages share one input-log commit (one fsync)...
    pub batch_max_messages: usize,
    /// ...and a commit waits at most this long for more after the first.
    pub batch_linger: Duration,
    /// Where messages that match no pipeline go (dead letters).
    pub dead_letter: String,
}

/// `[upstream]`: where results go.
#[derive(Clone, Debug, PartialEq)]
pub struct Upstream {
    pub broker: Broker,
    /// Unacknowledged QoS 1 publishes at most (1..=65535: MQTT packet ids are 16-bit).
    pub max_inflight: u16,
    /// Publishes per second at most while draining a backlog; `None`: as fast as the link takes.
    pub drain_rate_per_s: Option<u32>,
    /// The MQTT 5 user property carrying each record's id.
    pub id_property: String,
}

/// The default `commit_interval` (see configs/README.md for the measured trade).
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(25);

/// `[storage]`: the durable store.
#[derive(Clone, Debug, PartialEq)]
pub struct Storage {
    pub data_dir: PathBuf,
    /// At most one commit (input, records, deletes, and a checkpoint when due) per this long.
    pub commit_interval: Duration,
    /// How often a checkpoint (the pipelines' state) goes with a commit, at most; only when
    /// something changed. Recovery replays the input logged since the last one.
    pub checkpoint_interval: Duration,
    /// The outbox's cap in bytes...
    pub max_outbox_bytes: u64,
    /// ...and what happens when it is reached.
    pub on_full: OnFull,
}

impl Storage {
    /// Where compiled plugins are kept (and where `weir plugin compile`'s files go).
    pub fn plugin_cache(&self) -> PathBuf {
        self.data_dir.join("plugin-cache")
    }
}

/// What a pipeline promises about its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Guarantee {
    /// Every accepted message counts exactly once in what reaches upstream, through crashes and
    /// outages: input log, checkpoints, durable outbox, QoS 1 with ids.
    #[default]
    EffectivelyOnce,
    /// Nothing written to disk; results kept in memory and published with QoS 0. A crash or an
    /// outage loses data.
    AtMostOnce,
}

impl Guarantee {
    pub fn as_str(&self) -> &'static str {
        match self {
            Guarantee::EffectivelyOnce => "effectively-once",
            Guarantee::AtMostOnce => "at-most-once",
        }
    }
}

/// Ingest dedup: a message seen again within `horizon` is dropped and counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dedup {
    /// The JSON field holding a message id; without one (or when a message lacks it), the topic
    /// and the whole payload identify a message.
    pub field: Option<String>,
    /// How long a message is remembered (by receive time); zero turns dedup off.
    pub horizon: Duration,
    /// At most this many remembered; the oldest are forgotten first (counted).
    pub max_entries: usize,
}

impl Default for Dedup {
    fn default() -> Self {
        Dedup {
            field: None,
            horizon: Duration::from_secs(600),
            max_entries: 100_000,
        }
    }
}

impl Default for Source {
    fn default() -> Self {
        Source {
            broker: Broker {
                endpoint: Endpoint {
                    host: "127.0.0.1".into(),
                    port: 1883,
                    client_id: "weir".into(),
                    protocol: Protocol::V5,
                    keep_alive: Duration::from_secs(30),
                    clean_session: false,
                    username: None,
                    password: None,
                    tls: None,
                    reconnect: Backoff::default(),
                },
                password_file: None,
            },
            qos: 1,
            max_message_bytes: 256 * 1024,
            batch_max_messages: 1000,
            batch_linger: Duration::from_millis(20),
            dead_letter: "weir/dead-letter".into(),
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            data_dir: PathBuf::from("/var/lib/weir"),
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            checkpoint_interval: Duration::from_secs(30),
            max_outbox_bytes: 512 * 1024 * 1024,
            on_full: OnFull::Block,
        }
    }
}

/// `[admin]`: the admin API (health, metrics, status, plugin swaps).
#[derive(Clone, Debug, PartialEq)]
pub struct Admin {
    /// Where it listens; `None`: no admin API. Off loopback only with a token file.
    pub listen: Option<std::net::SocketAddr>,
    /// The file holding the token (its first line) required for changes.
    pub token_file: Option<PathBuf>,
    /// The directories a swap may load a plugin from; `None`: the directories holding the
    /// plugins the config names (see [`Admin::swap_dirs`]).
    pub plugin_dirs: Option<Vec<PathBuf>>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9464))),
            token_file: None,
            plugin_dirs: None,
        }
    }
}

impl Admin {
    /// The token required for changes: `WEIR_ADMIN_TOKEN` if set, else the token file's first
    /// line; `None`: changes need no token (then the API stays on loopback: validation refuses
    /// any other address without a token file).
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Ok(t) = std::env::var("WEIR_ADMIN_TOKEN")
            && !t.is_empty()
        {
            return Ok(Some(t));
        }
        match &self.token_file {
            Some(path) => {
                let token = crate::fsutil::read_secret(path, "admin token file")?
                    .trim()
                    .to_owned();
                anyhow::ensure!(
                    !token.is_empty(),
                    "the admin token file {} is empty; write the token on its first line",
                    path.display()
                );
                Ok(Some(token))
            }
            None => Ok(None),
        }
    }

    /// The directories a swap through the admin API may load a plugin from: `plugin_dirs` as
    /// configured, or else every directory holding a plugin `config` names (none: no swaps).
    pub fn swap_dirs(&self, config: &super::Config) -> Vec<PathBuf> {
        if let Some(dirs) = &self.plugin_dirs {
            return dirs.clone();
        }
        let mut dirs: Vec<PathBuf> = super::plugin_uses(config)
            .into_iter()
            .filter_map(|u| u.path.parent().map(std::path::Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

/// `[fleet]`: the gateway takes signed plugin rollouts from the upstream broker and reports its
/// status there (see `crate::fleet`).
#[derive(Clone, Debug, PartialEq)]
pub struct Fleet {
    /// This gateway's id in the fleet: one MQTT topic level (default: the hostname).
    pub id: String,
    /// The ed25519 public keys a rollout must be signed with (one of them), 32 bytes each.
    pub keys: Vec<[u8; 32]>,
    /// Topics are `<prefix>/<id>/rollout`, `<prefix>/<id>/status`, `<prefix>/artifacts/...`.
    pub topic_prefix: String,
    /// The status is published (retained) on every change and at least this often.
    pub status_interval: Duration,
    /// A rollout whose plugin has not arrived whole by then is refused.
    pub artifact_timeout: Duration,
}

/// The hostname, for `[fleet] id`'s default.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .trim()
        .to_owned()
}
