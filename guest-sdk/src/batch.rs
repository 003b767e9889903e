//! Conversion between the columnar batches that cross the boundary and the events an operator
//! sees one at a time.

use std::rc::Rc;

use crate::event::{Event, Str, Value};
use crate::wit::{Batch, Column, Rejected, Values};

/// The events of a columnar batch, produced one at a time so that each event's field list can
/// reuse the allocation of the one before.
pub(crate) struct Rows {
    key: std::vec::IntoIter<u32>,
    ts_ms: std::vec::IntoIter<i64>,
    columns: Vec<(Str, ColumnIter)>,
}

enum ColumnIter {
    Float(std::vec::IntoIter<Option<f64>>),
    Int(std::vec::IntoIter<Option<i64>>),
    Text(std::vec::IntoIter<Option<String>>),
    Flag(std::vec::IntoIter<Option<bool>>),
}

impl ColumnIter {
    fn next_value(&mut self) -> Option<Value> {
        match self {
            ColumnIter::Float(v) => v.next().flatten().map(Value::Float),
            ColumnIter::Int(v) => v.next().flatten().map(Value::Int),
            ColumnIter::Text(v) => v.next().flatten().map(Value::Text),
            ColumnIter::Flag(v) => v.next().flatten().map(Value::Flag),
        }
    }
}

