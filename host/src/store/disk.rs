//! The store's full-disk state and its reserve file: deleted when the disk fills, so that
//! delivered records can still be deleted (redb writes deletes copy-on-write) and weir restarted;
//! written back once the device has room again. See the module doc of [`super`].

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::error::is_no_space;

/// While the disk is full, [`Disk::try_resume`] looks at the device at most this often.
pub(super) const RESUME_PROBE_EVERY: Duration = Duration::from_secs(1);

/// The disk filling again within this long of the last time it was logged is not logged again.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(60);

/// Resuming needs at least this much room besides the reserve, even with no reserve.
const MIN_ROOM_BYTES: u64 = 64 * 1024;

#[derive(Debug)]
pub(super) struct Disk {
    reserve: PathBuf,
    reserve_bytes: u64,
    full: AtomicBool,
    full_events: AtomicU64,
    compactions: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// When `try_resume` last looked at the device (or the disk was found full).
    last_probe: Option<Instant>,
    /// Bytes deleted from the outbox since the disk filled or the last compaction.
    freed: u64,
    /// When the disk filling was last logged at ERROR.
    announced_at: Option<Instant>,
    /// Whether the current time it is full was (so that its end is logged too).
    episode_announced: bool,
}

impl Disk {
    /// Writes the reserve if it is missing (or of another size). A full disk leaves the store in
    /// the full state from the start; any other failure leaves it without a reserve (logged).
    pub(super) fn open(reserve: PathBuf, reserve_bytes: u64) -> Disk {
        let disk = Disk {
            reserve,
            reserve_bytes,
            full: AtomicBool::new(false),
            full_events: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            inner: Mutex::new(Inner::default()),
        };
        if reserve_bytes == 0 {
            return disk;
        }
        let held =
            fs::metadata(&disk.reserve).is_ok_and(|m| m.is_file() && m.len() == reserve_bytes);
        if held {
            return disk;
        }
        // A reserve released by a run that found the disk full is written back only if there
        // is room for it twice over (as when resuming): otherwise it would take the very space
        // it was released to leave.
        let dir = disk.reserve.parent().unwrap_or(Path::new("."));
        let room = available_bytes(dir).map_or(true, |available| {
            available >= 2 * reserve_bytes.max(MIN_ROOM_BYTES)
        });
        let written = if room {
            write_reserve(&disk.reserve, reserve_bytes)
        } else {
            Err(io::Error::from(io::ErrorKind::StorageFull))
        };
        match written {
            Ok(()) => {}
            Err(error) if is_no_space(&error) => {
                disk.full.store(true, Ordering::Release);
                disk.full_events.store(1, Ordering::Relaxed);
                {
                    let mut inner = disk.lock();
                    inner.last_probe = Some(Instant::now());
                    inner.announced_at = inner.last_probe;
                    inner.episode_announced = true;
                }
                tracing::error!(
                    reserve = %disk.reserve.display(),
                    reserve_bytes,
                    "the disk is full: weir starts without its reserve, takes no new input (the \
                     source broker keeps it) and keeps delivering and deleting what it holds; \
                     it takes input again once there is room: free space on this device"
                );
            }
            Err(error) => tracing::warn!(
                reserve = %disk.reserve.display(),
                %error,
                "cannot write the disk-space reserve; weir runs without it, so a full disk may \
                 leave no room to delete delivered records: check the data directory"
            ),
        }
        disk
    }

    pub(super) fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    pub(super) fn full_events(&self) -> u64 {
        self.full_events.load(Ordering::Relaxed)
    }

    pub(super) fn compactions(&self) -> u64 {
        self.compactions.load(Ordering::Relaxed)
    }

    /// A write found the disk full while doing `op`: releases the reserve and logs, once per
    /// time the disk fills.
    pub(super) fn enter_full(&self, store: &Path, op: &str) {
        if self.full.swap(true, Ordering::AcqRel) {
            return;
        }
        let events = self.full_events.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let announce = {
            let mut inner = self.lock();
            inner.last_probe = Some(now);
            inner.freed = 0;
            let announce = inner.announced_at.is_none_or(|t| now - t >= ANNOUNCE_EVERY);
            if announce {
                inner.announced_at = Some(now);
            }
            inner.episode_announced = announce;
            announce
        };
        let released = self.reserve_bytes > 0 && fs::remove_file(&self.reserve).is_ok();
        if !announce {
            // Filling again soon after the last time: one episode for the log; the engine's
            // summaries and weir_store_disk_full_total count it.
            tracing::debug!(path = %store.display(), op, events, "the disk is full again");
            return;
        }
        tracing::error!(
            path = %store.display(),
            op,
            released_reserve_bytes = if released { self.reserve_bytes } else { 0 },
            "the disk is full: weir takes no new input (the source broker keeps it) and keeps \
             delivering and deleting what it holds; it takes input again by itself once there is \
             room: free space on this device, or let the uplink drain the outbox"
        );
    }

    /// True unless the disk is full. While it is, at most every [`RESUME_PROBE_EVERY`]: if the
    /// device has room for the reserve twice over, writes the reserve back and leaves the full
    /// state.
    pub(super) fn try_resume(&self, store: &Path) -> bool {
        if !self.is_full() {
            return true;
        }
        let mut inner = self.lock();
        if inner
            .last_probe
            .is_some_and(|t| t.elapsed() < RESUME_PROBE_EVERY)
        {
            return false;
        }
        inner.last_probe = Some(Instant::now());
        let dir = self.reserve.parent().unwrap_or(Path::new("."));
        let available = available_bytes(dir).unwrap_or(0);
        if available < 2 * self.reserve_bytes.max(MIN_ROOM_BYTES) {
            return false;
        }
        if self.reserve_bytes > 0
            && let Err(error) = write_reserve(&self.reserve, self.reserve_bytes)
        {
            tracing::debug!(%error, "the reserve cannot be written yet");
            return false;
        }
        inner.freed = 0;
        self.full.store(false, Ordering::Release);
        if inner.episode_announced {
            tracing::info!(
                path = %store.display(),
                available_bytes = available,
                "there is room on the disk again: the reserve is back and weir takes input again"
            );
        }
        true
    }

    /// Deletes freed `bytes` of the outbox; whether it is time to compact the file: only while
    /// the disk is full, once the deletes since the last time freed as much as the outbox still
    /// holds (so the cost of compactions stays in proportion to what they give back), or emptied
    /// it.
    pub(super) fn freed(&self, bytes: u64, outbox_len: u64, outbox_bytes: u64) -> bool {
        if !self.is_full() {
            return false;
        }
        let mut inner = self.lock();
        inner.freed += bytes;
        let due = outbox_len == 0
            || inner.freed >= outbox_bytes.max(2 * self.reserve_bytes.max(MIN_ROOM_BYTES));
        if due {
            inner.freed = 0;
        }
        due
    }

    pub(super) fn compacted(&self) {
        self.compactions.fetch_add(1, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writes `bytes` real bytes (not a sparse file: the blocks must be taken) and syncs them; a
/// partial file is removed.
fn write_reserve(path: &Path, bytes: u64) -> io::Result<()> {
    let result = (|| {
        let mut file = fs::File::create(path)?;
        let chunk = vec![0u8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            file.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        file.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}

/// Bytes an unprivileged process may still write on the device holding `dir`.
fn available_bytes(dir: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}
