//! Aggregates: the built-in ones, native and mergeable (so session windows can merge them), and
//! the trait a custom aggregate (a Wasm aggregator plugin, in the host) implements.
//!
//! A value is read from the aggregate's field (column) of the event. A missing value, and a
//! float that is NaN or infinite, counts as no value at all. Numeric aggregates read ints and
//! floats and pass over text and flags; `first`, `last` and `count` of a field take any type.

use serde::{Deserialize, Serialize};

use crate::batch::{Batch, Value, Values};

use super::config::AggFn;

/// A custom aggregate over opaque accumulators: the contract's `aggregate` interface.
///
/// Calls cross into the plugin once per batch, not once per event: [`CustomAggregate::add`] gets
/// every event of a batch at once, with the window (accumulator) each one goes to. Every method
/// may fail; the windows it concerned then report the error instead of custom values (see the
/// module docs of [`super`]).
pub trait CustomAggregate {
    /// A new, empty accumulator.
    fn create(&mut self) -> Result<Vec<u8>, String>;

    /// Adds `events` to `accs`: event `i` goes to `accs[group[i]]`. Returns the updated
    /// accumulators, as many as `accs`, in order.
    fn add(
        &mut self,
        accs: &[Vec<u8>],
        events: &Batch,
        group: &[u32],
    ) -> Result<Vec<Vec<u8>>, String>;

    /// One accumulator holding what `a` and `b` hold (session windows merge this way).
    fn merge(&mut self, a: &[u8], b: &[u8]) -> Result<Vec<u8>, String>;

    /// The result of each accumulator, as named values, in order.
    fn finish(&mut self, accs: &[Vec<u8>]) -> Result<Vec<Vec<(String, Value)>>, String>;

    /// The gateway clock (ms) of the calls that follow, for an aggregate whose behaviour
    /// depends on time (a plugin's quarantine). Nothing by default.
    fn set_clock(&mut self, _now_ms: i64) {}

    /// The aggregate as `Any`, for its owner to reach its concrete type (the pipeline reaches
    /// the plugin operator behind it, to swap it). None by default.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }

    /// See [`CustomAggregate::as_any`].
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        None
    }
}

/// One value of an event, borrowed from its column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Cell<'a> {
    Float(f64),
    Int(i64),
    Text(&'a str),
    Flag(bool),
}

/// Entry `i` of `values`, if it holds a value (a finite one, for floats).
pub(super) fn cell(values: &Values, i: usize) -> Option<Cell<'_>> {
    match values {
        Values::Float(v) => v
            .get(i)
            .copied()
            .flatten()
            .filter(|x| x.is_finite())
            .map(Cell::Float),
        Values::Int(v) => v.get(i).copied().flatten().map(Cell::Int),
        Values::Text(v) => v.get(i).and_then(|s| s.as_deref()).map(Cell::Text),
        Values::Flag(v) => v.get(i).copied().flatten().map(Cell::Flag),
    }
}

/// A number as it arrived: an int or a float.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(super) enum Num {
    Int(i64),
    Float(#[serde(with = "bits")] f64),
}

impl Num {
    fn of(cell: Cell<'_>) -> Option<Num> {
        match cell {
            Cell::Int(x) => Some(Num::Int(x)),
            Cell::Float(x) => Some(Num::Float(x)),
            Cell::Text(_) | Cell::Flag(_) => None,
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::Int(x) => x as f64,
            Num::Float(x) => x,
        }
    }

    fn less(self, other: Num) -> bool {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a < b,
            (a, b) => a.as_f64() < b.as_f64(),
        }
    }

    fn value(self) -> Value {
        match self {
            Num::Int(x) => Value::Int(x),
            Num::Float(x) => Value::Float(x),
        }
    }
}

/// A value of any type, storable (the contract's `value` is not serializable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) enum Scalar {
    Float(#[serde(with = "bits")] f64),
    Int(i64),
    Text(String),
    Flag(bool),
}

impl Scalar {
    fn of(cell: Cell<'_>) -> Scalar {
        match cell {
            Cell::Float(x) => Scalar::Float(x),
            Cell::Int(x) => Scalar::Int(x),
            Cell::Text(s) => Scalar::Text(s.to_owned()),
            Cell::Flag(b) => Scalar::Flag(b),
        }
    }

