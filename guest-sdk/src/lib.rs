//! Write operators for [weir](https://example.invalid/weir), the streaming host for edge
//! gateways, in Rust.
//!
//! An operator is a small program that weir runs on the events of a pipeline: it decodes a
//! vendor's payload, drops impossible readings, converts units, enriches, detects a pattern or
//! computes a custom aggregate. You write it against this crate, build it as a WebAssembly
//! component, and name it in a pipeline config. weir runs it in a sandbox with a memory cap and a
//! time budget, keeps its state for it, and can swap it for a new version while data flows.
//!
//! # Your first operator
//!
//! A filter that drops humidity readings outside 0–100 %:
//!
//! ```
//! use weir_guest::prelude::*;
//!
//! #[operator]
//! struct RangeFilter {
//!     field: String,
//!     min: f64,
//!     max: f64,
//! }
//!
//! impl Transform for RangeFilter {
//!     fn process(&mut self, event: Event, ctx: &mut Context) -> Result<(), String> {
//!         match event.f64(&self.field) {
//!             Some(x) if !(self.min..=self.max).contains(&x) => {} // impossible: drop it
//!             _ => ctx.emit(event),
//!         }
//!         Ok(())
//!     }
//! }
//!
//! weir_guest::export_transform!(RangeFilter);
//! ```
//!
//! That is the whole plugin. The struct is the operator's configuration (`#[operator]` makes it
//! deserializable): weir fills it from the step's table in the pipeline config when it loads the
//! plugin, so a config error (a missing `max`, a string where a number belongs, a misspelt
//! field) is reported before any data flows:
//!
//! ```toml
//! [[pipeline.transform]]
//! plugin = "plugins/range_filter.wasm"
//! config = { field = "humidity", min = 0.0, max = 100.0 }
//! ```
//!
//! Fields that are not configuration (counters, caches) go in the struct with
//! `#[serde(skip)]` and a `Default`; optional settings take `#[serde(default)]`. An operator without configuration is an empty braced
//! struct, `struct Mine {}`. To check the configuration beyond its types, or to prepare
//! something once, implement the optional `init` method and return an error saying what is wrong.
//!
//! # What `process` can do
//!
//! [`Transform::process`] is called once per event (weir calls the component once per batch;
//! this crate loops for you). It may:
//!
//! - pass the event on, changed or not, with [`Context::emit`] (map, enrich);
//! - not emit it (filter);
//! - emit several events (flat-map), or new ones (a detector's alerts);
//! - return `Err(reason)`: the event goes to the pipeline's dead-letter output with the reason,
//!   and the rest of the batch carries on.
//!
//! A panic is different: weir treats the operator instance as broken, sends the whole batch to
//! the dead-letter output, and starts a fresh instance. Return errors; don't panic.
//!
//! # Keyed state
//!
//! [`Context::state`] gives the state weir keeps for a key. It is stored in weir, not in the
//! component, so it is checkpointed with the pipeline, survives a crash or restart, and is still
//! there after the operator is replaced by a new version. If a batch fails, its writes are
//! discarded with it.
//!
//! ```
//! use weir_guest::prelude::*;
//!
//! #[operator]
//! struct CountPerSensor {}
//!
//! impl Transform for CountPerSensor {
//!     fn process(&mut self, mut event: Event, ctx: &mut Context) -> Result<(), String> {
//!         let mut state = ctx.state(&event.key);
//!         let seen: i64 = state.get("seen").unwrap_or(0) + 1;
//!         state.set("seen", &seen);
//!         event.set("seen", seen);
//!         ctx.emit(event);
//!         Ok(())
//!     }
//! }
//! # weir_guest::export_transform!(CountPerSensor);
//! ```
//!
//! A new version that stores its state differently implements [`Migrate`]: it names the layout
//! it stores and converts what an earlier version stored, key by key, when weir swaps it in.
//!
//! ```
//! use weir_guest::prelude::*;
//!
//! #[operator]
//! struct CountPerSensorV2 {}
//! # impl Transform for CountPerSensorV2 {
//! #     fn process(&mut self, event: Event, ctx: &mut Context) -> Result<(), String> {
//! #         ctx.emit(event);
//! #         Ok(())
//! #     }
//! # }
//!
//! impl Migrate for CountPerSensorV2 {
//!     const LAYOUT: &'static str = "seen-v2";
//!
//!     fn migrate_state(&self, old_layout: &str, state: &mut StoredState) -> Result<(), String> {
//!         // Version 1 (layout "") kept a bare count under "seen".
//!         let seen: i64 = state.get("seen").unwrap_or(0);
//!         state.remove("seen");
//!         state.set("counts", &[seen, 0]);
//!         Ok(())
//!     }
//! }
//! weir_guest::export_transform!(CountPerSensorV2, migrate);
//! ```
//!
//! # Testing without WebAssembly
//!
//! The same code runs natively, so `cargo test` tests it. [`testing::Harness`] configures the
//! operator from TOML, as a pipeline would, and runs batches through the same conversion the
//! component uses, with state kept in memory:
//!
//! ```
//! # use weir_guest::prelude::*;
//! # #[operator]
//! # struct RangeFilter { field: String, min: f64, max: f64 }
//! # impl Transform for RangeFilter {
//! #     fn process(&mut self, event: Event, ctx: &mut Context) -> Result<(), String> {
//! #         match event.f64(&self.field) {
//! #             Some(x) if !(self.min..=self.max).contains(&x) => {}
//! #             _ => ctx.emit(event),
//! #         }
//! #         Ok(())
//! #     }
//! # }
//! use weir_guest::testing::Harness;
//!
//! let mut op = Harness::<RangeFilter>::transform(r#"field = "humidity"
//! min = 0.0
//! max = 100.0"#).unwrap();
//! let out = op.run(vec![
//!     Event::new("s1", 0).with("humidity", 55.0),
//!     Event::new("s1", 1).with("humidity", 140.0),
//! ]);
//! assert_eq!(out.events.len(), 1);
//! ```
//!
//! # Building the component
//!
//! ```text
//! rustup target add wasm32-wasip2
//! cargo build --release --target wasm32-wasip2
//! ```
//!
//! The crate must be a `cdylib`; the component is
//! `target/wasm32-wasip2/release/<name>.wasm`. Check it with `weir plugin check FILE.wasm`.
//!
//! # The other kinds of operator
//!
//! - A **decoder** ([`Decode`], [`export_decode!`]) turns raw messages (topic and payload bytes)
//!   into events: for binary or vendor formats the built-in JSON decoder does not read.
//! - An **aggregator** ([`Aggregate`], [`export_aggregate!`]) computes a custom aggregate over a
//!   window (a percentile, a histogram) with an accumulator that weir stores per window.
//!
//! # What crosses the boundary
//!
//! weir passes a batch of events by column (a key id and a time per event, one list of values
//! per field), which costs a few nanoseconds per event; this crate turns it into [`Event`]s and
//! back, looking up each key's text once for the life of the component.
//! Operators written in other languages work with the columns directly: the contract is
//! `wit/weir-operator.wit` in the weir repository (package `weir:operator@0.2.0`).

