//! The gateway's side of a fleet: its own connection to the upstream broker (client id
//! `<upstream client id>-fleet`; the forwarder's connection carries records only, its packet ids
//! are its bookkeeping), a retained status with a last will, and rollouts taken from its control
//! topic: verified, fetched, shadowed, then promoted or discarded.
//!
//! The network task only polls the connection; decisions are made on a thread of their own
//! (`weir-fleet`), because a change waits for the engine.

// The agent is a live edge: its deadlines (shadow, fetch, status) run on the wall clock.
#![allow(clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};

use super::{Manifest, Topics};
use crate::admin::Control;
use crate::config::Fleet;
use crate::mqtt::conn::{self, Client, Event};
use crate::mqtt::{BackoffState, Endpoint};

/// Refusals and failures kept in the status.
const ERRORS_KEPT: usize = 8;
/// The largest packet taken from the broker: a chunk and its topic, with room to spare.
const MAX_PACKET_BYTES: usize = super::CHUNK_BYTES + (64 << 10);

/// What the agent needs besides the engine.
pub struct Settings {
    pub fleet: Fleet,
    /// The upstream broker's endpoint (its client id gets `-fleet` appended).
    pub endpoint: Endpoint,
    /// `<data_dir>`: the agent keeps `fleet/state.json` there, and a fetched plugin while it
    /// starts.
    pub data_dir: PathBuf,
}

/// The running agent.
pub struct Agent {
    tx: Sender<Msg>,
    thread: Option<std::thread::JoinHandle<()>>,
    network: tokio::task::JoinHandle<()>,
}

enum Msg {
    Connected,
    Publish { topic: String, payload: Bytes },
    Stop,
}

/// Connects (in the background) and starts taking rollouts. Must be called inside a tokio
/// runtime.
pub fn spawn(settings: Settings, control: Arc<dyn Control>) -> anyhow::Result<Agent> {
    let topics = Topics::new(&settings.fleet.topic_prefix);
    let id = settings.fleet.id.clone();
    let mut endpoint = settings.endpoint.clone();
    endpoint.client_id = format!("{}-fleet", endpoint.client_id);
    endpoint.clean_session = true;
    let will = conn::Will {
        topic: topics.status(&id),
        payload: serde_json::to_vec(&json!({ "id": id, "online": false }))
            .expect("JSON serializes"),
    };
    let (client, eventloop) = conn::connect_with_will(
        &endpoint,
        conn::Options {
            max_incoming_packet_bytes: MAX_PACKET_BYTES,
            inflight: 16,
            manual_acks: false,
            request_capacity: 64,
            receive_maximum: None,
        },
        Some(will),
    )?;
    let (tx, rx) = channel();
    let network = tokio::spawn(network(
        eventloop,
        client.clone(),
        topics.rollout(&id),
        tx.clone(),
        endpoint.address(),
        BackoffState::new(endpoint.reconnect),
    ));
    let state_file = settings.data_dir.join("fleet").join("state.json");
    let saved = load_state(&state_file);
    let mut agent = AgentState {
        id,
        keys: settings.fleet.keys.clone(),
        topics,
        client,
        control,
        state_file,
        accepted_seq: saved.seq,
        rollout: saved.rollout,
        errors: VecDeque::new(),
        phase: Phase::Idle,
        status_interval: settings.fleet.status_interval,
        artifact_timeout: settings.fleet.artifact_timeout,
        next_status: Instant::now() + settings.fleet.status_interval,
        data_dir: settings.data_dir,
    };
    let thread = std::thread::Builder::new()
        .name("weir-fleet".into())
        .spawn(move || agent.run(&rx))?;
    Ok(Agent {
        tx,
        thread: Some(thread),
        network,
    })
}

impl Agent {
    /// Publishes the status as offline, disconnects, and waits for both to end (the network a
    /// second at most).
    pub async fn stop(mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        if tokio::time::timeout(Duration::from_secs(1), &mut self.network)
            .await
            .is_err()
        {
            self.network.abort();
        }
    }
}

