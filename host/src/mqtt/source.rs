//! The subscriber to the sensors' broker: receives messages with manual acks and hands them on
//! through a bounded channel; the caller acks them (through an [`Acker`]) only after the input
//! log committed them.
//!
//! - The rumqttc event loop runs in a task of its own, polled continuously and never cancelled
//!   mid-poll; it never awaits a client call.
//! - When weir falls behind, the bounded channel fills and the task stops reading: with acks
//!   withheld, the broker holds the rest (within its own queue limits: Mosquitto's default
//!   `max_queued_messages 1000` drops QoS 1 messages silently — raise it).
//! - On every CONNACK the task subscribes to all filters again, even when the broker reports a
//!   resumed session: resubscribing is harmless, and trusting `session_present` would lose the
//!   subscriptions of a session the broker forgot.
//! - On an error: counted, logged at WARN with the broker's address, then an exponential backoff
//!   with jitter (reset after a CONNACK) before the next poll reconnects.
//! - Acks never wait for the event loop: what its request channel cannot take waits in a
//!   backlog the task moves on before each poll (waiting would deadlock when the task is itself
//!   waiting to hand over a message).
//! - Acks belong to one connection: a token received before a disconnect is dropped, not sent on
//!   the next connection (the broker may have given its packet id to another message there). The
//!   broker redelivers that message; the ingest dedup drops the repeat.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::conn::{self, Client, Event, Received};
use super::{BackoffState, Endpoint};

/// A message from the sensors' broker, to be acked once committed.
#[derive(Debug)]
pub struct Incoming {
    pub topic: String,
    pub payload: bytes::Bytes,
    pub ack: AckToken,
}

/// What a manual ack needs: the received PUBLISH and the connection it came on (QoS 0: nothing
/// to ack).
#[derive(Debug)]
pub struct AckToken(Option<(u64, Received)>);

impl AckToken {
    /// A token with nothing to ack (for messages that did not come from a broker, and tests).
    pub fn none() -> AckToken {
        AckToken(None)
    }
}

/// Counters for one source.
#[derive(Debug, Default)]
pub struct SourceMetrics {
    /// Messages received and handed on.
    pub received: AtomicU64,
    /// Successful connections after the first.
    pub reconnects: AtomicU64,
    /// Failed connection attempts and dropped connections.
    pub connection_errors: AtomicU64,
    /// Acks handed to the client.
    pub acked: AtomicU64,
    /// Acks the client wrote to the connection.
    pub acks_sent: AtomicU64,
    /// Acks committed but waiting for room in the client's request channel.
    pub acks_backlog: AtomicU64,
    /// Acks dropped because their connection had gone (the broker redelivers those messages).
    pub acks_dropped_stale: AtomicU64,
    /// SUBACKs without a refusal: the subscription is in place.
    pub subscribed: AtomicU64,
    /// Topic filters the broker refused in a SUBACK.
    pub subscriptions_refused: AtomicU64,
}

/// The connection generation and the acks waiting for room in the client's request channel,
/// behind one lock, held both while an ack is checked and queued and while a connection is
/// declared over: an ack is either queued before the old connection's requests are purged, or
/// sees the new generation and is dropped.
#[derive(Debug, Default)]
struct AckState {
    generation: u64,
    /// Acks of the current connection, in the order their messages arrived (MQTT wants acks in
    /// order), that the request channel did not take yet.
    backlog: VecDeque<Received>,
}

#[derive(Debug, Default)]
struct Acks(Mutex<AckState>);

impl Acks {
    fn lock(&self) -> std::sync::MutexGuard<'_, AckState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current(&self) -> u64 {
        self.lock().generation
    }

    /// A connection is over: its acks are dropped (the broker redelivers their messages).
    fn bump(&self, metrics: &SourceMetrics) {
        let mut state = self.lock();
        state.generation += 1;
        let dropped = std::mem::take(&mut state.backlog).len() as u64;
        metrics
            .acks_dropped_stale
            .fetch_add(dropped, Ordering::Relaxed);
        metrics.acks_backlog.store(0, Ordering::Relaxed);
    }

    /// Moves backlogged acks into the client's request channel until it is full.
    fn flush(state: &mut AckState, client: &Client, metrics: &SourceMetrics) {
        while let Some(publish) = state.backlog.front() {
            if client.try_ack(publish).is_err() {
                break;
            }
            state.backlog.pop_front();
            metrics.acked.fetch_add(1, Ordering::Relaxed);
        }
        metrics
            .acks_backlog
            .store(state.backlog.len() as u64, Ordering::Relaxed);
    }
}

/// Acks committed messages. Cheap to clone; usable from any thread, and never blocks.
#[derive(Clone)]
pub struct Acker {
    client: Client,
    acks: Arc<Acks>,
    closed: Arc<AtomicBool>,
    metrics: Arc<SourceMetrics>,
}

impl std::fmt::Debug for Acker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acker").finish_non_exhaustive()
    }
}

