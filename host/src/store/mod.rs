//! The durable store: weir's one redb database file, `<data_dir>/weir.redb`, holding the input
//! log, the checkpoint and the outbox, and next to it a reserve file, `<data_dir>/weir.reserve`.
//!
//! # On-disk layout (format version 3)
//!
//! | table        | key                  | value                                                   |
//! |--------------|----------------------|---------------------------------------------------------|
//! | `meta`       | `&str`               | `&[u8]`: `app` = `b"weir"`, `format_version` = `u32` LE  |
//! | `counters`   | `&str`               | `u64`: see below                                        |
//! | `input`      | `u64` sequence       | `&[u8]`: one opaque input-log entry (the engine's batch) |
//! | `checkpoint` | `&str` (`state`)     | `&[u8]`: the engine's opaque checkpoint blob            |
//! | `outbox`     | `u64` sequence       | `&[u8]`: CRC-32 (LE) of the sequence (`u64` LE) and the body, then the body: a postcard-encoded [`OutboxRecord`] |
//! | `set_aside`  | `u64` sequence       | `&[u8]`: a postcard-encoded [`SetAside`] entry: why, and the stored bytes |
//! | `seen`       | `&[u8]`              | `()`: ingest dedup, see below                           |
//!
//! `u64` keys are redb's fixed-width integer keys, ordered numerically. The `counters` table holds
//! `input_next_seq` and `outbox_next_seq` (the next sequence to hand out: sequences increase
//! forever, across trims, deletes and restarts, and are never reused), `outbox_len` and
//! `outbox_bytes` (the number of outbox entries and the sum of their value sizes, so that opening
//! is O(1) rather than a scan of the outbox), `set_aside_len`, and `checkpoint_input_through`
//! (absent while the checkpoint covers no input). Every transaction that changes the input log,
//! the outbox or the set-aside table updates the counters in the same transaction, so they cannot
//! drift from the tables. Opening checks the stored `outbox_len` against the table's own length
//! (O(1) in redb) as a cheap consistency check.
//!
//! Each outbox value carries a checksum of its own sequence and body, so a record whose bytes
//! changed on disk, or that sits under another key, is never handed out: readers see it as
//! damaged ([`OutboxEntry::Damaged`]). Format version 1 (no checksums) is refused with
//! [`StoreError::UnsupportedVersion`].
//!
//! `set_aside` holds outbox records that will never be published as they are: records the
//! upstream broker refuses or would refuse (an invalid topic, a packet over its limit), and
//! damaged ones. They are moved there in one transaction with the reason and the stored bytes, so
//! that nothing is lost and the outbox still drains to empty. An entry for records redb could not
//! read at all (see below) has `last_seq` > its key and no bytes.
//!
//! `seen` keys are a pipeline's name, a 0 byte, the receive time (ms, sign-flipped big-endian, so
//! keys sort by time) and a 16-byte message fingerprint: what each pipeline's ingest dedup
//! remembers. A checkpoint adds the newly seen, removes the evicted, and deletes everything of a
//! pipeline received before its horizon as one range.
//!
//! A table `outbox_damaged_<n>` is an outbox that [`Store::salvage_outbox`] replaced because redb
//! could not read all of it; it is kept, never written, so that its damaged pages are never
//! reused and the records in them stay in the file for whoever wants to dig.
//!
//! # Transactions
//!
//! Every write is one redb write transaction committed with `Durability::Immediate` and
//! quick-repair on; [`Store::commits`] counts them.
//!
//! - [`Store::commit`]: the live engine's group commit, at most one per `commit_interval`: the
//!   input entries taken in since the last one appended to `input`, the records made from them
//!   appended to `outbox` with consecutive sequences (with [`OnFull::DropOldest`], then the
//!   oldest outbox entries deleted until the outbox is within `max_outbox_bytes` again), the
//!   entries the upstream broker acknowledged deleted (each contiguous run as one range), and,
//!   with a checkpoint, the checkpoint blob replaced, `checkpoint_input_through` set to the last
//!   input entry (this commit's included), the covered input entries deleted as one range and
//!   the dedup changes applied to `seen`. All of it or none of it.
//! - [`Store::append_input`], [`Store::commit_checkpoint`], [`Store::delete_outbox`]: the same
//!   parts one at a time (the offline tools, `weir replay --store`, and the forwarder when no
//!   engine commits for it).
//! - [`Store::set_aside`]: outbox entries moved to `set_aside` with their reasons.
//! - [`Store::salvage_outbox`]: the readable records copied into a scratch table in chunks (one
//!   commit each, invisible to readers), then one commit that renames the old outbox to
//!   `outbox_damaged_<n>` and the copy to `outbox`, records what could not be kept in
//!   `set_aside`, and resets the counters. A crash before that commit leaves the old outbox in
//!   place (the scratch table is dropped by the next salvage).
//!
//! Writers are serialised by a mutex that also guards the in-memory copy of the counters; readers
//! ([`Store::read_input`], [`Store::read_outbox_entries`], ...) use redb read transactions
//! (snapshots) and never wait for a writer. [`Store::outbox_len`], [`Store::outbox_bytes`],
//! [`Store::set_aside_len`] and [`Store::last_outbox_seq`] are atomics published after each
//! commit.
//!
//! # What survives a crash
//!
//! A call that returned `Ok` is on disk (redb fsyncs before the commit returns), and survives
//! SIGKILL and power loss. A crash during a call leaves the file as it was before that
//! transaction or after it, never in between: a group commit's input, its records, its deletes
//! and its checkpoint appear together or not at all. Quick-repair stores the allocator state with each commit, so reopening
//! after a crash takes milliseconds instead of a walk of the whole file; the price is a second
//! fsync per commit (redb's two-phase commit). The file never shrinks (except by the compaction
//! below); freed pages are reused.
//!
//! # Failure modes and what the user is told
//!
//! - The file is not redb, is damaged (bad magic, checksums, truncated), was written by an
//!   unknown redb format or by another app, or holds another weir format version: opening fails
//!   with [`StoreError::Corrupt`], [`StoreError::NotWeirStore`] or
//!   [`StoreError::UnsupportedVersion`], and the file is never deleted or overwritten: an existing
//!   file is first opened read-only and its `meta` checked, so a refused file is byte-for-byte
//!   untouched (only a file left by a crash without quick-repair data is opened writable first,
//!   since only that repairs it; redb verifies every checksum while repairing). The message says
//!   to keep a copy, move it aside and start again with an empty store; the records it held stay
//!   in the copy.
//! - Damage that opening does not see (redb does not verify page checksums when it opens a
//!   cleanly closed file, nor when it reads): an outbox record whose checksum fails or that does
//!   not decode is [`OutboxEntry::Damaged`] and the forwarder sets it aside; pages redb cannot
//!   read (it reports them corrupted, panics on them, or yields keys out of order) become one
//!   [`OutboxEntry::Unreadable`] range: the reader probes forward by key (doubling the step, then
//!   bisecting back) to the first readable record after them, so a drain always ends and delivers
//!   every readable record. [`Store::salvage_outbox`] then rebuilds the outbox without them. A
//!   panic inside redb never leaves the store: it becomes [`StoreError::Corrupt`] for that call
//!   (the probes of a scan stay silent, since a damaged page can take many). Damage elsewhere
//!   (the input log, the checkpoint) surfaces as [`StoreError::Corrupt`] from the operation that
//!   reads it ([`integrity_check`] reads all).
//! - Another process (or another [`Store`] in this one) has the file open: [`StoreError::InUse`].
//! - An I/O error: [`StoreError::Io`], naming the operation; the failed transaction is rolled
//!   back, so nothing that was not stored was acknowledged. redb refuses every later read and
//!   write after an I/O error, so the store closes and reopens the database before its next
//!   operation (milliseconds, thanks to quick repair; counted in [`Store::reopens`]) and continues
//!   from the last durable commit.
//! - A full disk (ENOSPC, EDQUOT): [`Store::disk_full`] turns true, and the reserve file
//!   ([`StoreOptions::disk_reserve_bytes`], 1 MiB by default, written when the store opens) is
//!   deleted, so that the deletes of delivered records, which redb writes copy-on-write like
//!   anything else, and a restart always find room. While the disk is full the engine takes no
//!   new input (it waits, unacknowledged at the source broker), tries its pending checkpoint at
//!   most once a second (a checkpoint turns logged input into outbox records and trims the input
//!   log), and calls [`Store::try_resume`] now and then: once the device has room for the
//!   reserve twice over, the reserve is written again and ingest resumes. Since the file does
//!   not shrink by itself, deletes made while the disk is full compact it
//!   ([`Store::compactions`]) once they have freed as much as the outbox still holds (or emptied
//!   it), which gives the space back to the device. Measured on a 4 MiB tmpfs: after the failed
//!   commit redb answers every call with "Previous I/O error" until reopened; reopening on the
//!   full device takes 1 to 6 ms, after which deletes commit; compacting an emptied 6 MiB file
//!   to 124 KiB takes about a millisecond.
//! - A full outbox: with [`OnFull::Block`] nothing is ever dropped (the engine stops taking input
//!   while [`Store::outbox_bytes`] is at or above the cap); with [`OnFull::DropOldest`] the
//!   checkpoint drops the oldest records, counts them in [`CheckpointCommit`], and logs at ERROR.

