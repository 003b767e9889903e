//! Publishing a farm to a broker at its due times.
//!
//! The rumqttc event loop runs in a task of its own, never cancelled mid-poll (as in the
//! forwarder); after a connection error it waits (backoff with jitter) and polls again, which
//! reconnects. The clock starts at the first CONNACK.
//!
//! With QoS 1 nothing is lost: like the forwarder, the publisher keeps every message until its
//! PUBACK (matched by packet id, in the order rumqttc reports them going out), and after a
//! reconnect publishes again what was not acknowledged (rumqttc's own retransmissions are
//! dropped, as a clean session would lose them anyway). When the client's queue is full (the
//! broker is slow, or gone), the simulator waits, and catches up at full speed afterwards.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Farm, Kind};
use crate::mqtt::conn::{self, Event};
use crate::mqtt::{BackoffState, Endpoint};

/// When publishing stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// After this many messages (of every kind).
    Count(u64),
    /// With the first message due at or after this long from the start.
    Duration(Duration),
    /// Until stopped.
    Forever,
}

impl Limit {
    /// Whether a message due at `due` may go out after `sent` others.
    pub fn allows(&self, sent: u64, due: Duration) -> bool {
        match *self {
            Limit::Count(n) => sent < n,
            Limit::Duration(d) => due < d,
            Limit::Forever => true,
        }
    }
}

/// What the publisher did so far; read it from another task or thread.
#[derive(Debug, Default)]
pub struct PublishProgress {
    /// Messages handed to the MQTT client, of every kind.
    pub published: AtomicU64,
    pub normal: AtomicU64,
    pub resent: AtomicU64,
    pub late: AtomicU64,
    pub garbage: AtomicU64,
    /// Publishes that went out on the wire (resends by the client after a reconnect included).
    pub sent: AtomicU64,
    /// PUBACKs received (QoS 1).
    pub acked: AtomicU64,
    /// Connected to the broker now.
    pub connected: AtomicBool,
    /// Failed connection attempts and dropped connections.
    pub connection_errors: AtomicU64,
}

impl PublishProgress {
    fn count(&self, kind: Kind) {
        self.published.fetch_add(1, Relaxed);
        match kind {
            Kind::Normal => &self.normal,
            Kind::Resent => &self.resent,
            Kind::Late => &self.late,
            Kind::Garbage => &self.garbage,
        }
        .fetch_add(1, Relaxed);
    }
}

/// How long the end waits for the broker to acknowledge what was published.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

type Payload = (Arc<str>, Arc<[u8]>);

/// QoS 1 messages not yet acknowledged.
#[derive(Debug, Default)]
struct Inflight {
    /// Handed to the client, packet id not yet known, oldest first.
    requested: VecDeque<Payload>,
    /// Sent, awaiting a PUBACK.
    sent: HashMap<u16, Payload>,
    /// To publish again (the connection they went out on dropped).
    resend: VecDeque<Payload>,
}

impl Inflight {
    fn is_empty(&self) -> bool {
        self.requested.is_empty() && self.sent.is_empty() && self.resend.is_empty()
    }
}

#[derive(Debug, Default)]
struct Shared {
    inflight: Mutex<Inflight>,
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
}

