use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::*;
use redb::ReadableTable;

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let unique = format!(
            "weir-store-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(unique);
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn file(&self) -> PathBuf {
        self.0.join(FILE_NAME)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn options(max_outbox_bytes: u64, on_full: OnFull) -> StoreOptions {
    StoreOptions {
        max_outbox_bytes,
        on_full,
        disk_reserve_bytes: 64 * 1024,
    }
}

fn unbounded() -> StoreOptions {
    options(u64::MAX, OnFull::Block)
}

fn record(n: u64, payload_len: usize) -> OutboxRecord {
    OutboxRecord {
        topic: format!("farm/site-{}/minute", n % 7),
        id: weir_id(n),
        payload: vec![(n % 251) as u8; payload_len],
    }
}

/// The stored size of a record: its checksum and its postcard body.
fn encoded_len(record: &OutboxRecord) -> u64 {
    (outbox::CHECKSUM_BYTES + postcard::to_stdvec(record).unwrap().len()) as u64
}

fn seqs(entries: &[(u64, OutboxRecord)]) -> Vec<u64> {
    entries.iter().map(|(seq, _)| *seq).collect()
}

#[test]
fn store_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
}

#[test]
fn open_creates_the_directory_and_file() {
    let dir = TempDir::new("create");
    let data_dir = dir.path().join("a/b");
    let store = Store::open(&data_dir, unbounded()).unwrap();
    assert_eq!(store.path(), data_dir.join("weir.redb"));
    assert!(store.path().is_file());
    assert_eq!(store.outbox_len(), 0);
    assert_eq!(store.outbox_bytes(), 0);
    assert_eq!(store.last_outbox_seq(), None);
    assert_eq!(store.input_len().unwrap(), 0);
    assert_eq!(store.load_checkpoint().unwrap(), None);
    assert_eq!(store.commits(), 0);
}

#[test]
fn input_log_appends_reads_and_trims_through_a_checkpoint() {
    let dir = TempDir::new("input");
    let store = Store::open(dir.path(), unbounded()).unwrap();
    for n in 0..10u8 {
        assert_eq!(store.append_input(&[n; 3]).unwrap(), u64::from(n));
    }
    assert_eq!(store.commits(), 10);
    assert_eq!(store.input_len().unwrap(), 10);
    let all = store.read_input(None, 100).unwrap();
    assert_eq!(all.len(), 10);
    assert_eq!(all[4], (4, vec![4; 3]));
    let page = store.read_input(Some(4), 3).unwrap();
    assert_eq!(page.iter().map(|e| e.0).collect::<Vec<_>>(), [5, 6, 7]);
    assert!(store.read_input(Some(u64::MAX), 10).unwrap().is_empty());

    store.commit_checkpoint(b"cp1", Some(6), &[], &[]).unwrap();
    assert_eq!(store.input_len().unwrap(), 3);
    assert_eq!(store.read_input(None, 100).unwrap()[0].0, 7);
    assert_eq!(
        store.load_checkpoint().unwrap(),
        Some((b"cp1".to_vec(), Some(6)))
    );

    // Sequences keep increasing after a trim of everything and a reopen.
    store.commit_checkpoint(b"cp2", Some(9), &[], &[]).unwrap();
    assert_eq!(store.input_len().unwrap(), 0);
    drop(store);
    let store = Store::open(dir.path(), unbounded()).unwrap();
    assert_eq!(store.append_input(b"x").unwrap(), 10);
    assert_eq!(
        store.load_checkpoint().unwrap(),
        Some((b"cp2".to_vec(), Some(9)))
    );
}

#[test]
fn a_checkpoint_ahead_of_the_input_log_moves_the_next_sequence_past_it() {
    let dir = TempDir::new("ahead");
    let store = Store::open(dir.path(), unbounded()).unwrap();
    store.commit_checkpoint(b"cp", Some(41), &[], &[]).unwrap();
    assert_eq!(store.append_input(b"x").unwrap(), 42);
}

#[test]
fn a_checkpoint_with_no_input_position_records_none() {
    let dir = TempDir::new("none");
    let store = Store::open(dir.path(), unbounded()).unwrap();
    store.append_input(b"x").unwrap();
    store.commit_checkpoint(b"a", Some(0), &[], &[]).unwrap();
    store.commit_checkpoint(b"b", None, &[], &[]).unwrap();
    assert_eq!(
        store.load_checkpoint().unwrap(),
        Some((b"b".to_vec(), None))
    );
}

#[test]
fn outbox_seqs_continue_after_deletes_and_reopen() {
    let dir = TempDir::new("outbox-seqs");
    let store = Store::open(dir.path(), unbounded()).unwrap();
    let records: Vec<_> = (0..5).map(|n| record(n, 10)).collect();
    let commit = store.commit_checkpoint(b"", None, &records, &[]).unwrap();
    assert_eq!((commit.first_seq, commit.last_seq), (Some(0), Some(4)));
    assert_eq!(
        store.read_outbox(None, 10).unwrap()[2],
        (2, records[2].clone())
    );
    assert_eq!(store.delete_outbox(&[0, 1, 2, 3, 4]).unwrap(), 5);
    assert_eq!(store.outbox_len(), 0);
    assert_eq!(store.last_outbox_seq(), Some(4));

    let commit = store
        .commit_checkpoint(b"", None, &records[..2], &[])
        .unwrap();
    assert_eq!((commit.first_seq, commit.last_seq), (Some(5), Some(6)));
    assert_eq!(store.delete_outbox(&[5, 6]).unwrap(), 2);
    drop(store);

    let store = Store::open(dir.path(), unbounded()).unwrap();
    assert_eq!(store.last_outbox_seq(), Some(6));
    let commit = store
        .commit_checkpoint(b"", None, &records[..1], &[])
        .unwrap();
    assert_eq!(commit.first_seq, Some(7));
    let empty = store.commit_checkpoint(b"", None, &[], &[]).unwrap();
    assert_eq!(empty, CheckpointCommit::default());
}

#[test]
fn totals_are_correct_after_reopen() {
    let dir = TempDir::new("totals");
    let store = Store::open(dir.path(), unbounded()).unwrap();
    let records: Vec<_> = (0..100).map(|n| record(n, (n % 40) as usize)).collect();
    store.commit_checkpoint(b"", None, &records, &[]).unwrap();
    store.delete_outbox(&[3, 4, 5, 50, 99, 1000]).unwrap();
    let expected_bytes: u64 = records
        .iter()
        .enumerate()
        .filter(|(i, _)| ![3, 4, 5, 50, 99].contains(i))
        .map(|(_, r)| encoded_len(r))
        .sum();
    assert_eq!(store.outbox_len(), 95);
    assert_eq!(store.outbox_bytes(), expected_bytes);
    drop(store);
    let store = Store::open(dir.path(), unbounded()).unwrap();
    assert_eq!(store.outbox_len(), 95);
    assert_eq!(store.outbox_bytes(), expected_bytes);
    assert_eq!(store.last_outbox_seq(), Some(99));
}

#[test]
fn drop_oldest_keeps_the_outbox_within_the_cap_and_counts() {
    let dir = TempDir::new("drop-oldest");
    let one = encoded_len(&record(0, 100));
    let store = Store::open(dir.path(), options(10 * one, OnFull::DropOldest)).unwrap();
    let records: Vec<_> = (0..8).map(|n| record(n, 100)).collect();
    assert_eq!(
        store
            .commit_checkpoint(b"", None, &records, &[])
            .unwrap()
            .dropped,
        0
    );
    let commit = store.commit_checkpoint(b"", None, &records, &[]).unwrap();
    assert_eq!(commit.dropped, 6);
    assert_eq!(commit.dropped_bytes, 6 * one);
    assert_eq!((commit.first_seq, commit.last_seq), (Some(8), Some(15)));
    assert_eq!(store.outbox_len(), 10);
    assert_eq!(store.outbox_bytes(), 10 * one);
    // The oldest went first.
    assert_eq!(
        seqs(&store.read_outbox(None, 100).unwrap()),
        (6..16).collect::<Vec<_>>()
    );
    drop(store);
    let store = Store::open(dir.path(), options(10 * one, OnFull::DropOldest)).unwrap();
    assert_eq!((store.outbox_len(), store.outbox_bytes()), (10, 10 * one));
}

#[test]
fn block_never_drops() {
    let dir = TempDir::new("block");
    let store = Store::open(dir.path(), options(10, OnFull::Block)).unwrap();
    let records: Vec<_> = (0..50).map(|n| record(n, 100)).collect();
    let commit = store.commit_checkpoint(b"", None, &records, &[]).unwrap();
    assert_eq!((commit.dropped, commit.dropped_bytes), (0, 0));
    assert_eq!(store.outbox_len(), 50);
    assert!(store.outbox_bytes() >= store.options().max_outbox_bytes);
}

#[test]
fn a_checkpoint_its_records_and_its_trim_are_one_commit() {
    let dir = TempDir::new("atomic");
    let one = encoded_len(&record(0, 20));
    let store = Store::open(dir.path(), options(3 * one, OnFull::DropOldest)).unwrap();
    for _ in 0..5 {
        store.append_input(b"raw").unwrap();
    }
    store
        .commit_checkpoint(
            b"",
            None,
            &[record(0, 20), record(1, 20), record(2, 20)],
            &[],
        )
        .unwrap();
    let before = store.commits();
    let commit = store
        .commit_checkpoint(b"state", Some(3), &[record(3, 20), record(4, 20)], &[])
        .unwrap();
    assert_eq!(store.commits(), before + 1);
    assert_eq!(commit.dropped, 2);
    assert_eq!(store.input_len().unwrap(), 1);
    assert_eq!(
        store.load_checkpoint().unwrap(),
        Some((b"state".to_vec(), Some(3)))
    );
    assert_eq!(seqs(&store.read_outbox(None, 10).unwrap()), [2, 3, 4]);
}

#[test]
fn deleting_missing_seqs_is_harmless_and_commits_nothing() {
    let dir = TempDir::new("missing");
    let store = Store::open(dir.path(), unbounded()).unwrap();
    store
        .commit_checkpoint(b"", None, &[record(0, 5), record(1, 5)], &[])
        .unwrap();
    let (len, bytes, commits) = (store.outbox_len(), store.outbox_bytes(), store.commits());
    assert_eq!(store.delete_outbox(&[]).unwrap(), 0);
    assert_eq!(store.delete_outbox(&[7, 8, 1000, u64::MAX]).unwrap(), 0);
    assert_eq!(store.commits(), commits);
    assert_eq!((store.outbox_len(), store.outbox_bytes()), (len, bytes));
    // Repeats and a mix of present and missing seqs.
    assert_eq!(store.delete_outbox(&[1, 1, 5, 1]).unwrap(), 1);
    assert_eq!(store.commits(), commits + 1);
    assert_eq!(store.delete_outbox(&[1]).unwrap(), 0);
    assert_eq!(seqs(&store.read_outbox(None, 10).unwrap()), [0]);
}

#[test]
fn runs_split_sorted_seqs_into_contiguous_ranges() {
    let got: Vec<_> = runs(&[1, 2, 3, 5, 7, 8, u64::MAX]).collect();
    assert_eq!(got, [(1, 3), (5, 5), (7, 8), (u64::MAX, u64::MAX)]);
    assert_eq!(runs(&[]).count(), 0);
}

#[test]
fn a_second_open_of_the_same_file_is_refused() {
    let dir = TempDir::new("in-use");
    let _store = Store::open(dir.path(), unbounded()).unwrap();
    let err = Store::open(dir.path(), unbounded()).unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "another weir is using {}: stop it first, or give this instance its own data_dir",
            dir.file().display()
        )
    );
}