// The store times its own work (resuming after a full disk, compaction): an edge.
#![allow(clippy::disallowed_methods)]

mod disk;
mod error;
mod outbox;
#[cfg(test)]
mod tests;

use std::fs;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTableMetadata, TableDefinition, TableHandle,
    WriteTransaction,
};

pub use error::StoreError;
pub use outbox::{OutboxEntry, Salvage, SetAside};

use disk::Disk;

/// The file name of the store inside the data directory.
pub const FILE_NAME: &str = "weir.redb";
/// The file name of the disk-space reserve inside the data directory.
pub const RESERVE_FILE_NAME: &str = "weir.reserve";
/// The store format this build writes and reads.
pub const FORMAT_VERSION: u32 = 3;
/// The default of [`StoreOptions::disk_reserve_bytes`]: room for many delete transactions and a
/// restart, on any device weir runs on.
pub const DEFAULT_DISK_RESERVE_BYTES: u64 = 1024 * 1024;
/// The `app` value in the `meta` table: a file without it is not a weir store.
const APP: &[u8] = b"weir";
/// redb's page cache. Its default (1 GiB) is too much for a gateway; the working set here is the
/// head and tail of two queues.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const INPUT: TableDefinition<u64, &[u8]> = TableDefinition::new("input");
const CHECKPOINT: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoint");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const SET_ASIDE: TableDefinition<u64, &[u8]> = TableDefinition::new("set_aside");
const SEEN: TableDefinition<&[u8], ()> = TableDefinition::new("seen");

/// A message's identity for ingest dedup.
pub type Fingerprint = [u8; 16];

/// What changed in a pipeline's dedup memory since the last checkpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeenChanges {
    /// Newly seen: (receive time, fingerprint).
    pub added: Vec<(i64, Fingerprint)>,
    /// Forgotten before their horizon ran out (the memory was full).
    pub evicted: Vec<(i64, Fingerprint)>,
    /// Everything received before this is forgotten (the horizon).
    pub forget_before_ms: i64,
}

impl SeenChanges {
    /// Adds later changes to these (a checkpoint carrying a failed one's changes).
    pub fn merge(&mut self, later: SeenChanges) {
        self.added.extend(later.added);
        self.evicted.extend(later.evicted);
        self.forget_before_ms = self.forget_before_ms.max(later.forget_before_ms);
        let forget = self.forget_before_ms;
        self.added.retain(|&(t, _)| t >= forget);
    }
}

/// The `seen` key of a pipeline's entry.
fn seen_key(pipeline: &str, received_ms: i64, fingerprint: Option<&Fingerprint>) -> Vec<u8> {
    let mut key = Vec::with_capacity(pipeline.len() + 25);
    key.extend_from_slice(pipeline.as_bytes());
    key.push(0);
    key.extend_from_slice(&((received_ms as u64) ^ (1 << 63)).to_be_bytes());
    if let Some(f) = fingerprint {
        key.extend_from_slice(f);
    }
    key
}

const META_APP: &str = "app";
const META_FORMAT_VERSION: &str = "format_version";
const CHECKPOINT_STATE: &str = "state";
const INPUT_NEXT_SEQ: &str = "input_next_seq";
const OUTBOX_NEXT_SEQ: &str = "outbox_next_seq";
const OUTBOX_LEN: &str = "outbox_len";
const OUTBOX_BYTES: &str = "outbox_bytes";
const SET_ASIDE_LEN: &str = "set_aside_len";
const CHECKPOINT_INPUT_THROUGH: &str = "checkpoint_input_through";

/// What a checkpoint does when the outbox holds `max_outbox_bytes` or more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFull {
    /// Never drop: the engine stops taking input (the local broker holds it) until the
    /// forwarder has drained the outbox below the cap.
    Block,
    /// Delete the oldest outbox records until the outbox is within the cap again; counted and
    /// logged at ERROR.
    DropOldest,
}

