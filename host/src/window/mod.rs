//! Keyed event-time windows and their aggregates, with Apache Flink's event-time conventions.
//!
//! A [`Windower`] takes batches of events (each with a key, an event time and a source), assigns
//! every event to the windows of its key, keeps a watermark, and emits a [`WindowResult`] each
//! time a window fires. Events it cannot place leave through side outputs with a reason, never
//! silently: the late output, and the skewed (dead-letter) output. Its whole state serializes
//! ([`Windower::snapshot`], [`Windower::restore`]) so a checkpoint can carry it.
//!
//! # Windows
//!
//! Time windows are half-open, `[start, end)` in milliseconds, and belong to one key.
//!
//! - **Tumbling** (`size`, `offset`): back to back, aligned to the epoch plus `offset`: the window
//!   of `ts` starts at `ts - (ts - offset).rem_euclid(size)` (Flink's
//!   `TimeWindow.getWindowStartWithOffset`, right for negative times too). `|offset| < size`.
//! - **Sliding** (`size`, `slide`, `offset`): a window of `size` starts every `slide`, aligned like
//!   tumbling ones on `slide`; an event belongs to every window that covers it. `size` need not be
//!   a multiple of `slide` (10/4: each event is in two or three windows). `|offset| < slide`.
//! - **Session** (`gap`): an event alone is the session `[ts, ts + gap)`; sessions that overlap
//!   or touch (one's end is the other's start) merge into one, their aggregates merged. An event
//!   may bridge two sessions, which then merge, whether they fired already or not.
//! - **Count** (`size`, `slide`): `size` events of a key in arrival order, a new window every
//!   `slide` events (default `size`). Not time-based: a count window fires when it is full, and
//!   at [`Windower::flush`] with what it has; lateness and watermarks do not apply to it. Its
//!   `start_ms`/`end_ms` are the earliest event time in it and the latest plus one (half-open like
//!   the others), and its id also hashes its sequence number per key (0, 1, 2...), since two count
//!   windows may span the same times.
//!
//! # Time
//!
//! - **Watermark.** A source's watermark is the newest event time it sent minus
//!   `out_of_orderness`. The watermark is the smallest over the active sources. A source silent
//!   for `idle_timeout` by the gateway clock (`now_ms`, passed by the caller) is idle and stops
//!   holding it back; when every source is idle the gateway clock stands in,
//!   `now_ms - out_of_orderness`, so the last windows close when data stops. An explicit
//!   [`Windower::advance_watermark_to`] (a replay time marker) moves it too. It never goes back.
//!   A watermark `W` says no event at or before `W` is expected any more, so an event whose time
//!   is `out_of_orderness` or more behind the newest of its source may find its window closed.
//! - **Per event.** The watermark moves after every event, as if events came one at a time: an
//!   event is judged against the watermark of the events before it, and windows fire as soon as
//!   the watermark passes them, in the middle of a batch if need be. So results do not depend on
//!   how the input is cut into batches. A call starts by applying its `now_ms` (idle timeouts),
//!   exactly as a [`Windower::tick`] would.
//! - **Firing.** A time window fires when the watermark reaches `end - 1`. Windows that fire
//!   together leave ordered by end, then key text, then start (count windows: then sequence).
//! - **Allowed lateness `L`.** A fired window is kept until the watermark reaches
//!   `end - 1 + L`, then dropped. An event for a kept window is added and the window fires again
//!   at once, with the whole updated aggregate and the next revision (the first firing is
//!   revision 0): results accumulate, a receiver keeps the highest revision. An event for a
//!   window not seen yet but not past `end - 1 + L` opens it and fires it at once (revision 0).
//! - **Late.** An event is late when every window it belongs to was dropped (`watermark >=
//!   end - 1 + L`); a sliding-window event that still fits one open window goes there and is not
//!   late. A session event is late when its own session `[ts, ts + gap)` was dropped and it
//!   touches no kept session. Late events leave through [`Emitted::late`] with the reason, e.g.
//!   `window [0, 60000) closed at watermark 125000, allowed lateness 1m`.
//! - **Future skew.** An event stamped more than `max_future_skew` ahead of `now_ms` goes to
//!   [`Emitted::skewed`] (a dead letter) and does not move time: neither its source's watermark nor
//!   its activity (a source whose clock runs ahead goes idle rather than stall the others).
//! - **Processing time** is the caller's: it stamps `ts = now_ms`; nothing here changes.
//!
//! # Results and ids
//!
//! A [`WindowResult`] carries the configured aggregates' values in order, then the custom
//! aggregate's. An aggregate with no value (the `min` of no readings, the `stddev` of one) is
//! left out of `values`. Its `id` is 32 lowercase hex characters: the window's end in ms as a
//! big-endian `u64` (16 characters, so ids sort by time; an end before the epoch wraps to the
//! top), then the first 8 bytes of the SHA-256 of (pipeline, kind, key text, start, end,
//! revision, and for count windows the sequence number), each field length-prefixed. The same
//! input gives the same ids; two results share an id only if they are the same revision of the
//! same window.
//!
//! **Merged sessions.** A session that grows (an event extends it, or it merges with others) is
//! a new window, with new bounds, and a new id. Its revision continues its lineage: the highest
//! revision its parts would fire next (0 if none fired). And it lists in
//! [`WindowResult::replaces`] the ids of the last results of its parts that fired, so a receiver
//! can retract them and counts nothing twice. A session that takes an event within its bounds
//! keeps them and fires again with the next revision like any window.
//!
//! # Aggregates
//!
//! Built in, native and mergeable: `count` (events with no field; with a field, events with a
//! value in it), `sum`, `min`, `max`, `mean`, `first` and `last` (by event time, ties by arrival
//! order), `stddev` (the sample standard deviation, divisor `n - 1`, as SQL's `STDDEV`; Welford's
//! method, merged by Chan's formula). Numeric ones read int and float fields; a missing value, a
//! non-numeric one and a NaN or infinite float do not count.
//!
//! A [`CustomAggregate`] (a Wasm aggregator plugin, in the host) runs over opaque accumulators,
//! one per window, stored with the window state. Calls cross once per batch: `add` gets every
//! event of a batch with its window, `finish` every window fired in the batch, `create` is called
//! once per batch that opens windows. The one exception keeps results exact: when a window fires
//! and then takes more events in the same batch (late events within the lateness), the events
//! before the firing are added first, so `add` and `finish` (and perhaps `create`) are called once
//! more for that batch.
//! `merge` is called once per session merge.
//!
//! **When a custom aggregate fails**, no result is lost: the windows concerned still fire with
//! their built-in values and count, and with a text value named `error` (a reserved output name)
//! in place of the custom values, e.g. `custom aggregate add failed: ...`. If `create`, `add` or
//! `merge` failed, the window's custom accumulator is gone, so every later revision of it
//! carries the error too; a failed `finish` only marks that firing.
//!
//! # Determinism and state
//!
//! The same input (batches, sources, `now_ms` values, explicit watermarks, in the same order)
//! gives the same results in the same order: all state is ordered by key text, nothing depends
//! on a hash order or the wall clock. Keys are stored as text, never as ids (ids differ between
//! runs). [`WindowState`] is plain serde data; restoring it into a windower of the same kind,
//! aggregates and custom aggregate (or none) continues exactly where the snapshot was taken.
//! Floats in it are stored as their IEEE 754 bits, so any serde format, JSON included, gives them
//! back exactly.

