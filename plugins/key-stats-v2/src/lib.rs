//! Counts events per key and keeps the running mean of a field, tagging each event with `count`
//! and `mean`.
//!
//! Version 2 of a pair: it stores `{count, sum, n}` under one name (layout `"count+mean"`), where
//! [key-stats-v1](../key-stats-v1) stored a bare count (layout `""`). Its [`Migrate`] converts
//! version 1's state when it is swapped in over it, so counts carry on; the mean starts with the
//! first value after the swap, since version 1 kept none.

use weir_guest::prelude::*;

/// Where version 1 kept its count: a JSON integer.
pub const V1_COUNT: &str = "count";
/// Where this version keeps its [`Stats`].
pub const STATS: &str = "stats";

#[operator]
pub struct KeyStatsV2 {
    /// The numeric field to average.
    #[serde(default = "default_field")]
    field: String,
}

fn default_field() -> String {
    "value".into()
}

/// What this version stores per key.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(crate = "weir_guest::serde")]
pub struct Stats {
    /// Events seen, by either version.
    pub count: i64,
    /// Sum and number of the values of the field (since version 2 took over).
    pub sum: f64,
    pub n: i64,
}

impl Transform for KeyStatsV2 {
    fn process(&mut self, mut event: Event, ctx: &mut Context) -> Result<(), String> {
        let mut state = ctx.state(&event.key);
        let mut stats = state.get::<Stats>(STATS).unwrap_or_default();
        stats.count += 1;
        if let Some(x) = event.f64(&self.field) {
            stats.sum += x;
            stats.n += 1;
        }
        state.set(STATS, &stats);
        event.set("count", stats.count);
        if stats.n > 0 {
            event.set("mean", stats.sum / stats.n as f64);
        }
        ctx.emit(event);
        Ok(())
    }
}

impl Migrate for KeyStatsV2 {
    const LAYOUT: &'static str = "count+mean";

    /// Version 1 (layout `""`) stored a count: it carries on, with no values averaged yet.
    fn migrate_state(&self, old_layout: &str, state: &mut StoredState) -> Result<(), String> {
        if !old_layout.is_empty() {
            return Err(format!("cannot read layout {old_layout:?}"));
        }
        let count = match state.get_bytes(V1_COUNT) {
            None => 0,
            Some(_) => state
                .get::<i64>(V1_COUNT)
                .ok_or_else(|| format!("the count of {} is not an integer", state.key()))?,
        };
        state.remove(V1_COUNT);
        state.set(
            STATS,
            &Stats {
                count,
                ..Stats::default()
            },
        );
        Ok(())
    }
}

weir_guest::export_transform!(KeyStatsV2, migrate);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_guest::testing::Harness;

    #[test]
    fn counts_and_averages_per_key() {
        let mut op = Harness::<KeyStatsV2>::transform("field = \"temp\"").unwrap();
        let out = op.run(vec![
            Event::new("a", 1).with("temp", 2.0),
            Event::new("a", 2),
            Event::new("a", 3).with("temp", 4.0),
        ]);
        let last = out.events.last().unwrap();
        assert_eq!(last.get("count"), Some(&Value::Int(3)));
        assert_eq!(last.get("mean"), Some(&Value::Float(3.0)));
    }

    #[test]
    fn reads_what_version_1_stored() {
        let mut op = Harness::<KeyStatsV2>::transform("").unwrap();
        let mut state = StoredState::new("a", [(V1_COUNT.to_owned(), b"41".to_vec())]);
        op.operator().migrate_state("", &mut state).unwrap();
        assert_eq!(
            state.get::<Stats>(STATS),
            Some(Stats {
                count: 41,
                sum: 0.0,
                n: 0
            })
        );
        assert_eq!(state.get_bytes(V1_COUNT), None);

        let mut bad = StoredState::new("b", [(V1_COUNT.to_owned(), b"\"many\"".to_vec())]);
        let refused = op.operator().migrate_state("", &mut bad).unwrap_err();
        assert_eq!(refused, "the count of b is not an integer");
        let unknown = op.operator().migrate_state("v9", &mut bad).unwrap_err();
        assert_eq!(unknown, "cannot read layout \"v9\"");
    }
}