/// How the store bounds its outbox and keeps room on a full disk.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// The cap on the sum of the outbox's stored value sizes, in bytes.
    pub max_outbox_bytes: u64,
    pub on_full: OnFull,
    /// The size of `<data_dir>/weir.reserve`, deleted when the disk fills so that delivered
    /// records can still be deleted and weir restarted ([`DEFAULT_DISK_RESERVE_BYTES`]); 0: no
    /// reserve.
    pub disk_reserve_bytes: u64,
}

/// A record owed upstream, as it is published (see [`crate::record::WireRecord`]).
pub type OutboxRecord = crate::record::WireRecord;

/// What [`Store::commit_checkpoint`] did to the outbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointCommit {
    /// The sequence of the first record appended, if any.
    pub first_seq: Option<u64>,
    /// The sequence of the last record appended, if any.
    pub last_seq: Option<u64>,
    /// Outbox records deleted by [`OnFull::DropOldest`].
    pub dropped: u64,
    /// The sum of their stored sizes.
    pub dropped_bytes: u64,
}

/// What one [`Store::commit`] holds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Commit<'a> {
    /// Input-log entries (each encoded), appended in order.
    pub input: &'a [Vec<u8>],
    /// Records, appended to the outbox in order.
    pub records: &'a [OutboxRecord],
    /// Outbox entries acknowledged upstream, deleted (sequences not in the outbox are ignored).
    pub delete: &'a [u64],
    /// The checkpoint, when one is due: the engine's blob, which covers every input entry logged
    /// so far, this commit's included, and each pipeline's dedup changes since the last one.
    pub checkpoint: Option<CheckpointData<'a>>,
}

/// A checkpoint's blob and each pipeline's dedup changes, as [`Commit::checkpoint`] holds them.
pub type CheckpointData<'a> = (&'a [u8], &'a [(String, SeenChanges)]);

/// What a [`Store::commit`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    /// The sequences given to the first and last input entry appended, if any.
    pub input_first_seq: Option<u64>,
    pub input_last_seq: Option<u64>,
    /// The sequences of the first and last record appended, if any.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Outbox records deleted as acknowledged.
    pub deleted: usize,
    /// Outbox records deleted by [`OnFull::DropOldest`], and the sum of their stored sizes.
    pub dropped: u64,
    pub dropped_bytes: u64,
}

/// A checkpoint as loaded: the engine's blob and the input sequence it covers through (`None`
/// while it covers no input).
pub type SavedCheckpoint = (Vec<u8>, Option<u64>);

/// The persistent counters, as last committed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    input_next_seq: u64,
    outbox_next_seq: u64,
    outbox_len: u64,
    outbox_bytes: u64,
    set_aside_len: u64,
}

/// weir's store: one redb file holding the input log, the checkpoint and the outbox. Shared as
/// `Arc<Store>`; every method takes `&self`.
pub struct Store {
    path: PathBuf,
    options: StoreOptions,
    /// `None` after an I/O error until the reopen succeeds. Read-locked for every transaction;
    /// write-locked only to reopen or compact.
    db: RwLock<Option<Database>>,
    /// The database must be closed and opened again before its next use (an I/O error, or a
    /// panic inside a write).
    needs_reopen: AtomicBool,
    /// Held for the whole of each write transaction; the counters as of the last commit.
    writer: Mutex<Counters>,
    outbox_len: AtomicU64,
    outbox_bytes: AtomicU64,
    outbox_next_seq: AtomicU64,
    set_aside_len: AtomicU64,
    commits: AtomicU64,
    reopens: AtomicU64,
    disk: Disk,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("options", &self.options)
            .field("outbox_len", &self.outbox_len())
            .field("outbox_bytes", &self.outbox_bytes())
            .field("set_aside_len", &self.set_aside_len())
            .field("commits", &self.commits())
            .field("disk_full", &self.disk_full())
            .finish()
    }
}

