//! Outbox values (a checksum of the sequence and the body, then the body), the scan the
//! forwarder reads with (damage reported per record, unreadable pages skipped by probing forward
//! by key), setting records aside, and salvaging an outbox redb cannot fully read.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;
use std::sync::atomic::Ordering;

use redb::{Database, Durability, ReadableDatabase, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};

use super::{
    COUNTERS, OUTBOX, OUTBOX_NEXT_SEQ, OutboxRecord, SET_ASIDE, Store, StoreError, panic_message,
    write_counters,
};

/// Bytes of the checksum in front of each outbox value.
pub(super) const CHECKSUM_BYTES: usize = 4;

/// Where a salvage copies the readable records before it swaps them in.
const SCRATCH: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox_salvage");

/// Records a salvage copies per commit.
const SALVAGE_CHUNK: usize = 4096;

/// The CRC-32 of a record's sequence and body: a value altered on disk, or found under another
/// key, fails it.
fn checksum(seq: u64, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(body);
    hasher.finalize()
}

/// The stored value of outbox record `seq` with this postcard body.
pub(super) fn seal(seq: u64, body: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(CHECKSUM_BYTES + body.len());
    value.extend_from_slice(&checksum(seq, body).to_le_bytes());
    value.extend_from_slice(body);
    value
}

/// The record stored as `value` under `seq`, or why it cannot be one (a phrase that follows
/// "outbox record N").
pub(super) fn unseal(seq: u64, value: &[u8]) -> Result<OutboxRecord, String> {
    let Some((sum, body)) = value.split_first_chunk::<CHECKSUM_BYTES>() else {
        return Err(format!(
            "is {} bytes long, shorter than its checksum",
            value.len()
        ));
    };
    if u32::from_le_bytes(*sum) != checksum(seq, body) {
        return Err("fails its checksum (its bytes changed on disk)".into());
    }
    postcard::from_bytes(body).map_err(|e| format!("cannot be decoded ({e})"))
}

/// One outbox entry as [`Store::read_outbox_entries`] reads it, in sequence order.
#[derive(Clone, Debug, PartialEq)]
pub enum OutboxEntry {
    /// A record whose checksum holds: safe to publish.
    Record(u64, OutboxRecord),
    /// Readable bytes that fail their checksum or do not decode: never published; the forwarder
    /// sets them aside.
    Damaged { seq: u64, reason: String },
    /// Sequences `first..=last` sit in pages redb cannot read (some may hold no record). A read
    /// ends after one: the next read after `last` goes on with the readable records.
    Unreadable {
        first: u64,
        last: u64,
        detail: String,
    },
}

impl OutboxEntry {
    /// The last sequence this entry covers: where the next read continues after.
    pub fn last_seq(&self) -> u64 {
        match self {
            OutboxEntry::Record(seq, _) | OutboxEntry::Damaged { seq, .. } => *seq,
            OutboxEntry::Unreadable { last, .. } => *last,
        }
    }
}

/// An entry of the set-aside table: an outbox record that will not be published as it is.
#[derive(Clone, Debug, PartialEq)]
pub struct SetAside {
    /// Its outbox sequence (the first of the range for unreadable records).
    pub seq: u64,
    /// The last sequence it covers: `seq` but for a range of unreadable records.
    pub last_seq: u64,
    /// Why it was set aside.
    pub reason: String,
    /// The bytes the outbox held (checksum and body); empty for unreadable records.
    pub stored: Vec<u8>,
}

impl SetAside {
    /// The record, if its stored bytes are intact.
    pub fn record(&self) -> Option<OutboxRecord> {
        unseal(self.seq, &self.stored).ok()
    }
}

/// How a set-aside entry is stored (its key is the sequence).
#[derive(Serialize, Deserialize)]
struct SetAsideValue {
    last_seq: u64,
    reason: String,
    stored: Vec<u8>,
}

