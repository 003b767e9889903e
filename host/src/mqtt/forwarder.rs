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
//! - **A record the broker will refuse is never sent, and never blocks the records behind it.**
//!   Before publishing, each record is checked the way the broker and the client would
//!   ([`refusal`]): its topic must be non-empty, without wildcards or NUL and at most 65 535
//!   bytes, its id (an MQTT 5 user property) at most 65 535 bytes, and the whole PUBLISH within
//!   the maximum packet size (MQTT's 256 MiB, and over MQTT 5 the broker's Maximum Packet Size
//!   from its CONNACK). A record that fails is set aside: moved out of the outbox, with the
//!   reason and its bytes, into the store's set-aside table ([`Outbox::set_aside`]), counted in
//!   [`ForwarderMetrics::set_aside_refused`] and logged at ERROR with its seq and id, since it
//!   does not go upstream. Without these checks rumqttc writes a malformed packet (a topic over
//!   65 535 bytes) or fails its event loop (a packet over the limit): the connection drops, and
//!   the record is resent after every reconnect, forever.
//! - A PUBACK with an MQTT 5 failure reason does not delete the entry. The reasons that say the
//!   record itself is wrong, so that the same bytes would be refused every time (Topic Name
//!   invalid, Payload format invalid: [`permanent_refusal`]), set it aside as above. The others
//!   depend on the broker's state or policy, which may change: Quota exceeded, Packet identifier
//!   in use, Not authorized (an ACL an operator can fix), Unspecified and Implementation specific
//!   error; they are counted in `rejected`, logged at ERROR, and the record stays in the outbox,
//!   sent again after the next reconnect.
//! - Damage: a record whose checksum fails or that does not decode ([`OutboxEntry::Damaged`]) is
//!   set aside as damaged, never published ([`ForwarderMetrics::set_aside_damaged`]); records redb
//!   cannot read at all ([`OutboxEntry::Unreadable`]) are reported at ERROR with their range and
//!   skipped, and the outbox is rebuilt without them ([`Outbox::salvage`], at most once a
//!   minute). Either way the records after them are delivered.
//! - A failed outbox read, delete or set-aside is retried after 1 s, doubling up to 30 s, and
//!   logged once, then summarised at most every 30 s while it lasts, so that a full or failing
//!   disk does not flood the log. Acked entries whose delete failed may be resent meanwhile
//!   (duplicates, never losses).
//! - The rumqttc event loop runs in its own task, never cancelled mid-poll. After an error it
//!   waits until the control task has forgotten the old connection's publishes, then purges its
//!   request channel, so a publish of the old connection can never be matched to a seq of the
//!   new one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::conn::{self, Client, Event};
use super::{BackoffState, Endpoint};

use crate::record::RecordId;
use crate::store::StoreError;
pub use crate::store::{OutboxEntry, OutboxRecord, Salvage};

/// The durable queue the forwarder drains. Blocking calls: the forwarder makes them through
/// `spawn_blocking`.
pub trait Outbox: Send + Sync + 'static {
    /// Up to `max` entries with seq greater than `after` (all if `None`), by ascending seq: each
    /// a record, a damaged record, or (last) a range redb cannot read.
    fn read(&self, after: Option<u64>, max: usize) -> anyhow::Result<Vec<OutboxEntry>>;
    /// Deletes these entries (acknowledged upstream). One durable commit per call.
    fn delete(&self, seqs: &[u64]) -> anyhow::Result<()>;
    /// Moves these entries out of the outbox, each with the reason it will not be sent, keeping
    /// their bytes (one durable commit). Returns how many were moved.
    fn set_aside(&self, entries: &[(u64, String)]) -> anyhow::Result<usize>;
    /// Rebuilds the outbox without what cannot be read (see [`crate::store::Store::salvage_outbox`]).
    fn salvage(&self) -> anyhow::Result<Salvage>;
    /// Entries in the outbox.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The store's outbox, drained by the forwarder.
impl Outbox for crate::store::Store {
    fn read(&self, after: Option<u64>, max: usize) -> anyhow::Result<Vec<OutboxEntry>> {
        Ok(self.read_outbox_entries(after, max)?)
    }

    fn delete(&self, seqs: &[u64]) -> anyhow::Result<()> {
        self.delete_outbox(seqs)?;
        Ok(())
    }