    fn value(&self) -> Value {
        match self {
            Scalar::Float(x) => Value::Float(*x),
            Scalar::Int(x) => Value::Int(*x),
            Scalar::Text(s) => Value::Text(s.clone()),
            Scalar::Flag(b) => Value::Flag(*b),
        }
    }
}

/// A sum that stays exact for ints: ints add up in `i128`, floats apart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Sum {
    n: u64,
    ints: i128,
    #[serde(with = "bits")]
    floats: f64,
    any_float: bool,
}

impl Sum {
    fn add(&mut self, x: Num) {
        self.n += 1;
        match x {
            Num::Int(x) => self.ints += i128::from(x),
            Num::Float(x) => {
                self.floats += x;
                self.any_float = true;
            }
        }
    }

    fn merge(&mut self, o: &Sum) {
        self.n += o.n;
        self.ints += o.ints;
        self.floats += o.floats;
        self.any_float |= o.any_float;
    }

    fn total(&self) -> f64 {
        self.ints as f64 + self.floats
    }

    fn sum(&self) -> Option<Value> {
        match i64::try_from(self.ints) {
            _ if self.n == 0 => None,
            Ok(x) if !self.any_float => Some(Value::Int(x)),
            _ => Some(Value::Float(self.total())),
        }
    }

    fn mean(&self) -> Option<Value> {
        (self.n > 0).then(|| Value::Float(self.total() / self.n as f64))
    }
}

/// Count, mean and sum of squared deviations, by Welford's method; merged by Chan et al.'s.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Welford {
    n: u64,
    #[serde(with = "bits")]
    mean: f64,
    #[serde(with = "bits")]
    m2: f64,
}

impl Welford {
    fn add(&mut self, x: f64) {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    fn merge(&mut self, o: &Welford) {
        if o.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = o.clone();
            return;
        }
        let n = self.n + o.n;
        let delta = o.mean - self.mean;
        self.mean += delta * o.n as f64 / n as f64;
        self.m2 += o.m2 + delta * delta * self.n as f64 * o.n as f64 / n as f64;
        self.n = n;
    }

    /// The sample standard deviation (divisor n - 1), with two values or more.
    fn sample_stddev(&self) -> Option<Value> {
        (self.n >= 2).then(|| Value::Float((self.m2.max(0.0) / (self.n - 1) as f64).sqrt()))
    }
}

/// Floats in stored state as their IEEE 754 bits: every serde format then gives back exactly the
/// same value (text formats may not: serde_json, by default, can be one ulp off), so a restored
/// windower continues with the very same results.
mod bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(x.to_bits())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }
}

/// A value with the event time and arrival number of its event, for `first` and `last`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Stamped {
    ts_ms: i64,
    arrival: u64,
    value: Scalar,
}

impl Stamped {
    fn order(&self) -> (i64, u64) {
        (self.ts_ms, self.arrival)
    }
}

/// The state of one built-in aggregate in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) enum Acc {
    Count(u64),
    Sum(Sum),
    Mean(Sum),
    Min(Option<Num>),
    Max(Option<Num>),
    First(Option<Stamped>),
    Last(Option<Stamped>),
    StdDev(Welford),
}

impl Acc {
    pub(super) fn new(func: AggFn) -> Acc {
        match func {
            AggFn::Count => Acc::Count(0),
            AggFn::Sum => Acc::Sum(Sum::default()),
            AggFn::Mean => Acc::Mean(Sum::default()),
            AggFn::Min => Acc::Min(None),
            AggFn::Max => Acc::Max(None),
            AggFn::First => Acc::First(None),
            AggFn::Last => Acc::Last(None),
            AggFn::StdDev => Acc::StdDev(Welford::default()),
        }
    }