mod batch;
pub mod columns;
mod context;
mod event;
mod keys;
#[doc(hidden)]
pub mod rt;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use context::{Context, KeyState, Level, StoredState};
pub use event::{Event, Message, Str, Value};
pub use rt::each_event;
pub use serde;
pub use weir_guest_macros::{accumulator, operator};

/// What an operator needs, in one import.
pub mod prelude {
    pub use crate::{
        Aggregate, Context, Decode, Event, Level, Message, Migrate, StoredState, Str, Transform,
        Value, accumulator, operator,
    };
    pub use serde::{Deserialize, Serialize};
}

/// Filters, maps, flat-maps, enriches or detects, one event at a time.
///
/// Export an implementation with [`export_transform!`].
pub trait Transform: serde::de::DeserializeOwned + 'static {
    /// Checks the configuration or prepares the operator, once, before any event. An error is
    /// reported when weir loads the plugin, and the plugin is not started.
    fn init(&mut self) -> Result<(), String> {
        Ok(())
    }

    /// Handles one event: emit what should go on through `ctx`, or return an error to send the
    /// event to the dead-letter output.
    fn process(&mut self, event: Event, ctx: &mut Context) -> Result<(), String>;

    /// Handles a whole batch, by column, and returns the events that go on. The default calls
    /// [`Transform::process`] for each event. Override it where working on columns is simpler
    /// or faster (a filter or map of one field is a loop over one list): see [`columns`].
    /// Reject single inputs with [`Context::reject`]; an `Err` fails the whole batch.
    fn process_batch(
        &mut self,
        events: columns::Batch,
        ctx: &mut Context,
    ) -> Result<columns::Batch, String> {
        each_event(self, events, ctx)
    }
}