    fn set_aside(&self, entries: &[(u64, String)]) -> anyhow::Result<usize> {
        Ok(crate::store::Store::set_aside(self, entries)?)
    }

    fn salvage(&self) -> anyhow::Result<Salvage> {
        Ok(self.salvage_outbox()?)
    }

    fn len(&self) -> u64 {
        self.outbox_len()
    }
}

/// An outbox that is always empty: for running without a store (volatile records only).
#[derive(Clone, Copy, Debug, Default)]
pub struct EmptyOutbox;

impl Outbox for EmptyOutbox {
    fn read(&self, _after: Option<u64>, _max: usize) -> anyhow::Result<Vec<OutboxEntry>> {
        Ok(Vec::new())
    }

    fn delete(&self, _seqs: &[u64]) -> anyhow::Result<()> {
        Ok(())
    }

    fn set_aside(&self, _entries: &[(u64, String)]) -> anyhow::Result<usize> {
        Ok(0)
    }

    fn salvage(&self) -> anyhow::Result<Salvage> {
        Ok(Salvage::default())
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
    /// PUBACKs with a failure reason that may pass (quota, authorisation...): the entry stays in
    /// the outbox and is sent again after the next reconnect.
    pub rejected: AtomicU64,
    /// Records set aside because the broker refuses or would refuse them (an invalid topic, a
    /// packet over the limit, a permanent PUBACK failure reason).
    pub set_aside_refused: AtomicU64,
    /// Records set aside because their stored bytes are damaged (checksum, decoding).
    pub set_aside_damaged: AtomicU64,
    /// Ranges of outbox records redb could not read, skipped and reported.
    pub unreadable: AtomicU64,
    /// Volatile (QoS 0) records sent.
    pub volatile_sent: AtomicU64,
    /// Volatile records dropped: not connected, or the client's queue full.
    pub volatile_dropped: AtomicU64,
    /// Failed outbox reads, deletes or set-asides (retried).
    pub store_errors: AtomicU64,
}

/// A record of an at-most-once pipeline: published with QoS 0 from memory, never stored.
pub type VolatileRecord = crate::record::WireRecord;

/// Acked entries are deleted at least this often (besides every `linger`).
pub const DELETE_BATCH: usize = 256;

/// With the outbox empty and no `wake`, look again this often.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// How long shutdown waits for outstanding PUBACKs.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The longest MQTT string (a topic, a user property's name or value): a 16-bit length prefix.
pub const MQTT_MAX_STRING_BYTES: usize = 65_535;

/// A failed store call is retried after this long at first...
const STORE_RETRY_FIRST: Duration = Duration::from_secs(1);
/// ...doubling up to this.
const STORE_RETRY_MAX: Duration = Duration::from_secs(30);
/// While a failure lasts, a summary line at most this often.
const LOG_SUMMARY_EVERY: Duration = Duration::from_secs(30);
/// A rebuild of an outbox redb cannot fully read is tried at most this often.
const SALVAGE_EVERY: Duration = Duration::from_secs(60);
/// Set-aside records logged one by one per [`LOG_SUMMARY_EVERY`], at most; the rest are counted
/// in a summary line.
const SET_ASIDE_LOGGED: u32 = 20;

/// What a PUBLISH must fit: the protocol spoken and the largest packet the broker takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishLimits {
    /// MQTT 5: the id travels as a user property.
    pub mqtt5: bool,
    /// The user property's name.
    pub id_property: String,
    /// The largest whole packet, in bytes.
    pub max_packet_bytes: usize,
}

impl PublishLimits {
    /// The limits of a connection: MQTT's own maximum, lowered to the broker's Maximum Packet
    /// Size if its CONNACK gave one (MQTT 5).
    pub fn new(mqtt5: bool, id_property: &str, broker_max_packet: Option<u32>) -> Self {
        let max = conn::MQTT_MAX_PACKET_BYTES;
        PublishLimits {
            mqtt5,
            id_property: id_property.to_owned(),
            max_packet_bytes: broker_max_packet.map_or(max, |b| (b as usize).min(max)),
        }
    }
}

