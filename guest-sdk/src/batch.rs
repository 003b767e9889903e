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
        fold_kinds(&mut named);
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

/// `rh#text` → `("rh", "text")`: a column of field `rh`'s values of a kind other than its
/// column `rh` holds (the contract's typing rule; these endings are reserved).
pub(crate) fn split_kind(name: &str) -> Option<(&str, &str)> {
    let (base, kind) = name.rsplit_once('#')?;
    matches!(kind, "float" | "int" | "text" | "flag").then_some((base, kind))
}

fn values_kind(values: &Values) -> &'static str {
    match values {
        Values::Float(_) => "float",
        Values::Int(_) => "int",
        Values::Text(_) => "text",
        Values::Flag(_) => "flag",
    }
}

fn has(values: &Values, row: usize) -> bool {
    match values {
        Values::Float(v) => v[row].is_some(),
        Values::Int(v) => v[row].is_some(),
        Values::Text(v) => v[row].is_some(),
        Values::Flag(v) => v[row].is_some(),
    }
}

/// Names the values of a column `name#kind` by their field, `name`, as events see them. An event
/// that also has a value in column `name` (only a hand-built batch can) keeps the suffixed name:
/// those values move to a column of their own, so that each column has one name for every event.
#[cold]
fn fold_kinds(columns: &mut Vec<(Str, Values)>) {
    for j in 0..columns.len() {
        let base = match split_kind(&columns[j].0) {
            Some((base, kind)) if kind == values_kind(&columns[j].1) => Str::from(base),
            _ => continue,
        };
        if let Some(p) = columns.iter().position(|(n, _)| *n == base) {
            let rows = values_len(&columns[j].1);
            let clash: Vec<usize> = (0..rows)
                .filter(|&r| has(&columns[p].1, r) && has(&columns[j].1, r))
                .collect();
            if !clash.is_empty() {
                let mut apart = ColumnBuf::of_kind(values_kind(&columns[j].1), rows);
                for r in clash {
                    if let Some(v) = take_value(&mut columns[j].1, r) {
                        // Clear the entry taken (text is taken out; others are copied).
                        clear(&mut columns[j].1, r);
                        apart.put(r, v).ok();
                    }
                }
                let raw = columns[j].0.clone();
                columns.push((raw, apart.into_values()));
            }
        }
        columns[j].0 = base;
    }
}

