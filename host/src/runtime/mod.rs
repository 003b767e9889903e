//! Runs user operators: WebAssembly components checked against the `weir:operator` contract.
//!
//! - [`Runtime`] owns the wasmtime engine, the linker (WASI with no capabilities, plus weir's
//!   `state` and `log` imports), the compiled-plugin cache and the epoch ticker that enforces
//!   time budgets.
//! - [`Plugin`] is a loaded, checked, compiled component ([`Runtime::load`]).
//! - [`Operator`] runs one plugin for one pipeline step: limits, dead letters, rebuilds after a
//!   trap, quarantine, keyed state and hot swap. [`OperatorHandle`] runs an operator on a thread
//!   of its own, for async callers.
//!
//! **Architecture invariant**: guest code runs only inside [`Operator`] calls, each under a time
//! budget, and never on an async executor's worker thread unless through [`Operator`] directly
//! by a caller that accepts that budget. A trap or a limit hit becomes a dead letter, never a
//! panic of the host.

pub mod bindings;
mod cache;
mod epoch;
mod exports;
mod instance;
mod limits;
pub mod metrics;
mod operator;
mod plugin;
mod shadow;
mod state;
mod stdio;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine};

pub use cache::CacheOutcome;
pub use limits::{DirGrant, Limits, Permissions};
pub use metrics::{OperatorMetrics, OperatorMetricsSnapshot};
pub use operator::{
    DeadInput, DeadLetter, Failure, Operator, OperatorSpec, Outcome, Prepared, Reason, StartError,
    SwapReport,
};
pub use plugin::{LoadError, PACKAGE, Plugin, SUPPORTED_VERSIONS, World, sha256_hex};
pub use state::KeyedState;
pub use worker::OperatorHandle;

pub(crate) use instance::StoreData;

/// How the runtime is set up.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where compiled plugins are cached; `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// Whether components compiled now are written to `cache_dir` (`weir check` only reads).
    pub cache_writes: bool,
    /// How often the epoch advances while a plugin runs: the resolution of time budgets.
    pub epoch_tick: Duration,
    /// Enforce time budgets (epoch interruption). Only benchmarks turn this off, to measure
    /// what it costs.
    pub time_budgets: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            cache_writes: true,
            epoch_tick: Duration::from_millis(1),
            time_budgets: true,
        }
    }
}

/// The shared part of weir that runs plugins. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<StoreData>,
    cache: cache::ComponentCache,
    ticker: Option<epoch::Ticker>,
    epoch_tick: Duration,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

/// Address space reserved for each linear memory of a plugin. wasmtime's default on 64-bit
/// hosts is 4 GiB plus 32 MiB guards on both sides, so that bounds checks can be left out; a
/// 39-bit arm64 kernel (the Raspberry Pi's default: 512 GiB for a process) then holds fewer
/// than 120 memories, and every plugin step, every version prepared for a swap and kept for a
/// rollback has its own. With 64 MiB (the default `max_memory` of a step) and small guards a
/// memory takes 68 MiB of address space: thousands fit. The price is an explicit bounds check
/// per memory access; a memory that grows past the reservation is moved (copied) to a larger
/// one. The same on every target, so an artifact compiled on one machine for another matches
/// the engine that loads it.
pub const MEMORY_RESERVATION: u64 = 64 << 20;
/// The guard after (and before) each memory's reservation.
const MEMORY_GUARD: u64 = 2 << 20;

/// `WEIR_TIME_BUDGET_SCALE` (a whole number, default 1) multiplies every plugin's time budget:
/// for weir under an emulator (qemu-user), where code runs many times slower than on the
/// hardware the budgets were set for.
pub fn time_budget_scale() -> u32 {
    static SCALE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *SCALE.get_or_init(|| {
        std::env::var("WEIR_TIME_BUDGET_SCALE")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|&n: &u32| n >= 1)
            .unwrap_or(1)
    })
}