/// A backlog of acks this long is worth a warning (at most one per [`BACKLOG_WARN_EVERY`]).
const BACKLOG_WARN: usize = 10_000;
const BACKLOG_WARN_EVERY: Duration = Duration::from_secs(10);

impl Acker {
    /// Acks every token, in order. What the client's request channel cannot take now waits in a
    /// backlog that the source task moves on as the event loop drains the channel: the caller
    /// never waits for the event loop. (Waiting would deadlock: the event loop is driven by the
    /// task that may itself be waiting to hand the caller the next message.) Tokens of a
    /// connection that has since dropped are discarded (counted in `acks_dropped_stale`), and so
    /// is everything once the source has stopped.
    pub fn ack(&self, tokens: Vec<AckToken>) {
        if self.closed.load(Ordering::Acquire) {
            let left = tokens.iter().filter(|t| t.0.is_some()).count() as u64;
            self.metrics
                .acks_dropped_stale
                .fetch_add(left, Ordering::Relaxed);
            return;
        }
        let mut state = self.acks.lock();
        for token in tokens {
            let Some((token_generation, publish)) = token.0 else {
                continue;
            };
            if !publish.needs_ack() {
                continue;
            }
            if token_generation != state.generation {
                self.metrics
                    .acks_dropped_stale
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            state.backlog.push_back(publish);
        }
        Acks::flush(&mut state, &self.client, &self.metrics);
    }
}

/// A running subscription.
pub struct Source {
    client: Client,
    acks: Arc<Acks>,
    closed: Arc<AtomicBool>,
    metrics: Arc<SourceMetrics>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").finish_non_exhaustive()
    }
}

/// The request channel between the client and the event loop. Acks that find it full wait in
/// the [`Acker`]'s backlog, so its size only trades memory for how often the source task moves
/// acks on.
pub const REQUEST_CAPACITY: usize = 8192;

/// MQTT 5 Receive Maximum: the broker should send at most this many messages before weir
/// acknowledged them. rumqttc's event loop writes one request (an ack) per turn, while one
/// network read brings up to ten messages, so a broker that ignores this bound (Mosquitto 2.0.11
/// was measured sending 69 000 unacknowledged messages in a burst) makes acks fall behind: they
/// wait in the [`Acker`]'s backlog (a few dozen bytes each, without the payload) and go out as
/// the burst ends. MQTT 3.1.1 has no such setting: there the broker's own limit applies
/// (Mosquitto's `max_inflight_messages`, 20 by default).
pub const RECEIVE_MAXIMUM: u16 = 4096;

/// Sets the `closed` flag when the task ends, however it ends.
struct ClosedOnDrop(Arc<AtomicBool>);

impl Drop for ClosedOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Source {
    /// Connects (in the background) and subscribes to `filters` (each with its QoS 0/1/2), with
    /// manual acks. Must be called inside a tokio runtime. Fails only on a bad endpoint (TLS
    /// files, say); connection problems are retried forever and show in the metrics and the log.
    ///
    /// Every packet MQTT can carry is accepted, over MQTT 3.1.1 and 5 alike: a message over
    /// `[source] max_message_bytes` must arrive to become a dead letter (counted, its first KiB
    /// kept) and be acknowledged. A smaller limit here would make the client drop the connection
    /// on it (MQTT 3.1.1: the broker sends it again on every reconnect, forever) or, over MQTT 5,
    /// make the broker discard it unseen and uncounted.
    pub fn start(
        endpoint: &Endpoint,
        filters: Vec<(String, u8)>,
        tx: mpsc::Sender<Incoming>,
        metrics: Arc<SourceMetrics>,
    ) -> anyhow::Result<Source> {
        for (filter, qos) in &filters {
            if *qos > 2 {
                anyhow::bail!("topic filter {filter:?}: QoS {qos} is not 0, 1 or 2");
            }
            if filter.is_empty() || !rumqttc::valid_filter(filter) {
                anyhow::bail!("{filter:?} is not a valid MQTT topic filter");
            }
        }
        let (client, eventloop) = conn::connect(
            endpoint,
            conn::Options {
                max_incoming_packet_bytes: conn::MQTT_MAX_PACKET_BYTES,
                inflight: 100,
                manual_acks: true,
                request_capacity: REQUEST_CAPACITY,
                receive_maximum: Some(RECEIVE_MAXIMUM),
            },
        )?;
        let acks = Arc::new(Acks::default());
        let closed = Arc::new(AtomicBool::new(false));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(
            RunState {
                address: endpoint.address(),
                client: client.clone(),
                filters,
                tx,
                metrics: metrics.clone(),
                acks: acks.clone(),
                backoff: BackoffState::new(endpoint.reconnect),
                _closed: ClosedOnDrop(closed.clone()),
            },
            eventloop,
            stop_rx,
        ));
        Ok(Source {
            client,
            acks,
            closed,
            metrics,
            stop,
            task,
        })
    }

    /// A handle to ack committed messages with.
    pub fn acker(&self) -> Acker {
        Acker {
            client: self.client.clone(),
            acks: self.acks.clone(),
            closed: self.closed.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// Disconnects cleanly and ends the task (giving up after 2 s: then the task is aborted).
    /// Messages not yet acked are redelivered by the broker to the next session.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut task = self.task;
        // Queue a DISCONNECT; the task also stops on its own if it is between connections.
        while self.client.try_disconnect().is_err()
            && !task.is_finished()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            tracing::debug!("source task did not stop in time; aborted");
            task.abort();
        }
    }
}

