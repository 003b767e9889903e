//! A test operator for weir's hot-swap tests, version 1: counts events per key in keyed state and
//! tags each event with `version = 1` and the count so far, `seen`.

mod seen;

use weir_guest::prelude::*;

#[operator]
pub struct CounterV1 {}

impl Transform for CounterV1 {
    fn process(&mut self, event: Event, ctx: &mut Context) -> Result<(), String> {
        seen::count(event, ctx, 1);
        Ok(())
    }
}

weir_guest::export_transform!(CounterV1);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_guest::testing::Harness;

    #[test]
    fn counts_per_key_across_batches() {
        let mut op = Harness::<CounterV1>::transform("").unwrap();
        op.run(vec![
            Event::new("a", 1),
            Event::new("b", 2),
            Event::new("a", 3),
        ]);
        let out = op.run(vec![Event::new("a", 4).with("temp", 1.5)]);
        let expected = Event::new("a", 4)
            .with("temp", 1.5)
            .with("version", 1_i64)
            .with("seen", 3_i64);
        assert_eq!(out.events, vec![expected]);
        assert_eq!(op.state("a", seen::SEEN).as_deref(), Some(&b"3"[..]));
        assert_eq!(op.state("b", seen::SEEN).as_deref(), Some(&b"1"[..]));
    }
}
