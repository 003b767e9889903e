//! A hostile operator for weir's tests: passes events through unchanged, but panics on an event
//! that has the field named by `panic_on` (by default "boom").

use weir_guest::prelude::*;

#[operator]
pub struct HostilePanic {
    #[serde(default = "default_panic_on")]
    panic_on: String,
}

fn default_panic_on() -> String {
    "boom".into()
}

impl Transform for HostilePanic {
    fn process(&mut self, event: Event, ctx: &mut Context) -> Result<(), String> {
        if event.get(&self.panic_on).is_some() {
            panic!("hostile-panic: event has field {:?}", self.panic_on);
        }
        ctx.emit(event);
        Ok(())
    }
}

weir_guest::export_transform!(HostilePanic);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_guest::testing::Harness;

    #[test]
    fn passes_ordinary_events_through_unchanged() {
        let mut op = Harness::<HostilePanic>::transform("").unwrap();
        let events = vec![
            Event::new("a", 1).with("temp", 3.5),
            Event::new("b", 2).with("note", "fine"),
        ];
        assert_eq!(op.run(events.clone()).events, events);
    }

    #[test]
    #[should_panic(expected = "hostile-panic: event has field \"boom\"")]
    fn panics_on_the_field() {
        let mut op = Harness::<HostilePanic>::transform("").unwrap();
        op.run(vec![
            Event::new("a", 1).with("temp", 3.5),
            Event::new("a", 2).with("boom", true),
        ]);
    }

    #[test]
    #[should_panic(expected = "hostile-panic: event has field \"kaboom\"")]
    fn panics_on_the_configured_field() {
        let mut op = Harness::<HostilePanic>::transform("panic_on = \"kaboom\"").unwrap();
        assert_eq!(
            op.run(vec![Event::new("a", 1).with("boom", 1_i64)])
                .events
                .len(),
            1
        );
        op.run(vec![Event::new("a", 2).with("kaboom", 1_i64)]);
    }
}