async fn network(
    mut eventloop: conn::EventLoop,
    client: Client,
    rollout_topic: String,
    tx: Sender<Msg>,
    address: String,
    mut backoff: BackoffState,
) {
    let filters = [(rollout_topic, 1u8)];
    let mut need_subscribe = false;
    loop {
        if need_subscribe {
            need_subscribe = client.try_subscribe(&filters).is_err();
        }
        match eventloop.poll().await {
            Ok(Event::ConnAck { .. }) => {
                backoff.reset();
                tracing::info!(broker = %address, "fleet: connected");
                need_subscribe = true;
                if tx.send(Msg::Connected).is_err() {
                    return;
                }
            }
            Ok(Event::Publish(p)) => {
                let msg = Msg::Publish {
                    topic: p.topic(),
                    payload: p.payload(),
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
            Ok(Event::SubAck { refused }) if refused > 0 => {
                tracing::error!(broker = %address, filter = %filters[0].0, "fleet: the broker refused a subscription; rollouts cannot reach this gateway (check the broker's ACL)");
            }
            Ok(Event::OutgoingDisconnect) => return,
            Ok(_) => {}
            Err(error) => {
                eventloop.after_error();
                let delay = backoff.next_delay();
                tracing::warn!(broker = %address, %error, retry_in_ms = delay.as_millis() as u64, "fleet: connection failed; retrying");
                tokio::time::sleep(delay).await;
                need_subscribe = false;
            }
        }
    }
}

/// What `fleet/state.json` keeps: the last sequence number accepted, and how that rollout ended.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Saved {
    seq: u64,
    rollout: Option<Value>,
}

fn load_state(path: &Path) -> Saved {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(saved) => saved,
            Err(e) => {
                // Without it an older signed rollout could run again: say so loudly, keep the
                // file for a look, and go on (refusing every rollout forever would be worse).
                let aside = path.with_extension("json.unreadable");
                let _ = std::fs::rename(path, &aside);
                tracing::error!(file = %path.display(), error = %e, aside = %aside.display(), "fleet: the rollout state is unreadable; the last accepted sequence number is lost, so older signed rollouts would be taken again until a new one arrives");
                Saved::default()
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %crate::fsutil::describe_io(&e), "fleet: cannot read the rollout state");
            Saved::default()
        }
    }
}

/// Writes `saved` so that a crash leaves the old file or the new one.
fn save_state(path: &Path, saved: &Saved) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("state.json is in fleet/");
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec(saved).expect("JSON serializes"))?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

enum Phase {
    Idle,
    Fetching {
        manifest: Manifest,
        chunks: Vec<Option<Bytes>>,
        deadline: Instant,
    },
    Shadowing {
        manifest: Manifest,
        until: Instant,
    },
}

struct AgentState {
    id: String,
    keys: Vec<[u8; 32]>,
    topics: Topics,
    client: Client,
    control: Arc<dyn Control>,
    state_file: PathBuf,
    accepted_seq: u64,
    /// The last rollout accepted and where it stands.
    rollout: Option<Value>,
    errors: VecDeque<Value>,
    phase: Phase,
    status_interval: Duration,
    artifact_timeout: Duration,
    next_status: Instant,
    data_dir: PathBuf,
}

impl AgentState {
    fn run(&mut self, rx: &Receiver<Msg>) {
        loop {
            let now = Instant::now();
            let wake = match &self.phase {
                Phase::Idle => self.next_status,
                Phase::Fetching { deadline, .. } => (*deadline).min(self.next_status),
                Phase::Shadowing { until, .. } => (*until).min(self.next_status),
            };
            match rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(Msg::Connected) => {
                    if let Phase::Fetching { manifest, .. } = &self.phase {
                        let filter = self.topics.chunks(&manifest.sha256);
                        let _ = self.client.try_subscribe(&[(filter, 1)]);
                    }
                    self.publish_status();
                }
                Ok(Msg::Publish { topic, payload }) => {
                    if topic == self.topics.rollout(&self.id) {
                        self.on_rollout(&payload);
                    } else {
                        self.on_chunk(&topic, payload);
                    }
                }
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.on_time();
        }
        // Stopping: a candidate in the shadow is not kept (the shadow ends with the process).
        if let Phase::Shadowing { manifest, .. } | Phase::Fetching { manifest, .. } =
            std::mem::replace(&mut self.phase, Phase::Idle)
        {
            tracing::warn!(
                seq = manifest.seq,
                "fleet: rollout interrupted by the shutdown"
            );
            self.record_rollout(manifest, "interrupted", "weir stopped before the rollout ended; publish it again with a new sequence number");
        }
        // The engine has stopped: the last status says only this.
        self.publish(&json!({
            "id": self.id,
            "online": false,
            "at_ms": crate::engine::now_ms(),
            "accepted_seq": self.accepted_seq,
            "rollout": self.rollout,
            "errors": self.errors,
        }));
        let _ = self.client.try_disconnect();
    }