/// Opens `dir` expecting a refusal, and checks that the file is byte-for-byte as before.
fn assert_refused_untouched(dir: &TempDir) -> StoreError {
    let before = fs::read(dir.file()).unwrap();
    let err = Store::open(dir.path(), unbounded()).unwrap_err();
    assert!(
        fs::read(dir.file()).unwrap() == before,
        "{err}: the file was modified"
    );
    // A second attempt is refused the same way (nothing was repaired in between).
    let again = Store::open(dir.path(), unbounded()).unwrap_err();
    assert_eq!(again.to_string(), err.to_string());
    assert!(
        fs::read(dir.file()).unwrap() == before,
        "{err}: the file was modified"
    );
    eprintln!("refused as expected: {err}");
    err
}

#[test]
fn a_garbage_file_is_refused_and_left_untouched() {
    let dir = TempDir::new("garbage");
    for garbage in [
        b"not a database".to_vec(),
        (0..20_000u32).map(|i| (i * 7919 % 256) as u8).collect(),
    ] {
        fs::write(dir.file(), &garbage).unwrap();
        let err = assert_refused_untouched(&dir);
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        let path = dir.file().display().to_string();
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("the database {path} cannot be opened: ")),
            "{message}"
        );
        assert!(message.contains("weir will not overwrite it"), "{message}");
        assert!(
            message.contains(&format!("mv {path} {path}.broken")),
            "{message}"
        );
    }
}

