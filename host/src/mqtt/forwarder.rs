//! The forwarder: drains the outbox to the upstream broker with QoS 1, in outbox order, and
//! deletes an entry only after the broker's PUBACK for it.
//!
//! - At most `max_inflight` publishes are unacknowledged (never more than 65 535: MQTT packet
//!   ids are 16-bit, and clients that queue past that overwrite messages silently).
//! - PUBACKs are matched to outbox seqs by order: rumqttc reports `Outgoing::Publish(pkid)` in
//!   the order publishes were requested, so a FIFO of requested seqs maps each packet id to its
//!   seq ([`InflightTracker`]).
//! - Deletes are batched (one fsync each): every `linger`, or every [`DELETE_BATCH`] acks.
//! - On a dropped connection everything in flight is forgotten (a clean session loses in-flight
//!   QoS 1 publishes, and a resumed one would make rumqttc's retransmissions indistinguishable
//!   from ours); after the reconnect the forwarder resends from the oldest entry still in the
//!   outbox. Duplicates are possible, losses are not: every record carries its id (as the MQTT 5
//!   user property `id_property`, and in the payload).
//! - After a connect the backlog drains at once, at most `drain_rate_per_s` publishes per second
//!   if set; with the outbox empty the forwarder waits for `wake` (or polls every second).
//! - A PUBACK with an MQTT 5 failure reason (not authorized, quota exceeded...) does not delete
//!   the entry: it is counted in `rejected`, logged at ERROR, and sent again after the next
//!   reconnect.
//! - The rumqttc event loop runs in its own task, never cancelled mid-poll. After an error it
//!   waits until the control task has forgotten the old connection's publishes, then purges its
//!   request channel, so a publish of the old connection can never be matched to a seq of the
//!   new one.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::conn::{self, Client, Event};
use super::{BackoffState, Endpoint};

pub use crate::store::OutboxRecord;

/// The durable queue the forwarder drains. Blocking calls: the forwarder makes them through
/// `spawn_blocking`.
pub trait Outbox: Send + Sync + 'static {
    /// Up to `max` entries with seq greater than `after` (all if `None`), by ascending seq.
    fn read(&self, after: Option<u64>, max: usize) -> anyhow::Result<Vec<(u64, OutboxRecord)>>;
    /// Deletes these entries (acknowledged upstream). One durable commit per call.
    fn delete(&self, seqs: &[u64]) -> anyhow::Result<()>;
    /// Entries in the outbox.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The store's outbox, drained by the forwarder.
impl Outbox for crate::store::Store {
    fn read(&self, after: Option<u64>, max: usize) -> anyhow::Result<Vec<(u64, OutboxRecord)>> {
        Ok(self.read_outbox(after, max)?)
    }

    fn delete(&self, seqs: &[u64]) -> anyhow::Result<()> {
        self.delete_outbox(seqs)?;
        Ok(())
    }

    fn len(&self) -> u64 {
        self.outbox_len()
    }
}

/// An outbox that is always empty: for running without a store (volatile records only).
#[derive(Clone, Copy, Debug, Default)]
pub struct EmptyOutbox;

impl Outbox for EmptyOutbox {
    fn read(&self, _after: Option<u64>, _max: usize) -> anyhow::Result<Vec<(u64, OutboxRecord)>> {
        Ok(Vec::new())
    }

    fn delete(&self, _seqs: &[u64]) -> anyhow::Result<()> {
        Ok(())
    }

    fn len(&self) -> u64 {
        0
    }
}

/// How the forwarder behaves.
#[derive(Clone, Debug)]
pub struct ForwarderSettings {
    /// Unacknowledged publishes at most, 1..=65535.
    pub max_inflight: u16,
    /// Publishes per second at most (a token bucket holding one second's worth); `None`: as fast
    /// as the broker acks.
    pub drain_rate_per_s: Option<u32>,
    /// The MQTT 5 user property carrying each record's id, e.g. `weir-id`.
    pub id_property: String,
    /// How long acked entries may wait to be deleted together.
    pub linger: Duration,
}