mod aggregate;
mod assign;
mod config;
mod watermark;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::batch::{Batch, Value, Values};
use crate::keys::KeyId;

use aggregate::{Acc, Cell};
use watermark::{Clock, SourceClock};

pub use aggregate::CustomAggregate;
pub use config::{
    AggFn, AggregateSpec, ERROR_OUTPUT, MAX_WINDOWS_PER_EVENT, WindowConfig, WindowKind,
};

/// One firing of one window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult {
    /// Deterministic and time-ordered: see the module docs.
    pub id: String,
    pub pipeline: String,
    pub kind: WindowKind,
    pub key: Arc<str>,
    pub start_ms: i64,
    pub end_ms: i64,
    /// 0 for a window's first firing, then one more for each update.
    pub revision: u32,
    /// Events in the window.
    pub count: u64,
    /// The aggregates that have a value, in configured order, then the custom aggregate's (or
    /// its `error`).
    pub values: Vec<(String, Value)>,
    /// Ids of earlier results this one supersedes: the sessions merged into it.
    pub replaces: Vec<String>,
}

/// Events diverted from the windows, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct Diverted {
    /// The events, in arrival order.
    pub batch: Batch,
    pub reason: String,
}

/// What a call emits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Emitted {
    /// Window results, in the order they fired.
    pub results: Vec<WindowResult>,
    /// Events too late for every window they belong to, grouped by reason.
    pub late: Vec<Diverted>,
    /// Events too far in the future (clock skew), grouped by reason.
    pub skewed: Vec<Diverted>,
}

/// Layout version of [`WindowState`].
const STATE_VERSION: u32 = 1;

/// Everything a [`Windower`] holds, as serde data, for a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowState {
    version: u32,
    kind: WindowKind,
    aggregates: Vec<AggregateSpec>,
    custom: bool,
    watermark: Option<i64>,
    sources: Vec<(String, SourceClock)>,
    arrivals: u64,
    keys: Vec<(String, KeyWindows)>,
}

/// The windows of one key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct KeyWindows {
    /// Time windows ordered by start (sessions: disjoint, not touching); count windows by
    /// sequence.
    slots: Vec<Slot>,
    /// Count windows: the sequence number of the next window to open...
    next_seq: u64,
    /// ...and the events of the key until it opens (0: at the next one).
    until_open: u64,
}

impl KeyWindows {
    fn at_start(&self, start_ms: i64) -> Result<usize, usize> {
        self.slots.binary_search_by_key(&start_ms, |s| s.start_ms)
    }

    /// Inserts `slot` at `at`. Most keys have one open window at a time: the first gets room
    /// for one, not the four a growing Vec starts with (a Slot is ~140 bytes; with 10 000 keys
    /// that was 4 MiB of the heap).
    fn insert(&mut self, at: usize, slot: Slot) {
        if self.slots.capacity() == 0 {
            self.slots.reserve_exact(1);
        }
        self.slots.insert(at, slot);
    }
}

/// One window's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Slot {
    /// Identifies the slot within a call (custom aggregate bookkeeping); not stored.
    #[serde(skip)]
    uid: u64,
    start_ms: i64,
    end_ms: i64,
    /// Count windows: the sequence number per key.
    seq: u64,
    count: u64,
    aggs: Vec<Acc>,
    /// The custom accumulator: none before the first `add` (or with no custom aggregate), or
    /// why it was lost.
    custom: Option<Result<Vec<u8>, String>>,
    next_revision: u32,
    /// Whether the window fired with these bounds.
    fired: bool,
    /// Ids superseded by this window's next firing (merged sessions).
    replaces: Vec<String>,
}

impl Slot {
    fn new(uid: u64, start_ms: i64, end_ms: i64, seq: u64, aggregates: &[AggregateSpec]) -> Slot {
        Slot {
            uid,
            start_ms,
            end_ms,
            seq,
            count: 0,
            aggs: aggregates.iter().map(|a| Acc::new(a.func)).collect(),
            custom: None,
            next_revision: 0,
            fired: false,
            replaces: Vec::new(),
        }
    }