impl Store {
    /// Opens (creating if missing) `<data_dir>/weir.redb`, creating `data_dir` too, and writes
    /// the reserve file if it is missing. A file that is damaged, foreign or of another format
    /// version is refused and left untouched. A full disk does not stop it: the store then opens
    /// in the [`Store::disk_full`] state.
    pub fn open(data_dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        let path = data_dir.join(FILE_NAME);
        fs::create_dir_all(data_dir).map_err(|source| StoreError::Io {
            path: path.clone(),
            op: "creating the data directory",
            source,
        })?;
        let (db, meta) = open_database(&path)?;
        let counters = match meta {
            Meta::Empty => initialise(&path, &db)?,
            Meta::Weir => read_counters(&path, &db)?,
        };
        tracing::debug!(
            path = %path.display(),
            outbox_len = counters.outbox_len,
            outbox_bytes = counters.outbox_bytes,
            set_aside_len = counters.set_aside_len,
            "store opened"
        );
        let disk = Disk::open(data_dir.join(RESERVE_FILE_NAME), options.disk_reserve_bytes);
        let store = Store {
            path,
            options,
            db: RwLock::new(Some(db)),
            needs_reopen: AtomicBool::new(false),
            outbox_len: AtomicU64::new(0),
            outbox_bytes: AtomicU64::new(0),
            outbox_next_seq: AtomicU64::new(0),
            set_aside_len: AtomicU64::new(0),
            writer: Mutex::new(counters),
            commits: AtomicU64::new(0),
            reopens: AtomicU64::new(0),
            disk,
        };
        store.publish(&counters);
        if counters.set_aside_len > 0 {
            tracing::warn!(
                path = %store.path.display(),
                set_aside = counters.set_aside_len,
                "the store holds records set aside (refused upstream or damaged); they are kept \
                 in its set_aside table and not sent"
            );
        }
        Ok(store)
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the plugin versions swapped in are kept, so that a swap outlasts a restart:
    /// `swapped-plugins` in the data directory.
    pub fn swapped_plugins_dir(&self) -> PathBuf {
        self.path
            .parent()
            .unwrap_or(Path::new("."))
            .join("swapped-plugins")
    }

    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// Appends one entry to the input log in its own durable commit; returns its sequence.
    pub fn append_input(&self, entry: &[u8]) -> Result<u64, StoreError> {
        const OP: &str = "appending to the input log";
        self.write(OP, |txn, counters| {
            let seq = counters.input_next_seq;
            let mut input = txn.open_table(INPUT).map_err(|e| self.err(OP, e))?;
            input.insert(seq, entry).map_err(|e| self.err(OP, e))?;
            counters.input_next_seq = seq + 1;
            Ok((seq, true))
        })
    }

    /// Up to `max` input-log entries with a sequence greater than `after`, in ascending order.
    pub fn read_input(
        &self,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        const OP: &str = "reading the input log";
        self.read_range(OP, INPUT, after, max, |_, bytes| Ok(bytes.to_vec()))
    }

    /// The number of entries in the input log.
    pub fn input_len(&self) -> Result<u64, StoreError> {
        const OP: &str = "reading the input log";
        self.with_db(OP, |db| {
            let txn = db.begin_read().map_err(|e| self.err(OP, e))?;
            let input = txn.open_table(INPUT).map_err(|e| self.err(OP, e))?;
            input.len().map_err(|e| self.err(OP, e))
        })
    }

    /// In one durable transaction: replaces the checkpoint with `checkpoint`, records that it
    /// covers the input log through `covers_input_through` and deletes those entries, appends
    /// `records` to the outbox with consecutive new sequences, and with [`OnFull::DropOldest`]
    /// deletes the oldest outbox entries until the outbox is within `max_outbox_bytes`.
    ///
    /// A `covers_input_through` at or beyond the next input sequence moves that sequence past it,
    /// so that no later entry is ever taken as covered.
    pub fn commit_checkpoint(
        &self,
        checkpoint: &[u8],
        covers_input_through: Option<u64>,
        records: &[OutboxRecord],
        seen: &[(String, SeenChanges)],
    ) -> Result<CheckpointCommit, StoreError> {
        const OP: &str = "committing a checkpoint";
        let bodies = self.encode_records(OP, records)?;
        let result = self.write(OP, |txn, counters| {
            txn.open_table(CHECKPOINT)
                .map_err(|e| self.err(OP, e))?
                .insert(CHECKPOINT_STATE, checkpoint)
                .map_err(|e| self.err(OP, e))?;

            let mut stored = txn.open_table(COUNTERS).map_err(|e| self.err(OP, e))?;
            match covers_input_through {
                Some(through) => {
                    stored
                        .insert(CHECKPOINT_INPUT_THROUGH, through)
                        .map_err(|e| self.err(OP, e))?;
                    let mut input = txn.open_table(INPUT).map_err(|e| self.err(OP, e))?;
                    input
                        .retain_in(..=through, |_, _| false)
                        .map_err(|e| self.err(OP, e))?;
                    counters.input_next_seq = counters.input_next_seq.max(through + 1);
                }
                None => {
                    stored
                        .remove(CHECKPOINT_INPUT_THROUGH)
                        .map_err(|e| self.err(OP, e))?;
                }
            }
            drop(stored);

            self.apply_seen(OP, txn, seen)?;

            let mut outbox = txn.open_table(OUTBOX).map_err(|e| self.err(OP, e))?;
            let result = self.append_outbox(OP, &mut outbox, &bodies, counters)?;
            Ok((result, true))
        })?;
        self.log_dropped(result.dropped, result.dropped_bytes);
        Ok(result)
    }

    /// The engine's group commit, in one durable transaction: appends `commit.input` to the input
    /// log and `commit.records` to the outbox (with [`OnFull::DropOldest`], then drops the
    /// oldest records over the cap), deletes the acknowledged `commit.delete`, and, with a
    /// checkpoint, replaces the checkpoint blob, records that it covers every input entry logged
    /// so far (this commit's included), deletes those, and applies the dedup changes. All of it
    /// or none of it. While the disk is full, deletes (of records and of input entries a
    /// checkpoint covers) that freed enough compact the file.
    pub fn commit(&self, commit: &Commit<'_>) -> Result<Committed, StoreError> {
        const OP: &str = "committing input, records and deletes";
        let bodies = self.encode_records(OP, commit.records)?;
        let mut deletes = commit.delete.to_vec();
        deletes.sort_unstable();
        deletes.dedup();
        let mut freed = 0u64;
        let result = self.write(OP, |txn, counters| {
            let mut result = Committed::default();
            if !commit.input.is_empty() {
                let mut input = txn.open_table(INPUT).map_err(|e| self.err(OP, e))?;
                for entry in commit.input {
                    let seq = counters.input_next_seq;
                    input
                        .insert(seq, entry.as_slice())
                        .map_err(|e| self.err(OP, e))?;
                    result.input_first_seq.get_or_insert(seq);
                    result.input_last_seq = Some(seq);
                    counters.input_next_seq = seq + 1;
                }
            }
            let mut outbox = txn.open_table(OUTBOX).map_err(|e| self.err(OP, e))?;
            for (first, last) in runs(&deletes) {
                outbox
                    .retain_in(first..=last, |_, value| {
                        result.deleted += 1;
                        counters.outbox_len = counters.outbox_len.saturating_sub(1);
                        counters.outbox_bytes =
                            counters.outbox_bytes.saturating_sub(value.len() as u64);
                        freed += value.len() as u64;
                        false
                    })
                    .map_err(|e| self.err(OP, e))?;
            }
            let appended = self.append_outbox(OP, &mut outbox, &bodies, counters)?;
            result.first_seq = appended.first_seq;
            result.last_seq = appended.last_seq;
            result.dropped = appended.dropped;
            result.dropped_bytes = appended.dropped_bytes;
            drop(outbox);
            if let Some((blob, seen)) = commit.checkpoint {
                txn.open_table(CHECKPOINT)
                    .map_err(|e| self.err(OP, e))?
                    .insert(CHECKPOINT_STATE, blob)
                    .map_err(|e| self.err(OP, e))?;
                if let Some(through) = counters.input_next_seq.checked_sub(1) {
                    txn.open_table(COUNTERS)
                        .map_err(|e| self.err(OP, e))?
                        .insert(CHECKPOINT_INPUT_THROUGH, through)
                        .map_err(|e| self.err(OP, e))?;
                    txn.open_table(INPUT)
                        .map_err(|e| self.err(OP, e))?
                        .retain_in(..=through, |_, entry| {
                            freed += entry.len() as u64;
                            false
                        })
                        .map_err(|e| self.err(OP, e))?;
                }
                self.apply_seen(OP, txn, seen)?;
            }
            let changed = !commit.input.is_empty()
                || !bodies.is_empty()
                || result.deleted > 0
                || commit.checkpoint.is_some();
            Ok((result, changed))
        })?;
        self.log_dropped(result.dropped, result.dropped_bytes);
        if freed > 0
            && self
                .disk
                .freed(freed, self.outbox_len(), self.outbox_bytes())
        {
            self.compact();
        }
        Ok(result)
    }

    /// Outbox records as their bodies are stored (postcard).
    fn encode_records(
        &self,
        op: &'static str,
        records: &[OutboxRecord],
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        records
            .iter()
            .map(postcard::to_stdvec)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Database {
                path: self.path.clone(),
                op,
                detail: format!("cannot encode an outbox record: {e}"),
            })
    }

