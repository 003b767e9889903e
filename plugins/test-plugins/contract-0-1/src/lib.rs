//! A test operator built against `weir:operator@0.1.0` (`wit/0.1.0/` in the repository), the
//! contract before `migrate`: it proves that weir runs plugins built for 0.1.0 unchanged. It
//! counts events per key in keyed state exactly as key-stats-v1 does (a JSON integer under
//! `count`) and adds the count so far to each event as an int column `count`.

#![allow(unsafe_code)] // the bindings wit-bindgen generates

wit_bindgen::generate!({
    world: "transformer",
    path: "../../../wit/0.1.0",
});

use exports::weir::operator::transform::{Batch, Error, Guest, Output};
use weir::operator::state;
use weir::operator::types::{Column, Values};

struct Contract01;

impl Guest for Contract01 {
    fn init(_config: String) -> Result<(), Error> {
        Ok(())
    }

    fn transform(mut events: Batch) -> Result<Output, Error> {
        let mut counts = Vec::with_capacity(events.key.len());
        for &key in &events.key {
            let count = state::get(key, "count")
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or(0)
                + 1;
            state::set(key, "count", count.to_string().as_bytes());
            counts.push(Some(count));
        }
        events.columns.retain(|c| c.name != "count");
        events.columns.push(Column {
            name: "count".into(),
            values: Values::Int(counts),
        });
        Ok(Output {
            events,
            rejected: Vec::new(),
        })
    }
}

#[cfg(target_arch = "wasm32")]
export!(Contract01);