    /// Adds one value of an event with time `ts_ms` that arrived `arrival`-th. A `count` with
    /// no field is handed a flag for every event.
    pub(super) fn add(&mut self, cell: Cell<'_>, ts_ms: i64, arrival: u64) {
        let stamped = || Stamped {
            ts_ms,
            arrival,
            value: Scalar::of(cell),
        };
        match self {
            Acc::Count(n) => *n += 1,
            Acc::First(cur) => {
                if cur.as_ref().is_none_or(|c| (ts_ms, arrival) < c.order()) {
                    *cur = Some(stamped());
                }
            }
            Acc::Last(cur) => {
                if cur.as_ref().is_none_or(|c| (ts_ms, arrival) > c.order()) {
                    *cur = Some(stamped());
                }
            }
            numeric => {
                let Some(x) = Num::of(cell) else { return };
                match numeric {
                    Acc::Sum(s) | Acc::Mean(s) => s.add(x),
                    Acc::Min(cur) => {
                        if cur.is_none_or(|c| x.less(c)) {
                            *cur = Some(x);
                        }
                    }
                    Acc::Max(cur) => {
                        if cur.is_none_or(|c| c.less(x)) {
                            *cur = Some(x);
                        }
                    }
                    Acc::StdDev(w) => w.add(x.as_f64()),
                    Acc::Count(_) | Acc::First(_) | Acc::Last(_) => unreachable!("handled above"),
                }
            }
        }
    }

    /// Takes in what `other` (of the same function) holds.
    pub(super) fn merge(&mut self, other: &Acc) {
        match (self, other) {
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (Acc::Sum(a), Acc::Sum(b)) | (Acc::Mean(a), Acc::Mean(b)) => a.merge(b),
            (Acc::Min(a), Acc::Min(Some(b))) => {
                if a.is_none_or(|a| b.less(a)) {
                    *a = Some(*b);
                }
            }
            (Acc::Max(a), Acc::Max(Some(b))) => {
                if a.is_none_or(|a| a.less(*b)) {
                    *a = Some(*b);
                }
            }
            (Acc::First(a), Acc::First(Some(b))) => {
                if a.as_ref().is_none_or(|a| b.order() < a.order()) {
                    *a = Some(b.clone());
                }
            }
            (Acc::Last(a), Acc::Last(Some(b))) => {
                if a.as_ref().is_none_or(|a| b.order() > a.order()) {
                    *a = Some(b.clone());
                }
            }
            (Acc::StdDev(a), Acc::StdDev(b)) => a.merge(b),
            (Acc::Min(_), Acc::Min(None))
            | (Acc::Max(_), Acc::Max(None))
            | (Acc::First(_), Acc::First(None))
            | (Acc::Last(_), Acc::Last(None)) => {}
            (a, b) => unreachable!("merge of different aggregates: {a:?} and {b:?}"),
        }
    }

