//! `weir-store-bench`: what the store's shape costs, measured on the machine's disk. It measures
//! and prints; it asserts nothing about time.
//!
//! ```sh
//! cargo run --release -p weir-tests --bin weir-store-bench -- [--records 1000000] [--dir DIR]
//! ```
//!
//! Two questions, with redb as weir uses it (a `u64` → bytes table per log, durable commits):
//!
//! 1. **Reopen after SIGKILL, with and without quick repair.** A child process fills a database
//!    with `--records` outbox-sized values (269 bytes, ~250 MB for 1 000 000) in commits of
//!    1 000, then keeps appending and deleting small batches until it is killed with SIGKILL;
//!    the time to open the database after the kill is measured (median of 3 kills). With quick
//!    repair each commit also writes the allocator state (a second fdatasync); without it, a
//!    reopen after a crash walks the whole file to rebuild that state.
//! 2. **Bytes written per commit** for appends of 256 B, 4 KiB and 64 KiB (what a group commit
//!    adds to the input log at 100, 1 000 and 10 000 msg/s), for redb with and without quick
//!    repair and for an append-only file with one `fdatasync` per append: `write_bytes` of
//!    `/proc/self/io` over 200 commits, divided by the commits.
//!
//! The data directory is a fresh one under `--dir` (default: the system temp dir), so that the
//! numbers are the disk's; the report ends with one JSON line (`{"weir_store_bench": ...}`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use serde_json::json;
use weir_tests::bench::{round, shell, write_bytes};

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

/// The log table inside a write transaction.
type LogTable<'t> = redb::Table<'t, u64, &'static [u8]>;
/// The stored size of an outbox record in the live benchmark's queue (257 MiB / 1 000 000).
const VALUE_BYTES: usize = 269;
const KILLS: usize = 3;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str| {
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1).cloned()
    };
    if args.get(1).map(String::as_str) == Some("--child") {
        let path = PathBuf::from(&args[2]);
        let quick = args[3] == "quick";
        let records: u64 = args[4].parse().expect("records");
        child(&path, quick, records);
        return;
    }
    let records: u64 = arg("--records")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let base = arg("--dir").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = weir_tests::process::TempDir::new_in(&base, "weir-store-bench");
    println!(
        "# weir store benchmark: nproc {}, kernel {}, {} on {}",
        shell("nproc"),
        shell("uname -r"),
        dir.path().display(),
        shell(&format!(
            "df --output=fstype {} | tail -1",
            dir.path().display()
        ))
    );

    println!("\n## 1. reopen after SIGKILL, {records} records of {VALUE_BYTES} bytes");
    let mut reopen = serde_json::Map::new();
    for quick in [true, false] {
        let path = dir.path().join(format!("reopen-{quick}.redb"));
        let mut opens = Vec::new();
        let mut size = 0;
        for _ in 0..KILLS {
            kill_while_writing(&path, quick, records);
            size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let started = Instant::now();
            let db = Database::builder()
                .create(&path)
                .expect("the database reopens");
            opens.push(started.elapsed());
            drop(db);
        }
        opens.sort();
        let median = opens[opens.len() / 2];
        println!(
            "quick repair {:<3}: reopen median {:>9.1} ms (of {:?}), file {:.0} MiB",
            if quick { "on" } else { "off" },
            median.as_secs_f64() * 1e3,
            opens
                .iter()
                .map(|d| round(d.as_secs_f64() * 1e3, 1))
                .collect::<Vec<_>>(),
            size as f64 / 1048576.0
        );
        reopen.insert(
            if quick { "quick_repair" } else { "no_quick_repair" }.into(),
            json!({
                "reopen_ms_median": round(median.as_secs_f64() * 1e3, 1),
                "reopen_ms": opens.iter().map(|d| round(d.as_secs_f64() * 1e3, 1)).collect::<Vec<_>>(),
                "file_mib": round(size as f64 / 1048576.0, 1),
            }),
        );
        let _ = std::fs::remove_file(&path);
    }

    println!("\n## 2. bytes written per durable commit of an append (200 commits each)");
    println!(
        "{:>8} | {:>14} {:>14} {:>14}",
        "append", "redb + quick", "redb", "append file"
    );
    let mut amplification = Vec::new();
    for append in [256usize, 4096, 65536] {
        let quick = per_commit_redb(
            &dir.path().join(format!("wa-q-{append}.redb")),
            true,
            append,
        );
        let plain = per_commit_redb(&dir.path().join(format!("wa-{append}.redb")), false, append);
        let file = per_commit_file(&dir.path().join(format!("wa-{append}.log")), append);
        println!("{append:>8} | {quick:>14.0} {plain:>14.0} {file:>14.0}");
        amplification.push(json!({
            "append_bytes": append,
            "redb_quick_repair": round(quick, 0),
            "redb": round(plain, 0),
            "append_file": round(file, 0),
        }));
    }
    println!(
        "{}",
        json!({ "weir_store_bench": { "records": records, "reopen": reopen, "bytes_per_commit": amplification } })
    );
}