    /// Appends `bodies` (sealed with their sequences) to the outbox with consecutive new
    /// sequences, then, with [`OnFull::DropOldest`], deletes the oldest entries until the outbox
    /// is within `max_outbox_bytes`, keeping `counters` in step. Returns the sequences appended
    /// and what was dropped.
    fn append_outbox(
        &self,
        op: &'static str,
        outbox: &mut redb::Table<'_, u64, &'static [u8]>,
        bodies: &[Vec<u8>],
        counters: &mut Counters,
    ) -> Result<CheckpointCommit, StoreError> {
        let mut result = CheckpointCommit::default();
        for body in bodies {
            let seq = counters.outbox_next_seq;
            let value = outbox::seal(seq, body);
            outbox
                .insert(seq, value.as_slice())
                .map_err(|e| self.err(op, e))?;
            result.first_seq.get_or_insert(seq);
            result.last_seq = Some(seq);
            counters.outbox_next_seq = seq + 1;
            counters.outbox_len += 1;
            counters.outbox_bytes += value.len() as u64;
        }
        let max = self.options.max_outbox_bytes;
        if self.options.on_full == OnFull::DropOldest && counters.outbox_bytes > max {
            let mut oldest = outbox
                .extract_from_if::<u64, _>(.., |_, _| true)
                .map_err(|e| self.err(op, e))?;
            while counters.outbox_bytes > max {
                let Some(entry) = oldest.next() else { break };
                let (_, value) = entry.map_err(|e| self.err(op, e))?;
                let size = value.value().len() as u64;
                counters.outbox_len -= 1;
                counters.outbox_bytes -= size;
                result.dropped += 1;
                result.dropped_bytes += size;
            }
        }
        Ok(result)
    }

    /// Says at ERROR that the drop-oldest policy deleted records, if it did.
    fn log_dropped(&self, dropped: u64, dropped_bytes: u64) {
        if dropped > 0 {
            tracing::error!(
                path = %self.path.display(),
                dropped,
                dropped_bytes,
                max_outbox_bytes = self.options.max_outbox_bytes,
                "outbox full: dropped the oldest records by the configured drop-oldest policy; \
                 they will never be forwarded"
            );
        }
    }

    /// Applies the dedup changes of a checkpoint to the `seen` table.
    fn apply_seen(
        &self,
        op: &'static str,
        txn: &WriteTransaction,
        seen: &[(String, SeenChanges)],
    ) -> Result<(), StoreError> {
        let mut table = txn.open_table(SEEN).map_err(|e| self.err(op, e))?;
        for (pipeline, changes) in seen {
            let start = seen_key(pipeline, i64::MIN, None);
            let cutoff = seen_key(pipeline, changes.forget_before_ms, None);
            table
                .retain_in(start.as_slice()..cutoff.as_slice(), |_, _| false)
                .map_err(|e| self.err(op, e))?;
            for (t, f) in &changes.evicted {
                table
                    .remove(seen_key(pipeline, *t, Some(f)).as_slice())
                    .map_err(|e| self.err(op, e))?;
            }
            for (t, f) in changes
                .added
                .iter()
                .filter(|(t, _)| *t >= changes.forget_before_ms)
            {
                table
                    .insert(seen_key(pipeline, *t, Some(f)).as_slice(), ())
                    .map_err(|e| self.err(op, e))?;
            }
        }
        Ok(())
    }

