//! The host side of the WIT contract: the only place `bindgen!` is used.
//!
//! weir runs plugins of two contract versions: 0.1.0 (`wit/0.1.0/`) and 0.2.0 (`wit/`), which is
//! 0.1.0 plus the `migrate` interface. Their `types` are the same, so both versions' bindings
//! share one set of Rust types (generated with the 0.1.0 transformer world): a batch has one
//! Rust type everywhere. Each version's imports (`keys`, `state`, `log`) are linked under its own
//! name, by the same host code.

#![allow(missing_docs, clippy::all)]

/// `weir:operator@0.1.0`.
pub mod v0_1 {
    pub mod transformer {
        wasmtime::component::bindgen!({
            world: "transformer",
            path: "../wit/0.1.0",
            additional_derives: [PartialEq],
        });
    }

    pub mod decoder {
        wasmtime::component::bindgen!({
            world: "decoder",
            path: "../wit/0.1.0",
            with: {
                "weir:operator/types": super::transformer::weir::operator::types,
                "weir:operator/keys": super::transformer::weir::operator::keys,
                "weir:operator/state": super::transformer::weir::operator::state,
                "weir:operator/log": super::transformer::weir::operator::log,
            },
        });
    }

    pub mod aggregator {
        wasmtime::component::bindgen!({
            world: "aggregator",
            path: "../wit/0.1.0",
            with: {
                "weir:operator/types": super::transformer::weir::operator::types,
                "weir:operator/keys": super::transformer::weir::operator::keys,
                "weir:operator/log": super::transformer::weir::operator::log,
            },
        });
    }
}

/// `weir:operator@0.2.0`. The `migrating-transformer` world brings every interface; the other
/// worlds reuse its modules.
pub mod v0_2 {
    pub mod transformer {
        wasmtime::component::bindgen!({
            world: "migrating-transformer",
            path: "../wit",
            with: {
                "weir:operator/types": super::super::v0_1::transformer::weir::operator::types,
            },
        });
    }

    pub mod decoder {
        wasmtime::component::bindgen!({
            world: "decoder",
            path: "../wit",
            with: {
                "weir:operator/types": super::super::v0_1::transformer::weir::operator::types,
                "weir:operator/keys": super::transformer::weir::operator::keys,
                "weir:operator/state": super::transformer::weir::operator::state,
                "weir:operator/log": super::transformer::weir::operator::log,
            },
        });
    }

    pub mod aggregator {
        wasmtime::component::bindgen!({
            world: "aggregator",
            path: "../wit",
            with: {
                "weir:operator/types": super::super::v0_1::transformer::weir::operator::types,
                "weir:operator/keys": super::transformer::weir::operator::keys,
                "weir:operator/log": super::transformer::weir::operator::log,
            },
        });
    }

    pub use transformer::exports::weir::operator::migrate::{
        Guest as MigrateGuest, GuestIndices as MigrateIndices, KeyState,
    };
    pub use transformer::exports::weir::operator::transform::{
        Guest as TransformGuest, GuestIndices as TransformIndices,
    };
}

pub use v0_1::transformer::weir::operator::keys::Host as KeysHost;
pub use v0_1::transformer::weir::operator::log::{Host as LogHost, Level as LogLevel};
pub use v0_1::transformer::weir::operator::state::Host as StateHost;
pub use v0_1::transformer::weir::operator::types::{
    Batch, Column, Error as GuestError, Field, Message, Output, Rejected, Value, Values,
};
