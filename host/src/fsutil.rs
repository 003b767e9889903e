//! Reading the files a user names (configs, plugins, tables, secrets, certificates, recorded
//! input): only regular files, never more than a cap, never blocking on a FIFO or a device.
//!
//! A config that points at `/dev/zero` must not run weir out of memory, and one that points at a
//! FIFO must not hang it: every such file is opened without blocking (`O_NONBLOCK`, which changes
//! nothing for a regular file), checked to be a regular file, and read up to its cap. Errors name
//! the file, say what is wrong once, and what to do.

use std::fs::{File, Metadata};
use std::io::{self, BufRead, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::config::units::format_size;

/// Caps for the kinds of file weir reads.
pub mod caps {
    /// A config file.
    pub const CONFIG: u64 = 1 << 20;
    /// A plugin component (an interpreter-carrying Python or JavaScript component is ~20 MB).
    pub const PLUGIN: u64 = 128 << 20;
    /// An enrichment table.
    pub const TABLE: u64 = 64 << 20;
    /// A password or token file.
    pub const SECRET: u64 = 64 << 10;
    /// A PEM file (CA bundle, client certificate or key).
    pub const PEM: u64 = 4 << 20;
    /// One line of `weir replay` input.
    pub const INPUT_LINE: u64 = 64 << 20;
}

/// Why a file could not be read. The message names the file and says the cause once.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {what} {path}: {detail}", path = .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        /// The OS error, without its errno suffix.
        detail: String,
        kind: io::ErrorKind,
    },
    #[error(
        "{what} {path} is {kind}, not a regular file; point the setting at a file",
        path = .path.display()
    )]
    NotAFile {
        what: &'static str,
        path: PathBuf,
        kind: &'static str,
    },
    #[error(
        "{what} {path} is {size}, over the {max} weir reads for it; is it the right file?",
        path = .path.display(), size = format_size_approx(*.size), max = format_size(*.max)
    )]
    TooLarge {
        what: &'static str,
        path: PathBuf,
        size: u64,
        max: u64,
    },
}

impl ReadError {
    /// The I/O error kind, for callers that branch on a missing file.
    pub fn kind(&self) -> Option<io::ErrorKind> {
        match self {
            ReadError::Io { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// An OS error as a person reads it: "No such file or directory", not "... (os error 2)".
pub fn describe_io(error: &io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_owned(),
        _ => text,
    }
}

/// What kind of file `metadata` describes, in words, when it is not a regular file.
fn non_file_kind(metadata: &Metadata) -> Option<&'static str> {
    let t = metadata.file_type();
    Some(if t.is_file() {
        return None;
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    })
}

/// Opens `path` for reading without blocking (a FIFO opens at once) and checks that it is a
/// regular file of at most `max` bytes. Returns the file and its size.
pub fn open_regular(path: &Path, what: &'static str, max: u64) -> Result<(File, u64), ReadError> {
    let io_error = |e: io::Error| ReadError::Io {
        what,
        path: path.to_owned(),
        detail: describe_io(&e),
        kind: e.kind(),
    };
    let file = File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(io_error)?;
    let metadata = file.metadata().map_err(io_error)?;
    if let Some(kind) = non_file_kind(&metadata) {
        return Err(ReadError::NotAFile {
            what,
            path: path.to_owned(),
            kind,
        });
    }
    if metadata.len() > max {
        return Err(ReadError::TooLarge {
            what,
            path: path.to_owned(),
            size: metadata.len(),
            max,
        });
    }
    Ok((file, metadata.len()))
}

/// Reads the regular file at `path`, at most `max` bytes (`what` names it in errors: "plugin",
/// "config", ...).
pub fn read_capped(path: &Path, what: &'static str, max: u64) -> Result<Vec<u8>, ReadError> {
    let (file, size) = open_regular(path, what, max)?;
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ReadError::Io {
            what,
            path: path.to_owned(),
            detail: describe_io(&e),
            kind: e.kind(),
        })?;
    // The file grew after it was checked.
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge {
            what,
            path: path.to_owned(),
            size: bytes.len() as u64,
            max,
        });
    }
    Ok(bytes)
}

