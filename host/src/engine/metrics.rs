//! Counters of a live run, shared with whoever reports them (logs, the admin API).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

/// What the engine counts. Counters only grow; gauges say "now".
#[derive(Debug, Default)]
pub struct EngineMetrics {
    /// Messages taken from the source.
    pub messages_in: AtomicU64,
    /// Messages written to the input log, and the commits (fsyncs) that wrote them.
    pub messages_logged: AtomicU64,
    pub input_commits: AtomicU64,
    /// Resends dropped by ingest dedup.
    pub deduped: AtomicU64,
    /// Messages over `max_message_bytes`, and on topics no pipeline takes (both dead letters).
    pub oversized: AtomicU64,
    pub unknown_topic: AtomicU64,
    /// Records emitted, by output.
    pub records: AtomicU64,
    pub late: AtomicU64,
    pub dead_letters: AtomicU64,
    /// Dead letters by reason (`rejected`, `trap`, `time-limit`, ...).
    pub dead_letters_by_reason: Mutex<BTreeMap<String, u64>>,
    /// Windows fired the first time (revision 0), and fired again by late events.
    pub windows_fired: AtomicU64,
    pub windows_refired: AtomicU64,
    /// When the last checkpoint committed (ms since the Unix epoch; 0: none yet) and how long
    /// it took (µs).
    pub last_checkpoint_ms: AtomicU64,
    pub last_checkpoint_micros: AtomicU64,
    /// Checkpoints committed, their total time, and the outbox records they carried.
    pub checkpoints: AtomicU64,
    pub checkpoint_micros: AtomicU64,
    pub outboxed: AtomicU64,
    /// Outbox records dropped by the `drop-oldest` disk-cap policy.
    pub dropped_by_cap: AtomicU64,
    /// Records of at-most-once pipelines dropped because the memory queue was full.
    pub volatile_dropped: AtomicU64,
    /// Gauge: 1 while ingest is held back by the `block` disk-cap policy.
    pub ingest_blocked: AtomicU64,
    /// Times ingest was held back.
    pub ingest_blocks: AtomicU64,
    /// Failed store writes (retried).
    pub store_errors: AtomicU64,
    /// Per pipeline (by name): messages by topic filter, events decoded.
    pub pipelines: Mutex<BTreeMap<String, crate::pipeline::PipelineCounts>>,
}