    /// The watermark at which a time window fires (if it has not) or is dropped (if it has).
    fn deadline(&self, allowed_lateness_ms: i64) -> i64 {
        let last = self.end_ms.saturating_sub(1);
        if self.fired {
            assign::add(last, allowed_lateness_ms)
        } else {
            last
        }
    }

    fn add(&mut self, ev: &Event<'_>) {
        self.count += 1;
        for (acc, input) in self.aggs.iter_mut().zip(ev.inputs) {
            let cell = match input {
                Input::Events => Some(Cell::Flag(true)),
                Input::Column(Some(values)) => aggregate::cell(values, ev.index),
                Input::Column(None) => None,
            };
            if let Some(cell) = cell {
                acc.add(cell, ev.ts_ms, ev.arrival);
            }
        }
    }
}

/// Where an aggregate reads from, in the batch at hand.
enum Input<'a> {
    /// Every event (a `count` with no field).
    Events,
    /// A column, if the batch has it.
    Column(Option<&'a Values>),
}

/// The event being placed.
struct Event<'a> {
    index: usize,
    ts_ms: i64,
    arrival: u64,
    inputs: &'a [Input<'a>],
}

/// A custom aggregate and its calls pending for the current batch.
struct Custom {
    aggregate: Box<dyn CustomAggregate + Send>,
    pending: Pending,
}

/// Custom aggregate work gathered while a batch is placed, done in one call each at the end.
#[derive(Default)]
struct Pending {
    /// Events to add: (event index, key, slot uid).
    adds: Vec<(usize, Arc<str>, u64)>,
    /// Results waiting for custom values: (index in `Emitted::results`, key, slot uid).
    finishes: Vec<(usize, Arc<str>, u64)>,
    /// The slots in `finishes`: they must not change until the custom values are in.
    finishing: HashSet<u64>,
    /// Sessions merged away: slot uid to the uid it merged into.
    merged: HashMap<u64, u64>,
    /// Slots dropped with a pending finish.
    retired: Vec<(Arc<str>, Slot)>,
    /// An empty accumulator, created once per batch.
    empty: Option<Result<Vec<u8>, String>>,
}

/// Keyed event-time windowing for one pipeline step.
pub struct Windower {
    pipeline: String,
    config: WindowConfig,
    clock: Clock,
    keys: BTreeMap<Arc<str>, KeyWindows>,
    /// Time windows by deadline: (deadline, key, start).
    timers: BTreeSet<(i64, Arc<str>, i64)>,
    /// Events placed so far (orders `first`/`last` ties).
    arrivals: u64,
    next_uid: u64,
    custom: Option<Custom>,
    /// With [`GatewayClock::EventTime`]: the newest event time placed so far, the clock the next
    /// event is judged by. Not part of a snapshot: only a replay without receive times uses it.
    event_clock_ms: Option<i64>,
}

/// The gateway clock a batch is placed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayClock {
    /// Every event of the batch was received at this time (ms since the epoch).
    At(i64),
    /// No receive time is known (`weir replay` input without `received_ms`): each event is
    /// judged by the newest event time placed before it, as if the gateway clock ran on the
    /// data's own time (the first event ever sets it), so the result does not depend on how the
    /// input is cut into batches.
    EventTime,
}

impl std::fmt::Debug for Windower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Windower")
            .field("pipeline", &self.pipeline)
            .field("kind", &self.config.kind)
            .field("watermark", &self.clock.current())
            .field("open_windows", &self.open_windows())
            .finish_non_exhaustive()
    }
}

impl Windower {
    /// A windower for `pipeline`, with an optional custom aggregate; fails if the config does not
    /// [`WindowConfig::validate`].
    pub fn new(
        pipeline: &str,
        config: WindowConfig,
        custom: Option<Box<dyn CustomAggregate + Send>>,
    ) -> Result<Self, String> {
        config.validate()?;
        Ok(Windower {
            pipeline: pipeline.to_owned(),
            clock: Clock::new(config.out_of_orderness_ms, config.idle_timeout_ms),
            config,
            keys: BTreeMap::new(),
            timers: BTreeSet::new(),
            arrivals: 0,
            next_uid: 0,
            custom: custom.map(|aggregate| Custom {
                aggregate,
                pending: Pending::default(),
            }),
            event_clock_ms: None,
        })
    }

    /// Places a batch of events: `source[i]` is event `i`'s source (its sensor), `now_ms` the
    /// gateway clock.
    ///
    /// # Panics
    ///
    /// If `source` is not as long as the batch, or the batch is not well formed (see
    /// [`Batch::validate`]): both are the caller's bugs, not bad input.
    pub fn process(&mut self, batch: &Batch, source: &[Arc<str>], now_ms: i64) -> Emitted {
        self.place(batch, source, GatewayClock::At(now_ms))
    }

    /// [`Windower::process`] with no gateway clock: see [`GatewayClock::EventTime`]. Before each
    /// event the clock moves to the newest event time placed so far, as a tick would.
    pub fn process_at_event_time(&mut self, batch: &Batch, source: &[Arc<str>]) -> Emitted {
        self.place(batch, source, GatewayClock::EventTime)
    }

    /// Tells the custom aggregate, if any, the gateway clock of the calls that follow.
    pub fn set_custom_clock(&mut self, now_ms: i64) {
        if let Some(c) = &mut self.custom {
            c.aggregate.set_clock(now_ms);
        }
    }

    /// The custom aggregate, if any.
    pub fn custom_aggregate(&self) -> Option<&(dyn CustomAggregate + Send)> {
        self.custom.as_ref().map(|c| &*c.aggregate)
    }

    /// See [`Windower::custom_aggregate`].
    pub fn custom_aggregate_mut(&mut self) -> Option<&mut (dyn CustomAggregate + Send + 'static)> {
        match &mut self.custom {
            Some(c) => Some(&mut *c.aggregate),
            None => None,
        }
    }