impl Rows {
    /// Checks the batch (lists of one length) and prepares to read it.
    pub(crate) fn new(batch: Batch) -> Result<Rows, String> {
        let Batch {
            key,
            ts_ms,
            columns,
        } = batch;
        let n = key.len();
        if ts_ms.len() != n {
            return Err(format!("batch has {n} keys but {} timestamps", ts_ms.len()));
        }
        let mut iters = Vec::with_capacity(columns.len());
        for Column { name, values } in columns {
            let len = values_len(&values);
            if len != n {
                return Err(format!("column {name:?} has {len} values for {n} events"));
            }
            let iter = match values {
                Values::Float(v) => ColumnIter::Float(v.into_iter()),
                Values::Int(v) => ColumnIter::Int(v.into_iter()),
                Values::Text(v) => ColumnIter::Text(v.into_iter()),
                Values::Flag(v) => ColumnIter::Flag(v.into_iter()),
            };
            iters.push((Str::from(name), iter));
        }
        Ok(Rows {
            key: key.into_iter(),
            ts_ms: ts_ms.into_iter(),
            columns: iters,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.key.len()
    }

    /// The next event, with its fields in `fields` (emptied first).
    pub(crate) fn next_event(&mut self, mut fields: Vec<(Str, Value)>) -> Option<Event> {
        let k = self.key.next()?;
        let ts_ms = self.ts_ms.next()?;
        fields.clear();
        for (name, column) in &mut self.columns {
            if let Some(value) = column.next_value() {
                fields.push((name.clone(), value));
            }
        }
        Some(Event {
            key: crate::keys::name(k),
            ts_ms,
            fields,
        })
    }
}

/// All the events of a columnar batch (for tests and aggregators).
pub(crate) fn to_events(batch: Batch) -> Result<Vec<Event>, String> {
    let mut rows = Rows::new(batch)?;
    let mut events = Vec::with_capacity(rows.len());
    while let Some(e) = rows.next_event(Vec::new()) {
        events.push(e);
    }
    Ok(events)
}

fn values_len(values: &Values) -> usize {
    match values {
        Values::Float(v) => v.len(),
        Values::Int(v) => v.len(),
        Values::Text(v) => v.len(),
        Values::Flag(v) => v.len(),
    }
}

/// One column being built, padded with `None` for events without the field.
enum ColumnBuf {
    Float(Vec<Option<f64>>),
    Int(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
    Flag(Vec<Option<bool>>),
}

impl ColumnBuf {
    fn new(value: &Value, rows: usize) -> Self {
        match value {
            Value::Float(_) => ColumnBuf::Float(vec![None; rows]),
            Value::Int(_) => ColumnBuf::Int(vec![None; rows]),
            Value::Text(_) => ColumnBuf::Text(vec![None; rows]),
            Value::Flag(_) => ColumnBuf::Flag(vec![None; rows]),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ColumnBuf::Float(_) => "float",
            ColumnBuf::Int(_) => "int",
            ColumnBuf::Text(_) => "text",
            ColumnBuf::Flag(_) => "flag",
        }
    }

    /// Stores `value` at `row`. A column holds one type; an int goes into a float column as a
    /// float, anything else of the wrong type is refused.
    fn put(&mut self, row: usize, value: Value) -> Result<(), Value> {
        match (self, value) {
            (ColumnBuf::Float(v), Value::Float(x)) => v[row] = Some(x),
            (ColumnBuf::Float(v), Value::Int(x)) => v[row] = Some(x as f64),
            (ColumnBuf::Int(v), Value::Int(x)) => v[row] = Some(x),
            (ColumnBuf::Text(v), Value::Text(x)) => v[row] = Some(x),
            (ColumnBuf::Flag(v), Value::Flag(x)) => v[row] = Some(x),
            (_, other) => return Err(other),
        }
        Ok(())
    }

    fn len(&self) -> usize {
        match self {
            ColumnBuf::Float(v) => v.len(),
            ColumnBuf::Int(v) => v.len(),
            ColumnBuf::Text(v) => v.len(),
            ColumnBuf::Flag(v) => v.len(),
        }
    }

    fn push_none(&mut self) {
        match self {
            ColumnBuf::Float(v) => v.push(None),
            ColumnBuf::Int(v) => v.push(None),
            ColumnBuf::Text(v) => v.push(None),
            ColumnBuf::Flag(v) => v.push(None),
        }
    }

    fn pop(&mut self) {
        match self {
            ColumnBuf::Float(v) => drop(v.pop()),
            ColumnBuf::Int(v) => drop(v.pop()),
            ColumnBuf::Text(v) => drop(v.pop()),
            ColumnBuf::Flag(v) => drop(v.pop()),
        }
    }

    fn into_values(self) -> Values {
        match self {
            ColumnBuf::Float(v) => Values::Float(v),
            ColumnBuf::Int(v) => Values::Int(v),
            ColumnBuf::Text(v) => Values::Text(v),
            ColumnBuf::Flag(v) => Values::Flag(v),
        }
    }
}

/// Builds a columnar batch from events, one event at a time.
pub(crate) struct BatchBuilder {
    key: Vec<u32>,
    ts_ms: Vec<i64>,
    columns: Vec<(Str, ColumnBuf)>,
}

impl BatchBuilder {
    pub(crate) fn with_capacity(events: usize) -> Self {
        BatchBuilder {
            key: Vec::with_capacity(events),
            ts_ms: Vec::with_capacity(events),
            columns: Vec::new(),
        }
    }

    /// Adds one event, taking its fields (`event.fields` is left empty, its allocation free for
    /// reuse). An event whose field has a different type than the same field of earlier events
    /// in the batch is refused with the reason (the batch is left as it was).
    pub(crate) fn push(&mut self, event: &mut Event) -> Result<(), String> {
        let row = self.key.len();
        for col in self.columns.iter_mut() {
            col.1.push_none();
        }
        let mut failed = None;
        for (name, value) in event.fields.drain(..) {
            let at = match self
                .columns
                .iter()
                .position(|(n, _)| Rc::ptr_eq(n, &name) || *n == name)
            {
                Some(at) => at,
                None => {
                    self.columns
                        .push((name.clone(), ColumnBuf::new(&value, row + 1)));
                    self.columns.len() - 1
                }
            };
            let column = &mut self.columns[at].1;
            if let Err(value) = column.put(row, value) {
                failed = Some(format!(
                    "field {name:?} is {} here but {} in other events of the batch",
                    value.kind(),
                    column.kind()
                ));
                break;
            }
        }
        if let Some(reason) = failed {
            for col in self.columns.iter_mut() {
                col.1.pop();
            }
            return Err(reason);
        }
        let id = crate::keys::id(&event.key);
        self.key.push(id);
        self.ts_ms.push(event.ts_ms);
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Batch {
        // A column added by a refused event may be shorter than the batch; pad it.
        let rows = self.key.len();
        for (_, col) in self.columns.iter_mut() {
            while col.len() < rows {
                col.push_none();
            }
            while col.len() > rows {
                col.pop();
            }
        }
        Batch {
            key: self.key,
            ts_ms: self.ts_ms,
            columns: self
                .columns
                .into_iter()
                .map(|(name, values)| Column {
                    name: name.to_string(),
                    values: values.into_values(),
                })
                .collect(),
        }
    }
}

/// Events emitted for one batch, with the inputs that were rejected.
pub(crate) struct Emitted {
    pub(crate) builder: BatchBuilder,
    pub(crate) rejected: Vec<Rejected>,
}

impl Emitted {
    pub(crate) fn new(capacity: usize) -> Self {
        Emitted {
            builder: BatchBuilder::with_capacity(capacity),
            rejected: Vec::new(),
        }
    }

    /// Adds what input `index` produced (taken from `emitted`, which is left empty); a failure
    /// rejects the input with the reason. Returns an emptied field list to reuse.
    pub(crate) fn add(
        &mut self,
        index: usize,
        result: Result<(), String>,
        emitted: &mut Vec<Event>,
    ) -> Vec<(Str, Value)> {
        let mut spare = Vec::new();
        if let Err(reason) = result {
            emitted.clear();
            self.rejected.push(Rejected {
                index: index as u32,
                reason,
            });
            return spare;
        }
        for mut event in emitted.drain(..) {
            if let Err(reason) = self.builder.push(&mut event) {
                self.rejected.push(Rejected {
                    index: index as u32,
                    reason,
                });
            }
            spare = event.fields;
        }
        spare
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(events: Vec<Event>) -> (Vec<Event>, Vec<String>) {
        let mut builder = BatchBuilder::with_capacity(events.len());
        let mut refused = Vec::new();
        for mut e in events {
            if let Err(reason) = builder.push(&mut e) {
                refused.push(reason);
            }
        }
        (to_events(builder.finish()).unwrap(), refused)
    }

    #[test]
    fn events_survive_the_trip_through_columns() {
        let events = vec![
            Event::new("a", 1).with("temp", 20.5).with("ok", true),
            Event::new("b", 2).with("note", "dusty"),
            Event::new("a", 3).with("temp", 21.0).with("count", 4_i64),
        ];
        let (back, refused) = round_trip(events.clone());
        assert!(refused.is_empty());
        assert_eq!(back, events);
    }

    #[test]
    fn a_field_of_another_type_refuses_that_event_only() {
        let (back, refused) = round_trip(vec![
            Event::new("a", 1).with("temp", 20.5),
            Event::new("a", 2).with("temp", "hot").with("new", 1_i64),
            Event::new("a", 3).with("temp", 7_i64),
        ]);
        assert_eq!(
            refused,
            ["field \"temp\" is text here but float in other events of the batch"]
        );
        assert_eq!(back.len(), 2);
        assert_eq!(
            back[1].get("temp"),
            Some(&Value::Float(7.0)),
            "ints widen into a float column"
        );
        assert_eq!(back[1].get("new"), None);
    }

    #[test]
    fn malformed_batches_are_refused_with_the_reason() {
        let batch = |key: Vec<u32>, ts: Vec<i64>| Batch {
            key,
            ts_ms: ts,
            columns: vec![Column {
                name: "t".into(),
                values: Values::Float(vec![None]),
            }],
        };
        assert_eq!(
            Rows::new(batch(vec![0], vec![])).err().unwrap(),
            "batch has 1 keys but 0 timestamps"
        );
        assert_eq!(
            Rows::new(batch(vec![0, 0], vec![1, 2])).err().unwrap(),
            "column \"t\" has 1 values for 2 events"
        );
    }
}