/// Turns raw messages into events.
///
/// Export an implementation with [`export_decode!`].
pub trait Decode: serde::de::DeserializeOwned + 'static {
    /// Checks the configuration or prepares the operator, once, before any message.
    fn init(&mut self) -> Result<(), String> {
        Ok(())
    }

    /// Decodes one message: emit its events through `ctx`, or return an error to send the
    /// message to the dead-letter output.
    fn decode(&mut self, message: Message, ctx: &mut Context) -> Result<(), String>;
}

/// A custom aggregate over the events of a window.
///
/// weir keeps one accumulator per window and key (serialized; it is checkpointed with the
/// window), adds events to it as they arrive, merges two when session windows merge, and asks
/// for the result when the window fires. Mark the accumulator type with `#[accumulator]`.
/// Export an implementation with [`export_aggregate!`].
pub trait Aggregate: serde::de::DeserializeOwned + 'static {
    /// The state of one window's aggregation.
    type Acc: serde::Serialize + serde::de::DeserializeOwned + Default;

    /// Checks the configuration or prepares the operator, once.
    fn init(&mut self) -> Result<(), String> {
        Ok(())
    }

    /// Adds one event to an accumulator.
    fn add(&self, acc: &mut Self::Acc, event: &Event);

    /// Merges `other` into `acc`.
    fn merge(&self, acc: &mut Self::Acc, other: Self::Acc);

    /// The result: named values that become fields of the window's record.
    fn finish(&self, acc: &Self::Acc) -> Vec<(String, Value)>;
}

/// A version that reads what earlier versions of the operator stored (the contract's `migrate`,
/// since weir:operator@0.2.0), so that a hot swap to it converts the running version's keyed
/// state (or an aggregator's accumulators) instead of handing it over byte for byte.
///
/// Export it with the operator: `export_transform!(MyOp, migrate)` (or `export_decode!`,
/// `export_aggregate!`). weir calls it when this version is swapped in over one whose
/// [`Migrate::LAYOUT`] differs, after `init`, before the switch; an error refuses the swap and
/// the running version keeps its state.
pub trait Migrate {
    /// A name for the layout of what this version stores, e.g. `"count+mean"`. A version
    /// without `Migrate` stores the layout `""`.
    const LAYOUT: &'static str;

    /// Converts the keyed state of one key, written in `old_layout`, into this version's: read
    /// the old values from `state` and leave the new ones in it. An error refuses the swap.
    fn migrate_state(&self, old_layout: &str, state: &mut StoredState) -> Result<(), String> {
        let _ = state;
        Err(format!("cannot read keyed state of layout {old_layout:?}"))
    }