    /// Replaces every custom accumulator held (open windows, and fired ones kept for late
    /// events) with what `convert` makes of them, all at once: `convert` gets them all and
    /// returns as many, in order. If it fails, nothing changes. Returns how many were converted.
    /// Between two batches only (no custom work pending).
    pub fn convert_accumulators(
        &mut self,
        convert: impl FnOnce(&[Vec<u8>]) -> Result<Vec<Vec<u8>>, String>,
    ) -> Result<usize, String> {
        let held: Vec<Vec<u8>> = self
            .keys
            .values()
            .flat_map(|kw| &kw.slots)
            .filter_map(|slot| match &slot.custom {
                Some(Ok(acc)) => Some(acc.clone()),
                _ => None,
            })
            .collect();
        if held.is_empty() {
            return Ok(0);
        }
        let converted = convert(&held)?;
        if converted.len() != held.len() {
            return Err(format!(
                "{} accumulators converted for {}",
                converted.len(),
                held.len()
            ));
        }
        let mut converted = converted.into_iter();
        for slot in self.keys.values_mut().flat_map(|kw| &mut kw.slots) {
            if let Some(Ok(acc)) = &mut slot.custom {
                *acc = converted.next().expect("one per accumulator held");
            }
        }
        Ok(held.len())
    }

    /// The newest event time placed with [`GatewayClock::EventTime`], if any.
    pub fn event_clock(&self) -> Option<i64> {
        self.event_clock_ms
    }

    fn place(&mut self, batch: &Batch, source: &[Arc<str>], clock: GatewayClock) -> Emitted {
        assert_eq!(source.len(), batch.len(), "one source per event");
        debug_assert_eq!(batch.validate(), Ok(()));
        let mut out = Emitted::default();
        if let GatewayClock::At(now_ms) = clock {
            self.clock.set_now(now_ms);
            if self.clock.advance() {
                self.on_watermark(&mut out);
            }
        }
        let inputs: Vec<Input<'_>> = self
            .config
            .aggregates
            .iter()
            .map(|a| match &a.field {
                None => Input::Events,
                Some(f) => Input::Column(batch.column(f)),
            })
            .collect();
        let mut late = Diversions::default();
        let mut skewed = Diversions::default();
        let mut names: HashMap<KeyId, Arc<str>> = HashMap::new();
        for (i, src) in source.iter().enumerate() {
            let ts_ms = batch.ts_ms[i];
            let now_ms = match clock {
                GatewayClock::At(now_ms) => now_ms,
                GatewayClock::EventTime => {
                    let now_ms = self.event_clock_ms.unwrap_or(ts_ms);
                    self.clock.set_now(now_ms);
                    if self.clock.advance() {
                        self.on_watermark(&mut out);
                    }
                    now_ms
                }
            };
            let skew_limit = assign::add(now_ms, self.config.max_future_skew_ms);
            if ts_ms > skew_limit {
                skewed.push(
                    i,
                    format!(
                        "event time is more than {} ahead of the gateway clock ({now_ms})",
                        human_ms(self.config.max_future_skew_ms)
                    ),
                );
                continue;
            }
            let key = names
                .entry(batch.key[i])
                .or_insert_with(|| batch.key_of(i))
                .clone();
            let ev = Event {
                index: i,
                ts_ms,
                arrival: self.arrivals,
                inputs: &inputs,
            };
            self.arrivals += 1;
            let placed = match self.config.kind {
                WindowKind::Tumbling { .. } | WindowKind::Sliding { .. } => {
                    self.place_fixed(batch, &key, &ev, &mut out)
                }
                WindowKind::Session { gap_ms } => {
                    self.place_session(batch, &key, &ev, gap_ms, &mut out)
                }
                WindowKind::Count { size, slide } => {
                    self.place_count(&key, &ev, size, slide.unwrap_or(size), &mut out);
                    Ok(())
                }
            };
            if let Err(reason) = placed {
                late.push(i, reason);
            }
            self.clock.observe(src, ts_ms);
            if clock == GatewayClock::EventTime {
                self.event_clock_ms = Some(self.event_clock_ms.map_or(ts_ms, |c| c.max(ts_ms)));
            }
            if self.clock.advance() {
                self.on_watermark(&mut out);
            }
        }
        self.complete_custom(batch, &mut out);
        out.late = late.into_diverted(batch);
        out.skewed = skewed.into_diverted(batch);
        out
    }

    /// Moves the watermark to `watermark_ms` (a replay time marker), if it is behind, and fires
    /// and drops what that makes due.
    pub fn advance_watermark_to(&mut self, watermark_ms: i64) -> Emitted {
        let mut out = Emitted::default();
        if self.clock.raise_to(watermark_ms) {
            self.on_watermark(&mut out);
        }
        self.complete_custom(&Batch::empty(), &mut out);
        out
    }

    /// Lets the gateway clock reach `now_ms` with no new events: sources silent for the idle
    /// timeout stop holding the watermark back.
    pub fn tick(&mut self, now_ms: i64) -> Emitted {
        let mut out = Emitted::default();
        self.clock.set_now(now_ms);
        if self.clock.advance() {
            self.on_watermark(&mut out);
        }
        self.complete_custom(&Batch::empty(), &mut out);
        out
    }