fn clear(values: &mut Values, row: usize) {
    match values {
        Values::Float(v) => v[row] = None,
        Values::Int(v) => v[row] = None,
        Values::Text(v) => v[row] = None,
        Values::Flag(v) => v[row] = None,
    }
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

    /// A column of kind `kind` (as [`split_kind`] gives it) of `rows` rows without a value.
    fn of_kind(kind: &str, rows: usize) -> Self {
        let value = match kind {
            "float" => Value::Float(0.0),
            "int" => Value::Int(0),
            "text" => Value::Text(String::new()),
            _ => Value::Flag(false),
        };
        ColumnBuf::new(&value, rows, rows)
    }

    /// Whether values like `value` can join this column: the same kind, or both numbers.
    fn takes(&self, value: &Value) -> bool {
        matches!(
            (self, value),
            (
                ColumnBuf::Float(_) | ColumnBuf::Int(_),
                Value::Float(_) | Value::Int(_)
            ) | (ColumnBuf::Text(_), Value::Text(_))
                | (ColumnBuf::Flag(_), Value::Flag(_))
        )
    }

    fn kind(&self) -> &'static str {
        match self {
            ColumnBuf::Float(_) => "float",
            ColumnBuf::Int(_) => "int",
            ColumnBuf::Text(_) => "text",
            ColumnBuf::Flag(_) => "flag",
        }
    }

    /// Stores `value` at `row`. A column holds one kind; an int goes into a float column as a
    /// float, a float turns an int column into a float column; other kinds are refused.
    #[inline]
    fn put(&mut self, row: usize, value: Value) -> Result<(), Value> {
        if let (ColumnBuf::Int(v), Value::Float(_)) = (&*self, &value) {
            *self = ColumnBuf::Float(v.iter().map(|x| x.map(|x| x as f64)).collect());
        }
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
    /// with its names and spent values). Fields go into columns by the contract's typing rule
    /// (see [`BatchBuilder::column_for`]). `hint` may give the id of the event's key.
    #[inline(always)]
    pub(crate) fn push(&mut self, event: &mut Event, hint: Option<KeyHint>) {
        if !self.push_same(&mut event.fields) {
            self.push_fields(event);
        }
        let id = match hint.and_then(|h| h.id_of(&event.key)) {
            Some(id) => id,
            None => crate::keys::id(&event.key),
        };
        self.key.push(id);
        self.ts_ms.push(event.ts_ms);
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
    fn push_fields(&mut self, event: &mut Event) {
        let row = self.key.len();
        for col in self.columns.iter_mut() {
            col.1.push_none();
        }
        for (nth, (name, value)) in event.fields.drain(..).enumerate() {
            let at = self.column_for(nth, &name, &value, row);
            // `column_for` found a column that takes the value.
            self.columns[at].1.put(row, value).ok();
        }
    }

    /// The column for a value of field `name` (the event's `nth`), made if there is none, with
    /// `row` rows without a value before this one's. The contract's typing rule: ints and floats
    /// of a field share a column (float once one value is a float); the kind a field shows first
    /// keeps its plain name; another kind goes into a column `name#kind`.
    #[inline]
    fn column_for(&mut self, nth: usize, name: &Str, value: &Value, row: usize) -> usize {
        match self.find(nth, name) {
            Some(at) if self.columns[at].1.takes(value) => return at,
            Some(_) => {}
            None => {
                let column = ColumnBuf::new(value, row + 1, self.capacity);
                self.columns.push((name.clone(), column));
                return self.columns.len() - 1;
            }
        }
        self.other_kind(name, value, row)
    }

    /// The column `name#kind` for `value`, which column `name` does not take.
    #[cold]
    fn other_kind(&mut self, name: &Str, value: &Value, row: usize) -> usize {
        let found = self.columns.iter().position(|(n, c)| {
            c.takes(value) && split_kind(n).is_some_and(|(base, _)| base == &**name)
        });
        if let Some(at) = found {
            return at;
        }
        let column = ColumnBuf::new(value, row + 1, self.capacity);
        let named = Str::from(format!("{name}#{}", value.kind()));
        self.columns.push((named, column));
        self.columns.len() - 1
    }

    pub(crate) fn finish(mut self) -> Batch {
        // A column made for a later event is as long as the rows before it; pad the others.
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
                .map(|(name, values)| {
                    // A number column `name#int` that took a float is `name#float`.
                    let name = match split_kind(&name) {
                        Some((base, "int")) if values.kind() == "float" => format!("{base}#float"),
                        _ => name.to_string(),
                    };
                    Column {
                        name,
                        values: values.into_values(),
                    }
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
    #[inline]
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
            self.builder.push(&mut event, hint);
            return event.fields;
        }
        for mut event in emitted.drain(..) {
            self.builder.push(&mut event, hint);
            spare = event.fields;
        }
        spare
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(events: Vec<Event>) -> (Batch, Vec<Event>) {
        let mut builder = BatchBuilder::with_capacity(events.len());
        for mut e in events {
            builder.push(&mut e, None);
        }
        let batch = builder.finish();
        (batch.clone(), to_events(batch).unwrap())
    }

    /// Asserts the batch's columns (the generated `Values` has no `PartialEq`).
    fn assert_columns(batch: &Batch, expected: &[(&str, Values)]) {
        let got: Vec<_> = batch
            .columns
            .iter()
            .map(|c| (c.name.as_str(), &c.values))
            .collect();
        let expected: Vec<_> = expected.iter().map(|(n, v)| (*n, v)).collect();
        assert_eq!(format!("{got:?}"), format!("{expected:?}"));
    }

    #[test]
    fn events_survive_the_trip_through_columns() {
        let events = vec![
            Event::new("a", 1).with("temp", 20.5).with("ok", true),
            Event::new("b", 2).with("note", "dusty"),
            Event::new("a", 3).with("temp", 21.0).with("count", 4_i64),
        ];
        let (_, back) = round_trip(events.clone());
        assert_eq!(back, events);
    }

    /// The typing rule's examples, as the WIT states them (the host's tests check the same).
    #[test]
    fn the_typing_rule_keeps_every_value_and_reads_back_under_the_field_name() {
        let e = |i: i64, v: Value| Event::new("s1", i).with("rh", v);
        let (batch, back) = round_trip(vec![e(0, Value::Int(60)), e(1, Value::Float(60.5))]);
        assert_columns(
            &batch,
            &[("rh", Values::Float(vec![Some(60.0), Some(60.5)]))],
        );
        assert_eq!(back[0].get("rh"), Some(&Value::Float(60.0)));

        let text = || Value::Text("n/a".into());
        let events = vec![e(0, Value::Int(60)), e(1, text()), e(2, Value::Int(61))];
        let (batch, back) = round_trip(events.clone());
        assert_columns(
            &batch,
            &[
                ("rh", Values::Int(vec![Some(60), None, Some(61)])),
                (
                    "rh#text",
                    Values::Text(vec![None, Some("n/a".into()), None]),
                ),
            ],
        );
        assert_eq!(back, events, "each event reads back as it was");

        let (batch, back) = round_trip(vec![
            e(0, text()),
            e(1, Value::Int(60)),
            e(2, Value::Float(60.5)),
        ]);
        assert_columns(
            &batch,
            &[
                ("rh", Values::Text(vec![Some("n/a".into()), None, None])),
                (
                    "rh#float",
                    Values::Float(vec![None, Some(60.0), Some(60.5)]),
                ),
            ],
        );
        assert_eq!(back[1].get("rh"), Some(&Value::Float(60.0)));

        let events = vec![
            Event::new("s1", 0).with("ok", true),
            Event::new("s1", 1).with("ok", 1_i64),
        ];
        let (batch, back) = round_trip(events.clone());
        assert_columns(
            &batch,
            &[
                ("ok", Values::Flag(vec![Some(true), None])),
                ("ok#int", Values::Int(vec![None, Some(1)])),
            ],
        );
        assert_eq!(back, events);
    }

    #[test]
    fn a_suffixed_value_beside_its_plain_field_keeps_its_suffix() {
        // Only a hand-built batch has both for one event; nothing is merged or lost.
        let id = crate::keys::id(&Str::from("s1"));
        let batch = Batch {
            key: vec![id, id],
            ts_ms: vec![1, 2],
            columns: vec![
                Column {
                    name: "temp".into(),
                    values: Values::Float(vec![Some(1.0), None]),
                },
                Column {
                    name: "temp#text".into(),
                    values: Values::Text(vec![Some("hot".into()), Some("cold".into())]),
                },
            ],
        };
        let events = to_events(batch).unwrap();
        assert_eq!(events[0].get("temp"), Some(&Value::Float(1.0)));
        assert_eq!(events[0].get("temp#text"), Some(&Value::Text("hot".into())));
        assert_eq!(events[1].fields.len(), 1);
        assert_eq!(events[1].get("temp"), Some(&Value::Text("cold".into())));
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
            builder.push(&mut e, None);
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
    fn a_field_that_changes_type_keeps_every_event_whole() {
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
            builder.push(&mut e, None);
        }
        let mut ctx = Context::new(StateStore::Memory(Default::default()));
        let out = rt::each_event(&mut Hot {}, builder.finish(), &mut ctx).unwrap();
        assert!(ctx.rejected.is_empty());
        let names: Vec<&str> = out.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["note", "temp", "temp#text"]);
        let back = super::to_events(out).unwrap();
        let mut hot = events[1].clone();
        hot.set("temp", "hot");
        assert_eq!(back, vec![events[0].clone(), hot, events[2].clone()]);
        assert_eq!(back[1].get("temp"), Some(&Value::Text("hot".into())));
    }
}
