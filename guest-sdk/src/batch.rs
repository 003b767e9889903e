//! Conversion between the columnar batches that cross the boundary and the events an operator
//! sees one at a time.

use std::rc::Rc;

use crate::event::{Event, Str, Value};
use crate::wit::{Batch, Column, Rejected, Values};

/// The events of a columnar batch, produced one at a time so that each event's field list can
/// reuse the allocation of the one before.
pub(crate) struct Rows {
    ids: Vec<u32>,
    keys: std::vec::IntoIter<Str>,
    ts_ms: Vec<i64>,
    columns: Vec<(Str, Values)>,
    /// The next row.
    row: usize,
}

/// The key of the event [`Rows::next_event`] returned, by id: an event emitted with that very
/// key (the same [`Str`]) needs no lookup to find its id again.
#[derive(Clone, Copy)]
pub(crate) struct KeyHint {
    text: *const u8,
    id: u32,
}

impl KeyHint {
    fn of(key: &Str, id: u32) -> Self {
        KeyHint {
            text: Rc::as_ptr(key) as *const u8,
            id,
        }
    }

    /// The id of `key`, if it is the key this hint was taken from. The key cache keeps every
    /// key's [`Str`] alive, so an address is never reused for another key.
    fn id_of(&self, key: &Str) -> Option<u32> {
        (Rc::as_ptr(key) as *const u8 == self.text).then_some(self.id)
    }
}

