//! [`StoreError`]: what can go wrong with the store file, each message naming the file and saying
//! what to do.

use std::io;
use std::path::{Path, PathBuf};

/// Everything a store operation can fail with. Messages are for the person running weir: they
/// name the file and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but is not a readable redb database, or redb found it damaged (bad magic,
    /// bad checksums, truncated, an unrepairable crash). The file is left exactly as it was.
    #[error(
        "the database {path} cannot be opened: {detail}; weir will not overwrite it: keep a copy \
         and move it aside (mv {path} {path}.broken), then start weir again with an empty store; \
         records it held that were not yet forwarded stay in the copy",
        path = .path.display()
    )]
    Corrupt { path: PathBuf, detail: String },

    /// A readable redb file that was not written by weir (no weir meta table, or another app).
    #[error(
        "{path} is not a weir store ({detail}); weir will not overwrite it: point data_dir at a \
         directory of its own, or move the file aside (mv {path} {path}.other)",
        path = .path.display()
    )]
    NotWeirStore { path: PathBuf, detail: String },

    /// A weir store written in a format this build does not read (another weir release).
    #[error(
        "{path} is a weir store in format version {found}, this weir reads version {expected}; \
         weir will not overwrite it: run the weir release that wrote it until the outbox is \
         drained, or move the file aside (mv {path} {path}.v{found}) to start with an empty store",
        path = .path.display()
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        expected: u32,
    },

    /// Another process (or another `Store` in this process) holds the file's lock.
    #[error(
        "another weir is using {path}: stop it first, or give this instance its own data_dir",
        path = .path.display()
    )]
    InUse { path: PathBuf },

    /// An I/O error while doing `op`. A full disk (ENOSPC) gets its own advice.
    #[error("{}", describe_io(path, op, source))]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// Any other failure reported by redb while doing `op` (for example the database refusing
    /// writes after an earlier I/O error).
    #[error(
        "the store {path} failed while {op}: {detail}; restart weir, and if it recurs run \
         `weir status` and check the disk",
        path = .path.display()
    )]
    Database {
        path: PathBuf,
        op: &'static str,
        detail: String,
    },
}

fn describe_io(path: &Path, op: &str, source: &io::Error) -> String {
    if is_no_space(source) {
        format!(
            "no space left on the device holding {} while {op}: free space or lower \
             max_outbox_bytes; nothing was acknowledged that is not stored",
            path.display()
        )
    } else {
        format!("i/o error on {} while {op}: {source}", path.display())
    }
}

/// Whether `error` means the disk (or the quota) is full.
pub(crate) fn is_no_space(error: &io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(error.raw_os_error(), Some(ENOSPC | EDQUOT))
}

impl StoreError {
    /// Whether this is a full disk (or quota): the store then waits for room, see
    /// [`super::Store::disk_full`].
    pub fn is_no_space(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if is_no_space(source))
    }

    /// Whether the file is damaged (as opposed to the disk or the operating system failing).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StoreError::Corrupt { .. })
    }

    /// Classifies a redb error raised while doing `op` on the store at `path`.
    pub(crate) fn from_redb(path: &Path, op: &'static str, error: impl Into<redb::Error>) -> Self {
        let path = path.to_path_buf();
        match error.into() {
            redb::Error::Io(source) => StoreError::Io { path, op, source },
            redb::Error::Corrupted(detail) => StoreError::Corrupt { path, detail },
            redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
                StoreError::InUse { path }
            }
            redb::Error::UpgradeRequired(version) => StoreError::Corrupt {
                path,
                detail: format!("it uses redb file format {version}, which this weir cannot read"),
            },
            other => StoreError::Database {
                path,
                op,
                detail: other.to_string(),
            },
        }
    }
}
