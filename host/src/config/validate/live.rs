//! Validation of `[source]`, `[upstream]`, `[storage]`, `[admin]`, `[fleet]` and each pipeline's
//! `guarantee` and `dedup`.

use super::super::live::{Admin, Broker, Dedup, Fleet, Guarantee, Source, Storage, Upstream};
use super::super::raw::{
    Part, RawAdmin, RawDedup, RawFleet, RawGuarantee, RawMqtt, RawOnFull, RawStorage, RawTls,
};
use super::{SEE, Validator};
use crate::mqtt::{Backoff, Protocol, Tls};
use crate::store::OnFull;

/// The longest `commit_interval`: messages wait that long for their acknowledgement, and the
/// source broker sends only so many unacknowledged ones.
const MAX_COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Which side a `RawMqtt` is.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Source,
    Upstream,
}

impl Side {
    fn section(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Upstream => "upstream",
        }
    }
}

impl Validator<'_> {
    pub(super) fn source(&mut self, part: Option<Part<RawMqtt>>) -> Option<Source> {
        let mut source = Source::default();
        let raw = match part {
            None => return Some(source),
            Some(Part::Bad { error, .. }) => {
                self.serde_error("source", &error);
                return None;
            }
            Some(Part::Ok(raw)) => raw,
        };
        let before = self.errors.len();
        self.only_on(Side::Source, &raw);
        let broker = self.broker(Side::Source, &raw, source.broker.clone());
        if let Some(qos) = raw.qos {
            if qos > 2 {
                self.error(
                    "source.qos",
                    format!("{qos} is not an MQTT QoS; write 0, 1 or 2"),
                );
            }
            source.qos = qos;
        }
        if let Some(v) = &raw.max_message_bytes
            && let Some(n) = self.size("source.max_message_bytes", v)
        {
            if n == 0 {
                self.error("source.max_message_bytes", "must be more than zero");
            }
            source.max_message_bytes = n;
        }
        if let Some(n) = raw.batch_max_messages {
            source.batch_max_messages = self.positive("source.batch_max_messages", n).unwrap_or(1);
            if n > 10_000 {
                self.error(
                    "source.batch_max_messages",
                    format!("{n} is too large: at most 10000 messages share a commit"),
                );
            }
        }
        if let Some(v) = &raw.batch_linger {
            source.batch_linger = self.duration("source.batch_linger", v).unwrap_or_default();
        }
        if let Some(t) = raw.dead_letter {
            if let Err(e) = crate::config::topic::check_template_topic(&t) {
                self.error("source.dead_letter", e);
            }
            source.dead_letter = t;
        }
        source.broker = broker?;
        (self.errors.len() == before).then_some(source)
    }

    pub(super) fn upstream(&mut self, part: Option<Part<RawMqtt>>) -> Option<Option<Upstream>> {
        let raw = match part {
            None => return Some(None),
            Some(Part::Bad { error, .. }) => {
                self.serde_error("upstream", &error);
                return None;
            }
            Some(Part::Ok(raw)) => raw,
        };
        let before = self.errors.len();
        self.only_on(Side::Upstream, &raw);
        if raw.broker.is_none() {
            self.error(
                "upstream.broker",
                "missing; write the upstream broker as \"host:port\", e.g. \
                 broker = \"mqtt.example.com:8883\"",
            );
        }
        let mut defaults = Source::default().broker;
        defaults.endpoint.client_id = "weir-upstream".into();
        defaults.endpoint.clean_session = true;
        let broker = self.broker(Side::Upstream, &raw, defaults);
        let max_inflight = match raw.max_inflight {
            None => 1000,
            Some(n @ 1..=65535) => n as u16,
            Some(n) => {
                self.error(
                    "upstream.max_inflight",
                    format!(
                        "{n} is out of range: MQTT packet ids are 16-bit, so at most 65535 \
                         publishes can await their acknowledgement; write 1 to 65535"
                    ),
                );
                1
            }
        };
        let drain_rate_per_s = match raw.drain_rate {
            None | Some(0) => None,
            Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
        };
        let upstream = Upstream {
            broker: broker?,
            max_inflight,
            drain_rate_per_s,
            id_property: raw.id_property.unwrap_or_else(|| "weir-id".into()),
        };
        (self.errors.len() == before).then_some(Some(upstream))
    }

    pub(super) fn storage(&mut self, part: Option<Part<RawStorage>>) -> Option<Storage> {
        let mut storage = Storage::default();
        let raw = match part {
            None => return Some(storage),
            Some(Part::Bad { error, .. }) => {
                self.serde_error("storage", &error);
                return None;
            }
            Some(Part::Ok(raw)) => raw,
        };
        let before = self.errors.len();
        if let Some(dir) = raw.data_dir {
            if dir.is_empty() {
                self.error(
                    "storage.data_dir",
                    "empty; name the directory weir keeps its data in",
                );
            }
            storage.data_dir = self.dir.join(dir);
        }
        if let Some(v) = &raw.commit_interval
            && let Some(d) = self.positive_duration("storage.commit_interval", v)
        {
            if d > MAX_COMMIT_INTERVAL {
                self.error(
                    "storage.commit_interval",
                    format!(
                        "{} is longer than {}: messages wait for their acknowledgement until                          the commit that holds them, and the source broker stops sending once                          too many wait; for fewer writes, {} is plenty",
                        super::shown(v),
                        crate::config::units::format_duration(MAX_COMMIT_INTERVAL),
                        crate::config::units::format_duration(std::time::Duration::from_secs(1))
                    ),
                );
            } else {
                storage.commit_interval = d;
            }
        }
        if let Some(v) = &raw.checkpoint_interval {
            storage.checkpoint_interval = self
                .positive_duration("storage.checkpoint_interval", v)
                .unwrap_or_default();
        }
        if let Some(v) = &raw.max_outbox
            && let Some(n) = self.size("storage.max_outbox", v)
        {
            if n == 0 {
                self.error("storage.max_outbox", "must be more than zero");
            }
            storage.max_outbox_bytes = n;
        }
        if let Some(p) = raw.on_full {
            storage.on_full = match p {
                RawOnFull::Block => OnFull::Block,
                RawOnFull::DropOldest => OnFull::DropOldest,
            };
        }
        (self.errors.len() == before).then_some(storage)
    }

    pub(super) fn admin(&mut self, part: Option<Part<RawAdmin>>) -> Option<Admin> {
        let mut admin = Admin::default();
        let raw = match part {
            None => return Some(admin),
            Some(Part::Bad { error, .. }) => {
                self.serde_error("admin", &error);
                return None;
            }
            Some(Part::Ok(raw)) => raw,
        };
        let before = self.errors.len();
        if let Some(listen) = &raw.listen {
            admin.listen = match listen.as_str() {
                "off" => None,
                text => match text.parse() {
                    Ok(addr) => Some(addr),
                    Err(_) => {
                        self.error(
                            "admin.listen",
                            format!(
                                "{text:?} is not an address; write \"127.0.0.1:9464\" (keep it on \
                                 loopback unless a token is set), or \"off\""
                            ),
                        );
                        None
                    }
                },
            };
        }
        if let Some(p) = &raw.token_file {
            let path = self.dir.join(p);
            if !path.is_file() {
                self.error(
                    "admin.token_file",
                    format!(
                        "{} is not a file; write the token on its first line",
                        path.display()
                    ),
                );
            }
            admin.token_file = Some(path);
        }
        // Without a token, whoever reaches the address can swap the code weir runs.
        if let Some(addr) = admin.listen
            && !addr.ip().is_loopback()
            && raw.token_file.is_none()
        {
            self.error(
                "admin.listen",
                format!(
                    "{addr} is not a loopback address, and no token guards changes: anyone who \
                     reaches it could swap the plugins weir runs; set token_file (a file holding \
                     the token), or listen on 127.0.0.1 or [::1]"
                ),
            );
        }
        if let Some(dirs) = &raw.plugin_dirs {
            let mut resolved = Vec::with_capacity(dirs.len());
            for (i, d) in dirs.iter().enumerate() {
                let at = format!("admin.plugin_dirs[{i}]");
                if d.is_empty() {
                    self.error(at, "empty; name a directory swaps may load plugins from");
                    continue;
                }
                let path = self.dir.join(d);
                if !path.is_dir() {
                    self.error(
                        at,
                        format!(
                            "{} is not a directory; name a directory swaps may load plugins from",
                            path.display()
                        ),
                    );
                }
                resolved.push(path);
            }
            admin.plugin_dirs = Some(resolved);
        }
        (self.errors.len() == before).then_some(admin)
    }

    pub(super) fn guarantee(&mut self, raw: Option<RawGuarantee>) -> Guarantee {
        match raw {
            None | Some(RawGuarantee::EffectivelyOnce) => Guarantee::EffectivelyOnce,
            Some(RawGuarantee::AtMostOnce) => Guarantee::AtMostOnce,
        }
    }

    pub(super) fn dedup(&mut self, at: &str, raw: Option<RawDedup>) -> Option<Dedup> {
        let mut dedup = Dedup::default();
        let Some(raw) = raw else {
            return Some(dedup);
        };
        let before = self.errors.len();
        if let Some(field) = raw.field {
            if field.is_empty() {
                self.error(
                    format!("{at}.field"),
                    "empty; name the JSON field holding a message id, or leave field out to \
                     identify messages by topic and payload",
                );
            }
            dedup.field = Some(field);
        }
        if let Some(v) = &raw.horizon {
            dedup.horizon = self
                .duration(&format!("{at}.horizon"), v)
                .unwrap_or_default();
        }
        if let Some(n) = raw.max_entries {
            dedup.max_entries = self.positive(&format!("{at}.max_entries"), n).unwrap_or(1);
        }
        (self.errors.len() == before).then_some(dedup)
    }

    /// Reports fields that belong to the other side.
    fn only_on(&mut self, side: Side, raw: &RawMqtt) {
        let source_only = [
            ("qos", raw.qos.is_some()),
            ("max_message_bytes", raw.max_message_bytes.is_some()),
            ("batch_max_messages", raw.batch_max_messages.is_some()),
            ("batch_linger", raw.batch_linger.is_some()),
            ("dead_letter", raw.dead_letter.is_some()),
        ];
        let upstream_only = [
            ("max_inflight", raw.max_inflight.is_some()),
            ("drain_rate", raw.drain_rate.is_some()),
            ("id_property", raw.id_property.is_some()),
        ];
        let (misplaced, other): (Vec<&str>, Side) = match side {
            Side::Source => (
                upstream_only.iter().filter(|f| f.1).map(|f| f.0).collect(),
                Side::Upstream,
            ),
            Side::Upstream => (
                source_only.iter().filter(|f| f.1).map(|f| f.0).collect(),
                Side::Source,
            ),
        };
        for field in misplaced {
            self.error(
                format!("{}.{field}", side.section()),
                format!(
                    "`{field}` is a setting of [{}], not of [{}]; {SEE}",
                    other.section(),
                    side.section()
                ),
            );
        }
    }

    /// The connection settings common to both sides, over `defaults`.
    fn broker(&mut self, side: Side, raw: &RawMqtt, defaults: Broker) -> Option<Broker> {
        let at = |f: &str| format!("{}.{f}", side.section());
        let before = self.errors.len();
        let mut b = defaults;
        if let Some(addr) = &raw.broker {
            match parse_address(addr) {
                Ok((host, port)) => {
                    b.endpoint.host = host;
                    b.endpoint.port = port;
                }
                Err(e) => self.error(at("broker"), e),
            }
        }
        if let Some(id) = &raw.client_id {
            if id.is_empty() || id.len() > 65535 {
                self.error(at("client_id"), "must be 1 to 65535 bytes");
            }
            b.endpoint.client_id = id.clone();
        }
        if let Some(v) = &raw.mqtt_version {
            b.endpoint.protocol = match v.as_str() {
                "5" | "5.0" => Protocol::V5,
                "3.1.1" | "4" => Protocol::V311,
                other => {
                    self.error(
                        at("mqtt_version"),
                        format!(
                            "{other:?} is not an MQTT version weir speaks; write \"5\" or \"3.1.1\""
                        ),
                    );
                    b.endpoint.protocol
                }
            };
        }
        if let Some(v) = &raw.keep_alive {
            b.endpoint.keep_alive = self
                .positive_duration(&at("keep_alive"), v)
                .unwrap_or_default();
        }
        if let Some(c) = raw.clean_session {
            b.endpoint.clean_session = c;
        }
        b.endpoint.username = raw.username.clone();
        if let Some(p) = &raw.password_file {
            let path = self.dir.join(p);
            if !path.is_file() {
                self.error(
                    at("password_file"),
                    format!(
                        "{} is not a file; write the password on its first line",
                        path.display()
                    ),
                );
            }
            b.password_file = Some(path);
        }
        if raw.password_file.is_some() && raw.username.is_none() {
            self.error(at("username"), "missing; a password_file needs a username");
        }
        if let Some(tls) = &raw.tls {
            b.endpoint.tls = Some(self.tls(&at("tls"), tls));
        }
        if let Some(r) = &raw.reconnect {
            let mut backoff = Backoff::default();
            if let Some(v) = &r.initial {
                backoff.initial = self
                    .positive_duration(&at("reconnect.initial"), v)
                    .unwrap_or_default();
            }
            if let Some(v) = &r.max {
                backoff.max = self
                    .positive_duration(&at("reconnect.max"), v)
                    .unwrap_or_default();
            }
            if backoff.max < backoff.initial {
                self.error(at("reconnect.max"), "must be at least reconnect.initial");
            }
            b.endpoint.reconnect = backoff;
        }
        (self.errors.len() == before).then_some(b)
    }

    fn tls(&mut self, at: &str, raw: &RawTls) -> Tls {
        let mut file = |field: &str, value: &Option<String>| {
            value.as_ref().map(|p| {
                let path = self.dir.join(p);
                if !path.is_file() {
                    self.error(
                        format!("{at}.{field}"),
                        format!("{} is not a file", path.display()),
                    );
                }
                path
            })
        };
        let tls = Tls {
            ca_file: file("ca_file", &raw.ca_file),
            client_cert_file: file("client_cert_file", &raw.client_cert_file),
            client_key_file: file("client_key_file", &raw.client_key_file),
        };
        if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
            self.error(
                at,
                "client_cert_file and client_key_file go together; give both or neither",
            );
        }
        tls
    }
}

