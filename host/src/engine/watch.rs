//! `watch = true` on a plugin step: weir polls the step's file once a second and, once a changed
//! file has been stable (same size, mtime and inode on two polls in a row) and its content hash
//! differs, swaps the step to it through the same path as `weir plugin swap`
//! ([`EngineControl`]'s swap: loaded, type-checked and initialised off the engine thread, then
//! switched between two batches). A refused version (it fails to load, type-check or init) is
//! logged at ERROR with the reason and the running version keeps running; the same content is
//! not tried again until the file changes.
//!
//! The watcher is one thread that sleeps between polls; it stops when weir shuts down.

// Watching files for a new plugin version is an edge: it polls by the wall clock.
#![allow(clippy::disallowed_methods)]

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::SeqCst;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest as _, Sha256};

use super::control::EngineControl;
use crate::admin::Control as _;
use crate::config::{Config, Decode};

/// How often a watched file is looked at.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How often the thread checks whether weir is stopping, between polls.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// A watched plugin step.
#[derive(Debug)]
struct Watched {
    pipeline: String,
    /// `transform[0]`, `decode`.
    step: String,
    path: PathBuf,
    /// Size, mtime and inode at the last poll, and when the file was last found stable.
    seen: Option<Stat>,
    checked: Option<Stat>,
    /// The content last acted on: what runs (at start, or swapped in), or what was refused.
    hash: Option<String>,
}

/// What changes when a file is rewritten or replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    size: u64,
    mtime: Option<SystemTime>,
    inode: u64,
}

fn stat(path: &Path) -> std::io::Result<Stat> {
    let m = std::fs::metadata(path)?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(Stat {
        size: m.len(),
        mtime: m.modified().ok(),
        inode,
    })
}

/// The sha256 of a file, lowercase hex (as `weir plugin check` prints it).
fn sha256(path: &Path) -> std::io::Result<String> {
    let (mut file, _) = crate::fsutil::open_regular(path, "plugin", crate::fsutil::caps::PLUGIN)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The steps of `config` with `watch = true`.
fn watched(config: &Config) -> Vec<Watched> {
    let mut out = Vec::new();
    for p in &config.pipelines {
        let decode = match &p.decode {
            Decode::Plugin(step) => Some(("decode".to_owned(), step)),
            Decode::Json(_) => None,
        };
        let transforms = p
            .transforms
            .iter()
            .enumerate()
            .map(|(i, t)| (format!("transform[{i}]"), t));
        for (step, plugin) in decode.into_iter().chain(transforms) {
            if plugin.watch {
                out.push(Watched {
                    pipeline: p.name.clone(),
                    step,
                    path: plugin.path.clone(),
                    seen: None,
                    checked: None,
                    hash: None,
                });
            }
        }
    }
    out
}

/// Starts the watcher if any step of `config` has `watch = true`; it stops once `stop` is set.
pub(super) fn spawn(
    config: &Config,
    control: Arc<EngineControl>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    let mut steps = watched(config);
    if steps.is_empty() {
        return Ok(None);
    }
    for w in &steps {
        tracing::info!(
            step = %format!("{}/{}", w.pipeline, w.step),
            path = %w.path.display(),
            "watching the plugin file"
        );
    }
    let handle = std::thread::Builder::new()
        .name("weir-plugin-watch".into())
        .spawn(move || {
            running(&mut steps, &control);
            let mut next = Instant::now() + POLL_EVERY;
            while !stop.load(SeqCst) {
                if Instant::now() < next {
                    std::thread::sleep(STOP_CHECK.min(next - Instant::now()));
                    continue;
                }
                next = Instant::now() + POLL_EVERY;
                for w in &mut steps {
                    if stop.load(SeqCst) {
                        break;
                    }
                    poll(w, &control);
                }
            }
        })?;
    Ok(Some(handle))
}

/// What runs now, in the engine's own word (the file may have changed since it was loaded);
/// asked once the engine thread answers. The file's content if the engine cannot say.
fn running(steps: &mut [Watched], control: &EngineControl) {
    let plugins = control.plugins();
    for w in steps {
        let full = format!("{}/{}", w.pipeline, w.step);
        w.hash = plugins
            .as_array()
            .and_then(|a| a.iter().find(|p| p["step"] == full.as_str()))
            .and_then(|p| p["sha256"].as_str())
            .map(str::to_owned)
            .or_else(|| sha256(&w.path).ok());
        // Hashed at the first stable poll: a change since the engine loaded it is not missed.
        w.seen = stat(&w.path).ok();
    }
}

/// One look at a watched file: a swap when it changed, has settled, and holds new content.
fn poll(w: &mut Watched, control: &EngineControl) {
    // Missing for a moment (being replaced) or for good: nothing to swap to; the running
    // version keeps running.
    let now = stat(&w.path).ok();
    let stable = now.is_some() && now == w.seen;
    w.seen = now;
    let Some(now) = now.filter(|_| stable) else {
        return;
    };
    if w.checked == Some(now) {
        return;
    }
    w.checked = Some(now);
    let full = format!("{}/{}", w.pipeline, w.step);
    let hash = match sha256(&w.path) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(step = %full, path = %w.path.display(), error = %e,
                "cannot read the watched plugin file; the running version keeps running");
            return;
        }
    };
    if w.hash.as_deref() == Some(hash.as_str()) {
        return;
    }
    let old = w.hash.replace(hash.clone());
    let short = |h: Option<&str>| h.map_or("?".to_owned(), |h| h[..h.len().min(12)].to_owned());
    match control.swap(&w.pipeline, &w.step, &w.path, None) {
        Ok(report) => {
            let to = report["to_sha256"].as_str().unwrap_or(&hash).to_owned();
            tracing::info!(
                step = %full,
                path = %w.path.display(),
                from_sha256 = %report["from_sha256"].as_str().unwrap_or_default(),
                to_sha256 = %to,
                pause_us = report["pause_us"].as_f64().unwrap_or_default(),
                "the watched plugin file changed: swapped {} → {}",
                short(report["from_sha256"].as_str().or(old.as_deref())),
                short(Some(&to)),
            );
            w.hash = Some(to);
        }
        Err(reason) => {
            tracing::error!(
                step = %full,
                path = %w.path.display(),
                sha256 = %hash,
                error = %reason,
                "the watched plugin file changed, but the new version is refused; the running \
                 version ({}) keeps running, and this content is not tried again until the file \
                 changes",
                short(old.as_deref()),
            );
        }
    }
}
