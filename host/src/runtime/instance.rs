//! One live instance of a plugin: its store (memory, WASI context, state view) and its exports.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::Runtime;
use super::bindings::v0_1::transformer::weir::operator::types;
use super::bindings::v0_2::transformer::weir::operator as v0_2;
use super::bindings::{GuestError, KeysHost, LogHost, LogLevel, StateHost};
pub(crate) use super::exports::Bound;
use super::limits::{Limits, MemoryLimiter, Permissions};
use super::operator::Failure;
use super::plugin::Plugin;
use super::state::KeyedState;
use super::stdio::GuestOutput;
use crate::keys;

/// What the host keeps in each plugin's store.
pub struct StoreData {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    /// The step's keyed state, moved in for the duration of a call.
    pub(crate) state: KeyedState,
    step: Arc<str>,
    output: GuestOutput,
    /// Keys longer than this are refused (see [`Limits::max_key_bytes`]).
    max_key_bytes: usize,
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for StoreData {}

impl KeysHost for StoreData {
    fn name(&mut self, id: u32) -> String {
        // An id weir never gave out names no key; the empty name says so without trapping.
        keys::name(id).map(|n| n.to_string()).unwrap_or_default()
    }

    fn id(&mut self, name: String) -> u32 {
        if name.len() > self.max_key_bytes {
            return keys::REFUSED;
        }
        keys::intern(&name)
    }
}

/// State is stored by key name, so it outlives the process's key ids.
fn key_name(id: u32) -> std::sync::Arc<str> {
    keys::name(id).unwrap_or_else(|| std::sync::Arc::from(format!("#unassigned-{id}")))
}

impl StateHost for StoreData {
    fn get(&mut self, key: u32, name: String) -> Option<Vec<u8>> {
        self.state.get(&key_name(key), &name)
    }

    fn set(&mut self, key: u32, name: String, value: Vec<u8>) {
        self.state.set(&key_name(key), &name, value)
    }

    fn remove(&mut self, key: u32, name: String) {
        self.state.remove(&key_name(key), &name)
    }
}

impl LogHost for StoreData {
    fn log(&mut self, level: LogLevel, message: String) {
        let step = &*self.step;
        match level {
            LogLevel::Trace => tracing::trace!(step, "{message}"),
            LogLevel::Debug => tracing::debug!(step, "{message}"),
            LogLevel::Info => tracing::info!(step, "{message}"),
            LogLevel::Warn => tracing::warn!(step, "{message}"),
            // A plugin's errors are its own: they lose no data by themselves.
            LogLevel::Error => tracing::warn!(step, plugin_level = "error", "{message}"),
        }
    }
}

// 0.2.0 imports the same interfaces under its own version: the same host code serves them.

impl v0_2::keys::Host for StoreData {
    fn name(&mut self, id: u32) -> String {
        KeysHost::name(self, id)
    }

    fn id(&mut self, name: String) -> u32 {
        KeysHost::id(self, name)
    }
}

impl v0_2::state::Host for StoreData {
    fn get(&mut self, key: u32, name: String) -> Option<Vec<u8>> {
        StateHost::get(self, key, name)
    }

    fn set(&mut self, key: u32, name: String, value: Vec<u8>) {
        StateHost::set(self, key, name, value)
    }

