//! Counts events per key in keyed state and tags each event with the count so far, `count`.
//!
//! Version 1 of a pair: [key-stats-v2](../key-stats-v2) also keeps a mean, stores its state in
//! another layout, and converts this version's state when it is swapped in.

use weir_guest::prelude::*;

/// Where the count lives in keyed state: a JSON integer.
pub const COUNT: &str = "count";

#[operator]
pub struct KeyStatsV1 {}

impl Transform for KeyStatsV1 {
    fn process(&mut self, mut event: Event, ctx: &mut Context) -> Result<(), String> {
        let mut state = ctx.state(&event.key);
        let count = state.get::<i64>(COUNT).unwrap_or(0) + 1;
        state.set(COUNT, &count);
        event.set("count", count);
        ctx.emit(event);
        Ok(())
    }
}

weir_guest::export_transform!(KeyStatsV1);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_guest::testing::Harness;

    #[test]
    fn counts_per_key() {
        let mut op = Harness::<KeyStatsV1>::transform("").unwrap();
        let out = op.run(vec![
            Event::new("a", 1),
            Event::new("b", 2),
            Event::new("a", 3),
        ]);
        let counts: Vec<_> = out.events.iter().map(|e| e.get("count").cloned()).collect();
        assert_eq!(counts, [1, 1, 2].map(|n| Some(Value::Int(n))));
        assert_eq!(op.state("a", COUNT).as_deref(), Some(&b"2"[..]));
    }
}