    /// The end of the input: fires every window that has not fired (count windows with what
    /// they have) and drops them all. The watermark is then the end of time: later events for
    /// time windows are late.
    pub fn flush(&mut self) -> Emitted {
        let mut out = Emitted::default();
        let none = Batch::empty();
        self.clock.raise_to(i64::MAX);
        self.on_watermark(&mut out);
        if !self.config.kind.is_time() {
            let mut open: Vec<(i64, Arc<str>, i64, u64)> = self
                .keys
                .iter()
                .flat_map(|(k, kw)| {
                    kw.slots
                        .iter()
                        .map(|s| (s.end_ms, k.clone(), s.start_ms, s.seq))
                })
                .collect();
            open.sort();
            for (_, key, _, seq) in open {
                let at = self.keys[&key].slots.iter().position(|s| s.seq == seq);
                self.fire(&key, at.expect("an open count window"), &mut out);
            }
            self.keys.values_mut().for_each(|kw| kw.until_open = 0);
        }
        self.complete_custom(&none, &mut out);
        out
    }

    /// The watermark, once there is one.
    pub fn watermark(&self) -> Option<i64> {
        self.clock.current()
    }

    /// Each source's watermark and whether it is active (not idle), by source.
    pub fn source_watermarks(&self) -> Vec<(Arc<str>, i64, bool)> {
        self.clock.source_watermarks()
    }

    /// Keys with windows held.
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Windows held: open, or fired and kept for late events.
    pub fn open_windows(&self) -> usize {
        self.keys.values().map(|kw| kw.slots.len()).sum()
    }

    /// The whole state, for a checkpoint.
    pub fn snapshot(&self) -> WindowState {
        WindowState {
            version: STATE_VERSION,
            kind: self.config.kind,
            aggregates: self.config.aggregates.clone(),
            custom: self.custom.is_some(),
            watermark: self.clock.current(),
            sources: self
                .clock
                .sources()
                .map(|(k, s)| (k.to_string(), s.clone()))
                .collect(),
            arrivals: self.arrivals,
            keys: self
                .keys
                .iter()
                .map(|(k, kw)| (k.to_string(), kw.clone()))
                .collect(),
        }
    }

    /// Replaces the state with a snapshot's. Fails, changing nothing, if the snapshot was taken
    /// with another window kind, other aggregates, or with a custom aggregate and now without
    /// (or the reverse).
    pub fn restore(&mut self, state: WindowState) -> Result<(), String> {
        if state.version != STATE_VERSION {
            return Err(format!(
                "window state has layout version {}, this weir reads {STATE_VERSION}",
                state.version
            ));
        }
        if state.kind != self.config.kind {
            return Err(format!(
                "window state is for {:?} windows, the config says {:?}",
                state.kind, self.config.kind
            ));
        }
        if state.aggregates != self.config.aggregates {
            return Err("window state was saved with other aggregates than configured".into());
        }
        if state.custom != self.custom.is_some() {
            return Err(format!(
                "window state was saved {} a custom aggregate, the config has {}",
                if state.custom { "with" } else { "without" },
                if state.custom { "none" } else { "one" },
            ));
        }
        self.clock.restore(
            state.sources.into_iter().map(|(k, s)| (Arc::from(k), s)),
            state.watermark,
        );
        self.arrivals = state.arrivals;
        self.keys.clear();
        self.timers.clear();
        for (key, mut kw) in state.keys {
            let key: Arc<str> = Arc::from(key);
            for slot in &mut kw.slots {
                self.next_uid += 1;
                slot.uid = self.next_uid;
                if self.config.kind.is_time() {
                    let deadline = slot.deadline(self.config.allowed_lateness_ms);
                    self.timers.insert((deadline, key.clone(), slot.start_ms));
                }
            }
            self.keys.insert(key, kw);
        }
        if let Some(c) = &mut self.custom {
            c.pending = Pending::default();
        }
        Ok(())
    }

    fn uid(&mut self) -> u64 {
        self.next_uid += 1;
        self.next_uid
    }

    /// Whether time window `[.., end_ms)` was dropped at watermark `wm`.
    fn dropped(&self, end_ms: i64, wm: Option<i64>) -> bool {
        let deadline = assign::add(end_ms.saturating_sub(1), self.config.allowed_lateness_ms);
        wm.is_some_and(|w| w >= deadline)
    }

    fn closed(&self, start_ms: i64, end_ms: i64, wm: Option<i64>) -> String {
        format!(
            "window [{start_ms}, {end_ms}) closed at watermark {}, allowed lateness {}",
            wm.unwrap_or(i64::MIN),
            human_ms(self.config.allowed_lateness_ms)
        )
    }

    /// Whether the slot `uid` fired in this batch and waits for its custom values.
    fn finishing(&self, uid: u64) -> bool {
        self.custom
            .as_ref()
            .is_some_and(|c| c.pending.finishing.contains(&uid))
    }

    /// Notes that event `ev` went to slot `uid`, for the custom aggregate.
    fn note_add(&mut self, ev: &Event<'_>, key: &Arc<str>, uid: u64) {
        if let Some(c) = &mut self.custom {
            c.pending.adds.push((ev.index, key.clone(), uid));
        }
    }

