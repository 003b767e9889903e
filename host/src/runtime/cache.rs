//! Compiled components on disk, keyed by content, so a restart does not recompile, and so a
//! gateway can run plugins compiled on another machine (`weir plugin compile --target`).
//!
//! Within one runtime, a component is compiled or read once, however many steps name it.
//!
//! Layout: one file per component, `<cache dir>/<sha256 of the .wasm>-<arch>-<settings>.cwasm`
//! ([`artifact_name`]). `<settings>` covers weir's version and every engine setting weir chooses
//! that changes compiled code (time budgets, memory reservation and guards, optimisation); it
//! leaves out what the compiling machine detects about its own CPU, so that an artifact compiled
//! elsewhere for the same architecture has the name the gateway looks for. Whether it really
//! fits is wasmtime's check when the file is loaded (its version, target, CPU features it needs,
//! every setting): a file that fails it is refused with wasmtime's reason, then compiled again
//! and replaced when this weir has the compiler, or reported when it has not.
//!
//! Files are written to a temporary name and renamed, so a crash never leaves a partial
//! artifact under a real name.
//!
//! **Trust**: loading a compiled artifact maps machine code that runs without validation, with
//! all of weir's rights. Artifacts are therefore read only from the cache directory, and only
//! when that directory and the file belong to the user weir runs as (or root) and nobody else
//! can write them; weir creates the directory with mode 0700.

// Compile and load times are measured for the log and the metrics.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::Engine;
use wasmtime::component::Component;

/// Where a component came from when it was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a compiled artifact in the cache.
    Hit,
    /// Compiled, and stored in the cache.
    Compiled,
    /// Compiled; there is no cache directory (or it could not be written).
    Uncached,
}

/// Why a component could not be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CacheError {
    #[cfg_attr(not(feature = "compiler"), allow(dead_code))]
    #[error("{0:#}")]
    Compile(wasmtime::Error),
    /// This weir has no compiler, and the cache holds no artifact it can load at `expected`
    /// (none at all, or one wasmtime `refused`).
    #[cfg_attr(feature = "compiler", allow(dead_code))]
    #[error("no compiled artifact at {}", .expected.display())]
    NeedsCompiling {
        expected: PathBuf,
        refused: Option<String>,
    },
}

/// The engine settings weir chooses that change compiled code: part of every artifact's name.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    pub time_budgets: bool,
}

/// The file name of the compiled form of the component with hash `sha256`, for `arch` (the
/// first part of a target triple: `x86_64`, `aarch64`) and `settings`.
pub(crate) fn artifact_name(sha256: &str, arch: &str, settings: Settings) -> String {
    let described = format!(
        "weir {} time-budgets={} memory-reservation={} memory-guard={} opt=speed",
        env!("CARGO_PKG_VERSION"),
        settings.time_budgets,
        super::MEMORY_RESERVATION,
        super::MEMORY_GUARD,
    );
    let digest = super::sha256_hex(described.as_bytes());
    format!("{sha256}-{arch}-{}.cwasm", &digest[..16])
}

/// The target triple weir runs on, as `weir plugin compile --target` takes it.
pub fn host_triple() -> String {
    format!(
        "{}-unknown-{}-gnu",
        std::env::consts::ARCH,
        std::env::consts::OS
    )
}

/// The on-disk cache of compiled components, and the components this runtime loaded already
/// (by sha256), so that a file named by several steps is compiled or read once.
#[derive(Clone, Debug)]
pub(crate) struct ComponentCache {
    dir: Option<PathBuf>,
    /// Whether compiled components are written to `dir` (`weir check` only reads it).
    #[cfg_attr(not(feature = "compiler"), allow(dead_code))]
    write: bool,
    settings: Settings,
    loaded: Arc<Mutex<HashMap<String, Component>>>,
}

impl ComponentCache {
    pub(crate) fn new(dir: Option<PathBuf>, write: bool, settings: Settings) -> Self {
        ComponentCache {
            dir,
            write,
            settings,
            loaded: Arc::default(),
        }
    }