    /// Converts one accumulator, written in `old_layout`, into this version's (aggregators:
    /// [`read_accumulator`] decodes an old version's accumulator type). An error refuses the swap.
    fn migrate_accumulator(&self, old_layout: &str, old: &[u8]) -> Result<Vec<u8>, String> {
        let _ = old;
        Err(format!("cannot read accumulators of layout {old_layout:?}"))
    }
}

/// Decodes an accumulator as weir-guest stores it (for [`Migrate::migrate_accumulator`], with the
/// old version's accumulator type).
pub fn read_accumulator<A: serde::de::DeserializeOwned + Default>(
    bytes: &[u8],
) -> Result<A, String> {
    rt::read_acc(bytes)
}

/// Encodes an accumulator as weir-guest stores it (for [`Migrate::migrate_accumulator`]).
pub fn write_accumulator<A: serde::Serialize>(acc: &A) -> Vec<u8> {
    rt::write_acc(acc)
}

/// The generated bindings of the three worlds. Operators never need them; they are public only
/// for the export macros.
#[doc(hidden)]
#[allow(unsafe_code, clippy::all, missing_docs)]
pub mod bindings {
    pub mod transformer {
        wit_bindgen::generate!({
            world: "transformer",
            path: "../wit",
            pub_export_macro: true,
            export_macro_name: "__export_transformer",
            default_bindings_module: "weir_guest::bindings::transformer",
        });
    }
    pub mod decoder {
        wit_bindgen::generate!({
            world: "decoder",
            path: "../wit",
            pub_export_macro: true,
            export_macro_name: "__export_decoder",
            default_bindings_module: "weir_guest::bindings::decoder",
            with: {
                "weir:operator/types@0.2.0": crate::bindings::transformer::weir::operator::types,
                "weir:operator/keys@0.2.0": crate::bindings::transformer::weir::operator::keys,
                "weir:operator/state@0.2.0": crate::bindings::transformer::weir::operator::state,
                "weir:operator/log@0.2.0": crate::bindings::transformer::weir::operator::log,
            },
        });
    }
    /// `migrate` alone: an operator's export macro adds it to its world when asked to.
    pub mod migrator {
        wit_bindgen::generate!({
            inline: "package weir:guest-sdk; world migrator { export weir:operator/migrate@0.2.0; }",
            path: "../wit",
            world: "weir:guest-sdk/migrator",
            pub_export_macro: true,
            export_macro_name: "__export_migrator",
            default_bindings_module: "weir_guest::bindings::migrator",
            with: {
                "weir:operator/types@0.2.0": crate::bindings::transformer::weir::operator::types,
            },
        });
    }
    pub mod aggregator {
        wit_bindgen::generate!({
            world: "aggregator",
            path: "../wit",
            pub_export_macro: true,
            export_macro_name: "__export_aggregator",
            default_bindings_module: "weir_guest::bindings::aggregator",
            with: {
                "weir:operator/types@0.2.0": crate::bindings::transformer::weir::operator::types,
                "weir:operator/keys@0.2.0": crate::bindings::transformer::weir::operator::keys,
                "weir:operator/log@0.2.0": crate::bindings::transformer::weir::operator::log,
            },
        });
    }
}

/// The contract's types, as generated.
pub(crate) mod wit {
    pub use crate::bindings::transformer::weir::operator::types::*;
}

/// Calls into weir's imports.
mod host {
    use crate::bindings::transformer::weir::operator::{keys, log as wlog, state};
    use crate::context::Level;

    pub(crate) fn key_name(id: u32) -> String {
        keys::name(id)
    }

    pub(crate) fn key_id(name: &str) -> u32 {
        keys::id(name)
    }

    pub(crate) fn state_get(key: u32, name: &str) -> Option<Vec<u8>> {
        state::get(key, name)
    }

    pub(crate) fn state_set(key: u32, name: &str, value: &[u8]) {
        state::set(key, name, value)
    }

    pub(crate) fn state_remove(key: u32, name: &str) {
        state::remove(key, name)
    }

