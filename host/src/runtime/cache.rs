//! Compiled components on disk, keyed by content, so a restart does not recompile.
//!
//! Within one runtime, a component is compiled or read once, however many steps name it.
//!
//! Layout: one file per component, `<cache dir>/<sha256 of the .wasm>-<engine hash>.cwasm`. The
//! engine hash covers wasmtime's version and every setting that affects compiled code, so an
//! upgraded weir never loads an artifact it cannot run; it compiles again and writes a new file.
//! Files are written to a temporary name and renamed, so a crash never leaves a partial
//! artifact under a real name. A file that fails to load (truncated, corrupt, from another build)
//! is ignored, recompiled and replaced.
//!
//! **Trust**: loading a compiled artifact maps machine code that runs without validation. The
//! cache directory must be writable only by weir (it lives in weir's data directory).

// Compile and load times are measured for the log and the metrics.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
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

/// The on-disk cache of compiled components, and the components this runtime loaded already
/// (by sha256), so that a file named by several steps is compiled or read once.
#[derive(Clone, Debug)]
pub(crate) struct ComponentCache {
    dir: Option<PathBuf>,
    engine_hash: String,
    loaded: Arc<Mutex<HashMap<String, Component>>>,
}

impl ComponentCache {
    pub(crate) fn new(engine: &Engine, dir: Option<PathBuf>) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        ComponentCache {
            dir,
            engine_hash: format!("{:016x}", hasher.finish()),
            loaded: Arc::default(),
        }
    }

    fn path_for(&self, sha256: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(format!("{sha256}-{}.cwasm", self.engine_hash)))
    }

    /// The compiled form of `wasm` (whose hash is `sha256`), from the cache or compiled now.
    pub(crate) fn load(
        &self,
        engine: &Engine,
        wasm: &[u8],
        sha256: &str,
    ) -> wasmtime::Result<(Component, CacheOutcome, Duration)> {
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
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        if let Some(path) = self.path_for(sha256)
            && path.exists()
        {
            match deserialize(engine, &path) {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "compiled plugin in the cache does not load; compiling it again"
                ),
            }
        }
        let component = Component::new(engine, wasm)?;
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

    fn store(&self, component: &Component, sha256: &str) -> anyhow::Result<bool> {
        let (Some(dir), Some(path)) = (self.dir.as_ref(), self.path_for(sha256)) else {
            return Ok(false);
        };
        std::fs::create_dir_all(dir)?;
        let bytes = component.serialize()?;
        let tmp = dir.join(format!(".{sha256}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, &path)?;
        Ok(true)
    }
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: the file was written by `ComponentCache::store` from a component this engine
    // compiled (its name carries the engine's compatibility hash), in a directory only weir
    // writes to. wasmtime still checks the artifact's header, version and settings.
    unsafe { Component::deserialize_file(engine, path) }
}
