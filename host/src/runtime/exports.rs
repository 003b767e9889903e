//! A plugin's exports, whatever contract version it was built for: found once when it loads
//! ([`Pre`]), bound to each instance ([`Bound`]), and called through one set of methods.
//!
//! Both contract versions share their Rust types (see [`super::bindings`]), so a call is the
//! same code for either; only the generated handle differs.

use wasmtime::Store;
use wasmtime::component::{Instance as WasmInstance, InstancePre};

use super::StoreData;
use super::bindings::v0_1;
use super::bindings::v0_2;
use super::bindings::{Batch, Field, GuestError, Message, Output};
use super::plugin::World;

type Call<R> = wasmtime::Result<Result<R, GuestError>>;

use v0_1::aggregator::exports::weir::operator::aggregate as agg1;
use v0_1::decoder::exports::weir::operator::decode as dec1;
use v0_1::transformer::exports::weir::operator::transform as tr1;
use v0_2::aggregator::exports::weir::operator::aggregate as agg2;
use v0_2::decoder::exports::weir::operator::decode as dec2;
use v0_2::transformer::exports::weir::operator::transform as tr2;

/// Where a plugin's operator exports are, found once at load.
#[derive(Clone)]
pub(crate) struct Pre {
    instance_pre: InstancePre<StoreData>,
    operator: OperatorIndices,
    /// `weir:operator/migrate` (0.2.0 and later), if the plugin exports it.
    migrate: Option<v0_2::MigrateIndices>,
}

#[derive(Clone)]
enum OperatorIndices {
    Decoder1(dec1::GuestIndices),
    Transformer1(tr1::GuestIndices),
    Aggregator1(agg1::GuestIndices),
    Decoder2(dec2::GuestIndices),
    Transformer2(tr2::GuestIndices),
    Aggregator2(agg2::GuestIndices),
}

impl Pre {
    /// Type-checks the exports of `world` at contract `version` (one of
    /// [`super::SUPPORTED_VERSIONS`]), and `migrate` if the plugin exports it.
    pub(crate) fn new(
        instance_pre: InstancePre<StoreData>,
        world: World,
        version: &str,
        exports_migrate: bool,
    ) -> wasmtime::Result<Pre> {
        let p = &instance_pre;
        let operator = match (version, world) {
            ("0.1.0", World::Decoder) => OperatorIndices::Decoder1(dec1::GuestIndices::new(p)?),
            ("0.1.0", World::Transformer) => {
                OperatorIndices::Transformer1(tr1::GuestIndices::new(p)?)
            }
            ("0.1.0", World::Aggregator) => {
                OperatorIndices::Aggregator1(agg1::GuestIndices::new(p)?)
            }
            (_, World::Decoder) => OperatorIndices::Decoder2(dec2::GuestIndices::new(p)?),
            (_, World::Transformer) => OperatorIndices::Transformer2(tr2::GuestIndices::new(p)?),
            (_, World::Aggregator) => OperatorIndices::Aggregator2(agg2::GuestIndices::new(p)?),
        };
        let migrate = if exports_migrate {
            Some(v0_2::MigrateIndices::new(p)?)
        } else {
            None
        };
        Ok(Pre {
            instance_pre,
            operator,
            migrate,
        })
    }

    /// Whether the plugin exports `migrate`.
    pub(crate) fn migrates(&self) -> bool {
        self.migrate.is_some()
    }

    pub(crate) fn instantiate(&self, store: &mut Store<StoreData>) -> wasmtime::Result<Bound> {
        let instance: WasmInstance = self.instance_pre.instantiate(&mut *store)?;
        let operator = match &self.operator {
            OperatorIndices::Decoder1(i) => Operator::Decoder1(i.load(&mut *store, &instance)?),
            OperatorIndices::Transformer1(i) => {
                Operator::Transformer1(i.load(&mut *store, &instance)?)
            }
            OperatorIndices::Aggregator1(i) => {
                Operator::Aggregator1(i.load(&mut *store, &instance)?)
            }
            OperatorIndices::Decoder2(i) => Operator::Decoder2(i.load(&mut *store, &instance)?),
            OperatorIndices::Transformer2(i) => {
                Operator::Transformer2(i.load(&mut *store, &instance)?)
            }
            OperatorIndices::Aggregator2(i) => {
                Operator::Aggregator2(i.load(&mut *store, &instance)?)
            }
        };
        let migrate = match &self.migrate {
            Some(i) => Some(i.load(&mut *store, &instance)?),
            None => None,
        };
        Ok(Bound { operator, migrate })
    }
}