/// [`read_capped`], as UTF-8 text.
pub fn read_text_capped(path: &Path, what: &'static str, max: u64) -> Result<String, ReadError> {
    let bytes = read_capped(path, what, max)?;
    String::from_utf8(bytes).map_err(|e| ReadError::Io {
        what,
        path: path.to_owned(),
        detail: format!(
            "it is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
        kind: io::ErrorKind::InvalidData,
    })
}

/// Reads the first line of a secret file (a password or a token), without its line ending.
pub fn read_secret(path: &Path, what: &'static str) -> Result<String, ReadError> {
    let text = read_text_capped(path, what, caps::SECRET)?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// Reads one line (up to and without its `\n`) into `line`, refusing lines over `max` bytes.
/// Returns false at the end of the input.
pub fn read_line_capped(input: &mut dyn BufRead, line: &mut Vec<u8>, max: u64) -> io::Result<bool> {
    line.clear();
    // The cap is on the line itself; its `\r\n` may come on top.
    let n = input.take(max + 2).read_until(b'\n', line)?;
    if n == 0 {
        return Ok(false);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    if line.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a line is longer than {}", format_size(max)),
        ));
    }
    Ok(true)
}

/// A size in the largest binary unit, rounded: for messages about sizes that are not round.
pub fn format_size_approx(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A long value shortened for a message: its first `keep` characters and how long it was.
pub fn elide(value: &str, keep: usize) -> String {
    if value.chars().count() <= keep {
        return value.to_owned();
    }
    let head: String = value.chars().take(keep).collect();
    format!("{head}… ({} bytes in all)", value.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_regular_files_up_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, b"hello\nworld\n").unwrap();
        assert_eq!(read_capped(&path, "table", 100).unwrap(), b"hello\nworld\n");
        assert_eq!(read_secret(&path, "password file").unwrap(), "hello");
        let e = read_capped(&path, "table", 5).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "table {} is 12 B, over the 5B weir reads for it; is it the right file?",
                path.display()
            )
        );
    }

    #[test]
    fn devices_fifos_and_directories_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_capped(Path::new("/dev/zero"), "plugin", 1 << 20).unwrap_err();
        assert_eq!(
            e.to_string(),
            "plugin /dev/zero is a character device, not a regular file; point the setting at a file"
        );
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // Must not block: nobody writes to it.
        let e = read_capped(&fifo, "config", 1 << 20).unwrap_err();
        assert!(e.to_string().contains("is a FIFO"), "{e}");
        let e = read_capped(dir.path(), "table", 1 << 20).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
    }

    #[test]
    fn errors_say_the_cause_once_without_errno_noise() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let e = read_capped(&a, "plugin", 1 << 20).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cannot read plugin {}: Too many levels of symbolic links",
                a.display()
            )
        );
        assert!(
            std::error::Error::source(&e).is_none(),
            "the cause is in the message once"
        );
    }

    #[test]
    fn lines_over_the_cap_are_refused() {
        let mut input: &[u8] = b"short\r\nloooooong\nlast";
        let mut line = Vec::new();
        assert!(read_line_capped(&mut input, &mut line, 5).unwrap());
        assert_eq!(line, b"short");
        assert!(read_line_capped(&mut input, &mut line, 5).is_err());
        let mut input: &[u8] = b"a\nlast";
        assert!(read_line_capped(&mut input, &mut line, 5).unwrap());
        assert!(read_line_capped(&mut input, &mut line, 5).unwrap());
        assert_eq!(line, b"last");
        assert!(!read_line_capped(&mut input, &mut line, 5).unwrap());
    }

    #[test]
    fn long_values_are_elided() {
        assert_eq!(elide("abc", 5), "abc");
        assert_eq!(elide(&"x".repeat(1000), 4), "xxxx… (1000 bytes in all)");
        assert_eq!(format_size_approx(1536), "1.5 KiB");
        assert_eq!(format_size_approx(12), "12 B");
    }
}
