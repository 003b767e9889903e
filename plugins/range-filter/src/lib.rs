//! Drops physically impossible readings: events whose `field` lies outside `[min, max]`.
//! Events without the field pass through untouched.

use weir_guest::prelude::*;

#[operator]
pub struct RangeFilter {
    field: String,
    min: f64,
    max: f64,
}

impl Transform for RangeFilter {
    fn init(&mut self) -> Result<(), String> {
        if self.min > self.max {
            return Err(format!("min ({}) is above max ({})", self.min, self.max));
        }
        Ok(())
    }

    fn process(&mut self, event: Event, ctx: &mut Context) -> Result<(), String> {
        match event.f64(&self.field) {
            Some(x) if !(self.min..=self.max).contains(&x) => {}
            _ => ctx.emit(event),
        }
        Ok(())
    }
}

weir_guest::export_transform!(RangeFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_guest::testing::Harness;

    const HUMIDITY: &str = "field = \"humidity\"\nmin = 0.0\nmax = 100.0";

    #[test]
    fn drops_readings_outside_the_range_and_keeps_the_rest() {
        let mut op = Harness::<RangeFilter>::transform(HUMIDITY).unwrap();
        let out = op.run(vec![
            Event::new("s1", 1).with("humidity", 55.0),
            Event::new("s1", 2).with("humidity", -3.0),
            Event::new("s2", 3).with("humidity", 100.0),
            Event::new("s2", 4).with("humidity", 140.5),
            Event::new("s3", 5).with("temp", 20.0),
        ]);
        let kept: Vec<i64> = out.events.iter().map(|e| e.ts_ms).collect();
        assert_eq!(kept, vec![1, 3, 5]);
        assert!(out.rejected.is_empty());
    }

    #[test]
    fn rejects_a_range_upside_down_at_load_time() {
        let err =
            Harness::<RangeFilter>::transform("field = \"h\"\nmin = 5.0\nmax = 1.0").unwrap_err();
        assert_eq!(err, "min (5) is above max (1)");
    }

    #[test]
    fn rejects_a_missing_bound_at_load_time() {
        let err = Harness::<RangeFilter>::transform("field = \"h\"\nmin = 5.0").unwrap_err();
        assert!(err.contains("missing field `max`"), "{err}");
    }
}