/// A closed store holding a few hundred records.
fn filled_store(dir: &TempDir) -> u64 {
    let store = Store::open(dir.path(), unbounded()).unwrap();
    for chunk in 0..20 {
        let records: Vec<_> = (0..50).map(|n| record(chunk * 50 + n, 150)).collect();
        store
            .commit_checkpoint(b"checkpoint", None, &records, &[])
            .unwrap();
    }
    fs::metadata(dir.file()).unwrap().len()
}

#[test]
fn a_truncated_store_is_refused_and_left_untouched() {
    let dir = TempDir::new("truncated");
    let len = filled_store(&dir);
    let file = fs::OpenOptions::new().write(true).open(dir.file()).unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);
    let err = assert_refused_untouched(&dir);
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
}

#[test]
fn a_store_overwritten_in_the_middle_is_refused_and_left_untouched() {
    let dir = TempDir::new("overwritten");
    let len = filled_store(&dir) as usize;
    let mut bytes = fs::read(dir.file()).unwrap();
    for (i, byte) in bytes[len / 4..len * 3 / 4].iter_mut().enumerate() {
        *byte = (i * 31 % 256) as u8;
    }
    fs::write(dir.file(), &bytes).unwrap();
    let err = assert_refused_untouched(&dir);
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
}

/// Rewrites one meta entry of a closed store with raw redb.
fn set_meta(dir: &TempDir, key: &str, value: &[u8]) {
    let db = Database::open(dir.file()).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(META).unwrap().insert(key, value).unwrap();
    txn.commit().unwrap();
}