    pub(crate) fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => wlog::Level::Trace,
            Level::Debug => wlog::Level::Debug,
            Level::Info => wlog::Level::Info,
            Level::Warn => wlog::Level::Warn,
            Level::Error => wlog::Level::Error,
        };
        wlog::log(level, message)
    }
}

/// Exports a [`Transform`] as the component's `transform` interface; `export_transform!(Op,
/// migrate)` exports its [`Migrate`] too.
#[macro_export]
macro_rules! export_transform {
    ($op:ty, migrate) => {
        $crate::export_transform!(@with $op, transformer, __export_transformer, migrate);
    };
    ($op:ty) => {
        $crate::export_transform!(@with $op, transformer, __export_transformer);
    };
    (@with $op:ty, $world:ident, $export:ident $(, $migrate:ident)?) => {
        #[allow(unsafe_code)]
        const _: () = {
            ::std::thread_local! {
                static OPERATOR: ::std::cell::RefCell<::core::option::Option<$op>> =
                    const { ::std::cell::RefCell::new(::core::option::Option::None) };
            }
            struct Export;
            impl $crate::bindings::$world::exports::weir::operator::transform::Guest for Export {
                fn init(config: ::std::string::String) -> ::core::result::Result<(), $crate::rt::Error> {
                    $crate::rt::init::<$op>(&OPERATOR, &config, <$op as $crate::Transform>::init)
                }
                fn transform(events: $crate::rt::Batch) -> ::core::result::Result<$crate::rt::Output, $crate::rt::Error> {
                    $crate::rt::with_operator(&OPERATOR, |op| $crate::rt::transform(op, events))
                }
            }
            $($crate::__export_migrate!($migrate, $op, OPERATOR);)?
            #[cfg(target_arch = "wasm32")]
            $crate::bindings::$world::$export!(Export with_types_in $crate::bindings::$world);
        };
    };
}

/// Exports a [`Decode`] as the component's `decode` interface; `export_decode!(Op, migrate)`
/// exports its [`Migrate`] too.
#[macro_export]
macro_rules! export_decode {
    ($op:ty, migrate) => {
        $crate::export_decode!(@with $op, decoder, __export_decoder, migrate);
    };
    ($op:ty) => {
        $crate::export_decode!(@with $op, decoder, __export_decoder);
    };
    (@with $op:ty, $world:ident, $export:ident $(, $migrate:ident)?) => {
        #[allow(unsafe_code)]
        const _: () = {
            ::std::thread_local! {
                static OPERATOR: ::std::cell::RefCell<::core::option::Option<$op>> =
                    const { ::std::cell::RefCell::new(::core::option::Option::None) };
            }
            struct Export;
            impl $crate::bindings::$world::exports::weir::operator::decode::Guest for Export {
                fn init(config: ::std::string::String) -> ::core::result::Result<(), $crate::rt::Error> {
                    $crate::rt::init::<$op>(&OPERATOR, &config, <$op as $crate::Decode>::init)
                }
                fn decode(messages: ::std::vec::Vec<$crate::rt::WitMessage>) -> ::core::result::Result<$crate::rt::Output, $crate::rt::Error> {
                    $crate::rt::with_operator(&OPERATOR, |op| $crate::rt::decode(op, messages))
                }
            }
            $($crate::__export_migrate!($migrate, $op, OPERATOR);)?
            #[cfg(target_arch = "wasm32")]
            $crate::bindings::$world::$export!(Export with_types_in $crate::bindings::$world);
        };
    };
}