impl Shared {
    fn inflight(&self) -> std::sync::MutexGuard<'_, Inflight> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Publishes `farm` to `endpoint` with `qos` (0 or 1; more is taken as 1), each message at its
/// due time (counted from the first connection), until `limit` or until `stop` turns true (or
/// its sender is dropped: keep it alive). At the end it waits (up to 10 s) for the broker to
/// acknowledge everything, then disconnects. Fails only on a bad endpoint.
pub async fn publish(
    farm: Farm,
    endpoint: &Endpoint,
    qos: u8,
    limit: Limit,
    progress: &PublishProgress,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let qos = qos.min(1);
    let (client, eventloop) = conn::connect(
        endpoint,
        conn::Options {
            max_incoming_packet_bytes: 64 * 1024,
            inflight: 1000,
            manual_acks: false,
            request_capacity: 1000,
            receive_maximum: None,
        },
    )
    .with_context(|| format!("cannot set up a client for {}", endpoint.address()))?;
    let shared = Arc::new(Shared::default());
    let (connected_tx, mut connected_rx) = watch::channel(false);
    let loop_task = tokio::spawn(event_loop(
        eventloop,
        endpoint.address(),
        BackoffState::new(endpoint.reconnect),
        shared.clone(),
        connected_tx,
        stop.clone(),
    ));

    // The clock starts at the first connection.
    tokio::select! {
        _ = connected_rx.wait_for(|c| *c) => {}
        _ = crate::mqtt::stopped(&mut stop) => {}
    }
    let sync = |progress: &PublishProgress| {
        progress.sent.store(shared.sent.load(Relaxed), Relaxed);
        progress.acked.store(shared.acked.load(Relaxed), Relaxed);
        progress
            .connection_errors
            .store(shared.errors.load(Relaxed), Relaxed);
        progress.connected.store(*connected_rx.borrow(), Relaxed);
    };
    // Hands a message to the client; false if its queue is full. With QoS 1 the message is
    // tracked (under the lock, so that the event loop sees requests in order).
    let try_publish = |topic: &Arc<str>, payload: &Arc<[u8]>| -> bool {
        if qos == 0 {
            return client.try_publish(topic, payload.to_vec(), 0, None).is_ok();
        }
        let mut inflight = shared.inflight();
        let ok = client.try_publish(topic, payload.to_vec(), 1, None).is_ok();
        if ok {
            inflight
                .requested
                .push_back((topic.clone(), payload.clone()));
        }
        ok
    };
    // Publishes again what a dropped connection lost, once connected; false if the client's
    // queue is full or the connection is down.
    let resend = || -> bool {
        if !*connected_rx.borrow() {
            return shared.inflight().resend.is_empty();
        }
        loop {
            let Some(m) = shared.inflight().resend.pop_front() else {
                return true;
            };
            if !try_publish(&m.0, &m.1) {
                shared.inflight().resend.push_front(m);
                return false;
            }
        }
    };

    sync(progress);
    let start = Instant::now();
    let mut published = 0u64;
    'messages: for m in farm {
        if *stop.borrow() || !limit.allows(published, m.due) {
            break;
        }
        let at = start + m.due;
        if at > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = crate::mqtt::stopped(&mut stop) => break,
            }
        } else if published.is_multiple_of(256) {
            // Catching up: let the event loop run.
            tokio::task::yield_now().await;
        }
        let (topic, payload): Payload = (m.topic.into(), m.payload.into());
        // The client's queue is full (the broker is slow or gone): wait.
        while !(resend() && try_publish(&topic, &payload)) {
            sync(progress);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                _ = crate::mqtt::stopped(&mut stop) => break 'messages,
            }
        }
        published += 1;
        progress.count(m.kind);
        if published.is_multiple_of(64) {
            sync(progress);
        }
    }

    // Wait for the broker to take everything, then disconnect.
    let deadline = Instant::now() + DRAIN_GRACE;
    loop {
        sync(progress);
        let done = if qos == 0 {
            shared.sent.load(Relaxed) >= published
        } else {
            resend();
            shared.inflight().is_empty()
        };
        if done || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = client.try_disconnect();
    if tokio::time::timeout(Duration::from_secs(2), loop_task)
        .await
        .is_err()
    {
        tracing::debug!("the MQTT event loop did not end after the disconnect");
    }
    sync(progress);
    progress.connected.store(false, Relaxed);
    Ok(())
}

async fn event_loop(
    mut eventloop: conn::EventLoop,
    address: String,
    mut backoff: BackoffState,
    shared: Arc<Shared>,
    connected: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::ConnAck { .. }) => {
                backoff.reset();
                tracing::info!(broker = %address, "connected");
                connected.send_replace(true);
            }
            Ok(Event::OutgoingPublish(pkid)) => {
                shared.sent.fetch_add(1, Relaxed);
                if pkid != 0 {
                    let mut inflight = shared.inflight();
                    if let Some(m) = inflight.requested.pop_front() {
                        inflight.sent.insert(pkid, m);
                    }
                }
            }
            Ok(Event::PubAck {
                pkid,
                accepted,
                reason,
            }) => {
                if !accepted {
                    tracing::warn!(broker = %address, %reason, "the broker refused a message");
                }
                if shared.inflight().sent.remove(&pkid).is_some() {
                    shared.acked.fetch_add(1, Relaxed);
                }
            }
            Ok(Event::OutgoingDisconnect) => return,
            Ok(_) => {}
            Err(error) => {
                connected.send_replace(false);
                shared.errors.fetch_add(1, Relaxed);
                {
                    // Forget rumqttc's copies of what was in flight or queued, and publish ours
                    // again after the reconnect.
                    let mut inflight = shared.inflight();
                    eventloop.after_error();
                    let Inflight {
                        requested,
                        sent,
                        resend,
                    } = &mut *inflight;
                    let mut lost: Vec<Payload> = sent.drain().map(|(_, m)| m).collect();
                    lost.extend(requested.drain(..));
                    resend.extend(lost);
                }
                let delay = backoff.next_delay();
                tracing::warn!(
                    broker = %address, %error, retry_in_ms = delay.as_millis() as u64,
                    "broker connection failed; retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = crate::mqtt::stopped(&mut stop) => return,
                }
            }
        }
    }
}