    /// Places an event in its tumbling or sliding windows.
    fn place_fixed(
        &mut self,
        batch: &Batch,
        key: &Arc<str>,
        ev: &Event<'_>,
        out: &mut Emitted,
    ) -> Result<(), String> {
        let wm = self.clock.current();
        let mut windows = Vec::new();
        assign::time_windows(&self.config.kind, ev.ts_ms, &mut windows);
        let Some(&(latest_start, latest_end)) = windows.first() else {
            unreachable!("a time covers at least one tumbling or sliding window")
        };
        windows.retain(|&(_, end)| !self.dropped(end, wm));
        if windows.is_empty() {
            return Err(self.closed(latest_start, latest_end, wm));
        }
        let busy = self.keys.get(key).is_some_and(|kw| {
            windows.iter().any(|&(start, _)| {
                kw.at_start(start)
                    .is_ok_and(|at| self.finishing(kw.slots[at].uid))
            })
        });
        if busy {
            self.complete_custom(batch, out);
        }
        // Oldest first, so windows due at once fire in order of end.
        windows.reverse();
        let lateness = self.config.allowed_lateness_ms;
        let mut due = Vec::new();
        for (start, end) in windows {
            let kw = self.keys.entry(key.clone()).or_default();
            let at = match kw.at_start(start) {
                Ok(at) => at,
                Err(at) => {
                    self.next_uid += 1;
                    let slot = Slot::new(self.next_uid, start, end, 0, &self.config.aggregates);
                    self.timers
                        .insert((slot.deadline(lateness), key.clone(), start));
                    kw.insert(at, slot);
                    at
                }
            };
            kw.slots[at].add(ev);
            let uid = kw.slots[at].uid;
            self.note_add(ev, key, uid);
            if wm.is_some_and(|w| w >= end.saturating_sub(1)) {
                due.push(start);
            }
        }
        for start in due {
            let at = self.keys[key].at_start(start).expect("a window just fed");
            self.fire(key, at, out);
        }
        Ok(())
    }

    /// Places an event in the sessions of its key, merging those it overlaps or touches.
    fn place_session(
        &mut self,
        batch: &Batch,
        key: &Arc<str>,
        ev: &Event<'_>,
        gap_ms: i64,
        out: &mut Emitted,
    ) -> Result<(), String> {
        let wm = self.clock.current();
        let (start, end) = (ev.ts_ms, assign::add(ev.ts_ms, gap_ms));
        let (lo, hi) = match self.keys.get(key) {
            Some(kw) => (
                kw.slots.partition_point(|s| s.end_ms < start),
                kw.slots.partition_point(|s| s.start_ms <= end),
            ),
            None => (0, 0),
        };
        if lo >= hi && self.dropped(end, wm) {
            return Err(self.closed(start, end, wm));
        }
        let busy = lo < hi
            && self.keys[key].slots[lo..hi]
                .iter()
                .any(|s| self.finishing(s.uid));
        if busy {
            self.complete_custom(batch, out);
        }
        let lateness = self.config.allowed_lateness_ms;
        let kw = self.keys.entry(key.clone()).or_default();
        let at = if lo >= hi {
            self.next_uid += 1;
            let slot = Slot::new(self.next_uid, start, end, 0, &self.config.aggregates);
            self.timers
                .insert((slot.deadline(lateness), key.clone(), start));
            kw.insert(lo, slot);
            lo
        } else if hi - lo == 1 && kw.slots[lo].start_ms <= start && kw.slots[lo].end_ms >= end {
            lo
        } else {
            let parts: Vec<Slot> = kw.slots.drain(lo..hi).collect();
            let merged = self.merge_sessions(key, parts, start, end);
            self.timers
                .insert((merged.deadline(lateness), key.clone(), merged.start_ms));
            let kw = self.keys.get_mut(key).expect("the key of the parts");
            kw.insert(lo, merged);
            lo
        };
        let kw = self.keys.get_mut(key).expect("the key just placed");
        let slot = &mut kw.slots[at];
        slot.add(ev);
        let (uid, last) = (slot.uid, slot.end_ms.saturating_sub(1));
        self.note_add(ev, key, uid);
        if wm.is_some_and(|w| w >= last) {
            self.fire(key, at, out);
        }
        Ok(())
    }

    /// One session out of `parts` (in order, taken out of the key's slots) and the event
    /// session `[start, end)`.
    fn merge_sessions(&mut self, key: &Arc<str>, parts: Vec<Slot>, start: i64, end: i64) -> Slot {
        let lateness = self.config.allowed_lateness_ms;
        let first = parts.first().map_or(start, |p| p.start_ms.min(start));
        let last = parts.last().map_or(end, |p| p.end_ms.max(end));
        let uid = self.uid();
        let mut merged = Slot::new(uid, first, last, 0, &self.config.aggregates);
        for p in parts {
            self.timers
                .remove(&(p.deadline(lateness), key.clone(), p.start_ms));
            merged.next_revision = merged.next_revision.max(p.next_revision);
            merged.replaces.extend(p.replaces);
            if p.fired {
                merged.replaces.push(result_id(
                    &self.pipeline,
                    self.config.kind,
                    key,
                    p.start_ms,
                    p.end_ms,
                    p.next_revision - 1,
                    None,
                ));
            }
            merged.count += p.count;
            for (a, b) in merged.aggs.iter_mut().zip(&p.aggs) {
                a.merge(b);
            }
            merged.custom = match (merged.custom, p.custom) {
                (None, c) | (c, None) => c,
                (Some(Err(e)), _) | (_, Some(Err(e))) => Some(Err(e)),
                (Some(Ok(a)), Some(Ok(b))) => {
                    let c = self
                        .custom
                        .as_mut()
                        .expect("accumulators need an aggregate");
                    Some(c.aggregate.merge(&a, &b).map_err(|e| {
                        let e = format!("custom aggregate merge failed: {e}");
                        tracing::warn!(pipeline = %self.pipeline, error = %e, "custom aggregate failed; its windows report the error");
                        e
                    }))
                }
            };
            if let Some(c) = &mut self.custom {
                c.pending.merged.insert(p.uid, uid);
            }
        }
        merged
    }