/// What [`Store::salvage_outbox`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Salvage {
    /// Records copied into the new outbox.
    pub kept: u64,
    /// Records whose bytes were readable but damaged: set aside with them.
    pub damaged: Vec<(u64, String)>,
    /// Ranges of sequences redb could not read: recorded in the set-aside table.
    pub unreadable: Vec<(u64, u64, String)>,
    /// The name the old outbox table was given, if it was replaced.
    pub replaced_by: Option<String>,
}

/// A value read from the outbox, not yet checked, or a range redb cannot read.
enum Raw {
    Value(u64, Vec<u8>),
    Unreadable {
        first: u64,
        last: u64,
        detail: String,
    },
}

impl Raw {
    fn last_seq(&self) -> u64 {
        match self {
            Raw::Value(seq, _) => *seq,
            Raw::Unreadable { last, .. } => *last,
        }
    }
}

/// How a run of reads ended.
enum Stop {
    /// It took what was asked, or every key there was.
    Whole,
    /// redb reported damage, panicked, or yielded a key out of order.
    Damaged(String),
}

/// What the first key at or after a position says.
enum Probe {
    Readable,
    Damaged,
}

thread_local! {
    /// Set while a scan probes damaged pages: their panics are expected and reported as data.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, catching a panic without printing it (a scan may meet many on one damaged page).
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result.map_err(|payload| format!("redb panicked: {}", panic_message(&*payload)))
}

/// A redb error met while scanning: damage is data (`Ok`), anything else (the disk, a closed
/// database) an error the caller retries.
fn damage_or_error(
    store: &Store,
    op: &'static str,
    error: redb::Error,
) -> Result<String, StoreError> {
    match error {
        redb::Error::Corrupted(detail) => Ok(detail),
        other => Err(store.err(op, other)),
    }
}

impl Store {
    /// Up to `max` outbox entries with a sequence greater than `after`, in ascending order: each
    /// record whose checksum holds, each damaged one, and at most one range of unreadable ones
    /// (last), after which reading on from its end continues with the readable records. Fails
    /// only on an I/O error (retry) or if the outbox cannot be opened at all.
    pub fn read_outbox_entries(
        &self,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        const OP: &str = "reading the outbox";
        self.with_db(OP, |db| {
            Ok(self
                .scan(db, OP, after, max)?
                .into_iter()
                .map(|raw| match raw {
                    Raw::Value(seq, value) => match unseal(seq, &value) {
                        Ok(record) => OutboxEntry::Record(seq, record),
                        Err(reason) => OutboxEntry::Damaged { seq, reason },
                    },
                    Raw::Unreadable {
                        first,
                        last,
                        detail,
                    } => OutboxEntry::Unreadable {
                        first,
                        last,
                        detail,
                    },
                })
                .collect())
        })
    }

    /// Moves these outbox entries, each with its reason, to the set-aside table in one durable
    /// commit, with the bytes they held; sequences not in the outbox are skipped. Returns how many
    /// were moved. Fails (changing nothing) if redb cannot remove one of them: then only
    /// [`Store::salvage_outbox`] can take it out.
    pub fn set_aside(&self, entries: &[(u64, String)]) -> Result<usize, StoreError> {
        const OP: &str = "setting outbox records aside";
        if entries.is_empty() {
            return Ok(0);
        }
        self.write(OP, |txn, counters| {
            let mut outbox = txn.open_table(OUTBOX).map_err(|e| self.err(OP, e))?;
            let mut aside = txn.open_table(SET_ASIDE).map_err(|e| self.err(OP, e))?;
            let mut moved = 0usize;
            for (seq, reason) in entries {
                let Some(value) = outbox.remove(seq).map_err(|e| self.err(OP, e))? else {
                    continue;
                };
                let stored = value.value().to_vec();
                drop(value);
                counters.outbox_len = counters.outbox_len.saturating_sub(1);
                counters.outbox_bytes = counters.outbox_bytes.saturating_sub(stored.len() as u64);
                let entry = encode_set_aside(*seq, reason, stored);
                aside
                    .insert(seq, entry.as_slice())
                    .map_err(|e| self.err(OP, e))?;
                counters.set_aside_len += 1;
                moved += 1;
            }
            Ok((moved, moved > 0))
        })
    }