    fn on_time(&mut self) {
        let now = Instant::now();
        match &self.phase {
            Phase::Fetching {
                manifest,
                deadline,
                chunks,
            } if now >= *deadline => {
                let have = chunks.iter().filter(|c| c.is_some()).count();
                let manifest = manifest.clone();
                let detail = format!(
                    "the plugin did not arrive within [fleet] artifact_timeout ({} of {} chunks on {}); publish it again",
                    have,
                    manifest.chunks,
                    self.topics.chunks(&manifest.sha256)
                );
                self.end_fetch(&manifest);
                self.refuse(Some(&manifest), &detail);
            }
            Phase::Shadowing { until, .. } if now >= *until => {
                let Phase::Shadowing { manifest, .. } =
                    std::mem::replace(&mut self.phase, Phase::Idle)
                else {
                    unreachable!()
                };
                self.decide(manifest);
            }
            _ => {}
        }
        if now >= self.next_status {
            self.publish_status();
        }
    }

    /// A message on the control topic.
    fn on_rollout(&mut self, payload: &[u8]) {
        if payload.is_empty() {
            // A cleared retained message.
            return;
        }
        let manifest = match super::open(payload, &self.keys) {
            Ok(m) => m,
            Err(refusal) => {
                // The number it claims, unverified: only to name it in the status.
                let claimed = serde_json::from_slice::<super::Envelope>(payload)
                    .ok()
                    .and_then(|e| serde_json::from_str::<Value>(&e.manifest).ok())
                    .and_then(|m| m["seq"].as_u64());
                self.push_error(claimed, &refusal.to_string());
                self.publish_status();
                return;
            }
        };
        if manifest.seq == self.accepted_seq {
            // The retained copy of the rollout already taken, again (after a reconnect).
            return;
        }
        if manifest.seq < self.accepted_seq {
            let detail = format!(
                "replayed: sequence number {} is older than {}, the last accepted; a new rollout needs a higher one",
                manifest.seq, self.accepted_seq
            );
            self.refuse(Some(&manifest), &detail);
            return;
        }
        if !manifest.gateways.iter().any(|g| g == &self.id) {
            let detail = format!(
                "signed for gateways {:?}, not for {:?}",
                manifest.gateways, self.id
            );
            self.refuse(Some(&manifest), &detail);
            return;
        }
        // Accepted: its number is spent, whatever happens next.
        self.accepted_seq = manifest.seq;
        self.abandon_current(manifest.seq);
        if let Err(detail) = self.check_step(&manifest) {
            self.refuse(Some(&manifest), &detail);
            return;
        }
        tracing::info!(seq = manifest.seq, pipeline = %manifest.pipeline, step = %manifest.step, sha256 = %manifest.sha256, "fleet: rollout accepted; fetching the plugin");
        let filter = self.topics.chunks(&manifest.sha256);
        let _ = self.client.try_subscribe(&[(filter, 1)]);
        self.phase = Phase::Fetching {
            chunks: vec![None; manifest.chunks as usize],
            deadline: Instant::now() + self.artifact_timeout,
            manifest: manifest.clone(),
        };
        self.set_rollout(manifest, "fetching", "");
    }