    fn remove(&mut self, key: u32, name: String) {
        StateHost::remove(self, key, name)
    }
}

impl v0_2::log::Host for StoreData {
    fn log(&mut self, level: v0_2::log::Level, message: String) {
        use v0_2::log::Level;
        let level = match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        LogHost::log(self, level, message)
    }
}

pub(crate) struct Instance {
    pub(crate) store: Store<StoreData>,
    pub(crate) bound: Bound,
    /// The key generation when it started: its key ids are valid while it lasts.
    pub(crate) key_generation: u64,
}

/// Why an instance could not be started.
pub(crate) enum InitFailure {
    /// The plugin's `init` refused its config.
    Config(String),
    /// Instantiation or `init` failed otherwise (trap, limit, WASI setup).
    Other(String),
}

fn wasi_ctx(perms: &Permissions, output: &GuestOutput) -> Result<WasiCtx, String> {
    let mut b = WasiCtxBuilder::new();
    b.stdout(output.clone()).stderr(output.clone());
    b.allow_ip_name_lookup(false).allow_udp(false);
    b.allow_tcp(!perms.connect.is_empty());
    let allowed = perms.connect.clone();
    b.socket_addr_check(move |addr, usage| {
        let ok = match usage {
            SocketAddrUse::TcpConnect => allowed.contains(&addr),
            // The implicit bind to an ephemeral port that precedes a connect.
            SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
            _ => false,
        };
        Box::pin(async move { ok })
    });
    for (k, v) in &perms.env {
        b.env(k, v);
    }
    for dir in &perms.dirs {
        let perms = if dir.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        b.preopened_dir(&dir.host, &dir.guest, perms)
            .map_err(|e| format!("cannot open {} for the plugin: {e}", dir.host.display()))?;
    }
    Ok(b.build())
}

impl Instance {
    /// Instantiates `plugin` and runs its `init` with `config` (JSON), under `limits`.
    pub(crate) fn start(
        runtime: &Runtime,
        plugin: &Plugin,
        step: Arc<str>,
        limits: &Limits,
        perms: &Permissions,
        config: &str,
    ) -> Result<Instance, InitFailure> {
        let output = GuestOutput::new(step.clone());
        let wasi = wasi_ctx(perms, &output).map_err(InitFailure::Other)?;
        let data = StoreData {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                max_bytes: usize::try_from(limits.max_memory_bytes).unwrap_or(usize::MAX),
                hit: false,
            },
            state: KeyedState::default(),
            step,
            output,
            max_key_bytes: limits.max_key_bytes,
        };
        let mut store = Store::new(runtime.engine(), data);
        store.limiter(|d| &mut d.limiter);
        store.set_epoch_deadline(runtime.deadline_ticks(limits.time_budget));
        let bound = {
            let _running = runtime.running();
            plugin.pre.instantiate(&mut store)
        };
        let mut instance = match bound {
            Ok(bound) => Instance {
                store,
                bound,
                key_generation: keys::generation(),
            },
            Err(e) => {
                let failure = classify(e, &store, limits.time_budget);
                return Err(InitFailure::Other(failure.to_string()));
            }
        };
        let config = config.to_owned();
        let result = instance.call(runtime, limits.time_budget, |store, bound| {
            bound.init(store, &config)
        });
        match result {
            Ok(Ok(())) => Ok(instance),
            Ok(Err(GuestError::Config(reason))) => Err(InitFailure::Config(reason)),
            Ok(Err(e)) => Err(InitFailure::Other(guest_error_text(&e))),
            Err(failure) => Err(InitFailure::Other(failure.to_string())),
        }
    }

    /// Calls into the plugin under a time budget. A trap or limit hit comes back as a
    /// [`Failure`]; the instance must not be used again after one.
    pub(crate) fn call<R>(
        &mut self,
        runtime: &Runtime,
        budget: Duration,
        f: impl FnOnce(&mut Store<StoreData>, &Bound) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        self.store
            .set_epoch_deadline(runtime.deadline_ticks(budget));
        self.store.data_mut().limiter.hit = false;
        let result = {
            let _running = runtime.running();
            f(&mut self.store, &self.bound)
        };
        result.map_err(|e| classify(e, &self.store, budget))
    }
}

/// Turns a wasmtime error from a call into the failure it stands for.
fn classify(e: wasmtime::Error, store: &Store<StoreData>, budget: Duration) -> Failure {
    if store.data().limiter.hit {
        return Failure::MemoryLimit {
            max_bytes: store.data().limiter.max_bytes as u64,
        };
    }
    if let Some(wasmtime::Trap::Interrupt) = e.downcast_ref::<wasmtime::Trap>() {
        return Failure::TimeLimit { budget };
    }
    let printed = store.data().output.take();
    let mut reason = format!("{e:#}");
    if !printed.is_empty() {
        reason.push_str("; the plugin printed: ");
        reason.push_str(&printed);
    }
    Failure::Trap(reason)
}

pub(crate) fn guest_error_text(e: &GuestError) -> String {
    match e {
        GuestError::Config(m) => format!("config: {m}"),
        GuestError::BadInput(m) => format!("bad input: {m}"),
        GuestError::Internal(m) => format!("internal: {m}"),
    }
}
