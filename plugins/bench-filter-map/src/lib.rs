//! The operator `weir bench` runs: keeps events whose `value` lies in `[min, max]` and maps it to
//! `value * scale + offset` (by default °C to °F).

use weir_guest::Str;
use weir_guest::columns::{Batch, Values};
use weir_guest::prelude::*;

/// The field filtered and mapped.
const FIELD: &str = "value";

#[operator]
pub struct BenchFilterMap {
    /// [`FIELD`], allocated once rather than by every `Event::set`.
    #[serde(skip, default = "field_name")]
    field: Str,
    #[serde(default = "default_min")]
    min: f64,
    #[serde(default = "default_max")]
    max: f64,
    #[serde(default = "default_scale")]
    scale: f64,
    #[serde(default = "default_offset")]
    offset: f64,
    /// Work on the batch's columns (`process_batch`) instead of event by event (`process`).
    #[serde(default)]
    columnar: bool,
}

fn field_name() -> Str {
    Str::from(FIELD)
}

fn default_min() -> f64 {
    -1000.0
}

fn default_max() -> f64 {
    1000.0
}

fn default_scale() -> f64 {
    1.8
}

fn default_offset() -> f64 {
    32.0
}

impl Transform for BenchFilterMap {
    fn init(&mut self) -> Result<(), String> {
        if self.min > self.max {
            return Err(format!("min ({}) is above max ({})", self.min, self.max));
        }
        Ok(())
    }

    fn process_batch(&mut self, mut events: Batch, ctx: &mut Context) -> Result<Batch, String> {
        if self.columnar && self.filter_map_column(&mut events) {
            return Ok(events);
        }
        weir_guest::each_event(self, events, ctx)
    }

    fn process(&mut self, mut event: Event, ctx: &mut Context) -> Result<(), String> {
        if let Some(x) = event.f64(&self.field)
            && (self.min..=self.max).contains(&x)
        {
            event.set(self.field.clone(), x * self.scale + self.offset);
            ctx.emit(event);
        }
        Ok(())
    }
}

impl BenchFilterMap {
    /// The same filter and map, over the column of a float field in one pass.
    fn filter_map_column(&self, batch: &mut Batch) -> bool {
        let keep: Vec<bool> = match batch.column(FIELD) {
            Some(Values::Float(v)) => v
                .iter()
                .map(|x| x.is_some_and(|x| (self.min..=self.max).contains(&x)))
                .collect(),
            _ => return false,
        };
        batch.retain(&keep);
        if let Some(Values::Float(v)) = batch.column_mut(FIELD) {
            for x in v.iter_mut().flatten() {
                *x = *x * self.scale + self.offset;
            }
        }
        true
    }
}

weir_guest::export_transform!(BenchFilterMap);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_guest::testing::Harness;

    fn values(events: &[Event]) -> Vec<f64> {
        events.iter().map(|e| e.f64(FIELD).unwrap()).collect()
    }

    #[test]
    fn keeps_values_in_range_and_maps_them_with_the_defaults() {
        let mut op = Harness::<BenchFilterMap>::transform("").unwrap();
        let out = op.run(vec![
            Event::new("s", 1).with("value", 100.0),
            Event::new("s", 2).with("value", -1000.5),
            Event::new("s", 3).with("value", -40_i64),
            Event::new("s", 4).with("value", 1000.0),
            Event::new("s", 5).with("other", 1.0),
        ]);
        assert_eq!(values(&out.events), vec![212.0, -40.0, 1832.0]);
        let kept: Vec<i64> = out.events.iter().map(|e| e.ts_ms).collect();
        assert_eq!(kept, vec![1, 3, 4]);
    }

    #[test]
    fn uses_its_configuration() {
        let config = "min = 0.0\nmax = 10.0\nscale = 2.0\noffset = -1.0";
        let mut op = Harness::<BenchFilterMap>::transform(config).unwrap();
        let out = op.run(vec![
            Event::new("s", 1).with("value", -0.5),
            Event::new("s", 2).with("value", 5.0),
            Event::new("s", 3).with("value", 10.5),
        ]);
        assert_eq!(values(&out.events), vec![9.0]);
    }

    #[test]
    fn by_column_it_gives_the_same_result() {
        let events = || {
            (0..50)
                .map(|i| {
                    Event::new(format!("s{}", i % 7), i)
                        .with("value", (i * 97 % 2500) as f64 - 1250.0)
                })
                .collect::<Vec<_>>()
        };
        let mut by_event = Harness::<BenchFilterMap>::transform("").unwrap();
        let mut by_column = Harness::<BenchFilterMap>::transform("columnar = true").unwrap();
        let (a, b) = (by_event.run(events()), by_column.run(events()));
        assert!(!a.events.is_empty() && a.events.len() < 50);
        assert_eq!(a.events, b.events);
    }

    #[test]
    fn refuses_a_range_upside_down() {
        let err = Harness::<BenchFilterMap>::transform("min = 1.0\nmax = 0.0").unwrap_err();
        assert_eq!(err, "min (1) is above max (0)");
    }
}
