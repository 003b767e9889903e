//! A test operator for weir's version check: a transformer that exports
//! `weir:operator/transform@0.3.0`, a contract version weir does not know. Were it run, it would
//! pass batches through unchanged.

#![allow(unsafe_code)] // the bindings wit-bindgen generates

wit_bindgen::generate!({
    world: "transformer",
    path: "wit",
});

use exports::weir::operator::transform::{Batch, Error, Guest, Output};

struct FutureVersion;

impl Guest for FutureVersion {
    fn init(_config: String) -> Result<(), Error> {
        Ok(())
    }

    fn transform(events: Batch) -> Result<Output, Error> {
        Ok(Output {
            events,
            rejected: Vec::new(),
        })
    }
}

#[cfg(target_arch = "wasm32")]
export!(FutureVersion);
