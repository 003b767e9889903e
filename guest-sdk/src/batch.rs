//! Conversion between the columnar batches that cross the boundary and the events an operator
//! sees one at a time.

use std::collections::HashMap;
use std::rc::Rc;

use crate::event::{Event, Str, Value};
use crate::wit::{Batch, Column, Rejected, Values};

/// Turns a columnar batch into events. Fails, naming the problem, when the batch is malformed
/// (lists of different lengths, a key index out of range).
pub(crate) fn to_events(batch: Batch) -> Result<Vec<Event>, String> {
    let Batch {
        keys,
        key,
        ts_ms,
        columns,
    } = batch;
    let n = key.len();
    if ts_ms.len() != n {
        return Err(format!(
            "batch has {n} keys but {} timestamps",
            ts_ms.len()
        ));
    }
    let keys: Vec<Str> = keys.into_iter().map(Str::from).collect();
    let mut events = Vec::with_capacity(n);
    for (k, ts) in key.into_iter().zip(ts_ms) {
        let key = keys
            .get(k as usize)
            .ok_or_else(|| format!("key index {k} is out of range ({} keys)", keys.len()))?;
        events.push(Event {
            key: key.clone(),
            ts_ms: ts,
            fields: Vec::with_capacity(columns.len()),
        });
    }
    for Column { name, values } in columns {
        let name: Str = Str::from(name);
        let len = values_len(&values);
        if len != n {
            return Err(format!("column {name:?} has {len} values for {n} events"));
        }
        match values {
            Values::Float(v) => fill(&mut events, &name, v, Value::Float),
            Values::Int(v) => fill(&mut events, &name, v, Value::Int),
            Values::Text(v) => fill(&mut events, &name, v, Value::Text),
            Values::Flag(v) => fill(&mut events, &name, v, Value::Flag),
        }
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

fn fill<T>(events: &mut [Event], name: &Str, values: Vec<Option<T>>, wrap: fn(T) -> Value) {
    for (event, value) in events.iter_mut().zip(values) {
        if let Some(value) = value {
            event.fields.push((name.clone(), wrap(value)));
        }
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
    keys: Vec<String>,
    key_index: HashMap<Str, u32>,
    last_key: Option<(Str, u32)>,
    key: Vec<u32>,
    ts_ms: Vec<i64>,
    columns: Vec<(Str, ColumnBuf)>,
}

impl BatchBuilder {
    pub(crate) fn with_capacity(events: usize) -> Self {
        BatchBuilder {
            keys: Vec::new(),
            key_index: HashMap::new(),
            last_key: None,
            key: Vec::with_capacity(events),
            ts_ms: Vec::with_capacity(events),
            columns: Vec::new(),
        }
    }

    fn key_id(&mut self, key: &Str) -> u32 {
        if let Some((last, id)) = &self.last_key
            && (Rc::ptr_eq(last, key) || last == key)
        {
            return *id;
        }
        let id = match self.key_index.get(key) {
            Some(&id) => id,
            None => {
                let id = self.keys.len() as u32;
                self.keys.push(key.to_string());
                self.key_index.insert(key.clone(), id);
                id
            }
        };
        self.last_key = Some((key.clone(), id));
        id
    }

    /// Adds one event. An event whose field has a different type than the same field of earlier
    /// events in the batch is refused with the reason (the batch is left as it was).
    pub(crate) fn push(&mut self, event: Event) -> Result<(), String> {
        let row = self.key.len();
        for col in self.columns.iter_mut() {
            col.1.push_none();
        }
        let mut failed = None;
        for (name, value) in event.fields {
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
        let id = self.key_id(&event.key);
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
            keys: self.keys,
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

    /// Adds what one input produced; a failure rejects input `index` with the reason.
    pub(crate) fn add(&mut self, index: usize, result: Result<(), String>, events: Vec<Event>) {
        if let Err(reason) = result {
            self.rejected.push(Rejected {
                index: index as u32,
                reason,
            });
            return;
        }
        for event in events {
            if let Err(reason) = self.builder.push(event) {
                self.rejected.push(Rejected {
                    index: index as u32,
                    reason,
                });
            }
        }
    }
}