    /// What `pipeline`'s ingest dedup remembers, as committed by checkpoints: (receive time,
    /// fingerprint), oldest first.
    pub fn load_seen(&self, pipeline: &str) -> Result<Vec<(i64, Fingerprint)>, StoreError> {
        const OP: &str = "loading the dedup memory";
        self.with_db(OP, |db| {
            let txn = db.begin_read().map_err(|e| self.err(OP, e))?;
            let table = match txn.open_table(SEEN) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(self.err(OP, e)),
            };
            let start = seen_key(pipeline, i64::MIN, None);
            let end = seen_key(pipeline, i64::MAX, Some(&[0xff; 16]));
            let mut out = Vec::new();
            for entry in table
                .range(start.as_slice()..=end.as_slice())
                .map_err(|e| self.err(OP, e))?
            {
                let (key, _) = entry.map_err(|e| self.err(OP, e))?;
                let key = key.value();
                let rest = &key[pipeline.len() + 1..];
                if rest.len() != 24 {
                    continue;
                }
                let t =
                    (u64::from_be_bytes(rest[..8].try_into().expect("8 bytes")) ^ (1 << 63)) as i64;
                out.push((t, rest[8..].try_into().expect("16 bytes")));
            }
            Ok(out)
        })
    }

    /// The checkpoint blob and the input sequence it covers through, if a checkpoint was ever
    /// committed.
    pub fn load_checkpoint(&self) -> Result<Option<SavedCheckpoint>, StoreError> {
        const OP: &str = "loading the checkpoint";
        self.with_db(OP, |db| {
            let txn = db.begin_read().map_err(|e| self.err(OP, e))?;
            let table = txn.open_table(CHECKPOINT).map_err(|e| self.err(OP, e))?;
            let Some(blob) = table.get(CHECKPOINT_STATE).map_err(|e| self.err(OP, e))? else {
                return Ok(None);
            };
            let counters = txn.open_table(COUNTERS).map_err(|e| self.err(OP, e))?;
            let through = counters
                .get(CHECKPOINT_INPUT_THROUGH)
                .map_err(|e| self.err(OP, e))?
                .map(|v| v.value());
            Ok(Some((blob.value().to_vec(), through)))
        })
    }

    /// Up to `max` outbox records with a sequence greater than `after`, in ascending order. Strict:
    /// a damaged or unreadable record is [`StoreError::Corrupt`]; the forwarder reads with
    /// [`Store::read_outbox_entries`], which reports damage per record and reads on past it.
    pub fn read_outbox(
        &self,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<(u64, OutboxRecord)>, StoreError> {
        self.read_outbox_entries(after, max)?
            .into_iter()
            .map(|entry| match entry {
                OutboxEntry::Record(seq, record) => Ok((seq, record)),
                OutboxEntry::Damaged { seq, reason } => Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("outbox record {seq} {reason}"),
                }),
                OutboxEntry::Unreadable {
                    first,
                    last,
                    detail,
                } => Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("outbox records {first} to {last} cannot be read ({detail})"),
                }),
            })
            .collect()
    }

    /// Deletes the outbox entries with these sequences in one durable commit (each contiguous
    /// run as one range); sequences not in the outbox are ignored. Returns how many were deleted.
    /// While the disk is full, deletes that freed enough compact the file (see the module doc).
    pub fn delete_outbox(&self, seqs: &[u64]) -> Result<usize, StoreError> {
        const OP: &str = "deleting from the outbox";
        let mut sorted = seqs.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.is_empty() {
            return Ok(0);
        }
        let mut freed = 0u64;
        let deleted = self.write(OP, |txn, counters| {
            let mut outbox = txn.open_table(OUTBOX).map_err(|e| self.err(OP, e))?;
            let mut deleted = 0usize;
            for (first, last) in runs(&sorted) {
                outbox
                    .retain_in(first..=last, |_, value| {
                        deleted += 1;
                        counters.outbox_len = counters.outbox_len.saturating_sub(1);
                        counters.outbox_bytes =
                            counters.outbox_bytes.saturating_sub(value.len() as u64);
                        freed += value.len() as u64;
                        false
                    })
                    .map_err(|e| self.err(OP, e))?;
            }
            Ok((deleted, deleted > 0))
        })?;
        if freed > 0
            && self
                .disk
                .freed(freed, self.outbox_len(), self.outbox_bytes())
        {
            self.compact();
        }
        Ok(deleted)
    }

    /// The number of records in the outbox.
    pub fn outbox_len(&self) -> u64 {
        self.outbox_len.load(Ordering::Acquire)
    }

    /// The sum of the outbox's stored value sizes, in bytes (what `max_outbox_bytes` caps).
    pub fn outbox_bytes(&self) -> u64 {
        self.outbox_bytes.load(Ordering::Acquire)
    }

    /// The number of entries in the set-aside table (see [`Store::set_aside`]).
    pub fn set_aside_len(&self) -> u64 {
        self.set_aside_len.load(Ordering::Acquire)
    }

    /// The highest sequence ever given to an outbox record (whether or not it is still there),
    /// or `None` if the store never held one.
    pub fn last_outbox_seq(&self) -> Option<u64> {
        self.outbox_next_seq.load(Ordering::Acquire).checked_sub(1)
    }

    /// Durable commits since open. Each costs redb's two-phase commit: two fdatasyncs.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Times the database was closed and opened again after an I/O error.
    pub fn reopens(&self) -> u64 {
        self.reopens.load(Ordering::Relaxed)
    }

    /// The disk is full: no new input should be written until [`Store::try_resume`] says there
    /// is room again (deletes, set-asides and checkpoints of what was logged may be).
    pub fn disk_full(&self) -> bool {
        self.disk.is_full()
    }

    /// Times the disk was found full.
    pub fn disk_full_events(&self) -> u64 {
        self.disk.full_events()
    }

    /// Compactions done to give space back while the disk was full.
    pub fn compactions(&self) -> u64 {
        self.disk.compactions()
    }

    /// Whether the store may be written to again: true unless the disk is full; while it is, at
    /// most once a second, checks whether the device has room for the reserve twice over and if
    /// so writes the reserve back and leaves the full state. Cheap otherwise (no I/O).
    pub fn try_resume(&self) -> bool {
        self.disk.try_resume(&self.path)
    }

    /// Publishes committed counters to the atomics readers use.
    fn publish(&self, counters: &Counters) {
        self.outbox_len
            .store(counters.outbox_len, Ordering::Release);
        self.outbox_bytes
            .store(counters.outbox_bytes, Ordering::Release);
        self.outbox_next_seq
            .store(counters.outbox_next_seq, Ordering::Release);
        self.set_aside_len
            .store(counters.set_aside_len, Ordering::Release);
    }

    /// Runs one durable write transaction. `body` updates a copy of the counters and returns its
    /// result and whether it changed anything; the counters are stored in the same transaction
    /// and published only after the commit succeeds. A body that changed nothing is aborted.
    fn write<T>(
        &self,
        op: &'static str,
        body: impl FnOnce(&WriteTransaction, &mut Counters) -> Result<(T, bool), StoreError>,
    ) -> Result<T, StoreError> {
        let mut committed = self.lock_writer();
        self.reopen_if_needed(&mut committed)?;
        let mut counters = *committed;
        let db = self.read_db();
        let Some(db) = db.as_ref() else {
            return Err(self.closed(op));
        };
        let result = self.guard_write(op, || {
            let mut txn = db.begin_write().map_err(|e| self.err(op, e))?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| self.err_detail(op, e))?;
            txn.set_quick_repair(true);
            let (out, changed) = body(&txn, &mut counters)?;
            if !changed {
                txn.abort().map_err(|e| self.err(op, e))?;
                return Ok(out);
            }
            write_counters(&txn, &counters).map_err(|e| self.err(op, e))?;
            txn.commit().map_err(|e| self.err(op, e))?;
            self.commits.fetch_add(1, Ordering::Relaxed);
            Ok(out)
        });
        match &result {
            Ok(_) => {
                *committed = counters;
                self.publish(&counters);
            }
            Err(e) if e.is_no_space() => self.disk.enter_full(&self.path, op),
            Err(_) => {}
        }
        result
    }

    /// Reads up to `max` entries with a key greater than `after` from a `u64`-keyed table.
    fn read_range<T>(
        &self,
        op: &'static str,
        table: TableDefinition<u64, &[u8]>,
        after: Option<u64>,
        max: usize,
        decode: impl Fn(u64, &[u8]) -> Result<T, StoreError>,
    ) -> Result<Vec<(u64, T)>, StoreError> {
        let from = match after {
            None => 0,
            Some(u64::MAX) => return Ok(Vec::new()),
            Some(seq) => seq + 1,
        };
        self.with_db(op, |db| {
            let txn = db.begin_read().map_err(|e| self.err(op, e))?;
            let table = txn.open_table(table).map_err(|e| self.err(op, e))?;
            let mut out = Vec::with_capacity(max.min(1024));
            for entry in table.range(from..).map_err(|e| self.err(op, e))?.take(max) {
                let (key, value) = entry.map_err(|e| self.err(op, e))?;
                let seq = key.value();
                out.push((seq, decode(seq, value.value())?));
            }
            Ok(out)
        })
    }

    /// Runs `f` on the open database (reopening it first after an I/O error), turning a panic
    /// inside redb (which a damaged page can cause) into [`StoreError::Corrupt`] instead of
    /// taking the process down.
    fn with_db<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.needs_reopen.load(Ordering::Acquire) {
            let mut committed = self.lock_writer();
            self.reopen_if_needed(&mut committed)?;
        }
        let db = self.read_db();
        let Some(db) = db.as_ref() else {
            return Err(self.closed(op));
        };
        guard_panic(&self.path, op, || f(db))
    }

    /// [`guard_panic`] for a write: a panic inside a write transaction may leave redb's state
    /// unusable, so the database is reopened before the next operation.
    fn guard_write<T>(
        &self,
        op: &'static str,
        f: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
            self.needs_reopen.store(true, Ordering::Release);
            Err(panicked(&self.path, op, &*payload))
        })
    }

    fn read_db(&self) -> RwLockReadGuard<'_, Option<Database>> {
        self.db.read().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_writer(&self) -> MutexGuard<'_, Counters> {
        // A panic while the lock was held aborted that transaction before it could publish
        // anything, so the counters it guards are still the committed ones.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes and reopens the database if an I/O error (or a panic in a write) asked for it;
    /// the caller holds the writer lock. The counters are read back from the file: it is as of
    /// its last durable commit.
    fn reopen_if_needed(&self, committed: &mut Counters) -> Result<(), StoreError> {
        if !self.needs_reopen.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        // Dropped first: it holds the file's lock. After an I/O error redb writes nothing more.
        *slot = None;
        let (db, meta) = open_database(&self.path)?;
        let counters = match meta {
            Meta::Weir => read_counters(&self.path, &db)?,
            Meta::Empty => {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: "it lost its tables while weir was running".into(),
                });
            }
        };
        *slot = Some(db);
        drop(slot);
        *committed = counters;
        self.publish(&counters);
        self.needs_reopen.store(false, Ordering::Release);
        let n = self.reopens.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(
            path = %self.path.display(),
            reopens = n,
            "reopened the store after an i/o error; it continues from its last commit"
        );
        Ok(())
    }

    /// Compacts the file (gives free pages back to the device), then tries to leave the full
    /// state. Failures are logged: the disk stays full, nothing else changes.
    fn compact(&self) {
        const OP: &str = "compacting the store";
        let committed = self.lock_writer();
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        let Some(db) = slot.as_mut() else { return };
        let before = fs::metadata(&self.path).map_or(0, |m| m.len());
        let started = std::time::Instant::now();
        let result = guard_panic(&self.path, OP, || {
            db.compact().map_err(|e| self.err(OP, e))?;
            Ok(())
        });
        drop(slot);
        drop(committed);
        match result {
            Ok(()) => {
                self.disk.compacted();
                tracing::info!(
                    path = %self.path.display(),
                    before_bytes = before,
                    after_bytes = fs::metadata(&self.path).map_or(0, |m| m.len()),
                    took_ms = started.elapsed().as_millis() as u64,
                    "compacted the store to give space back to the full disk"
                );
                self.try_resume();
            }
            Err(error) => {
                self.needs_reopen.store(true, Ordering::Release);
                tracing::warn!(%error, "cannot compact the store; the disk stays full");
            }
        }
    }

    fn closed(&self, op: &'static str) -> StoreError {
        StoreError::Database {
            path: self.path.clone(),
            op,
            detail: "the database is closed after an i/o error and could not be opened again"
                .into(),
        }
    }

    /// A redb error during `op`; one that leaves redb refusing further I/O asks for a reopen.
    fn err(&self, op: &'static str, error: impl Into<redb::Error>) -> StoreError {
        let error = error.into();
        if matches!(
            error,
            redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed
        ) {
            self.needs_reopen.store(true, Ordering::Release);
        }
        StoreError::from_redb(&self.path, op, error)
    }

    fn err_detail(&self, op: &'static str, error: impl std::fmt::Display) -> StoreError {
        StoreError::Database {
            path: self.path.clone(),
            op,
            detail: error.to_string(),
        }
    }
}

