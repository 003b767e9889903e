//! A hostile operator for weir's tests: emits `copies` copies of every event (by default a
//! million), an output far larger than any sane batch.

use weir_guest::prelude::*;

#[operator]
pub struct HostileFlood {
    #[serde(default = "default_copies")]
    copies: u64,
}

fn default_copies() -> u64 {
    1_000_000
}

impl Transform for HostileFlood {
    fn process(&mut self, event: Event, ctx: &mut Context) -> Result<(), String> {
        for _ in 0..self.copies {
            ctx.emit(event.clone());
        }
        Ok(())
    }
}

weir_guest::export_transform!(HostileFlood);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_guest::testing::Harness;

    #[test]
    fn emits_the_configured_number_of_copies() {
        let mut op = Harness::<HostileFlood>::transform("copies = 3").unwrap();
        let a = Event::new("a", 1).with("temp", 3.5);
        let b = Event::new("b", 2).with("temp", 4.5);
        let out = op.run(vec![a.clone(), b.clone()]);
        assert_eq!(
            out.events,
            vec![a.clone(), a.clone(), a, b.clone(), b.clone(), b]
        );
    }
}