/// The size of the QoS 1 PUBLISH packet of a record, as rumqttc writes it: fixed header,
/// topic, packet id, (MQTT 5) properties with the id as one user property, payload.
pub fn publish_packet_bytes(record: &OutboxRecord, limits: &PublishLimits) -> usize {
    fn varint_len(n: usize) -> usize {
        match n {
            0..=127 => 1,
            128..=16_383 => 2,
            16_384..=2_097_151 => 3,
            _ => 4,
        }
    }
    let mut remaining = 2 + record.topic.len() + 2 + record.payload.len();
    if limits.mqtt5 {
        let properties = 1 + 2 + limits.id_property.len() + 2 + RecordId::TEXT_LEN;
        remaining += varint_len(properties) + properties;
    }
    1 + varint_len(remaining) + remaining
}

/// Why the upstream broker (or the MQTT client before it) would refuse to publish `record`, if
/// it would: an empty topic, wildcards or NUL in it, a topic or id over MQTT's 65 535-byte
/// strings, a packet over the limit. Such a record is set aside instead of sent.
pub fn refusal(record: &OutboxRecord, limits: &PublishLimits) -> Option<String> {
    let topic = &record.topic;
    if topic.is_empty() {
        return Some("its topic is empty".into());
    }
    if topic.len() > MQTT_MAX_STRING_BYTES {
        return Some(format!(
            "its topic is {} bytes long, over MQTT's limit of {MQTT_MAX_STRING_BYTES}",
            topic.len()
        ));
    }
    if topic.contains('\0') {
        return Some("its topic contains a NUL character".into());
    }
    if topic.contains(['+', '#']) {
        return Some("its topic contains a wildcard (+ or #), which a PUBLISH may not".into());
    }
    if !conn::valid_topic(topic) {
        return Some("its topic is not one the MQTT client publishes to".into());
    }
    let size = publish_packet_bytes(record, limits);
    if size > limits.max_packet_bytes {
        return Some(format!(
            "its PUBLISH would be {size} bytes, over the {} bytes the upstream connection takes \
             (the broker's maximum packet size)",
            limits.max_packet_bytes
        ));
    }
    None
}

/// Whether an MQTT 5 PUBACK failure reason (rumqttc's `PubAckReason`, by name) says the record
/// itself is wrong, so that sending the same bytes again can only be refused again: Topic Name
/// invalid and Payload format invalid. Every other reason depends on the broker's state or
/// policy (a quota, an ACL) and may pass later.
pub fn permanent_refusal(reason: &str) -> bool {
    matches!(reason, "TopicNameInvalid" | "PayloadFormatInvalid")
}

/// Retrying a failing store call: when next, and a log that says the first failure, then a
/// summary at most every [`LOG_SUMMARY_EVERY`], then that it works again.
#[derive(Debug)]
struct StoreRetry {
    what: &'static str,
    delay: Duration,
    at: Option<Instant>,
    failures: u64,
    since_summary: u64,
    summary_at: Option<Instant>,
}

impl StoreRetry {
    fn new(what: &'static str) -> Self {
        StoreRetry {
            what,
            delay: STORE_RETRY_FIRST,
            at: None,
            failures: 0,
            since_summary: 0,
            summary_at: None,
        }
    }

    /// Whether a retry is not due yet.
    fn waiting(&self, now: Instant) -> bool {
        self.at.is_some_and(|at| at > now)
    }

    fn failed(&mut self, metrics: &ForwarderMetrics, error: &anyhow::Error) {
        metrics.store_errors.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        self.at = Some(now + self.delay);
        let retry_in_ms = self.delay.as_millis() as u64;
        self.delay = (self.delay * 2).min(STORE_RETRY_MAX);
        self.failures += 1;
        self.since_summary += 1;
        if self.failures == 1 {
            self.summary_at = Some(now);
            self.since_summary = 0;
            tracing::warn!(error = %format!("{error:#}"), retry_in_ms, "cannot {}; retrying", self.what);
        } else if self.summary_at.is_none_or(|t| now - t >= LOG_SUMMARY_EVERY) {
            tracing::warn!(
                error = %format!("{error:#}"),
                failures = self.failures,
                in_the_last_s = self.summary_at.map_or(0, |t| (now - t).as_secs()),
                retries = self.since_summary,
                retry_in_ms,
                "still cannot {}; retrying",
                self.what
            );
            self.summary_at = Some(now);
            self.since_summary = 0;
        }
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "can {} again", self.what);
        }
        *self = StoreRetry::new(self.what);
    }
}