/// Checks every page checksum of the store file at `path` (which must not be open elsewhere) and
/// rebuilds redb's allocator state: `Ok(true)` if the file was intact, `Ok(false)` if redb had
/// to repair it. Reads the whole file.
pub fn integrity_check(path: &Path) -> Result<bool, StoreError> {
    const OP: &str = "checking the integrity of the store";
    guard_panic(path, OP, || {
        let mut db = open_existing(path)?;
        db.check_integrity()
            .map_err(|e| StoreError::from_redb(path, OP, e))
    })
}

/// `[first, last]` runs of consecutive values in a sorted, deduplicated slice.
fn runs(sorted: &[u64]) -> impl Iterator<Item = (u64, u64)> + '_ {
    let mut rest = sorted;
    std::iter::from_fn(move || {
        let (&first, _) = rest.split_first()?;
        let len = rest
            .iter()
            .enumerate()
            .take_while(|&(i, &seq)| seq == first + i as u64)
            .count();
        let last = rest[len - 1];
        rest = &rest[len..];
        Some((first, last))
    })
}

/// The message of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("no message")
}

/// A panic inside redb during `op`, logged and turned into [`StoreError::Corrupt`].
fn panicked(path: &Path, op: &'static str, payload: &(dyn std::any::Any + Send)) -> StoreError {
    let detail = panic_message(payload);
    tracing::error!(path = %path.display(), op, detail, "the store panicked");
    StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("redb failed while {op} ({detail})"),
    }
}

fn guard_panic<T>(
    path: &Path,
    op: &'static str,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    panic::catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|payload| Err(panicked(path, op, &*payload)))
}

/// Opens the redb file, creating it if missing. An existing file is first opened read-only and
/// its meta table checked, so that a foreign or other-version file is refused without a byte
/// written to it. A file redb reports damaged is [`StoreError::Corrupt`] and left alone (redb's
/// `create` only initialises a missing or empty file).
fn open_database(path: &Path) -> Result<(Database, Meta), StoreError> {
    const OP: &str = "opening the store";
    let exists = fs::metadata(path).is_ok_and(|m| m.len() > 0);
    guard_panic(path, OP, || {
        if exists {
            match builder().open_read_only(path) {
                Ok(db) => {
                    // Everything opening reads, read first without a byte written: a file
                    // refused here is left exactly as it was.
                    if let Meta::Weir = read_meta(path, &db)? {
                        read_counters(path, &db)?;
                    }
                }
                // Not closed cleanly and no allocator snapshot: only a writable open repairs it,
                // and the meta check follows the repair.
                Err(redb::DatabaseError::RepairAborted) => {}
                Err(e) => return Err(open_error(path, OP, e)),
            }
        }
        let db = builder()
            .create(path)
            .map_err(|e| open_error(path, OP, e))?;
        let meta = read_meta(path, &db)?;
        Ok((db, meta))
    })
}

