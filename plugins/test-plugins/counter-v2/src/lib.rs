//! A test operator for weir's hot-swap tests, version 2: counts events per key exactly as
//! counter-v1 does, in the same keyed state, and tags each event with `version = 2`.

#[path = "../../counter-v1/src/seen.rs"]
mod seen;

use weir_guest::prelude::*;

#[operator]
pub struct CounterV2 {}

impl Transform for CounterV2 {
    fn process(&mut self, event: Event, ctx: &mut Context) -> Result<(), String> {
        seen::count(event, ctx, 2);
        Ok(())
    }
}

weir_guest::export_transform!(CounterV2);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_guest::testing::Harness;

    #[test]
    fn counts_per_key_as_version_2() {
        let mut op = Harness::<CounterV2>::transform("").unwrap();
        let out = op.run(vec![Event::new("a", 1), Event::new("a", 2)]);
        let versions: Vec<_> = out
            .events
            .iter()
            .map(|e| e.get("version").cloned())
            .collect();
        let seen: Vec<_> = out.events.iter().map(|e| e.get("seen").cloned()).collect();
        assert_eq!(versions, vec![Some(Value::Int(2)); 2]);
        assert_eq!(seen, vec![Some(Value::Int(1)), Some(Value::Int(2))]);
        // The layout counter-v1 writes: a JSON integer under "seen".
        assert_eq!(op.state("a", seen::SEEN).as_deref(), Some(&b"2"[..]));
    }
}