#[test]
fn another_format_version_is_refused_and_left_untouched() {
    let dir = TempDir::new("version");
    filled_store(&dir);
    // Format version 1 (outbox records without checksums) is an older weir's.
    set_meta(&dir, META_FORMAT_VERSION, &1u32.to_le_bytes());
    let err = assert_refused_untouched(&dir);
    assert!(
        matches!(
            err,
            StoreError::UnsupportedVersion {
                found: 1,
                expected: FORMAT_VERSION,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("format version 1"), "{err}");
    assert!(
        err.to_string()
            .contains("run the weir release that wrote it"),
        "{err}"
    );
}

#[test]
fn a_redb_file_of_another_app_is_refused_and_left_untouched() {
    let dir = TempDir::new("foreign");
    let db = Database::create(dir.file()).unwrap();
    let txn = db.begin_write().unwrap();
    let table: TableDefinition<&str, u64> = TableDefinition::new("sensors");
    txn.open_table(table).unwrap().insert("a", 1).unwrap();
    txn.commit().unwrap();
    drop(db);
    let err = assert_refused_untouched(&dir);
    assert!(matches!(err, StoreError::NotWeirStore { .. }), "{err:?}");

    let dir = TempDir::new("foreign-app");
    filled_store(&dir);
    set_meta(&dir, META_APP, b"other");
    let err = assert_refused_untouched(&dir);
    assert!(matches!(err, StoreError::NotWeirStore { .. }), "{err:?}");
}

#[test]
fn an_empty_file_becomes_a_new_store() {
    // What a crash between creating the file and the first commit leaves.
    let dir = TempDir::new("empty");
    fs::write(dir.file(), b"").unwrap();
    let store = Store::open(dir.path(), unbounded()).unwrap();
    assert_eq!(store.outbox_len(), 0);
}

#[test]
fn integrity_check_passes_on_a_closed_store() {
    let dir = TempDir::new("integrity");
    filled_store(&dir);
    assert!(integrity_check(&dir.file()).unwrap());
}

#[test]
fn no_space_errors_say_what_to_do() {
    let err = StoreError::Io {
        path: PathBuf::from("/data/weir.redb"),
        op: "committing a checkpoint",
        source: io::Error::from_raw_os_error(28),
    };
    assert_eq!(
        err.to_string(),
        "no space left on the device holding /data/weir.redb while committing a checkpoint: \
         free space or lower max_outbox_bytes; nothing was acknowledged that is not stored"
    );
}

/// A tiny seeded xorshift PRNG.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the store should hold, kept with plain collections.
#[derive(Default)]
struct Model {
    input: BTreeMap<u64, Vec<u8>>,
    input_next: u64,
    checkpoint: Option<(Vec<u8>, Option<u64>)>,
    outbox: BTreeMap<u64, OutboxRecord>,
    outbox_next: u64,
    commits: u64,
}

impl Model {
    fn outbox_bytes(&self) -> u64 {
        self.outbox.values().map(encoded_len).sum()
    }

    fn check(&self, store: &Store, commits_since_open: u64) {
        let input = store.read_input(None, usize::MAX).unwrap();
        assert_eq!(input, self.input.clone().into_iter().collect::<Vec<_>>());
        assert_eq!(store.input_len().unwrap(), self.input.len() as u64);
        let outbox = store.read_outbox(None, usize::MAX).unwrap();
        assert_eq!(outbox, self.outbox.clone().into_iter().collect::<Vec<_>>());
        assert_eq!(store.outbox_len(), self.outbox.len() as u64);
        assert_eq!(store.outbox_bytes(), self.outbox_bytes());
        assert_eq!(store.last_outbox_seq(), self.outbox_next.checked_sub(1));
        assert_eq!(store.load_checkpoint().unwrap(), self.checkpoint);
        assert_eq!(store.commits(), commits_since_open);
    }
}

fn run_model(seed: u64, on_full: OnFull) {
    let dir = TempDir::new("model");
    let max = 3_000;
    let opts = options(max, on_full);
    let mut store = Store::open(dir.path(), opts.clone()).unwrap();
    let mut model = Model::default();
    let mut rng = XorShift(seed);
    let mut commits_at_open = 0;
    for step in 0..300u64 {
        match rng.below(10) {
            0..=2 => {
                let entry = vec![step as u8; rng.below(20) as usize];
                let seq = store.append_input(&entry).unwrap();
                assert_eq!(seq, model.input_next);
                model.input.insert(seq, entry);
                model.input_next += 1;
                model.commits += 1;
            }
            3..=5 => {
                let covers = match rng.below(4) {
                    0 => None,
                    _ if model.input_next == 0 => None,
                    _ => Some(rng.below(model.input_next + 2)),
                };
                let records: Vec<_> = (0..rng.below(8))
                    .map(|n| record(step * 100 + n, rng.below(200) as usize))
                    .collect();
                let blob = step.to_le_bytes().to_vec();
                let got = store
                    .commit_checkpoint(&blob, covers, &records, &[])
                    .unwrap();
                if let Some(c) = covers {
                    model.input.retain(|&seq, _| seq > c);
                    model.input_next = model.input_next.max(c + 1);
                }
                model.checkpoint = Some((blob, covers));
                let first = model.outbox_next;
                for r in records.iter().cloned() {
                    model.outbox.insert(model.outbox_next, r);
                    model.outbox_next += 1;
                }
                let mut expected = CheckpointCommit::default();
                if !records.is_empty() {
                    expected.first_seq = Some(first);
                    expected.last_seq = Some(model.outbox_next - 1);
                }
                if on_full == OnFull::DropOldest {
                    while model.outbox_bytes() > max {
                        let (_, r) = model.outbox.pop_first().unwrap();
                        expected.dropped += 1;
                        expected.dropped_bytes += encoded_len(&r);
                    }
                    assert!(store.outbox_bytes() <= max);
                }
                assert_eq!(got, expected);
                model.commits += 1;
            }
            6..=8 => {
                let top = model.outbox_next + 3;
                let wanted: Vec<u64> = (0..rng.below(10)).map(|_| rng.below(top)).collect();
                let mut present: Vec<u64> = wanted
                    .iter()
                    .copied()
                    .filter(|s| model.outbox.contains_key(s))
                    .collect();
                present.sort_unstable();
                present.dedup();
                assert_eq!(store.delete_outbox(&wanted).unwrap(), present.len());
                for s in &present {
                    model.outbox.remove(s);
                }
                if !present.is_empty() {
                    model.commits += 1;
                }
            }
            _ => {
                drop(store);
                store = Store::open(dir.path(), opts.clone()).unwrap();
                commits_at_open = model.commits;
            }
        }
        model.check(&store, model.commits - commits_at_open);
    }
}

#[test]
fn model_based_random_operations_with_block() {
    for seed in [1, 0x9e37_79b9_7f4a_7c15, 42] {
        run_model(seed, OnFull::Block);
    }
}

#[test]
fn model_based_random_operations_with_drop_oldest() {
    for seed in [7, 0xdead_beef, 1234567] {
        run_model(seed, OnFull::DropOldest);
    }
}

/// Opening reads the totals from the counters table instead of scanning the outbox.
/// `WEIR_STORE_OPEN_RECORDS=1000000 cargo test -p weir --release --lib
/// store::tests::reopen_does_not_scan_the_outbox -- --nocapture` measures a big one.
#[test]
fn reopen_does_not_scan_the_outbox() {
    let total: u64 = std::env::var("WEIR_STORE_OPEN_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let dir = TempDir::new("reopen");
    let store = Store::open(dir.path(), unbounded()).unwrap();
    let started = Instant::now();
    let batch = 5_000;
    for first in (0..total).step_by(batch) {
        let records: Vec<_> = (first..(first + batch as u64).min(total))
            .map(|n| record(n, 113))
            .collect();
        store.commit_checkpoint(b"", None, &records, &[]).unwrap();
    }
    let filled = started.elapsed();
    let bytes = store.outbox_bytes();
    drop(store);

    let started = Instant::now();
    let store = Store::open(dir.path(), unbounded()).unwrap();
    let opened = started.elapsed();
    assert_eq!(store.outbox_len(), total);
    assert_eq!(store.outbox_bytes(), bytes);
    let started = Instant::now();
    let first = store.read_outbox(None, 1).unwrap();
    let first_read = started.elapsed();
    assert_eq!(first[0].0, 0);
    println!(
        "{total} records of {} bytes ({} MiB file): filled in {filled:?}, reopened in \
         {opened:?}, first read {first_read:?}",
        bytes / total.max(1),
        fs::metadata(dir.file()).unwrap().len() >> 20,
    );
    assert!(opened.as_secs() < 2, "reopen took {opened:?}");
}

#[test]
fn dedup_memory_is_committed_with_checkpoints_and_forgotten_by_range() {
    let dir = TempDir::new("seen");
    let store = Store::open(dir.path(), unbounded()).unwrap();
    let f = |b: u8| [b; 16];
    let changes = SeenChanges {
        added: vec![(-5, f(1)), (10, f(2)), (20, f(3)), (30, f(4))],
        evicted: vec![],
        forget_before_ms: i64::MIN,
    };
    store
        .commit_checkpoint(
            b"",
            None,
            &[],
            &[
                ("farm".into(), changes),
                (
                    "other".into(),
                    SeenChanges {
                        added: vec![(1, f(9))],
                        ..SeenChanges::default()
                    },
                ),
            ],
        )
        .unwrap();
    assert_eq!(
        store.load_seen("farm").unwrap(),
        vec![(-5, f(1)), (10, f(2)), (20, f(3)), (30, f(4))]
    );
    let later = SeenChanges {
        added: vec![(40, f(5))],
        evicted: vec![(30, f(4))],
        forget_before_ms: 15,
    };
    store
        .commit_checkpoint(b"", None, &[], &[("farm".into(), later)])
        .unwrap();
    drop(store);
    let store = Store::open(dir.path(), unbounded()).unwrap();
    assert_eq!(
        store.load_seen("farm").unwrap(),
        vec![(20, f(3)), (40, f(5))]
    );
    assert_eq!(
        store.load_seen("other").unwrap(),
        vec![(1, f(9))],
        "other pipelines keep theirs"
    );
    assert_eq!(
        store.load_seen("far").unwrap(),
        vec![],
        "a name that is a prefix of another"
    );
}

#[test]
fn outbox_values_carry_a_checksum_of_their_sequence_and_body() {
    let body = postcard::to_stdvec(&record(3, 20)).unwrap();
    let value = outbox::seal(3, &body);
    assert_eq!(value.len(), outbox::CHECKSUM_BYTES + body.len());
    assert_eq!(outbox::unseal(3, &value), Ok(record(3, 20)));
    // One bit changed anywhere fails it; so does the same value under another key.
    for i in 0..value.len() {
        let mut bad = value.clone();
        bad[i] ^= 0x10;
        assert!(outbox::unseal(3, &bad).is_err(), "bit flipped at byte {i}");
    }
    assert!(outbox::unseal(4, &value).is_err(), "under another sequence");
    assert!(
        outbox::unseal(3, &value[..3]).is_err(),
        "shorter than the checksum"
    );
}

/// Rewrites outbox value `seq` of a closed store with raw redb, through `change`.
fn alter_outbox_value(dir: &TempDir, seq: u64, change: impl FnOnce(&mut Vec<u8>)) {
    let db = Database::open(dir.file()).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(OUTBOX).unwrap();
        let mut value = table
            .get(seq)
            .unwrap()
            .expect("the record")
            .value()
            .to_vec();
        change(&mut value);
        table.insert(seq, value.as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

#[test]
fn a_damaged_record_is_reported_never_handed_out_and_set_aside_with_its_bytes() {
    let dir = TempDir::new("damaged-record");
    let records: Vec<_> = (0..20).map(|n| record(n, 30)).collect();
    let store = Store::open(dir.path(), unbounded()).unwrap();
    store.commit_checkpoint(b"", None, &records, &[]).unwrap();
    drop(store);
    let mut stored = Vec::new();
    alter_outbox_value(&dir, 7, |v| {
        let last = v.len() - 1;
        v[last] ^= 0x01; // one bit of the payload: still decodes, but is not what was stored
        stored = v.clone();
    });

    let store = Store::open(dir.path(), unbounded()).unwrap();
    let entries = store.read_outbox_entries(None, 100).unwrap();
    assert_eq!(entries.len(), 20);
    for (n, entry) in entries.iter().enumerate() {
        match entry {
            OutboxEntry::Record(seq, r) => {
                assert_ne!(*seq, 7);
                assert_eq!(r, &records[*seq as usize]);
            }
            OutboxEntry::Damaged { seq, reason } => {
                assert_eq!((*seq, n), (7, 7));
                assert!(reason.contains("checksum"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
    // The strict reader refuses it, naming the record.
    let err = store.read_outbox(Some(5), 10).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("outbox record 7"), "{err}");

    let commits = store.commits();
    let moved = store
        .set_aside(&[
            (7, "damaged: it fails its checksum".into()),
            (99, "x".into()),
        ])
        .unwrap();
    assert_eq!(moved, 1, "a sequence not in the outbox is skipped");
    assert_eq!(store.commits(), commits + 1, "one commit");
    assert_eq!(store.outbox_len(), 19);
    assert_eq!(
        store.outbox_bytes(),
        records
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 7)
            .map(|(_, r)| encoded_len(r))
            .sum::<u64>()
    );
    assert_eq!(store.set_aside_len(), 1);
    let all = store.read_outbox(None, 100).unwrap();
    assert_eq!(all.len(), 19, "the rest reads strictly again");
    drop(store);

    let store = Store::open(dir.path(), unbounded()).unwrap();
    assert_eq!((store.outbox_len(), store.set_aside_len()), (19, 1));
    let aside = store.read_set_aside(None, 10).unwrap();
    assert_eq!(aside.len(), 1);
    assert_eq!((aside[0].seq, aside[0].last_seq), (7, 7));
    assert_eq!(aside[0].reason, "damaged: it fails its checksum");
    assert_eq!(aside[0].stored, stored, "the bytes are kept as they were");
    assert_eq!(aside[0].record(), None, "and still fail their checksum");
    let seqs: Vec<u64> = (0..20).filter(|s| *s != 7).collect();
    assert_eq!(store.delete_outbox(&seqs).unwrap(), 19);
    assert_eq!(store.outbox_len(), 0, "the outbox drains to empty");
}

#[test]
fn set_aside_keeps_refused_records_whole_and_survives_reopen() {
    let dir = TempDir::new("set-aside");
    let records: Vec<_> = (0..6).map(|n| record(n, 10)).collect();
    let store = Store::open(dir.path(), unbounded()).unwrap();
    store.commit_checkpoint(b"", None, &records, &[]).unwrap();
    assert_eq!(store.set_aside(&[]).unwrap(), 0);
    let moved = store
        .set_aside(&[
            (1, "refused upstream: its topic is empty".into()),
            (4, "refused upstream: too large".into()),
        ])
        .unwrap();
    assert_eq!(moved, 2);
    assert_eq!(seqs(&store.read_outbox(None, 10).unwrap()), [0, 2, 3, 5]);
    drop(store);
    let store = Store::open(dir.path(), unbounded()).unwrap();
    assert_eq!((store.outbox_len(), store.set_aside_len()), (4, 2));
    let aside = store.read_set_aside(None, 10).unwrap();
    assert_eq!(
        aside
            .iter()
            .map(|a| (a.seq, a.record().unwrap()))
            .collect::<Vec<_>>(),
        [(1, records[1].clone()), (4, records[4].clone())]
    );
    assert_eq!(store.read_set_aside(Some(1), 10).unwrap().len(), 1);
    // Set aside twice: the second finds nothing.
    assert_eq!(store.set_aside(&[(1, "again".into())]).unwrap(), 0);
}

/// What draining a damaged store through the store's API did.
#[derive(Debug, Default)]
struct Drained {
    delivered: BTreeMap<u64, OutboxRecord>,
    damaged: Vec<u64>,
    unreadable: Vec<(u64, u64)>,
    salvaged: bool,
    errors: Vec<String>,
}

/// Drains `store` as the forwarder does: read after a cursor, hand records out, set damaged
/// ones aside, rebuild around unreadable ones, delete what was handed out. Bounded: a drain that
/// does not end within `max_reads` reads fails the test.
fn drain(store: &Store, max_reads: usize) -> Drained {
    let mut out = Drained::default();
    let mut after = None;
    for _ in 0..max_reads {
        let entries = match store.read_outbox_entries(after, 256) {
            Ok(entries) => entries,
            Err(e) => {
                out.errors.push(e.to_string());
                return out;
            }
        };
        let Some(last) = entries.last() else {
            return out;
        };
        after = Some(last.last_seq());
        let mut handed_out = Vec::new();
        let mut aside = Vec::new();
        let mut salvage = false;
        for entry in entries {
            match entry {
                OutboxEntry::Record(seq, record) => {
                    assert!(
                        out.delivered.insert(seq, record).is_none(),
                        "record {seq} handed out twice"
                    );
                    handed_out.push(seq);
                }
                OutboxEntry::Damaged { seq, reason } => {
                    out.damaged.push(seq);
                    aside.push((seq, reason));
                }
                OutboxEntry::Unreadable { first, last, .. } => {
                    assert!(first <= last, "{first}..={last}");
                    out.unreadable.push((first, last));
                    salvage = true;
                }
            }
        }
        if let Err(e) = store.set_aside(&aside) {
            out.errors.push(format!("set aside: {e}"));
            salvage = true;
        }
        if salvage {
            match store.salvage_outbox() {
                Ok(s) => out.salvaged |= s.replaced_by.is_some(),
                Err(e) => out.errors.push(format!("salvage: {e}")),
            }
        }
        if let Err(e) = store.delete_outbox(&handed_out) {
            out.errors.push(format!("delete: {e}"));
        }
    }
    panic!("the drain did not end within {max_reads} reads: {out:?}");
}

/// The probe of a damaged outbox: a closed store holding 5 000 records, damaged at a spread of
/// deterministic offsets (16 bytes flipped, or a 4 KiB page zeroed), then opened and drained
/// through the store's API. Every case ends; no record is ever handed out other than as it was
/// stored; every record is handed out or reported (damaged, unreadable, or the whole file
/// refused at open); nothing panics.
#[test]
fn a_damaged_store_drains_to_the_end_and_never_hands_out_a_damaged_record() {
    const RECORDS: u64 = 5_000;
    const CASES: usize = 24;
    let pristine = TempDir::new("probe-pristine");
    let records: Vec<OutboxRecord> = (0..RECORDS)
        .map(|n| OutboxRecord {
            topic: format!("relay/s{}", n % 50),
            id: weir_id(n),
            payload: format!(
                "{{\"id\":\"{n:016x}\",\"key\":\"s{}\",\"value\":{}.5,\"pad\":\"{}\"}}",
                n % 50,
                n * 3,
                "x".repeat((n % 40) as usize)
            )
            .into_bytes(),
        })
        .collect();
    {
        let store = Store::open(pristine.path(), unbounded()).unwrap();
        for chunk in records.chunks(100) {
            store.commit_checkpoint(b"cp", None, chunk, &[]).unwrap();
        }
    }
    let bytes = fs::read(pristine.file()).unwrap();
    let mut summary = BTreeMap::<&str, u64>::new();
    for mode in ["flip16", "zero4k"] {
        for case in 0..CASES {
            let offset = bytes.len() * (2 * case + 1) / (2 * CASES);
            let mut damaged = bytes.clone();
            match mode {
                "flip16" => damaged[offset..(offset + 16).min(bytes.len())]
                    .iter_mut()
                    .for_each(|b| *b ^= 0xa5),
                _ => {
                    let page = offset & !4095;
                    damaged[page..(page + 4096).min(bytes.len())].fill(0);
                }
            }
            let dir = TempDir::new("probe-case");
            fs::write(dir.file(), &damaged).unwrap();
            let what = format!("{mode} at byte {offset}");
            let store = match Store::open(dir.path(), unbounded()) {
                Ok(store) => store,
                Err(e) => {
                    // Refused with the message that says to move the file aside: reported.
                    assert!(e.to_string().contains("mv "), "{what}: {e}");
                    *summary.entry("refused at open").or_default() += 1;
                    continue;
                }
            };
            let out = drain(&store, 1_000);
            for (seq, record) in &out.delivered {
                assert_eq!(
                    record, &records[*seq as usize],
                    "{what}: record {seq} handed out changed"
                );
            }
            for seq in 0..RECORDS {
                let reported = out.delivered.contains_key(&seq)
                    || out.damaged.contains(&seq)
                    || out.unreadable.iter().any(|(f, l)| (*f..=*l).contains(&seq));
                assert!(
                    reported || !out.errors.is_empty(),
                    "{what}: record {seq} neither handed out nor reported: {out:?}"
                );
            }
            if out.errors.is_empty() {
                assert_eq!(store.outbox_len(), 0, "{what}: the outbox drains to empty");
            }
            let key = match (
                out.delivered.len() as u64 == RECORDS,
                out.errors.is_empty(),
                out.salvaged,
            ) {
                (true, _, _) => "all delivered",
                (false, true, true) => "rest delivered, outbox rebuilt",
                (false, true, false) => "rest delivered, damaged set aside",
                (false, false, _) => "read failed, reported",
            };
            *summary.entry(key).or_default() += 1;
            eprintln!(
                "{what}: {} delivered, {} damaged, unreadable {:?}, errors {:?}",
                out.delivered.len(),
                out.damaged.len(),
                out.unreadable,
                out.errors
            );
        }
    }
    eprintln!("{summary:?}");
    let refused = summary.get("refused at open").copied().unwrap_or(0);
    assert!(
        refused <= (2 * CASES / 4) as u64,
        "most damage is inside pages opening does not read: {summary:?}"
    );
    assert!(
        summary
            .iter()
            .any(|(k, n)| k.starts_with("rest delivered") && *n > 0),
        "some damage hit records: {summary:?}"
    );
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop: a disk that fills.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(name: &str, size: &str) -> Tmpfs {
        let dir = TempDir::new(name);
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        match status {
            Ok(s) if s.success() => Tmpfs { dir },
            other => panic!(
                "this test fills a disk: it mounts a {size} tmpfs on {} (mount -t tmpfs), which \
                 needs root and tmpfs; run it as root ({other:?})",
                dir.path().display()
            ),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_disk_leaves_the_store_able_to_read_delete_and_restart_and_then_resume() {
    let disk = Tmpfs::mount("full-disk", "4m");
    let data = disk.path().join("data");
    let opts = StoreOptions {
        max_outbox_bytes: u64::MAX,
        on_full: OnFull::Block,
        disk_reserve_bytes: DEFAULT_DISK_RESERVE_BYTES,
    };
    let reserve = data.join(RESERVE_FILE_NAME);
    let store = Store::open(&data, opts.clone()).unwrap();
    assert_eq!(
        fs::metadata(&reserve).unwrap().len(),
        DEFAULT_DISK_RESERVE_BYTES
    );
    // Fill the disk with checkpoints of 50 records until one does not fit.
    let mut n = 0u64;
    let err = loop {
        let records: Vec<_> = (n..n + 50).map(|i| record(i, 200)).collect();
        match store.commit_checkpoint(b"cp", None, &records, &[]) {
            Ok(_) => n += 50,
            Err(e) => break e,
        }
    };
    assert!(err.is_no_space(), "{err}");
    assert!(n > 1_000, "only {n} records fit");
    assert!(store.disk_full());
    assert_eq!(store.disk_full_events(), 1);
    assert!(!reserve.exists(), "the reserve is released");
    assert!(!store.try_resume(), "no room yet");

    // redb refuses everything after a failed commit until reopened: the store reopens it.
    assert_eq!(store.read_outbox(None, usize::MAX).unwrap().len() as u64, n);
    assert_eq!(store.delete_outbox(&[0, 1, 2]).unwrap(), 3);
    assert!(store.reopens() >= 1);
    assert_eq!(store.outbox_len(), n - 3);

    // A restart while the disk is full opens, still full: the reserve is not written back into
    // the room it left.
    drop(store);
    let store = Store::open(&data, opts.clone()).unwrap();
    assert!(store.disk_full());
    assert!(!reserve.exists());
    assert_eq!(store.outbox_len(), n - 3);

    // Delivering the outbox deletes it on the full disk, and compacts the file.
    let seqs: Vec<u64> = (3..n).collect();
    for chunk in seqs.chunks(256) {
        store.delete_outbox(chunk).unwrap();
    }
    assert_eq!(store.outbox_len(), 0);
    assert!(store.compactions() >= 1, "the file gave its space back");

    // The device has room again: the reserve comes back (one look a second at most) and
    // writes go on.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !store.try_resume() {
        assert!(Instant::now() < deadline, "never resumed");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!store.disk_full());
    assert_eq!(
        fs::metadata(&reserve).unwrap().len(),
        DEFAULT_DISK_RESERVE_BYTES
    );
    let seq = store.append_input(b"after").unwrap();
    store
        .commit_checkpoint(b"cp", Some(seq), &[record(n, 200)], &[])
        .unwrap();
    assert_eq!(store.outbox_len(), 1);
}

/// A record id for test record `n`.
fn weir_id(n: u64) -> crate::record::RecordId {
    crate::record::RecordId::new(n, &n.to_be_bytes())
}
