//! An approximate percentile of a field over a window (by default the 95th), computed with a
//! small mergeable sketch: see [`Sketch`] for its accuracy.

mod sketch;

pub use sketch::{RELATIVE_ACCURACY, Sketch};
use weir_guest::prelude::*;

#[operator]
pub struct P95Aggregator {
    /// The numeric field to aggregate.
    field: String,
    /// Which quantile, from 0.0 (the minimum) to 1.0 (the maximum).
    #[serde(default = "default_quantile")]
    quantile: f64,
    /// The name of the result in the window's record.
    #[serde(default = "default_name")]
    name: String,
}

fn default_quantile() -> f64 {
    0.95
}

fn default_name() -> String {
    "p95".into()
}

impl Aggregate for P95Aggregator {
    type Acc = Sketch;

    fn init(&mut self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.quantile) {
            return Err(format!(
                "quantile {} is not between 0.0 and 1.0",
                self.quantile
            ));
        }
        if self.name == "count" {
            return Err("name \"count\" is taken by the number of values".into());
        }
        Ok(())
    }

    fn add(&self, acc: &mut Sketch, event: &Event) {
        if let Some(x) = event.f64(&self.field) {
            acc.add(x);
        }
    }

    fn merge(&self, acc: &mut Sketch, other: Sketch) {
        acc.merge(other);
    }

    /// The quantile (absent when the window has no values) and the number of values.
    fn finish(&self, acc: &Sketch) -> Vec<(String, Value)> {
        let quantile = acc
            .quantile(self.quantile)
            .map(|q| (self.name.clone(), Value::Float(q)));
        let count = ("count".to_owned(), Value::Int(acc.count() as i64));
        quantile.into_iter().chain([count]).collect()
    }
}

weir_guest::export_aggregate!(P95Aggregator);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_guest::testing::Harness;

    /// A few thousand readings: a spread of wind speeds, some calm (zero), some negative
    /// (a signed sensor's offset), deterministic.
    fn readings(n: usize) -> Vec<f64> {
        let mut seed: u64 = 0x5EED;
        (0..n)
            .map(|i| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let u = (seed >> 11) as f64 / (1u64 << 53) as f64;
                match i % 10 {
                    0 => 0.0,
                    1 => -5.0 * u,
                    _ => (6.0 * u - 2.0).exp(),
                }
            })
            .collect()
    }

    fn events(values: &[f64]) -> Vec<Event> {
        values
            .iter()
            .enumerate()
            .map(|(i, &x)| Event::new("field-1", i as i64).with("wind", x))
            .collect()
    }

    fn exact(values: &[f64], q: f64) -> f64 {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    #[test]
    fn is_within_the_relative_accuracy_of_the_exact_quantile() {
        let values = readings(5000);
        for q in [0.0, 0.05, 0.1, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0] {
            let config = format!("field = \"wind\"\nquantile = {q}\nname = \"q\"");
            let mut op = Harness::<P95Aggregator>::aggregator(&config).unwrap();
            let result = op.aggregate(events(&values));
            let Value::Float(estimate) = result[0].1 else {
                panic!("{result:?}")
            };
            let exact = exact(&values, q);
            let error = (estimate - exact).abs();
            assert!(
                error <= (RELATIVE_ACCURACY + 1e-12) * exact.abs(),
                "q = {q}: estimate {estimate}, exact {exact}"
            );
        }
    }

    #[test]
    fn reports_the_p95_and_the_count() {
        let mut op = Harness::<P95Aggregator>::aggregator("field = \"wind\"").unwrap();
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let mut input = events(&values);
        input.push(Event::new("field-1", 0).with("temp", 3.0));
        let result = op.aggregate(input);
        assert_eq!(result.len(), 2);
        assert_eq!(result[0].0, "p95");
        let Value::Float(p95) = result[0].1 else {
            panic!("{result:?}")
        };
        assert!((p95 - 95.0).abs() <= 0.95, "{p95}");
        assert_eq!(result[1], ("count".to_owned(), Value::Int(100)));
    }

    #[test]
    fn merging_two_parts_equals_one_pass() {
        let values = readings(3000);
        let mut op = Harness::<P95Aggregator>::aggregator("field = \"wind\"").unwrap();
        let (a, b) = values.split_at(1234);
        let merged = op.aggregate_merged(events(a), events(b));
        assert_eq!(merged, op.aggregate(events(&values)));
        assert_eq!(merged[1].1, Value::Int(3000));
    }

    #[test]
    fn an_empty_window_has_a_count_and_no_quantile() {
        let mut op = Harness::<P95Aggregator>::aggregator("field = \"wind\"").unwrap();
        assert_eq!(
            op.aggregate(vec![]),
            vec![("count".to_owned(), Value::Int(0))]
        );
    }

    #[test]
    fn checks_its_configuration_at_load_time() {
        let err =
            Harness::<P95Aggregator>::aggregator("field = \"w\"\nquantile = 95.0").unwrap_err();
        assert_eq!(err, "quantile 95 is not between 0.0 and 1.0");
        let err =
            Harness::<P95Aggregator>::aggregator("field = \"w\"\nname = \"count\"").unwrap_err();
        assert!(err.starts_with("name \"count\" is taken"), "{err}");
    }
}