/// Exports an [`Aggregate`] as the component's `aggregate` interface; `export_aggregate!(Op,
/// migrate)` exports its [`Migrate`] too.
#[macro_export]
macro_rules! export_aggregate {
    ($op:ty, migrate) => {
        $crate::export_aggregate!(@with $op, aggregator, __export_aggregator, migrate);
    };
    ($op:ty) => {
        $crate::export_aggregate!(@with $op, aggregator, __export_aggregator);
    };
    (@with $op:ty, $world:ident, $export:ident $(, $migrate:ident)?) => {
        #[allow(unsafe_code)]
        const _: () = {
            ::std::thread_local! {
                static OPERATOR: ::std::cell::RefCell<::core::option::Option<$op>> =
                    const { ::std::cell::RefCell::new(::core::option::Option::None) };
            }
            struct Export;
            impl $crate::bindings::$world::exports::weir::operator::aggregate::Guest for Export {
                fn init(config: ::std::string::String) -> ::core::result::Result<(), $crate::rt::Error> {
                    $crate::rt::init::<$op>(&OPERATOR, &config, <$op as $crate::Aggregate>::init)
                }
                fn create() -> ::std::vec::Vec<u8> {
                    $crate::rt::create::<$op>()
                }
                fn add(
                    accumulators: ::std::vec::Vec<::std::vec::Vec<u8>>,
                    events: $crate::rt::Batch,
                    group: ::std::vec::Vec<u32>,
                ) -> ::core::result::Result<::std::vec::Vec<::std::vec::Vec<u8>>, $crate::rt::Error> {
                    $crate::rt::with_operator(&OPERATOR, |op| $crate::rt::add(op, accumulators, events, group))
                }
                fn merge(a: ::std::vec::Vec<u8>, b: ::std::vec::Vec<u8>) -> ::core::result::Result<::std::vec::Vec<u8>, $crate::rt::Error> {
                    $crate::rt::with_operator(&OPERATOR, |op| $crate::rt::merge(op, a, b))
                }
                fn finish(
                    accumulators: ::std::vec::Vec<::std::vec::Vec<u8>>,
                ) -> ::core::result::Result<::std::vec::Vec<::std::vec::Vec<$crate::rt::Field>>, $crate::rt::Error> {
                    $crate::rt::with_operator(&OPERATOR, |op| $crate::rt::finish(op, accumulators))
                }
            }
            $($crate::__export_migrate!($migrate, $op, OPERATOR);)?
            #[cfg(target_arch = "wasm32")]
            $crate::bindings::$world::$export!(Export with_types_in $crate::bindings::$world);
        };
    };
}

/// The `migrate` export of the export macros' `migrate` form.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_migrate {
    (migrate, $op:ty, $slot:ident) => {
        struct Migrator;
        impl $crate::bindings::migrator::exports::weir::operator::migrate::Guest for Migrator {
            fn layout() -> ::std::string::String {
                ::std::string::String::from(<$op as $crate::Migrate>::LAYOUT)
            }
            fn migrate_state(
                old_layout: ::std::string::String,
                states: ::std::vec::Vec<$crate::bindings::migrator::exports::weir::operator::migrate::KeyState>,
            ) -> ::core::result::Result<
                ::std::vec::Vec<$crate::bindings::migrator::exports::weir::operator::migrate::KeyState>,
                $crate::rt::Error,
            > {
                $crate::rt::with_operator(&$slot, |op| {
                    let states = states.into_iter().map(|s| (s.key, s.entries)).collect();
                    let out = $crate::rt::migrate_state(op, &old_layout, states)?;
                    Ok(out
                        .into_iter()
                        .map(|(key, entries)| {
                            $crate::bindings::migrator::exports::weir::operator::migrate::KeyState { key, entries }
                        })
                        .collect())
                })
            }
            fn migrate_accumulators(
                old_layout: ::std::string::String,
                accumulators: ::std::vec::Vec<::std::vec::Vec<u8>>,
            ) -> ::core::result::Result<::std::vec::Vec<::std::vec::Vec<u8>>, $crate::rt::Error> {
                $crate::rt::with_operator(&$slot, |op| {
                    $crate::rt::migrate_accumulators(op, &old_layout, accumulators)
                })
            }
        }
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::migrator::__export_migrator!(Migrator with_types_in $crate::bindings::migrator);
    };
}
