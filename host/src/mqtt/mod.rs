//! MQTT on both sides of weir: the source that subscribes to the sensors' broker (acks held until
//! the input log commits), the forwarder that drains the outbox to the upstream broker with QoS 1,
//! and the `weir tail` subscriber.

// MQTT is an edge: reconnect backoff, linger and rate limits follow the wall clock.
#![allow(clippy::disallowed_methods)]

pub(crate) mod conn;
pub mod forwarder;
pub mod source;
pub mod tail;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_rustls::rustls;

/// The longest topic MQTT can carry, in UTF-8 bytes (a 16-bit length prefix).
pub const MAX_TOPIC_BYTES: usize = 65_535;

/// Why a broker would refuse `topic` for a PUBLISH, if it would: empty, over
/// [`MAX_TOPIC_BYTES`], a wildcard (`+`, `#`) or a NUL character in it.
pub fn topic_problem(topic: &str) -> Option<String> {
    if topic.is_empty() {
        return Some("is empty".into());
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Some(format!(
            "is {} bytes, over MQTT's {MAX_TOPIC_BYTES}",
            topic.len()
        ));
    }
    if topic.contains(['+', '#']) {
        return Some("holds a wildcard (+ or #), which only subscriptions may".into());
    }
    if topic.contains('\0') {
        return Some("holds a NUL character".into());
    }
    None
}

/// The MQTT protocol version spoken to a broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Protocol {
    /// MQTT 3.1.1.
    V311,
    /// MQTT 5.
    #[default]
    V5,
}

/// TLS to a broker. Without a CA file, the system's roots are trusted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tls {
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM), for brokers that require one.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

/// Exponential backoff with jitter between reconnect attempts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

/// How to reach a broker.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub protocol: Protocol,
    pub keep_alive: Duration,
    /// Start a clean session (the broker forgets subscriptions and queued messages) or resume a
    /// persistent one.
    pub clean_session: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<Tls>,
    pub reconnect: Backoff,
}

impl Endpoint {
    /// `host:port`, for log lines.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The delays between reconnect attempts: exponential from `Backoff::initial`, capped at
/// `Backoff::max`, each with "equal jitter" (a delay `d` is drawn from `[d/2, d]`) so that many
/// gateways cut off together do not reconnect in step. `reset` after a successful connect.
#[derive(Debug)]
pub(crate) struct BackoffState {
    config: Backoff,
    attempt: u32,
    rng: u64,
}

impl BackoffState {
    pub(crate) fn new(config: Backoff) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (std::process::id() as u64).rotate_left(32)
            ^ (&config as *const Backoff as u64);
        Self::with_seed(config, seed)
    }

    pub(crate) fn with_seed(config: Backoff, seed: u64) -> Self {
        BackoffState {
            config,
            attempt: 0,
            rng: seed,
        }
    }

    /// The un-jittered delay for the next attempt.
    fn ceiling(&self) -> Duration {
        let initial = self.config.initial.max(Duration::from_millis(1));
        let max = self.config.max.max(initial);
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        initial.checked_mul(factor).unwrap_or(max).min(max)
    }

    /// The delay before the next attempt; each call doubles the next one, up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let spread = (ceiling - half).as_nanos() as u64;
        let jitter = if spread == 0 {
            0
        } else {
            self.next_random() % (spread + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    /// splitmix64: enough randomness for jitter, no dependency.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Waits until `stop` turns true, or its sender is gone.
pub(crate) async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    // The `Ref` that `wait_for` returns is not `Send`: drop it here.
    let _ = stop.wait_for(|s| *s).await;
}

/// A rustls client config for `tls`, with the ring provider chosen explicitly: the roots from
/// `ca_file` (PEM) or, without one, the system's; a client certificate and key if both are given.
pub(crate) fn tls_client_config(tls: &Tls) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    if tls.client_cert_file.is_some() != tls.client_key_file.is_some() {
        anyhow::bail!("TLS client authentication needs both a certificate and a key file");
    }
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let pem = crate::fsutil::read_capped(path, "CA file", crate::fsutil::caps::PEM)?;
            let mut found = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert
                    .with_context(|| format!("the CA file {} is not valid PEM", path.display()))?;
                roots.add(cert).with_context(|| {
                    format!(
                        "the CA file {} holds an unusable certificate",
                        path.display()
                    )
                })?;
                found += 1;
            }
            if found == 0 {
                anyhow::bail!(
                    "the CA file {} holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)",
                    path.display()
                );
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                anyhow::bail!(
                    "no trusted root certificates found on this system ({} errors); give a CA file",
                    native.errors.len()
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("the TLS provider supports no protocol version")?
        .with_root_certificates(roots);
    let config = match (&tls.client_cert_file, &tls.client_key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert_path), Some(key_path)) => {
            let pem = crate::fsutil::read_capped(
                cert_path,
                "client certificate",
                crate::fsutil::caps::PEM,
            )?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| {
                    format!(
                        "the client certificate {} is not valid PEM",
                        cert_path.display()
                    )
                })?;
            if certs.is_empty() {
                anyhow::bail!(
                    "the client certificate file {} holds no certificate",
                    cert_path.display()
                );
            }
            let pem = crate::fsutil::read_capped(key_path, "client key", crate::fsutil::caps::PEM)?;
            let key = PrivateKeyDer::from_pem_slice(&pem).with_context(|| {
                format!(
                    "the client key {} holds no PEM private key",
                    key_path.display()
                )
            })?;
            builder
                .with_client_auth_cert(certs, key)
                .context("the client certificate and key do not make a usable pair")?
        }
        _ => unreachable!("checked above"),
    };
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(initial_ms: u64, max_ms: u64) -> Backoff {
        Backoff {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn backoff_grows_then_caps_and_jitters_within_bounds() {
        let mut state = BackoffState::with_seed(backoff(100, 3_000), 7);
        let mut ceiling = Duration::from_millis(100);
        for _ in 0..20 {
            let d = state.next_delay();
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} not in [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            ceiling = (ceiling * 2).min(Duration::from_millis(3_000));
        }
        // Long after the cap, still capped.
        for _ in 0..100 {
            assert!(state.next_delay() <= Duration::from_millis(3_000));
        }
    }

    #[test]
    fn backoff_resets_after_success() {
        let mut state = BackoffState::with_seed(backoff(100, 60_000), 1);
        for _ in 0..10 {
            state.next_delay();
        }
        assert!(state.next_delay() >= Duration::from_millis(25_000));
        state.reset();
        assert!(state.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn backoff_jitter_spreads_delays() {
        let mut delays = std::collections::BTreeSet::new();
        for seed in 0..50 {
            let mut state = BackoffState::with_seed(backoff(1_000, 1_000), seed);
            delays.insert(state.next_delay());
        }
        assert!(
            delays.len() > 40,
            "jitter too coarse: {} distinct",
            delays.len()
        );
    }

    #[test]
    fn tls_needs_both_cert_and_key() {
        let tls = Tls {
            ca_file: None,
            client_cert_file: Some("/nonexistent/cert.pem".into()),
            client_key_file: None,
        };
        let err = tls_client_config(&tls).unwrap_err().to_string();
        assert!(err.contains("both a certificate and a key"), "{err}");
    }
}