/// The value of `values` at `row` (which is in range), taken out of it.
#[inline]
fn take_value(values: &mut Values, row: usize) -> Option<Value> {
    match values {
        Values::Float(v) => v[row].map(Value::Float),
        Values::Int(v) => v[row].map(Value::Int),
        Values::Text(v) => v[row].take().map(Value::Text),
        Values::Flag(v) => v[row].map(Value::Flag),
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
        let mut named = Vec::with_capacity(columns.len());
        for Column { name, values } in columns {
            let len = values_len(&values);
            if len != n {
                return Err(format!("column {name:?} has {len} values for {n} events"));
            }
            named.push((Str::from(name), values));
        }
        Ok(Rows {
            keys: crate::keys::names(&key).into_iter(),
            ids: key,
            ts_ms,
            columns: named,
            row: 0,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The number of fields an event has at most.
    pub(crate) fn width(&self) -> usize {
        self.columns.len()
    }

    /// The next event, with its fields in `fields` (whatever it holds is replaced), and its
    /// key's id.
    #[inline]
    pub(crate) fn next_event(&mut self, mut fields: Vec<(Str, Value)>) -> Option<(Event, KeyHint)> {
        let key = self.keys.next()?;
        let row = self.row;
        self.row += 1;
        let ts_ms = self.ts_ms[row];
        let hint = KeyHint::of(&key, self.ids[row]);
        // `fields` is most often the field list of the event before, with every field: while
        // this event has the same fields, their values are overwritten and their names kept.
        let mut same = 0;
        if fields.len() == self.columns.len() {
            for ((name, values), (field, value)) in self.columns.iter_mut().zip(fields.iter_mut()) {
                if !Rc::ptr_eq(name, field) {
                    break;
                }
                match take_value(values, row) {
                    Some(v) => *value = v,
                    None => break,
                }
                same += 1;
            }
        }
        if same < self.columns.len() {
            // The fields before `same` hold this event's values; read the others.
            fields.truncate(same);
            for (name, values) in &mut self.columns[same..] {
                if let Some(value) = take_value(values, row) {
                    fields.push((name.clone(), value));
                }
            }
        }
        Some((Event { key, ts_ms, fields }, hint))
    }
}

/// All the events of a columnar batch (for tests and aggregators).
pub(crate) fn to_events(batch: Batch) -> Result<Vec<Event>, String> {
    let mut rows = Rows::new(batch)?;
    let mut events = Vec::with_capacity(rows.len());
    while let Some((e, _)) = rows.next_event(Vec::new()) {
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
    /// A column for values like `value`, of `rows` rows without a value, with room for
    /// `capacity` rows.
    fn new(value: &Value, rows: usize, capacity: usize) -> Self {
        fn nones<T: Clone>(rows: usize, capacity: usize) -> Vec<Option<T>> {
            let mut v = Vec::with_capacity(capacity.max(rows));
            v.resize(rows, None);
            v
        }
        match value {
            Value::Float(_) => ColumnBuf::Float(nones(rows, capacity)),
            Value::Int(_) => ColumnBuf::Int(nones(rows, capacity)),
            Value::Text(_) => ColumnBuf::Text(nones(rows, capacity)),
            Value::Flag(_) => ColumnBuf::Flag(nones(rows, capacity)),
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
    #[inline]
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

    /// Appends `value` if it goes in this column (see [`ColumnBuf::put`]), taking text out of it.
    #[inline]
    fn push_value(&mut self, value: &mut Value) -> bool {
        match (self, value) {
            (ColumnBuf::Float(v), Value::Float(x)) => v.push(Some(*x)),
            (ColumnBuf::Float(v), Value::Int(x)) => v.push(Some(*x as f64)),
            (ColumnBuf::Int(v), Value::Int(x)) => v.push(Some(*x)),
            (ColumnBuf::Text(v), Value::Text(x)) => v.push(Some(std::mem::take(x))),
            (ColumnBuf::Flag(v), Value::Flag(x)) => v.push(Some(*x)),
            _ => return false,
        }
        true
    }

    /// Takes back the last value, which [`ColumnBuf::push_value`] appended from `value`.
    #[cold]
    fn unpush(&mut self, value: &mut Value) {
        match self {
            ColumnBuf::Text(v) => {
                if let Some(Some(text)) = v.pop() {
                    *value = Value::Text(text);
                }
            }
            other => other.pop(),
        }
    }

    #[inline]
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
    /// The number of events expected, to size new columns.
    capacity: usize,
}

impl BatchBuilder {
    pub(crate) fn with_capacity(events: usize) -> Self {
        BatchBuilder {
            key: Vec::with_capacity(events),
            ts_ms: Vec::with_capacity(events),
            columns: Vec::new(),
            capacity: events,
        }
    }

    /// The column of field `name`, the `nth` field of its event: most events have their
    /// fields in the order of the columns, with the names the columns were made with.
    #[inline]
    fn find(&self, nth: usize, name: &Str) -> Option<usize> {
        if let Some((n, _)) = self.columns.get(nth)
            && Rc::ptr_eq(n, name)
        {
            return Some(nth);
        }
        self.columns
            .iter()
            .position(|(n, _)| Rc::ptr_eq(n, name) || *n == *name)
    }

    /// Adds one event, taking its fields' values (`event.fields` is left for reuse: emptied, or
    /// with its names and spent values). An event whose field has a different type than the
    /// same field of earlier events in the batch is refused with the reason (the batch is left
    /// as it was). `hint` may give the id of the event's key.
    pub(crate) fn push(&mut self, event: &mut Event, hint: Option<KeyHint>) -> Result<(), String> {
        if !self.push_same(&mut event.fields) {
            self.push_fields(event)?;
        }
        let id = match hint.and_then(|h| h.id_of(&event.key)) {
            Some(id) => id,
            None => crate::keys::id(&event.key),
        };
        self.key.push(id);
        self.ts_ms.push(event.ts_ms);
        Ok(())
    }

    /// Adds `fields` if they are the columns, in order and by the very names the columns were
    /// made with, with values of the columns' types: the usual case. Otherwise adds nothing and
    /// returns false, with `fields` as they were.
    #[inline]
    fn push_same(&mut self, fields: &mut [(Str, Value)]) -> bool {
        if fields.len() != self.columns.len() {
            return false;
        }
        let mut done = 0;
        for ((n, column), (name, value)) in self.columns.iter_mut().zip(fields.iter_mut()) {
            if !Rc::ptr_eq(n, name) || !column.push_value(value) {
                break;
            }
            done += 1;
        }
        if done == fields.len() {
            return true;
        }
        // Undo: give the texts taken back to their fields.
        for ((_, column), (_, value)) in self.columns.iter_mut().zip(fields.iter_mut()).take(done) {
            column.unpush(value);
        }
        false
    }

    /// Adds the fields of one event, in any order, making the columns it lacks.
    fn push_fields(&mut self, event: &mut Event) -> Result<(), String> {
        let row = self.key.len();
        for col in self.columns.iter_mut() {
            col.1.push_none();
        }
        let mut failed = None;
        for (nth, (name, value)) in event.fields.drain(..).enumerate() {
            let at = match self.find(nth, &name) {
                Some(at) => at,
                None => {
                    let column = ColumnBuf::new(&value, row + 1, self.capacity);
                    self.columns.push((name.clone(), column));
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
        hint: Option<KeyHint>,
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
        if emitted.len() == 1
            && let Some(mut event) = emitted.pop()
        {
            if let Err(reason) = self.builder.push(&mut event, hint) {
                self.rejected.push(Rejected {
                    index: index as u32,
                    reason,
                });
            }
            return event.fields;
        }
        for mut event in emitted.drain(..) {
            if let Err(reason) = self.builder.push(&mut event, hint) {
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
            if let Err(reason) = builder.push(&mut e, None) {
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

#[cfg(test)]
mod each_event_tests {
    use crate::context::{Context, StateStore};
    use crate::event::Event;
    use crate::{Transform, rt};

    /// Passes every event on, twice for events with `twice`, and drops those with `drop`.
    #[derive(serde::Deserialize)]
    struct Pass {}

    impl Transform for Pass {
        fn process(&mut self, event: Event, ctx: &mut Context) -> Result<(), String> {
            if event.get("drop").is_some() {
                return Ok(());
            }
            if event.get("twice").is_some() {
                ctx.emit(event.clone());
            }
            ctx.emit(event);
            Ok(())
        }
    }

    #[test]
    fn events_of_any_layout_come_out_as_they_went_in() {
        let events = vec![
            Event::new("a", 1).with("temp", 20.5).with("note", "dusty"),
            Event::new("b", 2).with("temp", 21.5).with("note", "windy"),
            Event::new("a", 3).with("temp", 22.5),
            Event::new("c", 4).with("note", "calm"),
            Event::new("b", 5).with("temp", 23.5).with("note", "dry"),
            Event::new("b", 6).with("temp", 1.0).with("drop", true),
            Event::new("a", 7).with("temp", 24.5).with("note", "wet"),
            Event::new("c", 8).with("temp", 2.0).with("twice", 1_i64),
            Event::new("a", 9).with("temp", 25.5).with("note", "cold"),
        ];
        let mut builder = super::BatchBuilder::with_capacity(events.len());
        for mut e in events.clone() {
            builder.push(&mut e, None).unwrap();
        }
        let mut ctx = Context::new(StateStore::Memory(Default::default()));
        let out = rt::each_event(&mut Pass {}, builder.finish(), &mut ctx).unwrap();
        let mut expected: Vec<Event> = Vec::new();
        for e in events {
            if e.get("drop").is_some() {
                continue;
            }
            if e.get("twice").is_some() {
                expected.push(e.clone());
            }
            expected.push(e);
        }
        assert_eq!(super::to_events(out).unwrap(), expected);
    }
}

#[cfg(test)]
mod each_event_type_tests {
    use crate::context::{Context, StateStore};
    use crate::event::{Event, Value};
    use crate::{Transform, rt};

    /// Replaces a `temp` above 100 with the text "hot".
    #[derive(serde::Deserialize)]
    struct Hot {}

    impl Transform for Hot {
        fn process(&mut self, mut event: Event, ctx: &mut Context) -> Result<(), String> {
            if event.f64("temp").is_some_and(|t| t > 100.0) {
                event.set("temp", "hot");
            }
            ctx.emit(event);
            Ok(())
        }
    }

    #[test]
    fn a_field_that_changes_type_refuses_that_event_and_keeps_the_others_whole() {
        let events: Vec<Event> = [("a", 20.0), ("b", 120.0), ("c", 30.0)]
            .into_iter()
            .enumerate()
            .map(|(i, (note, temp))| {
                Event::new("k", i as i64)
                    .with("note", note)
                    .with("temp", temp)
            })
            .collect();
        let mut builder = super::BatchBuilder::with_capacity(events.len());
        for mut e in events.clone() {
            builder.push(&mut e, None).unwrap();
        }
        let mut ctx = Context::new(StateStore::Memory(Default::default()));
        let out = rt::each_event(&mut Hot {}, builder.finish(), &mut ctx).unwrap();
        let back = super::to_events(out).unwrap();
        assert_eq!(back, vec![events[0].clone(), events[2].clone()]);
        assert_eq!(ctx.rejected.len(), 1);
        assert_eq!(ctx.rejected[0].index, 1);
        assert_eq!(
            ctx.rejected[0].reason,
            "field \"temp\" is text here but float in other events of the batch"
        );
        assert_eq!(back[1].get("note"), Some(&Value::Text("c".into())));
    }
}
