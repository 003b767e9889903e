//! The limits every plugin runs under, and what it may reach outside its sandbox.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Limits for one plugin. Each has a default, and each hit is counted in the plugin's metrics
/// (see [`super::metrics::OperatorMetrics`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Most linear memory (and tables) the plugin may hold, in bytes. An allocation past it fails
    /// inside the plugin, which then usually traps. Default 64 MiB.
    pub max_memory_bytes: u64,
    /// Wall-clock budget of one call into the plugin. A call still running after it is stopped
    /// (epoch interruption) and its batch goes to the dead-letter output. Default 250 ms.
    pub time_budget: Duration,
    /// Most events (or messages) passed in one call; longer batches are split. Default 1 024.
    pub max_batch_events: usize,
    /// Most events one call may return. Default 65 536.
    pub max_output_events: usize,
    /// Most bytes one call may return (keys, values and texts, roughly as stored). Default 16 MiB.
    pub max_output_bytes: usize,
    /// Failed batches in a row after which the plugin is quarantined. Default 3.
    pub quarantine_after_failures: u32,
    /// First quarantine period; it doubles with each quarantine in a row. Default 1 s.
    pub quarantine_backoff: Duration,
    /// Longest quarantine period. Default 5 min.
    pub quarantine_backoff_max: Duration,
    /// Longest key (UTF-8 bytes) the plugin may make through `keys.id`: it gets
    /// [`crate::keys::REFUSED`] for a longer one, and events carrying that id go to the
    /// dead-letter output. Set from the pipeline's `max_key_bytes`. Default 1 KiB.
    pub max_key_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_memory_bytes: 64 << 20,
            time_budget: Duration::from_millis(250),
            max_batch_events: 1024,
            max_output_events: 65_536,
            max_output_bytes: 16 << 20,
            quarantine_after_failures: 3,
            quarantine_backoff: Duration::from_secs(1),
            quarantine_backoff_max: Duration::from_secs(300),
            max_key_bytes: 1024,
        }
    }
}

/// What a plugin may reach outside its sandbox. The default is nothing: no files, no network,
/// no environment variables.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Permissions {
    /// Host directories the plugin may open, each under a path the plugin sees.
    pub dirs: Vec<DirGrant>,
    /// Environment variables the plugin sees (name, value).
    pub env: Vec<(String, String)>,
    /// Addresses the plugin may connect to over TCP.
    pub connect: Vec<SocketAddr>,
}

/// A host directory made visible to a plugin.
#[derive(Clone, Debug, PartialEq)]
pub struct DirGrant {
    pub host: PathBuf,
    pub guest: String,
    pub writable: bool,
}

/// Enforces [`Limits::max_memory_bytes`] and remembers whether the plugin hit it.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    pub(crate) max_bytes: usize,
    pub(crate) hit: bool,
}

/// Most table elements a plugin may allocate.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }
}