    fn path_for(&self, sha256: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(artifact_name(sha256, std::env::consts::ARCH, self.settings)))
    }

    /// The compiled form of `wasm` (whose hash is `sha256`), from the cache or compiled now.
    pub(crate) fn load(
        &self,
        engine: &Engine,
        wasm: &[u8],
        sha256: &str,
    ) -> Result<(Component, CacheOutcome, Duration), CacheError> {
        let started = Instant::now();
        if let Some(component) = self.loaded().get(sha256) {
            return Ok((component.clone(), CacheOutcome::Hit, started.elapsed()));
        }
        let (component, outcome) = self.load_new(engine, wasm, sha256)?;
        self.loaded().insert(sha256.to_owned(), component.clone());
        Ok((component, outcome, started.elapsed()))
    }

    fn loaded(&self) -> std::sync::MutexGuard<'_, HashMap<String, Component>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From the cache directory, or compiled now (and stored there).
    fn load_new(
        &self,
        engine: &Engine,
        wasm: &[u8],
        sha256: &str,
    ) -> Result<(Component, CacheOutcome), CacheError> {
        let path = self.path_for(sha256);
        let mut refused = None;
        if let Some(path) = &path
            && path.exists()
        {
            match deserialize(engine, path) {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(
                        path = %path.display(),
                        error = %e,
                        "compiled plugin in the cache is refused"
                    );
                    refused = Some(e);
                }
            }
        }
        self.compile(engine, wasm, sha256, path, refused)
    }

    #[cfg(feature = "compiler")]
    fn compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        sha256: &str,
        _path: Option<PathBuf>,
        _refused: Option<String>,
    ) -> Result<(Component, CacheOutcome), CacheError> {
        let component = Component::new(engine, wasm).map_err(CacheError::Compile);
        give_back_freed_memory();
        let component = component?;
        let outcome = match self.store(&component, sha256) {
            Ok(true) => CacheOutcome::Compiled,
            Ok(false) => CacheOutcome::Uncached,
            Err(e) => {
                tracing::warn!(error = %e, "cannot write the compiled plugin cache; the next start compiles again");
                CacheOutcome::Uncached
            }
        };
        Ok((component, outcome))
    }

    #[cfg(not(feature = "compiler"))]
    fn compile(
        &self,
        _engine: &Engine,
        _wasm: &[u8],
        sha256: &str,
        path: Option<PathBuf>,
        refused: Option<String>,
    ) -> Result<(Component, CacheOutcome), CacheError> {
        let expected = path.unwrap_or_else(|| {
            PathBuf::from("<data_dir>/plugin-cache").join(artifact_name(
                sha256,
                std::env::consts::ARCH,
                self.settings,
            ))
        });
        Err(CacheError::NeedsCompiling { expected, refused })
    }

    #[cfg(feature = "compiler")]
    fn store(&self, component: &Component, sha256: &str) -> anyhow::Result<bool> {
        let (true, Some(dir), Some(path)) = (self.write, self.dir.as_ref(), self.path_for(sha256))
        else {
            return Ok(false);
        };
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let bytes = component.serialize()?;
        write_artifact(dir, &path, &bytes)?;
        Ok(true)
    }
}

/// Compiling a component allocates and frees tens of megabytes (Cranelift's work, on several
/// threads); glibc keeps what was freed in its arenas, and a gateway that compiled its plugins
/// at start held 36 MiB instead of 17. This hands it back to the OS.
#[cfg(feature = "compiler")]
#[allow(unsafe_code)]
pub(crate) fn give_back_freed_memory() {
    // SAFETY: malloc_trim only returns free memory of glibc's allocator (weir's global
    // allocator) to the OS; no live allocation is touched.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    };
}

/// Writes `bytes` to `path` (in `dir`) through a temporary file, readable only by its owner.
#[cfg(feature = "compiler")]
pub(crate) fn write_artifact(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.unwrap_or_default(),
        std::process::id()
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Refuses a file that someone other than weir's user (or root) owns or can write, or one in
/// such a directory: its machine code would run as weir.
fn trusted(path: &Path) -> Result<(), String> {
    let euid = rustix::process::geteuid().as_raw();
    let dir = path.parent().unwrap_or(Path::new("."));
    for (what, p) in [("directory", dir), ("file", path)] {
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.uid() != euid && meta.uid() != 0 {
            return Err(format!(
                "the {what} {} belongs to uid {}, and this weir runs as uid {euid}: it loads \
                 compiled plugins (machine code that runs with its rights) only from its own \
                 user or root; run it as their owner (e.g. sudo -u weir)",
                p.display(),
                meta.uid()
            ));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(format!(
                "the {what} {} can be written by others (mode {:o}); compiled plugins run as \
                 weir, so weir only loads them where nobody else can write (chmod go-w)",
                p.display(),
                meta.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> Result<Component, String> {
    trusted(path)?;
    // SAFETY: the file lies in weir's cache directory, which only weir's user (or root) can
    // write (checked just above), so it was written by weir (`ComponentCache::store`) or placed
    // there by its administrator from `weir plugin compile`. wasmtime checks the artifact's
    // header, version, target and settings before mapping it.
    unsafe { Component::deserialize_file(engine, path) }.map_err(|e| format!("{e:#}"))
}
