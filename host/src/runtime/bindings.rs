//! The host side of the WIT contract: the only place `bindgen!` is used.
//!
//! The three worlds share the `types`, `state` and `log` interfaces, generated once (with the
//! transformer world) and reused by the others, so a batch has one Rust type everywhere.

#![allow(missing_docs, clippy::all)]

pub mod transformer {
    wasmtime::component::bindgen!({
        world: "transformer",
        path: "../wit",
        additional_derives: [PartialEq],
    });
}

pub mod decoder {
    wasmtime::component::bindgen!({
        world: "decoder",
        path: "../wit",
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
        path: "../wit",
        with: {
            "weir:operator/types": super::transformer::weir::operator::types,
            "weir:operator/keys": super::transformer::weir::operator::keys,
            "weir:operator/log": super::transformer::weir::operator::log,
        },
    });
}

pub use transformer::weir::operator::keys::Host as KeysHost;
pub use transformer::weir::operator::log::{Host as LogHost, Level as LogLevel};
pub use transformer::weir::operator::state::Host as StateHost;
pub use transformer::weir::operator::types::{
    Batch, Column, Error as GuestError, Field, Message, Output, Rejected, Value, Values,
};
