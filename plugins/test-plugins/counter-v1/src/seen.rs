//! The counting shared by counter-v1 and counter-v2 (which includes this file with `#[path]`),
//! so that both versions keep their state in exactly the same place and format.

use weir_guest::prelude::*;

/// Where the count lives in keyed state: a JSON integer.
pub const SEEN: &str = "seen";

/// Counts `event` for its key and emits it with its `version` and the count so far. An event with
/// a field `boom` is counted and then panics the plugin: the host must discard that count (and
/// every other state write of the batch) with the failed batch.
pub fn count(mut event: Event, ctx: &mut Context, version: i64) {
    let mut state = ctx.state(&event.key);
    let seen = state.get::<i64>(SEEN).unwrap_or(0) + 1;
    state.set(SEEN, &seen);
    if event.get("boom").is_some() {
        panic!("counter: boom after counting {seen} for {}", event.key);
    }
    event.set("version", version);
    event.set("seen", seen);
    ctx.emit(event);
}