impl Default for ForwarderSettings {
    fn default() -> Self {
        ForwarderSettings {
            max_inflight: 1000,
            drain_rate_per_s: None,
            id_property: "weir-id".to_owned(),
            linger: Duration::from_millis(20),
        }
    }
}

/// Counters and gauges for the forwarder.
#[derive(Debug, Default)]
pub struct ForwarderMetrics {
    /// QoS 1 publishes sent (resends included).
    pub forwarded: AtomicU64,
    /// PUBACKs matched to an outbox entry.
    pub acked: AtomicU64,
    /// Publishes of entries that had been sent before (after a reconnect).
    pub resent: AtomicU64,
    /// Successful connections after the first.
    pub reconnects: AtomicU64,
    /// Failed connection attempts and dropped connections.
    pub connection_errors: AtomicU64,
    /// Connected to the upstream broker now.
    pub connected: AtomicBool,
    /// Publishes awaiting their PUBACK now.
    pub inflight: AtomicU64,
    /// Entries deleted from the outbox.
    pub deleted: AtomicU64,
    /// Entries the broker refused (MQTT 5 PUBACK failure reason, or an invalid topic); kept in
    /// the outbox.
    pub rejected: AtomicU64,
    /// Volatile (QoS 0) records sent.
    pub volatile_sent: AtomicU64,
    /// Volatile records dropped: not connected, or the client's queue full.
    pub volatile_dropped: AtomicU64,
    /// Failed outbox reads or deletes (retried).
    pub store_errors: AtomicU64,
}

/// A record of an at-most-once pipeline: published with QoS 0 from memory, never stored.
#[derive(Clone, Debug)]
pub struct VolatileRecord {
    pub topic: String,
    pub payload: Vec<u8>,
    pub id: String,
}

/// Acked entries are deleted at least this often (besides every `linger`).
pub const DELETE_BATCH: usize = 256;

/// With the outbox empty and no `wake`, look again this often.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// How long shutdown waits for outstanding PUBACKs.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Maps PUBACKs to outbox seqs. Publishes are requested in seq order; rumqttc reports each one's
/// packet id as it goes out, in request order; a PUBACK names a packet id. Pure: no I/O.
#[derive(Debug, Default)]
pub struct InflightTracker {
    /// Requested, packet id not yet known, oldest first.
    requested: VecDeque<u64>,
    /// Sent, awaiting a PUBACK.
    sent: HashMap<u16, u64>,
}

impl InflightTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// A publish of `seq` was handed to the client.
    pub fn request(&mut self, seq: u64) {
        self.requested.push_back(seq);
    }

    /// The client refused the last requested publish (its channel was full).
    pub fn unrequest_last(&mut self) -> Option<u64> {
        self.requested.pop_back()
    }

    /// The oldest requested publish went out with `pkid`; returns its seq. Packet id 0 is a
    /// QoS 0 publish and is not tracked.
    pub fn on_outgoing(&mut self, pkid: u16) -> Option<u64> {
        if pkid == 0 {
            return None;
        }
        let seq = self.requested.pop_front()?;
        if let Some(old) = self.sent.insert(pkid, seq) {
            // rumqttc holds a colliding packet id back until it is acked, so this should not
            // happen; if it does, the older entry stays in the outbox and is resent later.
            tracing::warn!(
                pkid,
                old_seq = old,
                seq,
                "packet id reused before its PUBACK"
            );
        }
        Some(seq)
    }

    /// A PUBACK for `pkid`: the seq it acknowledges, if any.
    pub fn on_ack(&mut self, pkid: u16) -> Option<u64> {
        self.sent.remove(&pkid)
    }

    /// Publishes requested and not yet acknowledged.
    pub fn inflight(&self) -> usize {
        self.requested.len() + self.sent.len()
    }

    /// The connection dropped: everything in flight is forgotten. Returns how many there were.
    pub fn clear(&mut self) -> usize {
        let n = self.inflight();
        self.requested.clear();
        self.sent.clear();
        n
    }
}