    /// Places an event in the count windows of its key.
    fn place_count(
        &mut self,
        key: &Arc<str>,
        ev: &Event<'_>,
        size: u64,
        slide: u64,
        out: &mut Emitted,
    ) {
        let kw = self.keys.entry(key.clone()).or_default();
        if kw.until_open == 0 {
            self.next_uid += 1;
            let slot = Slot::new(
                self.next_uid,
                ev.ts_ms,
                ev.ts_ms,
                kw.next_seq,
                &self.config.aggregates,
            );
            kw.insert(kw.slots.len(), slot);
            kw.next_seq += 1;
            kw.until_open = slide;
        }
        kw.until_open -= 1;
        let end = assign::add(ev.ts_ms, 1);
        let mut full = Vec::new();
        let mut uids = Vec::new();
        for slot in &mut kw.slots {
            slot.start_ms = slot.start_ms.min(ev.ts_ms);
            slot.end_ms = if slot.count == 0 {
                end
            } else {
                slot.end_ms.max(end)
            };
            slot.add(ev);
            uids.push(slot.uid);
            if slot.count == size {
                full.push((slot.end_ms, slot.start_ms, slot.seq));
            }
        }
        for uid in uids {
            self.note_add(ev, key, uid);
        }
        full.sort();
        for (_, _, seq) in full {
            let at = self.keys[key].slots.iter().position(|s| s.seq == seq);
            self.fire(key, at.expect("a full count window"), out);
        }
    }

    /// Fires and drops what the watermark made due: windows reaching `end - 1` fire, in order
    /// of end, key, start; fired windows past `end - 1 + lateness` go.
    fn on_watermark(&mut self, out: &mut Emitted) {
        let Some(wm) = self.clock.current() else {
            return;
        };
        if self.timers.first().is_none_or(|t| t.0 > wm) {
            return;
        }
        let later = match wm.checked_add(1) {
            Some(next) => self.timers.split_off(&(next, Arc::from(""), i64::MIN)),
            None => BTreeSet::new(),
        };
        let due = std::mem::replace(&mut self.timers, later);
        for (_, key, start) in due {
            let at = self.keys[&key]
                .at_start(start)
                .expect("every timer has its window");
            if self.keys[&key].slots[at].fired {
                self.drop_slot(&key, at);
            } else {
                self.fire(&key, at, out);
            }
        }
    }

    /// Fires the window at `at` of `key`: emits its result, then keeps it for late events or
    /// drops it.
    fn fire(&mut self, key: &Arc<str>, at: usize, out: &mut Emitted) {
        let wm = self.clock.current();
        let lateness = self.config.allowed_lateness_ms;
        let is_time = self.config.kind.is_time();
        let kw = self.keys.get_mut(key).expect("a window's key");
        let slot = &mut kw.slots[at];
        let before = slot.deadline(lateness);
        let revision = slot.next_revision;
        let values = self
            .config
            .aggregates
            .iter()
            .zip(&slot.aggs)
            .filter_map(|(spec, acc)| Some((spec.output.clone(), acc.finish()?)))
            .collect();
        let result = WindowResult {
            id: result_id(
                &self.pipeline,
                self.config.kind,
                key,
                slot.start_ms,
                slot.end_ms,
                revision,
                (!is_time).then_some(slot.seq),
            ),
            pipeline: self.pipeline.clone(),
            kind: self.config.kind,
            key: key.clone(),
            start_ms: slot.start_ms,
            end_ms: slot.end_ms,
            revision,
            count: slot.count,
            values,
            replaces: std::mem::take(&mut slot.replaces),
        };
        slot.fired = true;
        slot.next_revision += 1;
        let (uid, start, after) = (slot.uid, slot.start_ms, slot.deadline(lateness));
        if let Some(c) = &mut self.custom {
            c.pending
                .finishes
                .push((out.results.len(), key.clone(), uid));
            c.pending.finishing.insert(uid);
        }
        out.results.push(result);
        if !is_time {
            self.drop_slot(key, at);
            return;
        }
        self.timers.remove(&(before, key.clone(), start));
        if wm.is_some_and(|w| w >= after) {
            self.drop_slot(key, at);
        } else {
            self.timers.insert((after, key.clone(), start));
        }
    }

    /// Drops the window at `at` of `key` (its timer is already gone).
    fn drop_slot(&mut self, key: &Arc<str>, at: usize) {
        let kw = self.keys.get_mut(key).expect("a window's key");
        let slot = kw.slots.remove(at);
        if kw.slots.is_empty() && self.config.kind.is_time() {
            self.keys.remove(key);
        }
        if let Some(c) = &mut self.custom
            && c.pending.finishing.contains(&slot.uid)
        {
            c.pending.retired.push((key.clone(), slot));
        }
    }