/// Bounds per-record ERROR lines: at most [`SET_ASIDE_LOGGED`] per [`LOG_SUMMARY_EVERY`], then
/// one line counting the rest.
#[derive(Debug, Default)]
struct LogBudget {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogBudget {
    /// Whether this one may be logged; counts it otherwise.
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        if self
            .window_start
            .is_none_or(|t| now - t >= LOG_SUMMARY_EVERY)
        {
            if self.suppressed > 0 {
                tracing::error!(
                    more = self.suppressed,
                    "more outbox records were set aside than logged one by one; \
                     weir_outbox_set_aside_total counts them all"
                );
            }
            *self = LogBudget {
                window_start: Some(now),
                ..LogBudget::default()
            };
        }
        if self.logged < SET_ASIDE_LOGGED {
            self.logged += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

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
    /// Connected; the broker's Maximum Packet Size if its CONNACK gave one (MQTT 5).
    Connected {
        max_packet_size: Option<u32>,
    },
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
    let mqtt5 = endpoint.protocol == super::Protocol::V5;
    let limits = PublishLimits::new(mqtt5, &settings.id_property, None);
    let control = Control {
        address: endpoint.address(),
        client,
        settings,
        limits,
        outbox,
        metrics,
        tracker: InflightTracker::new(),
        inflight_ids: HashMap::new(),
        connected: false,
        cursor: None,
        high_water: None,
        buffer: VecDeque::new(),
        outbox_idle: false,
        retry_at: None,
        to_delete: Vec::new(),
        first_ack_at: None,
        to_set_aside: Vec::new(),
        bucket: None,
        read_retry: StoreRetry::new("read the outbox"),
        delete_retry: StoreRetry::new("delete acknowledged records from the outbox"),
        set_aside_retry: StoreRetry::new("set outbox records aside"),
        set_aside_log: LogBudget::default(),
        salvage_due: false,
        salvage_at: None,
        reported_unreadable: HashSet::new(),
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
            Ok(Event::ConnAck {
                max_packet_size, ..
            }) => {
                if connected_before {
                    metrics.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                connected_before = true;
                backoff.reset();
                tracing::info!(
                    broker = %address,
                    max_packet_size,
                    "connected to the upstream broker"
                );
                LoopEvent::Connected { max_packet_size }
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
    /// What a PUBLISH must fit on the current connection.
    limits: PublishLimits,
    outbox: Arc<dyn Outbox>,
    metrics: Arc<ForwarderMetrics>,
    tracker: InflightTracker,
    /// The ids of the records in flight, by seq: for the log if the broker refuses one.
    inflight_ids: HashMap<u64, RecordId>,
    connected: bool,
    /// The last seq requested, buffered or skipped; reads continue after it.
    cursor: Option<u64>,
    /// The highest seq ever requested, to count resends.
    high_water: Option<u64>,
    /// Read from the outbox, not yet requested.
    buffer: VecDeque<(u64, OutboxRecord)>,
    /// The last read found nothing new: wait for `wake`.
    outbox_idle: bool,
    /// Try publishing again at this time (full channel, rate limit).
    retry_at: Option<Instant>,
    to_delete: Vec<u64>,
    first_ack_at: Option<Instant>,
    /// Entries to move out of the outbox, with why.
    to_set_aside: Vec<(u64, String)>,
    bucket: Option<TokenBucket>,
    read_retry: StoreRetry,
    delete_retry: StoreRetry,
    set_aside_retry: StoreRetry,
    set_aside_log: LogBudget,
    /// A read met records redb cannot read: rebuild the outbox without them.
    salvage_due: bool,
    /// Not before this (the last attempt failed).
    salvage_at: Option<Instant>,
    /// Unreadable ranges already reported (by first seq), so a resend after a reconnect does
    /// not report them again.
    reported_unreadable: HashSet<u64>,
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
            self.flush_set_aside().await;
            self.maybe_salvage().await;
            let now = Instant::now();
            let mut deadline = now + IDLE_POLL;
            for at in [
                self.retry_at,
                self.read_retry.at,
                self.delete_retry.at,
                self.set_aside_retry.at,
                self.first_ack_at.map(|first| first + self.settings.linger),
            ]
            .into_iter()
            .flatten()
            .filter(|at| *at > now)
            {
                deadline = deadline.min(at);
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
            LoopEvent::Connected { max_packet_size } => {
                self.connected = true;
                self.metrics.connected.store(true, Ordering::Relaxed);
                self.limits = PublishLimits::new(
                    self.limits.mqtt5,
                    &self.settings.id_property,
                    max_packet_size,
                );
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
                self.inflight_ids.clear();
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
                        self.inflight_ids.remove(&seq);
                        self.metrics.acked.fetch_add(1, Ordering::Relaxed);
                        self.to_delete.push(seq);
                        self.first_ack_at.get_or_insert_with(Instant::now);
                    }
                    Some(seq) if permanent_refusal(&reason) => {
                        let id = self
                            .inflight_ids
                            .remove(&seq)
                            .map(|id| id.to_string())
                            .unwrap_or_default();
                        self.refused(
                            seq,
                            &id,
                            None,
                            format!("the upstream broker refused it ({reason})"),
                        );
                    }
                    Some(seq) => {
                        self.inflight_ids.remove(&seq);
                        self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            broker = %self.address, seq, reason,
                            "the upstream broker refused a record for now; it stays in the outbox \
                             and is sent again after the next reconnect"
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

    /// A record the broker refuses (or would): set aside, counted, logged at ERROR with its seq,
    /// id and topic (long values elided).
    fn refused(&mut self, seq: u64, id: &str, topic: Option<&str>, reason: String) {
        self.metrics
            .set_aside_refused
            .fetch_add(1, Ordering::Relaxed);
        if self.set_aside_log.allow() {
            tracing::error!(
                broker = %self.address,
                seq,
                id = %crate::fsutil::elide(id, 64),
                topic = %topic.map(|t| crate::fsutil::elide(t, 80)).unwrap_or_default(),
                reason,
                "an outbox record will not be accepted upstream: it is set aside (kept in the \
                 store's set_aside table) and the records after it go on"
            );
        }
        self.to_set_aside
            .push((seq, format!("refused upstream: {reason}")));
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
            self.tracker.request(seq);
            let id = record.id.to_string();
            let property = Some((self.settings.id_property.as_str(), id.as_str()));
            match self
                .client
                .try_publish(&record.topic, record.payload.clone(), 1, property)
            {
                Ok(()) => {
                    self.inflight_ids.insert(seq, record.id);
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

    /// Reads the next entries after the cursor: records that fit go to the buffer, the others
    /// to be set aside; unreadable ones are reported and skipped. False if nothing is left to
    /// publish for now (or on an error, which schedules a retry).
    async fn read_more(&mut self) -> bool {
        if self.read_retry.waiting(Instant::now()) {
            return false;
        }
        let outbox = self.outbox.clone();
        let after = self.cursor;
        let max = usize::from(self.settings.max_inflight).clamp(64, 1024);
        let read = tokio::task::spawn_blocking(move || outbox.read(after, max))
            .await
            .unwrap_or_else(|join| Err(anyhow::anyhow!("the outbox read panicked: {join}")));
        let entries = match read {
            Ok(entries) => {
                self.read_retry.succeeded();
                entries
            }
            Err(error) => {
                self.read_retry.failed(&self.metrics, &error);
                return false;
            }
        };
        if entries.is_empty() {
            self.outbox_idle = true;
            return false;
        }
        self.cursor = entries.last().map(OutboxEntry::last_seq);
        for entry in entries {
            match entry {
                OutboxEntry::Record(seq, record) => match refusal(&record, &self.limits) {
                    None => self.buffer.push_back((seq, record)),
                    Some(reason) => {
                        self.refused(seq, &record.id.to_string(), Some(&record.topic), reason)
                    }
                },
                OutboxEntry::Damaged { seq, reason } => {
                    self.metrics
                        .set_aside_damaged
                        .fetch_add(1, Ordering::Relaxed);
                    if self.set_aside_log.allow() {
                        tracing::error!(
                            seq,
                            reason,
                            "an outbox record is damaged on disk and will not be sent: it is set \
                             aside (its bytes kept in the store's set_aside table) and the \
                             records after it go on"
                        );
                    }
                    self.to_set_aside
                        .push((seq, format!("damaged: outbox record {seq} {reason}")));
                }
                OutboxEntry::Unreadable {
                    first,
                    last,
                    detail,
                } => {
                    if self.reported_unreadable.insert(first) {
                        self.metrics.unreadable.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            first_seq = first,
                            last_seq = last,
                            detail,
                            "outbox records cannot be read (the store file is damaged there): \
                             they will not be sent; the records after them go on, and the \
                             outbox is rebuilt without them"
                        );
                    }
                    self.salvage_due = true;
                }
            }
        }
        if !self.to_set_aside.is_empty() {
            self.flush_set_aside().await;
        }
        true
    }

    /// Moves the entries waiting to be set aside out of the outbox. If redb cannot remove one
    /// (damage), the outbox is rebuilt instead; on any other failure they are retried later.
    async fn flush_set_aside(&mut self) {
        if self.to_set_aside.is_empty() || self.set_aside_retry.waiting(Instant::now()) {
            return;
        }
        let entries = std::mem::take(&mut self.to_set_aside);
        let outbox = self.outbox.clone();
        let result = tokio::task::spawn_blocking(move || {
            let r = outbox.set_aside(&entries);
            (entries, r)
        })
        .await;
        match result {
            Ok((_, Ok(_moved))) => self.set_aside_retry.succeeded(),
            Ok((entries, Err(error))) => {
                let corrupt = error
                    .downcast_ref::<StoreError>()
                    .is_some_and(StoreError::is_corrupt);
                if corrupt {
                    // The salvage sets damaged records aside itself; refused ones it keeps, and
                    // they are set aside again when read after it.
                    self.salvage_due = true;
                    self.to_set_aside = entries
                        .into_iter()
                        .filter(|(_, why)| !why.starts_with("damaged:"))
                        .collect();
                } else {
                    self.to_set_aside = entries;
                }
                self.set_aside_retry.failed(&self.metrics, &error);
            }
            Err(join) => {
                // The entries are lost with the panicked closure: they stay in the outbox and
                // are checked again when read after the next reconnect.
                self.set_aside_retry.failed(
                    &self.metrics,
                    &anyhow::anyhow!("set-aside panicked: {join}"),
                );
            }
        }
    }

    /// Rebuilds the outbox without its unreadable records, if a read met some (at most once a
    /// minute while it fails).
    async fn maybe_salvage(&mut self) {
        if !self.salvage_due || self.salvage_at.is_some_and(|at| at > Instant::now()) {
            return;
        }
        let outbox = self.outbox.clone();
        let result = tokio::task::spawn_blocking(move || outbox.salvage())
            .await
            .unwrap_or_else(|join| Err(anyhow::anyhow!("the salvage panicked: {join}")));
        match result {
            Ok(salvage) => {
                self.salvage_due = false;
                self.salvage_at = None;
                self.metrics
                    .set_aside_damaged
                    .fetch_add(salvage.damaged.len() as u64, Ordering::Relaxed);
            }
            Err(error) => {
                self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                self.salvage_at = Some(Instant::now() + SALVAGE_EVERY);
                tracing::error!(
                    error = %format!("{error:#}"),
                    retry_in_s = SALVAGE_EVERY.as_secs(),
                    "cannot rebuild the damaged outbox; its readable records are still sent, \
                     the unreadable ones skipped"
                );
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
        if let Some(reason) = refusal(&record, &self.limits) {
            self.metrics
                .volatile_dropped
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                topic = %crate::fsutil::elide(&record.topic, 80),
                reason,
                "volatile (at-most-once) record dropped: the upstream broker would refuse it"
            );
            return;
        }
        let id = record.id.to_string();
        let property = Some((self.settings.id_property.as_str(), id.as_str()));
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
    /// `linger`. On an error they stay queued for the next try (and may be resent meanwhile),
    /// which waits 1 s, doubling up to 30 s, even if forced.
    async fn maybe_flush_deletes(&mut self, force: bool) {
        if self.to_delete.is_empty() || self.delete_retry.waiting(Instant::now()) {
            return;
        }
        let due = force
            || self.delete_retry.failures > 0
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
                self.delete_retry.succeeded();
            }
            Ok((seqs, Err(error))) => {
                self.delete_retry.failed(&self.metrics, &error);
                self.to_delete = seqs;
                self.first_ack_at = None;
            }
            Err(join) => {
                // The seqs are lost with the panicked closure: those entries are resent after
                // the next reconnect, as duplicates. Nothing is lost.
                self.delete_retry.failed(
                    &self.metrics,
                    &anyhow::anyhow!("outbox delete panicked: {join}"),
                );
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

    fn outbox_record(topic: &str, id: u64, payload_len: usize) -> OutboxRecord {
        OutboxRecord {
            topic: topic.to_owned(),
            id: RecordId::new(id, &[7; 8]),
            payload: vec![b'x'; payload_len],
        }
    }

    #[test]
    fn refusal_names_what_the_broker_would_refuse() {
        let v5 = PublishLimits::new(true, "weir-id", None);
        let v311 = PublishLimits::new(false, "weir-id", None);
        let ok = outbox_record("up/s1", 0x0123_4567_89ab_cdef, 100);
        assert_eq!(refusal(&ok, &v5), None);
        assert_eq!(refusal(&ok, &v311), None);
        let cases = [
            ("", "empty"),
            ("up/+/x", "wildcard"),
            ("up/#", "wildcard"),
            ("up/a\0b", "NUL"),
        ];
        for (topic, why) in cases {
            let reason = refusal(&outbox_record(topic, 1, 1), &v5).expect(topic);
            assert!(reason.contains(why), "{topic:?}: {reason}");
        }
        // MQTT strings carry a 16-bit length: 65 535 bytes pass, one more does not.
        let longest = format!("up/{}", "k".repeat(MQTT_MAX_STRING_BYTES - 3));
        assert_eq!(refusal(&outbox_record(&longest, 1, 1), &v5), None);
        let too_long = format!("up/{}", "k".repeat(70_000));
        let reason = refusal(&outbox_record(&too_long, 1, 1), &v311).unwrap();
        assert!(
            reason.contains("70003 bytes") && reason.contains("65535"),
            "{reason}"
        );
        // The broker's Maximum Packet Size, exactly.
        let limited = PublishLimits::new(true, "weir-id", Some(1024));
        let mut record = outbox_record("up/s1", 0x0123_4567_89ab_cdef, 0);
        let overhead = publish_packet_bytes(&record, &limited);
        record.payload = vec![b'x'; 1024 - overhead - 1];
        // (one byte less of payload than the limit: the remaining-length field may grow by one)
        assert!(publish_packet_bytes(&record, &limited) <= 1024);
        assert_eq!(refusal(&record, &limited), None);
        record.payload = vec![b'x'; 1024];
        let reason = refusal(&record, &limited).unwrap();
        assert!(reason.contains("maximum packet size"), "{reason}");
        assert_eq!(
            PublishLimits::new(true, "weir-id", Some(u32::MAX)).max_packet_bytes,
            conn::MQTT_MAX_PACKET_BYTES
        );
    }

    #[test]
    fn packet_size_is_what_rumqttc_writes() {
        use rumqttc::v5::mqttbytes::v5 as p5;
        for topic_len in [1, 100, 65_535] {
            for payload_len in [0, 10, 100, 120, 127, 128, 16_000, 16_384, 2_097_152] {
                let record =
                    outbox_record(&"t".repeat(topic_len), 0x0123_4567_89ab_cdef, payload_len);
                let mut v4 = rumqttc::Publish::new(
                    record.topic.clone(),
                    rumqttc::QoS::AtLeastOnce,
                    record.payload.clone(),
                );
                v4.pkid = 1;
                let limits = PublishLimits::new(false, "weir-id", None);
                assert_eq!(publish_packet_bytes(&record, &limits), v4.size());
                let properties = p5::PublishProperties {
                    user_properties: vec![("weir-id".into(), record.id.to_string())],
                    ..Default::default()
                };
                let mut v5 = p5::Publish::new(
                    record.topic.clone(),
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    record.payload.clone(),
                    Some(properties),
                );
                v5.pkid = 1;
                let limits = PublishLimits::new(true, "weir-id", None);
                assert_eq!(publish_packet_bytes(&record, &limits), v5.size());
            }
        }
    }

    #[test]
    fn only_reasons_about_the_record_itself_are_permanent() {
        use rumqttc::v5::mqttbytes::v5::PubAckReason as R;
        // The names are how conn.rs reports a reason (its Debug form).
        let permanent: Vec<String> = [
            R::Success,
            R::NoMatchingSubscribers,
            R::UnspecifiedError,
            R::ImplementationSpecificError,
            R::NotAuthorized,
            R::TopicNameInvalid,
            R::PacketIdentifierInUse,
            R::QuotaExceeded,
            R::PayloadFormatInvalid,
        ]
        .iter()
        .map(|r| format!("{r:?}"))
        .filter(|name| permanent_refusal(name))
        .collect();
        assert_eq!(permanent, ["TopicNameInvalid", "PayloadFormatInvalid"]);
    }
}