/// A token bucket: `rate_per_s` tokens a second, holding at most one second's worth (at least
/// one token).
#[derive(Debug)]
pub struct TokenBucket {
    rate_per_s: f64,
    capacity: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_s: u32, now: Instant) -> Self {
        let rate = f64::from(rate_per_s.max(1));
        TokenBucket {
            rate_per_s: rate,
            capacity: rate.max(1.0),
            tokens: rate.max(1.0),
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate_per_s).min(self.capacity);
        self.updated = now;
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token will be there.
    pub fn next_token_at(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens >= 1.0 {
            now
        } else {
            now + Duration::from_secs_f64((1.0 - self.tokens) / self.rate_per_s)
        }
    }
}

/// What the event-loop task tells the control task.
enum LoopEvent {
    Connected,
    /// The connection is gone; reply once everything in flight is forgotten.
    Disconnected(oneshot::Sender<()>),
    OutgoingPublish(u16),
    PubAck {
        pkid: u16,
        accepted: bool,
        reason: String,
    },
}

/// Starts the forwarder: an event-loop task and a control task. The returned handle ends after
/// `shutdown` turns true (outstanding PUBACKs awaited up to 2 s, then a clean disconnect).
/// Must be called inside a tokio runtime; fails only on a bad endpoint or settings.
pub fn spawn(
    endpoint: &Endpoint,
    settings: ForwarderSettings,
    outbox: Arc<dyn Outbox>,
    wake: watch::Receiver<u64>,
    volatile: mpsc::Receiver<VolatileRecord>,
    metrics: Arc<ForwarderMetrics>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    if settings.max_inflight == 0 {
        anyhow::bail!("max_inflight must be 1 to 65535, not 0");
    }
    if settings.drain_rate_per_s == Some(0) {
        anyhow::bail!("drain_rate_per_s must be at least 1 (or unset for no limit)");
    }
    let max_inflight = settings.max_inflight;
    let (client, eventloop) = conn::connect(
        endpoint,
        conn::Options {
            max_incoming_packet_bytes: 64 * 1024,
            inflight: max_inflight,
            manual_acks: false,
            request_capacity: usize::from(max_inflight).clamp(16, 1024),
            receive_maximum: None,
        },
    )?;
    // Unbounded, yet bounded in practice: at most two events per publish in flight (its
    // packet id and its PUBACK), and the control task never waits on the event-loop task.
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let loop_task = tokio::spawn(event_loop(
        eventloop,
        events_tx,
        endpoint.address(),
        BackoffState::new(endpoint.reconnect),
        metrics.clone(),
        shutdown.clone(),
    ));
    let control = Control {
        address: endpoint.address(),
        client,
        settings,
        outbox,
        metrics,
        tracker: InflightTracker::new(),
        connected: false,
        cursor: None,
        high_water: None,
        buffer: VecDeque::new(),
        outbox_idle: false,
        retry_at: None,
        to_delete: Vec::new(),
        first_ack_at: None,
        bucket: None,
    };
    Ok(tokio::spawn(
        control.run(events_rx, loop_task, wake, volatile, shutdown),
    ))
}

