//! A DDSketch-style quantile sketch (Masson, Rim and Lee, VLDB 2019): values are counted in
//! logarithmic buckets, so every quantile is known to within a relative error, two sketches merge
//! by adding their buckets, and the number of buckets is bounded.

use std::collections::BTreeMap;
use std::iter;

use weir_guest::prelude::*;

/// Every quantile is returned to within this relative error (1 %), for values whose magnitude
/// is within a factor of about 10^17 of the largest magnitude of their sign.
pub const RELATIVE_ACCURACY: f64 = 0.01;

/// Buckets kept per sign. With 1 % accuracy, 2048 buckets span magnitudes from the largest down
/// to about 10^17 times smaller; smaller magnitudes are counted in the smallest bucket.
pub const MAX_BUCKETS: usize = 2048;

/// The ratio between the bounds of a bucket: `(1 + α) / (1 - α)`.
const GAMMA: f64 = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);

/// Counts of values in logarithmic buckets: bucket `i` holds the magnitudes in
/// `(GAMMA^(i-1), GAMMA^i]`.
///
/// Non-finite values are ignored. Adding values one by one and merging sketches of parts of
/// them give the same sketch, whatever the order.
#[accumulator]
#[derive(Clone, Debug, PartialEq)]
pub struct Sketch {
    positive: Buckets,
    negative: Buckets,
    zeros: u64,
}

impl Sketch {
    /// Counts `x`.
    pub fn add(&mut self, x: f64) {
        if x > 0.0 && x.is_finite() {
            self.positive.add(bucket(x));
        } else if x < 0.0 && x.is_finite() {
            self.negative.add(bucket(-x));
        } else if x == 0.0 {
            self.zeros += 1;
        }
    }

    /// Adds the counts of `other` to this sketch.
    pub fn merge(&mut self, other: Sketch) {
        self.positive.merge(other.positive);
        self.negative.merge(other.negative);
        self.zeros += other.zeros;
    }

    /// How many values were counted.
    pub fn count(&self) -> u64 {
        self.positive.count() + self.negative.count() + self.zeros
    }

    /// The `q` quantile (0.0 to 1.0): an estimate of the value at rank `⌊q·(n−1)⌋` (from 0) of
    /// the sorted values, within [`RELATIVE_ACCURACY`] of it. `None` if the sketch is empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let rank = (q.clamp(0.0, 1.0) * self.count().checked_sub(1)? as f64).floor() as u64;
        let negative = self
            .negative
            .counts
            .iter()
            .rev()
            .map(|(&i, &n)| (-estimate(i), n));
        let positive = self.positive.counts.iter().map(|(&i, &n)| (estimate(i), n));
        let mut seen = 0;
        negative
            .chain(iter::once((0.0, self.zeros)))
            .chain(positive)
            .find(|&(_, n)| {
                seen += n;
                seen > rank
            })
            .map(|(value, _)| value)
    }
}

/// The bucket of a positive, finite magnitude.
fn bucket(x: f64) -> i32 {
    (x.ln() / GAMMA.ln()).ceil() as i32
}

/// The value that represents bucket `i`: within `RELATIVE_ACCURACY` of all its magnitudes.
fn estimate(i: i32) -> f64 {
    2.0 * GAMMA.powi(i) / (GAMMA + 1.0)
}

/// Counts by bucket for one sign, at most [`MAX_BUCKETS`] of them: the buckets more than
/// `MAX_BUCKETS - 1` below the highest are folded into the lowest bucket kept. Which buckets are
/// kept depends only on the highest, so folding commutes with adding and merging.
#[accumulator]
#[derive(Clone, Debug, PartialEq)]
struct Buckets {
    counts: BTreeMap<i32, u64>,
}

impl Buckets {
    fn add(&mut self, i: i32) {
        *self.counts.entry(i).or_default() += 1;
        self.fold();
    }

    fn merge(&mut self, other: Buckets) {
        for (i, n) in other.counts {
            *self.counts.entry(i).or_default() += n;
        }
        self.fold();
    }

    fn count(&self) -> u64 {
        self.counts.values().sum()
    }

    fn fold(&mut self) {
        let (Some((&lowest, _)), Some((&highest, _))) =
            (self.counts.first_key_value(), self.counts.last_key_value())
        else {
            return;
        };
        let floor = highest - (MAX_BUCKETS as i32 - 1);
        if lowest < floor {
            let kept = self.counts.split_off(&floor);
            let folded: u64 = std::mem::replace(&mut self.counts, kept)
                .into_values()
                .sum();
            *self.counts.entry(floor).or_default() += folded;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sketch(values: impl IntoIterator<Item = f64>) -> Sketch {
        let mut s = Sketch::default();
        values.into_iter().for_each(|x| s.add(x));
        s
    }

    #[test]
    fn every_bucket_estimate_is_within_the_accuracy() {
        for x in [1e-300, 1e-9, 0.013, 1.0, 1.0202, 2.5, 999.99, 1e9, 1e300] {
            let error = (estimate(bucket(x)) - x).abs() / x;
            assert!(error <= RELATIVE_ACCURACY + 1e-12, "{x}: {error}");
        }
    }

    #[test]
    fn keeps_a_bounded_number_of_buckets_and_the_high_quantiles() {
        let values: Vec<f64> = (-300..=300).map(|e| 10f64.powi(e)).collect();
        let s = sketch(values.iter().copied().chain(values.iter().map(|x| -x)));
        assert!(s.positive.counts.len() <= MAX_BUCKETS);
        assert!(s.negative.counts.len() <= MAX_BUCKETS);
        assert_eq!(s.count(), 2 * 601);
        let top = s.quantile(1.0).unwrap();
        assert!((top - 1e300).abs() <= RELATIVE_ACCURACY * 1e300, "{top}");
        let bottom = s.quantile(0.0).unwrap();
        assert!(
            (bottom + 1e300).abs() <= RELATIVE_ACCURACY * 1e300,
            "{bottom}"
        );
    }

    #[test]
    fn merging_equals_adding_even_when_buckets_are_folded() {
        let small = [1e-200, 3e-150, 0.0, -2.0, 1e-30];
        let large = [1e150, 4.0, -1e-250, 7e199, f64::NAN, f64::INFINITY];
        let mut merged = sketch(small);
        merged.merge(sketch(large));
        assert_eq!(merged, sketch(small.into_iter().chain(large)));
        let mut other_way = sketch(large);
        other_way.merge(sketch(small));
        assert_eq!(other_way, merged);
        assert_eq!(merged.count(), 9);
    }
}