    /// Does the custom aggregate work gathered so far: one `add` with every pending event, one
    /// `finish` for every window that fired; fills in the custom values (or the error) of the
    /// results waiting for them.
    fn complete_custom(&mut self, batch: &Batch, out: &mut Emitted) {
        let Some(custom) = &mut self.custom else {
            return;
        };
        let pending = std::mem::take(&mut custom.pending);
        let Pending {
            adds,
            finishes,
            merged,
            mut retired,
            empty,
            ..
        } = pending;
        let mut empty = empty;
        let pipeline = &self.pipeline;
        let keys = &mut self.keys;
        let aggregate = &mut custom.aggregate;
        let fail = |what: &str, e: String| {
            let e = format!("custom aggregate {what} failed: {e}");
            tracing::warn!(pipeline = %pipeline, error = %e, "custom aggregate failed; its windows report the error");
            e
        };

        // The slot `uid` of `key`, wherever it is now.
        fn find<'s>(
            keys: &'s mut BTreeMap<Arc<str>, KeyWindows>,
            retired: &'s mut [(Arc<str>, Slot)],
            key: &Arc<str>,
            uid: u64,
        ) -> Option<&'s mut Slot> {
            match keys
                .get_mut(key)
                .and_then(|kw| kw.slots.iter().position(|s| s.uid == uid))
            {
                Some(at) => keys.get_mut(key).map(|kw| &mut kw.slots[at]),
                None => retired
                    .iter_mut()
                    .find(|(k, s)| k == key && s.uid == uid)
                    .map(|(_, s)| s),
            }
        }

        if !adds.is_empty() {
            let resolve = |mut uid: u64| {
                while let Some(&to) = merged.get(&uid) {
                    uid = to;
                }
                uid
            };
            // The windows in order of first event, each with its accumulator taken out.
            let mut groups: Vec<(Arc<str>, u64)> = Vec::new();
            let mut group_of: HashMap<u64, Option<u32>> = HashMap::new();
            let mut accs: Vec<Vec<u8>> = Vec::new();
            let mut rows = Vec::new();
            let mut group = Vec::new();
            for (event, key, uid) in adds {
                let uid = resolve(uid);
                let g = *group_of.entry(uid).or_insert_with(|| {
                    let slot = find(keys, &mut retired, &key, uid)?;
                    let acc = match slot.custom.take() {
                        Some(Ok(acc)) => acc,
                        Some(Err(e)) => {
                            slot.custom = Some(Err(e));
                            return None;
                        }
                        None => {
                            let created = empty
                                .get_or_insert_with(|| {
                                    aggregate.create().map_err(|e| fail("create", e))
                                })
                                .clone();
                            match created {
                                Ok(acc) => acc,
                                Err(e) => {
                                    slot.custom = Some(Err(e));
                                    return None;
                                }
                            }
                        }
                    };
                    accs.push(acc);
                    groups.push((key.clone(), uid));
                    Some(groups.len() as u32 - 1)
                });
                if let Some(g) = g {
                    rows.push(event);
                    group.push(g);
                }
            }
            if !groups.is_empty() {
                let added = aggregate
                    .add(&accs, &batch.take(&rows), &group)
                    .and_then(|new| {
                        if new.len() == accs.len() {
                            Ok(new)
                        } else {
                            Err(format!(
                                "{} accumulators returned for {}",
                                new.len(),
                                accs.len()
                            ))
                        }
                    })
                    .map_err(|e| fail("add", e));
                for (i, (key, uid)) in groups.iter().enumerate() {
                    let slot = find(keys, &mut retired, key, *uid).expect("a slot of this batch");
                    slot.custom = Some(match &added {
                        Ok(new) => Ok(new[i].clone()),
                        Err(e) => Err(e.clone()),
                    });
                }
            }
        }

        if !finishes.is_empty() {
            let mut accs = Vec::new();
            let mut fed = Vec::new();
            let mut marks: Vec<Option<String>> = Vec::with_capacity(finishes.len());
            for (i, (_, key, uid)) in finishes.iter().enumerate() {
                let slot = find(keys, &mut retired, key, *uid);
                match slot.and_then(|s| s.custom.clone()) {
                    Some(Ok(acc)) => {
                        accs.push(acc);
                        fed.push(i);
                        marks.push(None);
                    }
                    Some(Err(e)) => marks.push(Some(e)),
                    None => marks.push(Some("custom aggregate has no accumulator".into())),
                }
            }
            let finished = if accs.is_empty() {
                Ok(Vec::new())
            } else {
                aggregate
                    .finish(&accs)
                    .and_then(|r| {
                        if r.len() == accs.len() {
                            Ok(r)
                        } else {
                            Err(format!("{} results returned for {}", r.len(), accs.len()))
                        }
                    })
                    .map_err(|e| fail("finish", e))
            };
            let mut values: Vec<Option<Vec<(String, Value)>>> = vec![None; finishes.len()];
            match finished {
                Ok(rs) => {
                    for (i, r) in fed.into_iter().zip(rs) {
                        values[i] = Some(r);
                    }
                }
                Err(e) => {
                    for i in fed {
                        marks[i] = Some(e.clone());
                    }
                }
            }
            for (((result, _, _), mark), vals) in finishes.iter().zip(marks).zip(values) {
                let r = &mut out.results[*result];
                match mark {
                    Some(e) => r.values.push((ERROR_OUTPUT.to_owned(), Value::Text(e))),
                    None => r.values.extend(vals.unwrap_or_default()),
                }
            }
        }
    }
}

/// The id of a window result: see the module docs.
fn result_id(
    pipeline: &str,
    kind: WindowKind,
    key: &str,
    start_ms: i64,
    end_ms: i64,
    revision: u32,
    seq: Option<u64>,
) -> String {
    let mut h = Sha256::new();
    for part in [pipeline, kind.as_str(), key] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.update(start_ms.to_be_bytes());
    h.update(end_ms.to_be_bytes());
    h.update(revision.to_be_bytes());
    if let Some(seq) = seq {
        h.update(seq.to_be_bytes());
    }
    let digest = h.finalize();
    let mut id = format!("{:016x}", end_ms as u64);
    for b in &digest[..8] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// A duration in the largest unit that divides it: `2m`, `90s`, `1500ms`.
fn human_ms(ms: i64) -> String {
    const UNITS: [(i64, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
    ];
    match UNITS.iter().find(|(n, _)| ms != 0 && ms % n == 0) {
        Some((n, unit)) => format!("{}{unit}", ms / n),
        None => format!("{ms}ms"),
    }
}

/// Events of a batch set aside, grouped by reason in order of first occurrence.
#[derive(Default)]
struct Diversions {
    /// Runs of consecutive diverted events with the same reason, in arrival order: so the side
    /// outputs keep the events' order, whatever the cut into batches.
    groups: Vec<(String, Vec<usize>)>,
}

impl Diversions {
    fn push(&mut self, event: usize, reason: String) {
        match self.groups.last_mut() {
            Some((last, events)) if *last == reason => events.push(event),
            _ => self.groups.push((reason, vec![event])),
        }
    }

    fn into_diverted(self, batch: &Batch) -> Vec<Diverted> {
        self.groups
            .into_iter()
            .map(|(reason, events)| Diverted {
                batch: batch.take(&events),
                reason,
            })
            .collect()
    }
}