async fn event_loop(
    mut eventloop: conn::EventLoop,
    events: mpsc::UnboundedSender<LoopEvent>,
    address: String,
    mut backoff: BackoffState,
    metrics: Arc<ForwarderMetrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connected_before = false;
    loop {
        let event = match eventloop.poll().await {
            Ok(Event::ConnAck { .. }) => {
                if connected_before {
                    metrics.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                connected_before = true;
                backoff.reset();
                tracing::info!(broker = %address, "connected to the upstream broker");
                LoopEvent::Connected
            }
            Ok(Event::OutgoingPublish(pkid)) => LoopEvent::OutgoingPublish(pkid),
            Ok(Event::PubAck {
                pkid,
                accepted,
                reason,
            }) => LoopEvent::PubAck {
                pkid,
                accepted,
                reason,
            },
            Ok(Event::OutgoingDisconnect) => return,
            Ok(_) => continue,
            Err(error) => {
                metrics.connection_errors.fetch_add(1, Ordering::Relaxed);
                let (done_tx, done_rx) = oneshot::channel();
                if events.send(LoopEvent::Disconnected(done_tx)).is_err() {
                    return;
                }
                // Once the control task has forgotten what was in flight it publishes nothing
                // until the next CONNACK; purge whatever it queued for the old connection.
                let _ = done_rx.await;
                eventloop.after_error();
                let delay = backoff.next_delay();
                tracing::warn!(
                    broker = %address, %error, retry_in_ms = delay.as_millis() as u64,
                    "upstream broker connection failed; retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = super::stopped(&mut shutdown) => return,
                }
                continue;
            }
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

struct Control {
    address: String,
    client: Client,
    settings: ForwarderSettings,
    outbox: Arc<dyn Outbox>,
    metrics: Arc<ForwarderMetrics>,
    tracker: InflightTracker,
    connected: bool,
    /// The last seq requested or buffered; reads continue after it.
    cursor: Option<u64>,
    /// The highest seq ever requested, to count resends.
    high_water: Option<u64>,
    /// Read from the outbox, not yet requested.
    buffer: VecDeque<(u64, OutboxRecord)>,
    /// The last read found nothing new: wait for `wake`.
    outbox_idle: bool,
    /// Try publishing again at this time (full channel, rate limit, store error).
    retry_at: Option<Instant>,
    to_delete: Vec<u64>,
    first_ack_at: Option<Instant>,
    bucket: Option<TokenBucket>,
}

impl Control {
    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<LoopEvent>,
        mut loop_task: tokio::task::JoinHandle<()>,
        mut wake: watch::Receiver<u64>,
        mut volatile: mpsc::Receiver<VolatileRecord>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut wake_open = true;
        let mut volatile_open = true;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if self.connected {
                self.pump().await;
            }
            self.maybe_flush_deletes(false).await;
            let now = Instant::now();
            let mut deadline = now + IDLE_POLL;
            if let Some(at) = self.retry_at {
                deadline = deadline.min(at);
            }
            if let Some(first) = self.first_ack_at {
                deadline = deadline.min(first + self.settings.linger);
            }
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.handle(event).await,
                    None => {
                        tracing::warn!(broker = %self.address, "forwarder event loop ended");
                        break;
                    }
                },
                changed = wake.changed(), if wake_open => {
                    if changed.is_err() {
                        wake_open = false;
                    }
                    self.outbox_idle = false;
                }
                record = volatile.recv(), if volatile_open => match record {
                    Some(record) => self.send_volatile(record),
                    None => volatile_open = false,
                },
                _ = super::stopped(&mut shutdown) => break,
                _ = tokio::time::sleep_until(deadline) => {
                    if self.retry_at.is_some_and(|at| at <= Instant::now()) {
                        self.retry_at = None;
                    }
                    if deadline >= now + IDLE_POLL {
                        self.outbox_idle = false;
                    }
                }
            }
        }
        self.shut_down(&mut events, &mut loop_task).await;
    }

    async fn handle(&mut self, event: LoopEvent) {
        match event {
            LoopEvent::Connected => {
                self.connected = true;
                self.metrics.connected.store(true, Ordering::Relaxed);
                // Resend from the oldest entry still in the outbox.
                self.cursor = None;
                self.buffer.clear();
                self.outbox_idle = false;
                self.retry_at = None;
                if let Some(rate) = self.settings.drain_rate_per_s {
                    self.bucket = Some(TokenBucket::new(rate, Instant::now()));
                }
            }
            LoopEvent::Disconnected(done) => {
                let lost = self.tracker.clear();
                self.connected = false;
                self.metrics.connected.store(false, Ordering::Relaxed);
                self.metrics.inflight.store(0, Ordering::Relaxed);
                self.buffer.clear();
                self.cursor = None;
                let _ = done.send(());
                if lost > 0 {
                    tracing::info!(
                        broker = %self.address, lost,
                        "upstream connection dropped with publishes in flight; they will be resent"
                    );
                }
                // Deletes of what was acked, so the resend starts after them.
                self.maybe_flush_deletes(true).await;
            }
            LoopEvent::OutgoingPublish(pkid) => {
                if self.tracker.on_outgoing(pkid).is_some() {
                    self.metrics.forwarded.fetch_add(1, Ordering::Relaxed);
                }
            }
            LoopEvent::PubAck {
                pkid,
                accepted,
                reason,
            } => {
                match self.tracker.on_ack(pkid) {
                    Some(seq) if accepted => {
                        self.metrics.acked.fetch_add(1, Ordering::Relaxed);
                        self.to_delete.push(seq);
                        self.first_ack_at.get_or_insert_with(Instant::now);
                    }
                    Some(seq) => {
                        self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            broker = %self.address, seq, reason,
                            "the upstream broker refused a record; it stays in the outbox and \
                             is sent again after the next reconnect"
                        );
                    }
                    None => tracing::debug!(pkid, "PUBACK for an unknown packet id"),
                }
                self.metrics
                    .inflight
                    .store(self.tracker.inflight() as u64, Ordering::Relaxed);
            }
        }
    }

    /// Publishes as much as the inflight window, the rate limit and the client's channel allow.
    async fn pump(&mut self) {
        let max_inflight = usize::from(self.settings.max_inflight);
        while self.connected && self.tracker.inflight() < max_inflight {
            if self.retry_at.is_some_and(|at| at > Instant::now()) {
                break;
            }
            if self.buffer.is_empty() {
                if self.outbox_idle || !self.read_more().await {
                    break;
                }
                continue;
            }
            if let Some(bucket) = &mut self.bucket {
                let now = Instant::now();
                if !bucket.try_take(now) {
                    self.retry_at = Some(bucket.next_token_at(now));
                    break;
                }
            }
            let Some((seq, record)) = self.buffer.pop_front() else {
                break;
            };
            if !conn::valid_topic(&record.topic) {
                self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    seq, topic = %record.topic,
                    "an outbox record has an invalid MQTT topic; it stays in the outbox unsent"
                );
                continue;
            }
            self.tracker.request(seq);
            let property = Some((self.settings.id_property.as_str(), record.id.as_str()));
            match self
                .client
                .try_publish(&record.topic, record.payload.clone(), 1, property)
            {
                Ok(()) => {
                    if self.high_water.is_some_and(|h| seq <= h) {
                        self.metrics.resent.fetch_add(1, Ordering::Relaxed);
                    } else {
                        self.high_water = Some(seq);
                    }
                }
                Err(conn::NotSent) => {
                    // The channel is full: put it back, and try again in a moment (or at the
                    // next event, which means the event loop made room).
                    self.tracker.unrequest_last();
                    self.buffer.push_front((seq, record));
                    self.retry_at = Some(Instant::now() + Duration::from_millis(1));
                    if let Some(bucket) = &mut self.bucket {
                        bucket.tokens = (bucket.tokens + 1.0).min(bucket.capacity);
                    }
                    break;
                }
            }
        }
        self.metrics
            .inflight
            .store(self.tracker.inflight() as u64, Ordering::Relaxed);
    }

    /// Reads the next entries after the cursor into the buffer. False if none (or on an error,
    /// which schedules a retry).
    async fn read_more(&mut self) -> bool {
        let outbox = self.outbox.clone();
        let after = self.cursor;
        let max = usize::from(self.settings.max_inflight).clamp(64, 1024);
        let read = tokio::task::spawn_blocking(move || outbox.read(after, max)).await;
        match read {
            Ok(Ok(records)) if records.is_empty() => {
                self.outbox_idle = true;
                false
            }
            Ok(Ok(records)) => {
                self.cursor = records.last().map(|(seq, _)| *seq);
                self.buffer.extend(records);
                true
            }
            Ok(Err(error)) => {
                self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "cannot read the outbox; retrying in 1s");
                self.retry_at = Some(Instant::now() + Duration::from_secs(1));
                false
            }
            Err(join) => {
                self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %join, "outbox read panicked; retrying in 1s");
                self.retry_at = Some(Instant::now() + Duration::from_secs(1));
                false
            }
        }
    }

    fn send_volatile(&mut self, record: VolatileRecord) {
        if !self.connected {
            self.metrics
                .volatile_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        if !conn::valid_topic(&record.topic) {
            self.metrics
                .volatile_dropped
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic = %record.topic, "volatile record with an invalid topic dropped");
            return;
        }
        let property = Some((self.settings.id_property.as_str(), record.id.as_str()));
        match self
            .client
            .try_publish(&record.topic, record.payload, 0, property)
        {
            Ok(()) => self.metrics.volatile_sent.fetch_add(1, Ordering::Relaxed),
            Err(conn::NotSent) => self
                .metrics
                .volatile_dropped
                .fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Deletes acked entries if `force`, or if enough have gathered or the oldest waited
    /// `linger`. On an error they stay queued for the next try (and may be resent meanwhile).
    async fn maybe_flush_deletes(&mut self, force: bool) {
        if self.to_delete.is_empty() {
            return;
        }
        let due = force
            || self.to_delete.len() >= DELETE_BATCH
            || self
                .first_ack_at
                .is_some_and(|t| t.elapsed() >= self.settings.linger);
        if !due {
            return;
        }
        let seqs = std::mem::take(&mut self.to_delete);
        let outbox = self.outbox.clone();
        let result = tokio::task::spawn_blocking(move || {
            let r = outbox.delete(&seqs);
            (seqs, r)
        })
        .await;
        match result {
            Ok((seqs, Ok(()))) => {
                self.metrics
                    .deleted
                    .fetch_add(seqs.len() as u64, Ordering::Relaxed);
                self.first_ack_at = None;
            }
            Ok((seqs, Err(error))) => {
                self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, n = seqs.len(), "cannot delete acked outbox entries; retrying");
                self.to_delete = seqs;
                self.first_ack_at = Some(Instant::now());
            }
            Err(join) => {
                // The seqs are lost with the panicked closure: those entries are resent after
                // the next reconnect, as duplicates. Nothing is lost.
                self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %join, "outbox delete panicked");
                self.first_ack_at = None;
            }
        }
    }

    /// Stops taking records, waits up to 2 s for outstanding PUBACKs, deletes what was acked,
    /// disconnects.
    async fn shut_down(
        mut self,
        events: &mut mpsc::UnboundedReceiver<LoopEvent>,
        loop_task: &mut tokio::task::JoinHandle<()>,
    ) {
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        // Requested but not yet sent publishes still go out (they are in the client's channel)
        // and get acked; nothing new is requested.
        while self.connected && self.tracker.inflight() > 0 {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(LoopEvent::Disconnected(done))) => {
                    let _ = done.send(());
                    break;
                }
                Ok(Some(event)) => self.handle(event).await,
                Ok(None) | Err(_) => break,
            }
        }
        let unacked = self.tracker.inflight();
        self.maybe_flush_deletes(true).await;
        if unacked > 0 {
            tracing::info!(
                unacked,
                "forwarder stopped with publishes unacknowledged; they stay in the outbox"
            );
        }
        if self.connected {
            let until = Instant::now() + Duration::from_millis(500);
            while self.client.try_disconnect().is_err() && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        self.metrics.connected.store(false, Ordering::Relaxed);
        self.metrics.inflight.store(0, Ordering::Relaxed);
        // Keep answering the event loop until it has sent the DISCONNECT (or give up).
        let until = Instant::now() + Duration::from_millis(500);
        loop {
            tokio::select! {
                _ = &mut *loop_task => return,
                event = events.recv() => match event {
                    Some(LoopEvent::Disconnected(done)) => { let _ = done.send(()); }
                    Some(_) => {}
                    None => {
                        if tokio::time::timeout_at(until, &mut *loop_task).await.is_ok() {
                            return;
                        }
                        break;
                    }
                },
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        loop_task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_maps_packet_ids_to_seqs_in_request_order() {
        let mut t = InflightTracker::new();
        for seq in [10, 11, 12] {
            t.request(seq);
        }
        assert_eq!(t.inflight(), 3);
        assert_eq!(t.on_outgoing(1), Some(10));
        assert_eq!(t.on_outgoing(0), None, "QoS 0 publishes are not tracked");
        assert_eq!(t.on_outgoing(2), Some(11));
        assert_eq!(t.on_outgoing(3), Some(12));
        // Acks out of order.
        assert_eq!(t.on_ack(2), Some(11));
        assert_eq!(t.on_ack(1), Some(10));
        assert_eq!(t.on_ack(1), None, "a repeated ack matches nothing");
        assert_eq!(t.inflight(), 1);
        // A packet id reused after its ack maps to the new seq.
        t.request(13);
        assert_eq!(t.on_outgoing(1), Some(13));
        assert_eq!(t.on_ack(3), Some(12));
        assert_eq!(t.on_ack(1), Some(13));
        assert_eq!(t.inflight(), 0);
    }

    #[test]
    fn tracker_unrequest_takes_back_the_last_request() {
        let mut t = InflightTracker::new();
        t.request(1);
        t.request(2);
        assert_eq!(t.unrequest_last(), Some(2));
        assert_eq!(t.on_outgoing(7), Some(1));
        assert_eq!(t.on_outgoing(8), None, "nothing else was requested");
    }

    #[test]
    fn tracker_reconnect_forgets_everything() {
        let mut t = InflightTracker::new();
        t.request(1);
        t.request(2);
        t.on_outgoing(1);
        assert_eq!(t.clear(), 2);
        assert_eq!(t.inflight(), 0);
        assert_eq!(
            t.on_ack(1),
            None,
            "an ack from the old connection matches nothing"
        );
        // The new connection starts its packet ids over.
        t.request(1);
        assert_eq!(t.on_outgoing(1), Some(1));
        assert_eq!(t.on_ack(1), Some(1));
    }

    #[test]
    fn token_bucket_limits_the_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::new(10, start);
        // One second's worth at once, then nothing.
        assert_eq!((0..20).filter(|_| b.try_take(start)).count(), 10);
        assert!(!b.try_take(start));
        let next = b.next_token_at(start);
        assert!(
            next > start && next <= start + Duration::from_millis(101),
            "{:?}",
            next - start
        );
        // 0.5 s later: 5 more.
        let later = start + Duration::from_millis(500);
        assert_eq!((0..20).filter(|_| b.try_take(later)).count(), 5);
        // Never more than the capacity, however long it waited.
        let much_later = start + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| b.try_take(much_later)).count(), 10);
    }

    #[test]
    fn token_bucket_at_one_per_second() {
        let start = Instant::now();
        let mut b = TokenBucket::new(1, start);
        assert!(b.try_take(start));
        assert!(!b.try_take(start + Duration::from_millis(999)));
        assert!(b.try_take(start + Duration::from_millis(1000)));
    }
}
