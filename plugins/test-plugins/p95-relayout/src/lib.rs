//! A test operator for aggregator swaps: the p95 aggregator (the same sketch, included with
//! `#[path]`) with its accumulator wrapped in another layout (`"sketch+since"`: the sketch and
//! the number of values added since the swap). Its `migrate` converts the p95 aggregator's
//! accumulators (layout `""`), so that the windows open at a swap carry on with every value they
//! had; it adds `since_swap` to each result, to tell its results from the old version's.

#[path = "../../../p95-aggregator/src/sketch.rs"]
mod sketch;

use sketch::Sketch;
use weir_guest::prelude::*;

#[operator]
pub struct P95Relayout {
    field: String,
}

/// This version's accumulator.
#[accumulator]
pub struct Acc {
    sketch: Sketch,
    since_swap: u64,
}

impl Aggregate for P95Relayout {
    type Acc = Acc;

    fn add(&self, acc: &mut Acc, event: &Event) {
        if let Some(x) = event.f64(&self.field) {
            acc.sketch.add(x);
            acc.since_swap += 1;
        }
    }

    fn merge(&self, acc: &mut Acc, other: Acc) {
        acc.sketch.merge(other.sketch);
        acc.since_swap += other.since_swap;
    }

    fn finish(&self, acc: &Acc) -> Vec<(String, Value)> {
        let p95 = acc
            .sketch
            .quantile(0.95)
            .map(|q| ("p95".to_owned(), Value::Float(q)));
        let count = ("count".to_owned(), Value::Int(acc.sketch.count() as i64));
        let since = ("since_swap".to_owned(), Value::Int(acc.since_swap as i64));
        p95.into_iter().chain([count, since]).collect()
    }
}

impl Migrate for P95Relayout {
    const LAYOUT: &'static str = "sketch+since";

    fn migrate_accumulator(&self, old_layout: &str, old: &[u8]) -> Result<Vec<u8>, String> {
        if !old_layout.is_empty() {
            return Err(format!("cannot read accumulators of layout {old_layout:?}"));
        }
        let sketch: Sketch = weir_guest::read_accumulator(old)?;
        Ok(weir_guest::write_accumulator(&Acc {
            sketch,
            since_swap: 0,
        }))
    }
}

weir_guest::export_aggregate!(P95Relayout, migrate);
