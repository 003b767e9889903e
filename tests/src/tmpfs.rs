//! A small tmpfs mounted for a test: a disk that fills. Mounting needs root.

use std::path::Path;
use std::process::Command;

use crate::process::TempDir;

/// A tmpfs of a given size mounted on a fresh directory; unmounted (and the directory removed)
/// on drop.
#[derive(Debug)]
pub struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. `"4m"`); panics, saying the test needs
    /// root and tmpfs, if that is refused.
    pub fn mount(prefix: &str, size: &str) -> Tmpfs {
        let dir = TempDir::new(prefix);
        let result = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match result {
            Ok(out) if out.status.success() => Tmpfs { dir },
            Ok(out) => panic!(
                "this test needs root and tmpfs: `mount -t tmpfs -o size={size} tmpfs {}` failed \
                 ({}): {}",
                dir.path().display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!("this test needs root and tmpfs: cannot run mount: {e}"),
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Anything still using it (a process the test failed to stop) keeps it busy: lazily.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