/// Runs the child until it reports it is writing past the filled store, then kills it.
fn kill_while_writing(path: &Path, quick: bool, records: u64) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--child",
            path.to_str().unwrap(),
            if quick { "quick" } else { "plain" },
            &records.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the writer");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("the writer reports");
    assert_eq!(line.trim(), "writing", "the writer said {line:?}");
    // Let it commit a while, so the kill lands in the middle of a commit or between two.
    std::thread::sleep(Duration::from_millis(300));
    child.kill().expect("SIGKILL the writer");
    let _ = child.wait();
}

/// The writer: fills the database to `records` (if it holds fewer), says "writing", then
/// appends 10 and deletes the 10 oldest per commit, forever.
fn child(path: &Path, quick: bool, records: u64) {
    let db = Database::builder().create(path).expect("create");
    let value = vec![0x5a; VALUE_BYTES];
    let (mut first, mut next) = {
        let txn = db.begin_read().unwrap();
        match txn.open_table(TABLE) {
            Ok(t) => {
                use redb::ReadableTable;
                let first = t.first().unwrap().map_or(0, |(k, _)| k.value());
                let next = t.last().unwrap().map_or(0, |(k, _)| k.value() + 1);
                (first, next)
            }
            Err(_) => (0, 0),
        }
    };
    let commit = |f: &mut dyn FnMut(&mut LogTable<'_>)| {
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(Durability::Immediate).unwrap();
        txn.set_quick_repair(quick);
        {
            let mut t = txn.open_table(TABLE).unwrap();
            f(&mut t);
        }
        txn.commit().unwrap();
    };
    while next - first < records {
        let end = (next + 1000).min(first + records);
        commit(&mut |t| {
            for k in next..end {
                t.insert(k, value.as_slice()).unwrap();
            }
        });
        next = end;
    }
    println!("writing");
    std::io::stdout().flush().unwrap();
    loop {
        commit(&mut |t| {
            for k in next..next + 10 {
                t.insert(k, value.as_slice()).unwrap();
            }
            t.retain_in(first..first + 10, |_, _| false).unwrap();
        });
        next += 10;
        first += 10;
    }
}

/// Bytes written per durable redb commit appending `append` bytes to a log that a later commit
/// trims, as the input log is: 200 commits after 50 to warm up.
fn per_commit_redb(path: &Path, quick: bool, append: usize) -> f64 {
    let db = Database::builder().create(path).expect("create");
    let value = vec![0x5a; append];
    let mut seq = 0u64;
    let mut run = |n: usize| {
        for _ in 0..n {
            let mut txn = db.begin_write().unwrap();
            txn.set_durability(Durability::Immediate).unwrap();
            txn.set_quick_repair(quick);
            {
                let mut t = txn.open_table(TABLE).unwrap();
                t.insert(seq, value.as_slice()).unwrap();
                // A checkpoint every 40 commits trims what it covers.
                if seq % 40 == 39 {
                    t.retain_in(..=seq, |_, _| false).unwrap();
                }
            }
            txn.commit().unwrap();
            seq += 1;
        }
    };
    run(50);
    let before = write_bytes("self");
    run(200);
    let written = write_bytes("self") - before;
    drop(db);
    let _ = std::fs::remove_file(path);
    written as f64 / 200.0
}

/// The same with an append-only file and one `fdatasync` per append.
fn per_commit_file(path: &Path, append: usize) -> f64 {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("create");
    let value = vec![0x5a; append];
    let mut run = |n: usize| {
        for _ in 0..n {
            file.write_all(&value).unwrap();
            file.sync_data().unwrap();
        }
    };
    run(50);
    let before = write_bytes("self");
    run(200);
    let written = write_bytes("self") - before;
    let _ = std::fs::remove_file(path);
    written as f64 / 200.0
}