    /// Up to `max` set-aside entries with a sequence greater than `after`, in ascending order.
    pub fn read_set_aside(
        &self,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<SetAside>, StoreError> {
        const OP: &str = "reading the set-aside records";
        let entries = self.read_range(OP, SET_ASIDE, after, max, |seq, bytes| {
            postcard::from_bytes::<SetAsideValue>(bytes).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("set-aside entry {seq} cannot be decoded ({e})"),
            })
        })?;
        Ok(entries
            .into_iter()
            .map(|(seq, v)| SetAside {
                seq,
                last_seq: v.last_seq,
                reason: v.reason,
                stored: v.stored,
            })
            .collect())
    }

    /// Rebuilds the outbox from what can be read of it: the records whose checksum holds are
    /// copied into a new table (in chunks, one commit each, out of readers' sight), then one
    /// commit renames the old outbox `outbox_damaged_<n>` (kept, so its damaged pages are never
    /// reused) and the copy `outbox`, sets aside the damaged records with their bytes and each
    /// unreadable range, and resets the counters. Sequences do not change, so publishes in
    /// flight still match. An outbox with nothing wrong is left as it is. Needs free space for
    /// the copy.
    pub fn salvage_outbox(&self) -> Result<Salvage, StoreError> {
        const OP: &str = "salvaging the outbox";
        let mut committed = self.lock_writer();
        self.reopen_if_needed(&mut committed)?;
        let slot = self.read_db();
        let Some(db) = slot.as_ref() else {
            return Err(self.closed(OP));
        };
        let mut counters = *committed;
        let result = self.guard_write(OP, || {
            let begin = || -> Result<redb::WriteTransaction, StoreError> {
                let mut txn = db.begin_write().map_err(|e| self.err(OP, e))?;
                txn.set_durability(Durability::Immediate)
                    .map_err(|e| self.err_detail(OP, e))?;
                txn.set_quick_repair(true);
                Ok(txn)
            };
            // A scratch table left by an interrupted salvage.
            let txn = begin()?;
            if txn.delete_table(SCRATCH).map_err(|e| self.err(OP, e))? {
                txn.commit().map_err(|e| self.err(OP, e))?;
                self.commits.fetch_add(1, Ordering::Relaxed);
            } else {
                txn.abort().map_err(|e| self.err(OP, e))?;
            }

            let mut salvage = Salvage::default();
            let mut damaged_values = Vec::new();
            let mut kept_bytes = 0u64;
            let mut after = None;
            loop {
                let raws = self.scan(db, OP, after, SALVAGE_CHUNK)?;
                let Some(last) = raws.last() else { break };
                after = Some(last.last_seq());
                let txn = begin()?;
                {
                    let mut scratch = txn.open_table(SCRATCH).map_err(|e| self.err(OP, e))?;
                    for raw in raws {
                        match raw {
                            Raw::Value(seq, value) => match unseal(seq, &value) {
                                Ok(_) => {
                                    scratch
                                        .insert(seq, value.as_slice())
                                        .map_err(|e| self.err(OP, e))?;
                                    salvage.kept += 1;
                                    kept_bytes += value.len() as u64;
                                }
                                Err(reason) => {
                                    salvage.damaged.push((seq, reason));
                                    damaged_values.push(value);
                                }
                            },
                            Raw::Unreadable {
                                first,
                                last,
                                detail,
                            } => salvage.unreadable.push((first, last, detail)),
                        }
                    }
                }
                txn.commit().map_err(|e| self.err(OP, e))?;
                self.commits.fetch_add(1, Ordering::Relaxed);
            }

            let txn = begin()?;
            if salvage.damaged.is_empty() && salvage.unreadable.is_empty() {
                txn.delete_table(SCRATCH).map_err(|e| self.err(OP, e))?;
                txn.commit().map_err(|e| self.err(OP, e))?;
                self.commits.fetch_add(1, Ordering::Relaxed);
                return Ok(salvage);
            }
            let names: Vec<String> = txn
                .list_tables()
                .map_err(|e| self.err(OP, e))?
                .map(|t| t.name().to_owned())
                .collect();
            let name = (1u32..)
                .map(|n| format!("outbox_damaged_{n}"))
                .find(|n| !names.contains(n))
                .expect("a free name");
            txn.rename_table(OUTBOX, TableDefinition::<u64, &[u8]>::new(&name))
                .map_err(|e| self.err(OP, e))?;
            txn.rename_table(SCRATCH, OUTBOX)
                .map_err(|e| self.err(OP, e))?;
            {
                let mut aside = txn.open_table(SET_ASIDE).map_err(|e| self.err(OP, e))?;
                for ((seq, reason), value) in salvage.damaged.iter().zip(damaged_values) {
                    let entry = encode_set_aside(*seq, reason, value);
                    aside
                        .insert(seq, entry.as_slice())
                        .map_err(|e| self.err(OP, e))?;
                }
                for (first, last, detail) in &salvage.unreadable {
                    let entry = postcard::to_stdvec(&SetAsideValue {
                        last_seq: *last,
                        reason: format!("unreadable: {detail}"),
                        stored: Vec::new(),
                    })
                    .expect("postcard encodes to a Vec");
                    aside
                        .insert(first, entry.as_slice())
                        .map_err(|e| self.err(OP, e))?;
                }
            }
            counters.outbox_len = salvage.kept;
            counters.outbox_bytes = kept_bytes;
            counters.set_aside_len += (salvage.damaged.len() + salvage.unreadable.len()) as u64;
            write_counters(&txn, &counters).map_err(|e| self.err(OP, e))?;
            txn.commit().map_err(|e| self.err(OP, e))?;
            self.commits.fetch_add(1, Ordering::Relaxed);
            salvage.replaced_by = Some(name);
            Ok(salvage)
        });
        drop(slot);
        match &result {
            Ok(salvage) => {
                *committed = counters;
                self.publish(&counters);
                if let Some(table) = &salvage.replaced_by {
                    tracing::error!(
                        path = %self.path.display(),
                        kept = salvage.kept,
                        damaged = salvage.damaged.len(),
                        unreadable = ?salvage.unreadable.iter().map(|(f, l, _)| (*f, *l)).collect::<Vec<_>>(),
                        damaged_table = %table,
                        "rebuilt the damaged outbox from its readable records; the damaged and \
                         unreadable ones are listed in the set_aside table and will not be sent"
                    );
                }
            }
            Err(e) if e.is_no_space() => self.disk.enter_full(&self.path, OP),
            Err(_) => {}
        }
        result
    }

    /// Up to `max` raw outbox values after `after` read in one snapshot, then, if the read met
    /// damage, the unreadable range from there to the next readable position.
    fn scan(
        &self,
        db: &Database,
        op: &'static str,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<Raw>, StoreError> {
        let mut from = match after {
            None => 0,
            Some(u64::MAX) => return Ok(Vec::new()),
            Some(seq) => seq + 1,
        };
        let mut values = Vec::new();
        let stop = self.read_run(db, op, from, max, &mut values)?;
        let mut out: Vec<Raw> = Vec::with_capacity(values.len() + 1);
        for (seq, value) in values {
            from = seq.saturating_add(1);
            out.push(Raw::Value(seq, value));
        }
        if let Stop::Damaged(detail) = stop {
            let end = self.next_seq(db, op)?;
            let last = match self.probe(db, op, from, end)? {
                Some(readable) => readable - 1,
                None => end.saturating_sub(1).max(from),
            };
            out.push(Raw::Unreadable {
                first: from,
                last,
                detail,
            });
        }
        Ok(out)
    }

    /// `outbox_next_seq` as of a fresh snapshot: no key of that snapshot is at or above it.
    fn next_seq(&self, db: &Database, op: &'static str) -> Result<u64, StoreError> {
        let txn = db.begin_read().map_err(|e| self.err(op, e))?;
        let counters = txn.open_table(COUNTERS).map_err(|e| self.err(op, e))?;
        Ok(counters
            .get(OUTBOX_NEXT_SEQ)
            .map_err(|e| self.err(op, e))?
            .map_or(0, |v| v.value()))
    }

    /// Reads up to `n` values from `from` on into `values`, in one snapshot; says why it stopped.
    fn read_run(
        &self,
        db: &Database,
        op: &'static str,
        from: u64,
        n: usize,
        values: &mut Vec<(u64, Vec<u8>)>,
    ) -> Result<Stop, StoreError> {
        let run = quietly(|| -> Result<Stop, StoreError> {
            let txn = db.begin_read().map_err(|e| self.err(op, e))?;
            let end = {
                let counters = txn.open_table(COUNTERS).map_err(|e| self.err(op, e))?;
                counters
                    .get(OUTBOX_NEXT_SEQ)
                    .map_err(|e| self.err(op, e))?
                    .map_or(0, |v| v.value())
            };
            let table = txn.open_table(OUTBOX).map_err(|e| self.err(op, e))?;
            let range = match table.range(from..) {
                Ok(range) => range,
                Err(e) => return damage_or_error(self, op, e.into()).map(Stop::Damaged),
            };
            let mut previous = None;
            for entry in range.take(n) {
                let (key, value) = match entry {
                    Ok(kv) => kv,
                    Err(e) => return damage_or_error(self, op, e.into()).map(Stop::Damaged),
                };
                let seq = key.value();
                if seq < from || seq >= end || previous.is_some_and(|p| seq <= p) {
                    return Ok(Stop::Damaged(format!(
                        "key {seq} out of order after {}",
                        previous.map_or(from.saturating_sub(1), |p| p)
                    )));
                }
                values.push((seq, value.value().to_vec()));
                previous = Some(seq);
            }
            Ok(Stop::Whole)
        });
        match run {
            Ok(stop) => stop,
            Err(panic) => Ok(Stop::Damaged(panic)),
        }
    }

    /// The first position after `from` (which is damaged) from which the outbox reads again, or
    /// `None` if none before `end`: doubling the step until a position reads, then bisecting back
    /// to the first that does. Positions between are taken as unreadable.
    fn probe(
        &self,
        db: &Database,
        op: &'static str,
        from: u64,
        end: u64,
    ) -> Result<Option<u64>, StoreError> {
        let at = |p: u64| -> Result<Probe, StoreError> {
            let probe = quietly(|| -> Result<Probe, StoreError> {
                let txn = db.begin_read().map_err(|e| self.err(op, e))?;
                let table = txn.open_table(OUTBOX).map_err(|e| self.err(op, e))?;
                let mut range = match table.range(p..) {
                    Ok(range) => range,
                    Err(e) => return damage_or_error(self, op, e.into()).map(|_| Probe::Damaged),
                };
                match range.next() {
                    None => Ok(Probe::Readable),
                    Some(Ok((key, _))) if (p..end).contains(&key.value()) => Ok(Probe::Readable),
                    Some(Ok(_)) => Ok(Probe::Damaged),
                    Some(Err(e)) => damage_or_error(self, op, e.into()).map(|_| Probe::Damaged),
                }
            });
            probe.unwrap_or(Ok(Probe::Damaged))
        };
        let mut damaged = from;
        let mut step = 1u64;
        let readable = loop {
            let p = from.saturating_add(step).min(end.saturating_sub(1));
            if p <= damaged {
                return Ok(None);
            }
            match at(p)? {
                Probe::Readable => break p,
                Probe::Damaged => {
                    damaged = p;
                    step = step.saturating_mul(2);
                }
            }
        };
        let (mut lo, mut hi) = (damaged, readable);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match at(mid)? {
                Probe::Readable => hi = mid,
                Probe::Damaged => lo = mid,
            }
        }
        Ok(Some(hi))
    }
}

fn encode_set_aside(seq: u64, reason: &str, stored: Vec<u8>) -> Vec<u8> {
    postcard::to_stdvec(&SetAsideValue {
        last_seq: seq,
        reason: reason.to_owned(),
        stored,
    })
    .expect("postcard encodes to a Vec")
}