    /// A newer rollout replaces one still under way.
    fn abandon_current(&mut self, newer: u64) {
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Idle => {}
            Phase::Fetching { manifest, .. } => {
                self.end_fetch(&manifest);
                self.set_rollout(
                    manifest,
                    "superseded",
                    &format!("rollout {newer} arrived before it ended"),
                );
            }
            Phase::Shadowing { manifest, .. } => {
                let _ = self.control.discard(&manifest.pipeline, &manifest.step);
                self.set_rollout(
                    manifest,
                    "superseded",
                    &format!(
                        "rollout {newer} arrived before it ended; its candidate was discarded"
                    ),
                );
            }
        }
    }

    /// The step exists and runs a plugin of the manifest's kind; the manifest is sane.
    fn check_step(&self, m: &Manifest) -> Result<(), String> {
        if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "sha256 {:?} is not 64 hex digits",
                crate::fsutil::elide(&m.sha256, 80)
            ));
        }
        let expected_chunks = m.size.div_ceil(super::CHUNK_BYTES as u64);
        if m.size == 0
            || m.size > crate::fsutil::caps::PLUGIN
            || u64::from(m.chunks) != expected_chunks
        {
            return Err(format!(
                "a plugin of {} bytes in {} chunks is not possible (chunks of {} bytes, at most {} bytes)",
                m.size,
                m.chunks,
                super::CHUNK_BYTES,
                crate::fsutil::caps::PLUGIN
            ));
        }
        let full = format!("{}/{}", m.pipeline, m.step);
        let plugins = self.control.plugins();
        let Some(step) = plugins.as_array().into_iter().flatten().find(|p| {
            p["pipeline"] == m.pipeline.as_str()
                && (p["step"] == full.as_str() || p["step"] == m.step.as_str())
        }) else {
            return Err(format!("this gateway has no plugin step {full}"));
        };
        let world = step["world"].as_str().unwrap_or_default();
        if world != m.world {
            return Err(format!(
                "wrong world: the manifest names a {} plugin, and step {full} runs a {world}",
                m.world
            ));
        }
        Ok(())
    }

    fn on_chunk(&mut self, topic: &str, payload: Bytes) {
        let Phase::Fetching {
            manifest, chunks, ..
        } = &mut self.phase
        else {
            return;
        };
        let Some(index) = self.topics.chunk_index(topic, &manifest.sha256) else {
            return;
        };
        let Some(slot) = chunks.get_mut(index as usize) else {
            return;
        };
        *slot = Some(payload);
        if chunks.iter().any(Option::is_none) {
            return;
        }
        let manifest = manifest.clone();
        let bytes: Vec<u8> = chunks
            .iter()
            .flatten()
            .flat_map(|c| c.iter().copied())
            .collect();
        self.end_fetch(&manifest);
        self.phase = Phase::Idle;
        let actual = crate::runtime::sha256_hex(&bytes);
        if bytes.len() as u64 != manifest.size || actual != manifest.sha256.to_ascii_lowercase() {
            let detail = format!(
                "the plugin fetched ({} bytes, sha256 {actual}) is not the one signed for ({} bytes, sha256 {}); publish it again",
                bytes.len(),
                manifest.size,
                manifest.sha256
            );
            self.refuse(Some(&manifest), &detail);
            return;
        }
        self.start_shadow(manifest, &bytes);
    }

    fn end_fetch(&mut self, manifest: &Manifest) {
        let _ = self
            .client
            .try_unsubscribe(&self.topics.chunks(&manifest.sha256));
        self.phase = Phase::Idle;
    }

    /// Starts the fetched plugin in the step's shadow (the engine loads it and checks its world,
    /// contract and config, as for any swap).
    fn start_shadow(&mut self, manifest: Manifest, bytes: &[u8]) {
        let dir = self.data_dir.join("fleet");
        let path = dir.join(format!("{}.wasm", manifest.sha256));
        let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, bytes));
        if let Err(e) = written {
            let detail = format!(
                "cannot write the plugin to {}: {}",
                path.display(),
                crate::fsutil::describe_io(&e)
            );
            self.refuse(Some(&manifest), &detail);
            return;
        }
        let started = self.control.shadow(
            &manifest.pipeline,
            &manifest.step,
            &path,
            Some(&manifest.sha256),
        );
        // The engine keeps its own copy (for a restart after the promotion).
        let _ = std::fs::remove_file(&path);
        match started {
            Ok(_) => {
                tracing::info!(
                    seq = manifest.seq,
                    shadow_ms = manifest.policy.shadow_ms,
                    "fleet: candidate running in the shadow"
                );
                self.phase = Phase::Shadowing {
                    until: Instant::now() + Duration::from_millis(manifest.policy.shadow_ms),
                    manifest: manifest.clone(),
                };
                self.set_rollout(manifest, "shadowing", "");
            }
            Err(e) => self.refuse(Some(&manifest), &e.to_string()),
        }
    }

    /// The shadow ran its time: promote or discard.
    fn decide(&mut self, manifest: Manifest) {
        let full = format!("{}/{}", manifest.pipeline, manifest.step);
        let report = self.control.shadows().ok().and_then(|all| {
            all.as_array()?
                .iter()
                .find(|r| {
                    r["step"] == full.as_str() && r["candidate_sha256"] == manifest.sha256.as_str()
                })
                .cloned()
        });
        let Some(report) = report else {
            self.set_rollout(manifest, "rolled_back", "the candidate left the shadow before the end (swapped or discarded through the admin API)");
            self.publish_status();
            return;
        };
        let verdict = judge(&manifest.policy, &report["candidate"]);
        let (state, detail) = match verdict {
            Ok(summary) => match self.control.promote(&manifest.pipeline, &manifest.step) {
                Ok(_) => ("promoted", summary),
                Err(e) => {
                    let _ = self.control.discard(&manifest.pipeline, &manifest.step);
                    (
                        "rolled_back",
                        format!("{summary}, but the promotion failed: {e}"),
                    )
                }
            },
            Err(reason) => {
                let _ = self.control.discard(&manifest.pipeline, &manifest.step);
                ("rolled_back", reason)
            }
        };
        tracing::info!(seq = manifest.seq, state, detail = %detail, "fleet: rollout ended");
        self.set_rollout(manifest, state, &detail);
    }

    /// Reports a refusal: in the log, in the status's errors, and as the rollout's end when it
    /// was accepted.
    fn refuse(&mut self, manifest: Option<&Manifest>, detail: &str) {
        self.push_error(manifest.map(|m| m.seq), detail);
        match manifest {
            Some(m) if m.seq == self.accepted_seq => self.set_rollout(m.clone(), "refused", detail),
            _ => self.publish_status(),
        }
    }

    fn push_error(&mut self, seq: Option<u64>, detail: &str) {
        tracing::warn!(seq, detail, "fleet: rollout refused");
        if self.errors.len() == ERRORS_KEPT {
            self.errors.pop_front();
        }
        self.errors.push_back(json!({
            "at_ms": crate::engine::now_ms(),
            "seq": seq,
            "error": detail,
        }));
    }

    /// Records where the accepted rollout stands, durably, and publishes the status.
    fn set_rollout(&mut self, m: Manifest, state: &str, detail: &str) {
        self.record_rollout(m, state, detail);
        self.publish_status();
    }

    /// Records where the accepted rollout stands, durably.
    fn record_rollout(&mut self, m: Manifest, state: &str, detail: &str) {
        self.rollout = Some(json!({
            "seq": m.seq,
            "pipeline": m.pipeline,
            "step": m.step,
            "sha256": m.sha256,
            "state": state,
            "detail": detail,
            "at_ms": crate::engine::now_ms(),
        }));
        let saved = Saved {
            seq: self.accepted_seq,
            rollout: self.rollout.clone(),
        };
        if let Err(e) = save_state(&self.state_file, &saved) {
            tracing::error!(file = %self.state_file.display(), error = %crate::fsutil::describe_io(&e), "fleet: cannot save the rollout state; after a restart this rollout could be taken again");
        }
    }

    fn status(&self) -> Value {
        let status = self.control.status();
        let plugins: Vec<Value> = self
            .control
            .plugins()
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                json!({
                    "pipeline": p["pipeline"],
                    "step": p["step"],
                    "sha256": p["sha256"],
                    "world": p["world"],
                    "contract": p["version"],
                    "errors": p["errors"],
                    "quarantined_until_ms": p["quarantined_until_ms"],
                    "previous_sha256": p["previous_sha256"],
                })
            })
            .collect();
        json!({
            "id": self.id,
            "online": true,
            "weir": env!("CARGO_PKG_VERSION"),
            "contracts": crate::runtime::SUPPORTED_VERSIONS,
            "at_ms": crate::engine::now_ms(),
            "plugins": plugins,
            "uplink": status["uplink"],
            "outbox": status["outbox"],
            "store": status["store"],
            "accepted_seq": self.accepted_seq,
            "rollout": self.rollout,
            "errors": self.errors,
        })
    }

    fn publish_status(&mut self) {
        let status = self.status();
        self.publish(&status);
        self.next_status = Instant::now() + self.status_interval;
    }

    fn publish(&self, status: &Value) {
        let payload = serde_json::to_vec(status).expect("JSON serializes");
        if self
            .client
            .try_publish_retained(&self.topics.status(&self.id), payload, 1)
            .is_err()
        {
            tracing::debug!("fleet: status not queued (the connection's queue is full)");
        }
    }
}