/// A plugin's exports, bound to one instance.
pub(crate) struct Bound {
    operator: Operator,
    migrate: Option<v0_2::MigrateGuest>,
}

enum Operator {
    Decoder1(dec1::Guest),
    Transformer1(tr1::Guest),
    Aggregator1(agg1::Guest),
    Decoder2(dec2::Guest),
    Transformer2(tr2::Guest),
    Aggregator2(agg2::Guest),
}

/// Calls `$method` on the export of whichever version `$op` is, for the worlds listed.
macro_rules! either_version {
    ($op:expr, $one:ident | $two:ident, $g:ident => $call:expr, $what:literal) => {
        match $op {
            Operator::$one($g) => $call,
            Operator::$two($g) => $call,
            _ => unreachable!($what),
        }
    };
}

impl Bound {
    pub(crate) fn init(&self, store: &mut Store<StoreData>, config: &str) -> Call<()> {
        match &self.operator {
            Operator::Decoder1(g) => g.call_init(store, config),
            Operator::Transformer1(g) => g.call_init(store, config),
            Operator::Aggregator1(g) => g.call_init(store, config),
            Operator::Decoder2(g) => g.call_init(store, config),
            Operator::Transformer2(g) => g.call_init(store, config),
            Operator::Aggregator2(g) => g.call_init(store, config),
        }
    }

    pub(crate) fn decode(
        &self,
        store: &mut Store<StoreData>,
        messages: &[Message],
    ) -> Call<Output> {
        either_version!(&self.operator, Decoder1 | Decoder2, g => g.call_decode(store, messages),
            "a decoder operator runs a decoder")
    }

    pub(crate) fn transform(&self, store: &mut Store<StoreData>, events: &Batch) -> Call<Output> {
        either_version!(&self.operator, Transformer1 | Transformer2,
            g => g.call_transform(store, events), "a transformer operator runs a transformer")
    }

    pub(crate) fn create(&self, store: &mut Store<StoreData>) -> wasmtime::Result<Vec<u8>> {
        either_version!(&self.operator, Aggregator1 | Aggregator2, g => g.call_create(store),
            "an aggregator operator runs an aggregator")
    }

    pub(crate) fn add(
        &self,
        store: &mut Store<StoreData>,
        accumulators: &[Vec<u8>],
        events: &Batch,
        group: &[u32],
    ) -> Call<Vec<Vec<u8>>> {
        either_version!(&self.operator, Aggregator1 | Aggregator2,
            g => g.call_add(store, accumulators, events, group),
            "an aggregator operator runs an aggregator")
    }

    pub(crate) fn merge(&self, store: &mut Store<StoreData>, a: &[u8], b: &[u8]) -> Call<Vec<u8>> {
        either_version!(&self.operator, Aggregator1 | Aggregator2, g => g.call_merge(store, a, b),
            "an aggregator operator runs an aggregator")
    }

    pub(crate) fn finish(
        &self,
        store: &mut Store<StoreData>,
        accumulators: &[Vec<u8>],
    ) -> Call<Vec<Vec<Field>>> {
        either_version!(&self.operator, Aggregator1 | Aggregator2,
            g => g.call_finish(store, accumulators), "an aggregator operator runs an aggregator")
    }

    /// The layout of what this version stores: `""` for a plugin without `migrate`.
    pub(crate) fn layout(&self, store: &mut Store<StoreData>) -> wasmtime::Result<String> {
        match &self.migrate {
            Some(m) => m.call_layout(store),
            None => Ok(String::new()),
        }
    }

    /// Keyed state written in layout `from`, in this version's layout; `None` if the plugin
    /// does not export `migrate`.
    pub(crate) fn migrate_state(
        &self,
        store: &mut Store<StoreData>,
        from: &str,
        states: &[v0_2::KeyState],
    ) -> Option<Call<Vec<v0_2::KeyState>>> {
        let m = self.migrate.as_ref()?;
        Some(m.call_migrate_state(store, from, states))
    }

    /// Accumulators written in layout `from`, in this version's layout; `None` if the plugin
    /// does not export `migrate`.
    pub(crate) fn migrate_accumulators(
        &self,
        store: &mut Store<StoreData>,
        from: &str,
        accumulators: &[Vec<u8>],
    ) -> Option<Call<Vec<Vec<u8>>>> {
        let m = self.migrate.as_ref()?;
        Some(m.call_migrate_accumulators(store, from, accumulators))
    }
}