struct RunState {
    address: String,
    client: Client,
    filters: Vec<(String, u8)>,
    tx: mpsc::Sender<Incoming>,
    metrics: Arc<SourceMetrics>,
    acks: Arc<Acks>,
    backoff: BackoffState,
    _closed: ClosedOnDrop,
}

impl RunState {
    /// Moves backlogged acks into the request channel (the last poll may have made room), and
    /// warns when the backlog grows: the broker then sends faster than acks leave, which a
    /// broker that honours the Receive Maximum does not do.
    fn flush_acks(&self, warned: &mut Option<std::time::Instant>) {
        let mut state = self.acks.lock();
        if state.backlog.is_empty() {
            return;
        }
        Acks::flush(&mut state, &self.client, &self.metrics);
        let backlog = state.backlog.len();
        drop(state);
        if backlog >= BACKLOG_WARN && warned.is_none_or(|at| at.elapsed() >= BACKLOG_WARN_EVERY) {
            *warned = Some(std::time::Instant::now());
            let received = self.metrics.received.load(Ordering::Relaxed);
            let sent = self.metrics.acks_sent.load(Ordering::Relaxed);
            tracing::warn!(
                broker = %self.address,
                backlog,
                unacked_at_broker = received.saturating_sub(sent),
                "acks fall behind: the source broker sends more unacknowledged messages than \
                 weir's Receive Maximum ({RECEIVE_MAXIMUM}) allows; they are sent as the \
                 connection allows (with MQTT 3.1.1, bound the broker's in-flight window, \
                 e.g. Mosquitto's max_inflight_messages)"
            );
        }
    }
}

async fn run(mut s: RunState, mut eventloop: conn::EventLoop, mut stop: watch::Receiver<bool>) {
    let mut connected_before = false;
    let mut need_subscribe = false;
    let mut backlog_warned: Option<std::time::Instant> = None;
    loop {
        s.flush_acks(&mut backlog_warned);
        if need_subscribe {
            // Non-blocking: if the channel is full, try again after the next poll drained it.
            need_subscribe = s.client.try_subscribe(&s.filters).is_err();
        }
        match eventloop.poll().await {
            Ok(Event::ConnAck {
                session_present, ..
            }) => {
                if connected_before {
                    s.metrics.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                connected_before = true;
                s.backoff.reset();
                tracing::info!(broker = %s.address, session_present, "connected to the source broker");
                need_subscribe = !s.filters.is_empty();
            }
            Ok(Event::Publish(publish)) => {
                s.metrics.received.fetch_add(1, Ordering::Relaxed);
                let incoming = Incoming {
                    topic: publish.topic(),
                    payload: publish.payload(),
                    ack: AckToken(Some((s.acks.current(), publish.ack_only()))),
                };
                // Waiting here is the backpressure: the broker holds what we do not read.
                tokio::select! {
                    sent = s.tx.send(incoming) => if sent.is_err() {
                        tracing::debug!("source receiver gone; stopping");
                        break;
                    },
                    _ = super::stopped(&mut stop) => break,
                }
            }
            Ok(Event::OutgoingAck) => {
                s.metrics.acks_sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::SubAck { refused }) if refused > 0 => {
                s.metrics
                    .subscriptions_refused
                    .fetch_add(refused as u64, Ordering::Relaxed);
                tracing::error!(
                    broker = %s.address, refused, filters = ?s.filters,
                    "the source broker refused topic filters; nothing arrives on them (check its ACLs)"
                );
            }
            Ok(Event::SubAck { .. }) => {
                s.metrics.subscribed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(broker = %s.address, filters = ?s.filters, "subscribed");
            }
            Ok(Event::OutgoingDisconnect) => break,
            Ok(_) => {}
            Err(error) => {
                s.metrics.connection_errors.fetch_add(1, Ordering::Relaxed);
                // Acks of the old connection: drop any that race in from now on, and purge those
                // already queued.
                s.acks.bump(&s.metrics);
                eventloop.after_error();
                if *stop.borrow() {
                    break;
                }
                let delay = s.backoff.next_delay();
                tracing::warn!(
                    broker = %s.address, %error, retry_in_ms = delay.as_millis() as u64,
                    "source broker connection failed; retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = super::stopped(&mut stop) => break,
                }
                need_subscribe = false;
            }
        }
    }
    s.acks.bump(&s.metrics);
}
