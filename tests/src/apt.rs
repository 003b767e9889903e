//! Tools the tests need from the system, installed with apt-get when missing (once per process,
//! under a file lock shared by every test process), or a clear failure saying what to install.

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;

use crate::repo;

/// The path of `binary` (on PATH, or in /usr/sbin or /sbin), after `apt-get install package`
/// if it was missing. Panics naming the package when that fails.
pub fn ensure(binary: &str, package: &str) -> PathBuf {
    if let Some(bin) = find(binary) {
        return bin;
    }
    let lock_path = repo().join("target/weir-test-apt.lock");
    let _ = std::fs::create_dir_all(repo().join("target"));
    let lock = File::create(&lock_path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));
    // Another test process may have installed it while this one waited for the lock.
    if let Some(bin) = find(binary) {
        return bin;
    }
    for args in [&["update"][..], &["install", "-y", package][..]] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            panic!(
                "{binary} is missing and `apt-get {}` failed ({status:?}): install the \
                 `{package}` package (Debian/Ubuntu: apt-get install {package})",
                args.join(" ")
            );
        }
    }
    find(binary).unwrap_or_else(|| {
        panic!("apt-get installed {package} but no `{binary}` is on PATH or in /usr/sbin")
    })
}

fn find(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(binary))
        .find(|bin| bin.is_file())
}
