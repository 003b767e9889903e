//! Batches by column, for operators that override [`crate::Transform::process_batch`].
//!
//! A [`Batch`] is what crosses the boundary: `key` holds a key id per event (see
//! [`Batch::key_of`] for its text), `ts_ms` a time per event, and `columns` one list of optional
//! values per field. Every per-event list has the same length.
//!
//! ```
//! use weir_guest::columns::{Batch, Values};
//!
//! /// Keeps events whose `temp` is at least 0, and converts it to °F.
//! fn above_freezing_in_f(mut batch: Batch) -> Batch {
//!     let keep: Vec<bool> = match batch.column("temp") {
//!         Some(Values::Float(t)) => t.iter().map(|x| x.is_some_and(|x| x >= 0.0)).collect(),
//!         _ => return batch,
//!     };
//!     batch.retain(&keep);
//!     if let Some(Values::Float(t)) = batch.column_mut("temp") {
//!         for x in t.iter_mut().flatten() {
//!             *x = *x * 1.8 + 32.0;
//!         }
//!     }
//!     batch
//! }
//! ```

pub use crate::wit::{Batch, Column, Values};

impl Batch {
    /// Number of events.
    pub fn len(&self) -> usize {
        self.key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.key.is_empty()
    }

    /// The key of event `i`, as text.
    pub fn key_of(&self, i: usize) -> crate::Str {
        crate::keys::name(self.key[i])
    }

    /// The values of field `name`.
    pub fn column(&self, name: &str) -> Option<&Values> {
        self.columns
            .iter()
            .find(|c| c.name == name)
            .map(|c| &c.values)
    }

    /// The values of field `name`, to change in place.
    pub fn column_mut(&mut self, name: &str) -> Option<&mut Values> {
        self.columns
            .iter_mut()
            .find(|c| c.name == name)
            .map(|c| &mut c.values)
    }

    /// Keeps the events whose entry in `keep` is true (`keep` has one entry per event).
    pub fn retain(&mut self, keep: &[bool]) {
        assert_eq!(keep.len(), self.len(), "one keep flag per event");
        fn filter<T>(v: &mut Vec<T>, keep: &[bool]) {
            let mut i = 0;
            v.retain(|_| {
                i += 1;
                keep[i - 1]
            });
        }
        filter(&mut self.key, keep);
        filter(&mut self.ts_ms, keep);
        for c in &mut self.columns {
            match &mut c.values {
                Values::Float(v) => filter(v, keep),
                Values::Int(v) => filter(v, keep),
                Values::Text(v) => filter(v, keep),
                Values::Flag(v) => filter(v, keep),
            }
        }
    }
}