fn builder() -> redb::Builder {
    let mut builder = redb::Builder::new();
    builder.set_cache_size(CACHE_BYTES);
    builder
}

fn open_existing(path: &Path) -> Result<Database, StoreError> {
    const OP: &str = "opening the store";
    builder().open(path).map_err(|e| open_error(path, OP, e))
}

/// At open, a short read or undecodable header means a damaged file, not a failing disk.
fn open_error(path: &Path, op: &'static str, error: redb::DatabaseError) -> StoreError {
    match StoreError::from_redb(path, op, error) {
        StoreError::Io { path, source, .. }
            if matches!(
                source.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
            ) =>
        {
            StoreError::Corrupt {
                path,
                detail: format!("it is not a complete redb database ({source})"),
            }
        }
        other => other,
    }
}

enum Meta {
    /// A redb file with no tables at all: just created (or a crash before the first commit).
    Empty,
    /// A weir store in the current format.
    Weir,
}

/// Checks that the file is a weir store in [`FORMAT_VERSION`], or a redb file with no tables.
fn read_meta(path: &Path, db: &impl ReadableDatabase) -> Result<Meta, StoreError> {
    const OP: &str = "reading the store's format version";
    let err = |e: redb::Error| StoreError::from_redb(path, OP, e);
    let not_weir = |detail: &str| StoreError::NotWeirStore {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    };
    guard_panic(path, OP, || {
        let txn = db.begin_read().map_err(|e| err(e.into()))?;
        let tables: Vec<String> = txn
            .list_tables()
            .map_err(|e| err(e.into()))?
            .map(|t| t.name().to_string())
            .collect();
        let has_multimaps = txn
            .list_multimap_tables()
            .map_err(|e| err(e.into()))?
            .next()
            .is_some();
        if tables.is_empty() && !has_multimaps {
            return Ok(Meta::Empty);
        }
        if !tables.iter().any(|t| t == META.name()) {
            return Err(not_weir("it has no weir meta table"));
        }
        let meta = txn.open_table(META).map_err(|e| err(e.into()))?;
        let app = meta.get(META_APP).map_err(|e| err(e.into()))?;
        if app.as_ref().map(|v| v.value()) != Some(APP) {
            return Err(not_weir("its meta table does not name weir"));
        }
        let version = meta
            .get(META_FORMAT_VERSION)
            .map_err(|e| err(e.into()))?
            .and_then(|v| <[u8; 4]>::try_from(v.value()).ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| not_weir("its meta table has no format version"))?;
        if version != FORMAT_VERSION {
            return Err(StoreError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                expected: FORMAT_VERSION,
            });
        }
        Ok(Meta::Weir)
    })
}

/// Writes the meta table and creates every table, in one durable commit.
fn initialise(path: &Path, db: &Database) -> Result<Counters, StoreError> {
    const OP: &str = "initialising a new store";
    let err = |e: redb::Error| StoreError::from_redb(path, OP, e);
    let counters = Counters::default();
    let mut txn = db.begin_write().map_err(|e| err(e.into()))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| StoreError::Database {
            path: path.to_path_buf(),
            op: OP,
            detail: e.to_string(),
        })?;
    txn.set_quick_repair(true);
    {
        let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
        meta.insert(META_APP, APP).map_err(|e| err(e.into()))?;
        meta.insert(META_FORMAT_VERSION, FORMAT_VERSION.to_le_bytes().as_slice())
            .map_err(|e| err(e.into()))?;
        txn.open_table(INPUT).map_err(|e| err(e.into()))?;
        txn.open_table(CHECKPOINT).map_err(|e| err(e.into()))?;
        txn.open_table(OUTBOX).map_err(|e| err(e.into()))?;
        txn.open_table(SET_ASIDE).map_err(|e| err(e.into()))?;
    }
    write_counters(&txn, &counters).map_err(err)?;
    txn.commit().map_err(|e| err(e.into()))?;
    tracing::info!(path = %path.display(), "created a new store");
    Ok(counters)
}

fn write_counters(txn: &WriteTransaction, counters: &Counters) -> Result<(), redb::Error> {
    let mut table = txn.open_table(COUNTERS)?;
    table.insert(INPUT_NEXT_SEQ, counters.input_next_seq)?;
    table.insert(OUTBOX_NEXT_SEQ, counters.outbox_next_seq)?;
    table.insert(OUTBOX_LEN, counters.outbox_len)?;
    table.insert(OUTBOX_BYTES, counters.outbox_bytes)?;
    table.insert(SET_ASIDE_LEN, counters.set_aside_len)?;
    Ok(())
}

/// Reads the persistent counters and checks `outbox_len` against the outbox table's own length.
fn read_counters(path: &Path, db: &impl ReadableDatabase) -> Result<Counters, StoreError> {
    const OP: &str = "reading the store's counters";
    let err = |e: redb::Error| StoreError::from_redb(path, OP, e);
    guard_panic(path, OP, || {
        let txn = db.begin_read().map_err(|e| err(e.into()))?;
        let table = txn.open_table(COUNTERS).map_err(|e| err(e.into()))?;
        let get = |key: &str| -> Result<u64, StoreError> {
            table
                .get(key)
                .map_err(|e| err(e.into()))?
                .map(|v| v.value())
                .ok_or_else(|| StoreError::Corrupt {
                    path: path.to_path_buf(),
                    detail: format!("its counters table has no {key}"),
                })
        };
        let counters = Counters {
            input_next_seq: get(INPUT_NEXT_SEQ)?,
            outbox_next_seq: get(OUTBOX_NEXT_SEQ)?,
            outbox_len: get(OUTBOX_LEN)?,
            outbox_bytes: get(OUTBOX_BYTES)?,
            set_aside_len: get(SET_ASIDE_LEN)?,
        };
        let outbox = txn.open_table(OUTBOX).map_err(|e| err(e.into()))?;
        let actual = outbox.len().map_err(|e| err(e.into()))?;
        if actual != counters.outbox_len {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: format!(
                    "its outbox holds {actual} records but its counters say {}",
                    counters.outbox_len
                ),
            });
        }
        Ok(counters)
    })
}