/// Whether the candidate's side of a shadow report (`events_in`, `dead_letters`, `errors`) meets
/// `policy`: Ok with a summary, or Err with why not.
pub fn judge(policy: &super::Policy, candidate: &Value) -> Result<String, String> {
    let events = candidate["events_in"].as_u64().unwrap_or(0);
    let dead = candidate["dead_letters"].as_u64().unwrap_or(0);
    let errors = candidate["errors"].as_u64().unwrap_or(0);
    if events < policy.min_events.max(1) {
        return Err(format!(
            "the candidate saw {events} events in the shadow, fewer than the {} the policy needs to judge it; roll out again with a longer shadow",
            policy.min_events.max(1)
        ));
    }
    let dead_rate = dead as f64 / events as f64;
    let error_rate = errors as f64 / events as f64;
    let summary = format!(
        "{events} events in the shadow, {dead} dead letters (rate {dead_rate:.4}), {errors} errors (rate {error_rate:.4})"
    );
    if error_rate > policy.max_error_rate {
        return Err(format!(
            "{summary}: error rate above the policy's {}",
            policy.max_error_rate
        ));
    }
    if dead_rate > policy.max_dead_letter_rate {
        return Err(format!(
            "{summary}: dead-letter rate above the policy's {}",
            policy.max_dead_letter_rate
        ));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> super::super::Policy {
        super::super::Policy {
            shadow_ms: 1,
            max_dead_letter_rate: 0.1,
            max_error_rate: 0.0,
            min_events: 10,
        }
    }

    #[test]
    fn the_policy_promotes_within_its_bounds_only() {
        let side = |events: u64, dead: u64, errors: u64| json!({ "events_in": events, "dead_letters": dead, "errors": errors });
        assert!(judge(&policy(), &side(100, 10, 0)).is_ok());
        let e = judge(&policy(), &side(100, 11, 0)).unwrap_err();
        assert!(e.contains("dead-letter rate"), "{e}");
        let e = judge(&policy(), &side(100, 1, 1)).unwrap_err();
        assert!(e.contains("error rate"), "{e}");
        let e = judge(&policy(), &side(9, 0, 0)).unwrap_err();
        assert!(e.contains("fewer than the 10"), "{e}");
    }

    #[test]
    fn the_state_file_round_trips_and_an_unreadable_one_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet").join("state.json");
        assert_eq!(load_state(&path).seq, 0);
        save_state(
            &path,
            &Saved {
                seq: 42,
                rollout: Some(json!({"state": "promoted"})),
            },
        )
        .unwrap();
        assert_eq!(load_state(&path).seq, 42);
        std::fs::write(&path, b"{ not json").unwrap();
        assert_eq!(load_state(&path).seq, 0);
        assert!(path.with_extension("json.unreadable").exists());
    }
}