/// `host:port` (a bare host means port 1883).
fn parse_address(addr: &str) -> Result<(String, u16), String> {
    let (host, port) = match addr.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("{addr:?}: {p:?} is not a port number"))?,
        ),
        None => (addr, 1883),
    };
    if host.is_empty() || host.contains('/') {
        return Err(format!(
            "{addr:?} is not \"host:port\", e.g. \"127.0.0.1:1883\""
        ));
    }
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
    ))
}

impl Validator<'_> {
    /// `[fleet]`: needs `[upstream]` (rollouts come over its broker) and at least one key.
    pub(super) fn fleet(
        &mut self,
        part: Option<Part<RawFleet>>,
        upstream: Option<&Option<Upstream>>,
    ) -> Option<Option<Fleet>> {
        let raw = match part {
            None => return Some(None),
            Some(Part::Bad { error, .. }) => {
                self.serde_error("fleet", &error);
                return None;
            }
            Some(Part::Ok(raw)) => raw,
        };
        let before = self.errors.len();
        if let Some(None) = upstream {
            self.error(
                "fleet",
                "rollouts come over the upstream broker, and there is no [upstream] section; add \
                 one, or remove [fleet]",
            );
        }
        let id = match raw.id {
            Some(id) => id,
            None => super::super::live::hostname(),
        };
        if !crate::fleet::valid_level(&id) {
            self.error(
                "fleet.id",
                format!(
                    "{:?} cannot be an MQTT topic level (1 to 64 bytes, no '/', '+', '#' or \
                     control characters); write one, e.g. id = \"barn-3\"",
                    crate::fsutil::elide(&id, 80)
                ),
            );
        }
        let mut keys = Vec::new();
        match raw.keys {
            None => self.error(
                "fleet.keys",
                "missing; a gateway in a fleet runs only rollouts signed by a key it knows: add \
                 the public key that `weir fleet keygen` printed, keys = [\"...\"]",
            ),
            Some(list) if list.is_empty() => self.error(
                "fleet.keys",
                "empty; add the public key that `weir fleet keygen` printed",
            ),
            Some(list) => {
                for (i, text) in list.iter().enumerate() {
                    match crate::fleet::parse_public_key(text) {
                        Ok(key) => keys.push(key),
                        Err(e) => self.error(format!("fleet.keys[{i}]"), e),
                    }
                }
            }
        }
        let topic_prefix = raw.topic_prefix.unwrap_or_else(|| "weir/fleet".to_owned());
        if topic_prefix.is_empty()
            || topic_prefix
                .split('/')
                .any(|level| !crate::fleet::valid_level(level))
        {
            self.error(
                "fleet.topic_prefix",
                format!(
                    "{:?} is not a topic prefix: non-empty levels, no wildcards; e.g. \
                     \"weir/fleet\"",
                    crate::fsutil::elide(&topic_prefix, 80)
                ),
            );
        }
        let status_interval = match &raw.status_interval {
            None => Some(std::time::Duration::from_secs(300)),
            Some(v) => self.positive_duration("fleet.status_interval", v),
        };
        let artifact_timeout = match &raw.artifact_timeout {
            None => Some(std::time::Duration::from_secs(600)),
            Some(v) => self.positive_duration("fleet.artifact_timeout", v),
        };
        if self.errors.len() > before {
            return None;
        }
        Some(Some(Fleet {
            id,
            keys,
            topic_prefix,
            status_interval: status_interval?,
            artifact_timeout: artifact_timeout?,
        }))
    }
}