/// The engine settings of every runtime, and of `weir plugin compile` (which must match them).
fn engine_config(time_budgets: bool) -> Config {
    let mut wasm = Config::new();
    wasm.wasm_component_model(true)
        .epoch_interruption(time_budgets)
        .memory_reservation(MEMORY_RESERVATION)
        .memory_guard_size(MEMORY_GUARD)
        .memory_reservation_for_growth(MEMORY_RESERVATION);
    #[cfg(feature = "compiler")]
    wasm.cranelift_opt_level(wasmtime::OptLevel::Speed);
    wasm
}

/// A component compiled for `target` (a triple; this machine when `None`), as a gateway of
/// this weir version with time budgets (the live engine) loads it: the artifact's bytes and the
/// file name its cache looks for. Without `target`, the code may use every CPU feature of this
/// machine; with one, only the target's baseline (an `aarch64` artifact runs on every
/// Raspberry Pi from the 3 on).
#[cfg(feature = "compiler")]
pub fn precompile(wasm: &[u8], target: Option<&str>) -> anyhow::Result<(String, Vec<u8>)> {
    let mut config = engine_config(true);
    let unsupported = || {
        format!(
            "cannot compile for target {}: this weir compiles for x86_64 and aarch64 \
             (e.g. aarch64-unknown-linux-gnu)",
            target.unwrap_or_default()
        )
    };
    let arch = match target {
        Some(triple) => {
            config
                .target(triple)
                .map_err(|e| anyhow::anyhow!("{}: {e:#}", unsupported()))?;
            triple.split('-').next().unwrap_or(triple).to_owned()
        }
        None => std::env::consts::ARCH.to_owned(),
    };
    let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{}: {e:#}", unsupported()))?;
    let bytes = engine.precompile_component(wasm)?;
    let settings = cache::Settings { time_budgets: true };
    Ok((
        cache::artifact_name(&sha256_hex(wasm), &arch, settings),
        bytes,
    ))
}

pub use cache::host_triple;
#[cfg(feature = "compiler")]
pub(crate) use {cache::write_artifact, plugin::component_bytes};

impl Runtime {
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let engine = Engine::new(&engine_config(config.time_budgets))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        bindings::v0_1::transformer::Transformer::add_to_linker::<_, HasSelf<StoreData>>(
            &mut linker,
            |data| data,
        )?;
        bindings::v0_2::transformer::MigratingTransformer::add_to_linker::<_, HasSelf<StoreData>>(
            &mut linker,
            |data| data,
        )?;
        let cache = cache::ComponentCache::new(
            config.cache_dir,
            config.cache_writes,
            cache::Settings {
                time_budgets: config.time_budgets,
            },
        );
        let ticker = config
            .time_budgets
            .then(|| epoch::Ticker::start(engine.clone(), config.epoch_tick));
        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                linker,
                cache,
                ticker,
                epoch_tick: config.epoch_tick,
            }),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Epoch ticks for a time budget: the call is stopped within the budget (times
    /// `WEIR_TIME_BUDGET_SCALE`, when set).
    pub(crate) fn deadline_ticks(&self, budget: Duration) -> u64 {
        let budget = budget.saturating_mul(time_budget_scale());
        let ticks = budget.as_nanos() / self.inner.epoch_tick.as_nanos().max(1);
        u64::try_from(ticks).unwrap_or(u64::MAX / 2).max(1)
    }

    /// Marks a call into a plugin as running, so the ticker advances the epoch.
    pub(crate) fn running(&self) -> Option<epoch::Running<'_>> {
        self.inner.ticker.as_ref().map(epoch::Ticker::enter)
    }
}

/// A step's config (a TOML value, usually a table) as the JSON text a plugin's `init` receives.
pub fn config_json(config: &toml::Value) -> String {
    serde_json::to_string(config).expect("TOML values serialize to JSON")
}