    /// The result, if there is one (none for an empty `min`, or a `stddev` of one value).
    pub(super) fn finish(&self) -> Option<Value> {
        match self {
            Acc::Count(n) => Some(Value::Int(i64::try_from(*n).unwrap_or(i64::MAX))),
            Acc::Sum(s) => s.sum(),
            Acc::Mean(s) => s.mean(),
            Acc::Min(x) | Acc::Max(x) => x.map(Num::value),
            Acc::First(s) | Acc::Last(s) => s.as_ref().map(|s| s.value.value()),
            Acc::StdDev(w) => w.sample_stddev(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(func: AggFn, cells: &[(Cell<'_>, i64)]) -> Option<Value> {
        let mut acc = Acc::new(func);
        for (i, &(c, ts)) in cells.iter().enumerate() {
            acc.add(c, ts, i as u64);
        }
        acc.finish()
    }

    /// The aggregate of `cells` split in two at every point and merged gives the same.
    fn merged_everywhere(func: AggFn, cells: &[(Cell<'_>, i64)]) {
        let whole = run(func, cells);
        for cut in 0..=cells.len() {
            let mut a = Acc::new(func);
            let mut b = Acc::new(func);
            for (i, &(c, ts)) in cells.iter().enumerate() {
                let acc = if i < cut { &mut a } else { &mut b };
                acc.add(c, ts, i as u64);
            }
            b.merge(&a);
            match (b.finish(), &whole) {
                (Some(Value::Float(x)), Some(Value::Float(y))) => {
                    assert!((x - y).abs() < 1e-12, "{func:?} cut at {cut}: {x} vs {y}")
                }
                (got, want) => assert_eq!(&got, want, "{func:?} cut at {cut}"),
            }
        }
    }

    #[test]
    fn built_ins_compute_what_they_say_and_merge_in_any_split() {
        let cells = [
            (Cell::Int(4), 30),
            (Cell::Float(2.5), 10),
            (Cell::Text("x"), 5),
            (Cell::Int(-1), 40),
            (Cell::Float(8.0), 10),
        ];
        assert_eq!(run(AggFn::Count, &cells), Some(Value::Int(5)));
        assert_eq!(run(AggFn::Sum, &cells), Some(Value::Float(13.5)));
        assert_eq!(run(AggFn::Mean, &cells), Some(Value::Float(13.5 / 4.0)));
        assert_eq!(run(AggFn::Min, &cells), Some(Value::Int(-1)));
        assert_eq!(run(AggFn::Max, &cells), Some(Value::Float(8.0)));
        // Earliest time wins; of the two at 10, the first to arrive. Any type.
        assert_eq!(run(AggFn::First, &cells), Some(Value::Text("x".into())));
        assert_eq!(run(AggFn::Last, &cells), Some(Value::Int(-1)));
        let at10 = &cells[1..3];
        assert_eq!(
            run(AggFn::First, &[at10[0], cells[4]]),
            Some(Value::Float(2.5))
        );
        assert_eq!(
            run(AggFn::Last, &[at10[0], cells[4]]),
            Some(Value::Float(8.0))
        );
        // Sample standard deviation of 4, 2.5, -1, 8: mean 3.375.
        let m = 3.375f64;
        let ss = (4.0 - m).powi(2) + (2.5 - m).powi(2) + (-1.0 - m).powi(2) + (8.0 - m).powi(2);
        let Some(Value::Float(sd)) = run(AggFn::StdDev, &cells) else {
            panic!("a stddev")
        };
        assert!((sd - (ss / 3.0).sqrt()).abs() < 1e-12, "{sd}");
        for f in [
            AggFn::Count,
            AggFn::Sum,
            AggFn::Mean,
            AggFn::Min,
            AggFn::Max,
            AggFn::First,
            AggFn::Last,
            AggFn::StdDev,
        ] {
            merged_everywhere(f, &cells);
        }
    }

    #[test]
    fn ints_stay_ints_and_undefined_results_are_none() {
        let ints = [
            (Cell::Int(i64::MAX), 0),
            (Cell::Int(2), 1),
            (Cell::Int(-3), 2),
        ];
        assert_eq!(run(AggFn::Sum, &ints), Some(Value::Int(i64::MAX - 1)));
        assert_eq!(run(AggFn::Max, &ints), Some(Value::Int(i64::MAX)));
        // An int sum beyond i64 becomes a float rather than wrapping.
        let big = [(Cell::Int(i64::MAX), 0), (Cell::Int(i64::MAX), 1)];
        assert_eq!(
            run(AggFn::Sum, &big),
            Some(Value::Float(2.0 * i64::MAX as f64))
        );
        let text = [(Cell::Text("a"), 0)];
        for f in [
            AggFn::Sum,
            AggFn::Mean,
            AggFn::Min,
            AggFn::Max,
            AggFn::StdDev,
        ] {
            assert_eq!(run(f, &[]), None, "{f:?}");
            assert_eq!(run(f, &text), None, "{f:?}");
        }
        assert_eq!(run(AggFn::StdDev, &[(Cell::Float(1.0), 0)]), None);
        assert_eq!(run(AggFn::Count, &[]), Some(Value::Int(0)));
    }

    #[test]
    fn cells_skip_missing_and_non_finite_values() {
        let v = Values::Float(vec![Some(1.0), None, Some(f64::NAN), Some(f64::INFINITY)]);
        assert_eq!(cell(&v, 0), Some(Cell::Float(1.0)));
        assert_eq!(cell(&v, 1), None);
        assert_eq!(cell(&v, 2), None);
        assert_eq!(cell(&v, 3), None);
        assert_eq!(cell(&v, 4), None, "out of range is no value, not a panic");
        let t = Values::Text(vec![Some("a".into())]);
        assert_eq!(cell(&t, 0), Some(Cell::Text("a")));
    }
}
