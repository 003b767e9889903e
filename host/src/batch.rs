//! Batches of events as they flow through weir: columnar, with interned keys
//! ([`crate::keys`]). The type is the contract's own (`weir:operator/types.batch`), so passing a
//! batch to a plugin copies it straight into the plugin's memory with no conversion.

use std::sync::Arc;

use crate::keys;

pub use crate::runtime::bindings::{Batch, Column, Value, Values};

impl Batch {
    /// An empty batch.
    pub fn empty() -> Self {
        Batch {
            key: Vec::new(),
            ts_ms: Vec::new(),
            columns: Vec::new(),
        }
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.key.is_empty()
    }

    /// The key of event `i`.
    pub fn key_of(&self, i: usize) -> Arc<str> {
        // Batches that passed [`Batch::validate`] carry known ids only; a refused or unknown id
        // (in a dead letter) is named rather than trusted.
        keys::name(self.key[i]).unwrap_or_else(|| match self.key[i] {
            keys::REFUSED => Arc::from("#refused"),
            id => Arc::from(format!("#unknown-{id}")),
        })
    }

    /// The column called `name`.
    pub fn column(&self, name: &str) -> Option<&Values> {
        self.columns
            .iter()
            .find(|c| c.name == name)
            .map(|c| &c.values)
    }

    /// Checks that the batch is well formed: every per-event list as long as the batch, every
    /// key id assigned, column names distinct.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.len();
        if self.ts_ms.len() != n {
            return Err(format!("{n} keys but {} timestamps", self.ts_ms.len()));
        }
        if let Some(id) = keys::first_unknown(&self.key) {
            return Err(format!("key id {id} is not a key weir handed out"));
        }
        for (i, c) in self.columns.iter().enumerate() {
            if c.values.len() != n {
                return Err(format!(
                    "column {:?} has {} values for {n} events",
                    c.name,
                    c.values.len()
                ));
            }
            if self.columns[..i].iter().any(|d| d.name == c.name) {
                return Err(format!("column {:?} appears twice", c.name));
            }
        }
        Ok(())
    }

    /// The events at `indices`, in that order, as a new batch.
    pub fn take(&self, indices: &[usize]) -> Batch {
        Batch {
            key: indices.iter().map(|&i| self.key[i]).collect(),
            ts_ms: indices.iter().map(|&i| self.ts_ms[i]).collect(),
            columns: self
                .columns
                .iter()
                .map(|c| Column {
                    name: c.name.clone(),
                    values: c.values.take(indices),
                })
                .collect(),
        }
    }

    /// Splits the batch into parts of at most `max` events.
    pub fn split(self, max: usize) -> Vec<Batch> {
        let max = max.max(1);
        if self.len() <= max {
            return vec![self];
        }
        (0..self.len())
            .step_by(max)
            .map(|start| {
                let end = (start + max).min(self.len());
                self.take(&(start..end).collect::<Vec<_>>())
            })
            .collect()
    }

    /// Appends `other`'s events. A column missing on one side is filled with `None`; columns of
    /// the two sides join by the typing rule (see [`Batch::column_for`]), so nothing is dropped.
    pub fn append(&mut self, other: Batch) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() && self.columns.is_empty() {
            *self = other;
            return;
        }
        let before = self.len();
        self.key.extend_from_slice(&other.key);
        self.ts_ms.extend_from_slice(&other.ts_ms);
        let added = other.len();
        for col in other.columns {
            // A suffixed column of `other` joins by its field's plain name.
            let name = match split_kind(&col.name) {
                Some((base, kind)) if kind == col.values.kind() => base.to_owned(),
                _ => col.name,
            };
            let at = self.column_for(&name, col.values.kind(), before);
            self.columns[at].values.extend(col.values);
        }
        let total = before + added;
        for c in &mut self.columns {
            c.values.pad_to(total);
        }
    }

    /// The column that values of `kind` for field `name` go into, made (with `rows` missing
    /// entries) if there is none. This is the one typing rule of the contract (WIT `column`):
    /// ints and floats of a field share a column, which is float once one of its values is; the
    /// kind a field shows first keeps its plain name; values of another kind go into a column
    /// `name#kind` (`rh#text`; a number column named by its own type, `#int` or `#float`).
    fn column_for(&mut self, name: &str, kind: &str, rows: usize) -> usize {
        let columns = &mut self.columns;
        match columns.iter().position(|c| c.name == name) {
            None => {
                columns.push(Column {
                    name: name.to_owned(),
                    values: Values::empty_of(kind, rows),
                });
                return columns.len() - 1;
            }
            Some(at) if columns[at].values.accept(kind) => return at,
            Some(_) => {}
        }
        let number = matches!(kind, "int" | "float");
        let secondary = columns.iter().position(|c| {
            split_kind(&c.name).is_some_and(|(base, k)| {
                base == name && (k == kind || number && matches!(k, "int" | "float"))
            })
        });
        match secondary {
            Some(at) => {
                let c = &mut columns[at];
                c.values.accept(kind);
                if c.values.kind() == "float" && c.name.ends_with("#int") {
                    c.name = format!("{name}#float");
                }
                at
            }
            None => {
                columns.push(Column {
                    name: format!("{name}#{kind}"),
                    values: Values::empty_of(kind, rows),
                });
                columns.len() - 1
            }
        }
    }

    /// The fields of event `i`, as an event sees them: a value of a column `name#kind` appears
    /// under `name` (unless the event also has a value in column `name` itself, which only a
    /// hand-built batch can give it: then it keeps the suffixed name).
    pub fn fields(&self, i: usize) -> impl Iterator<Item = (&str, Value)> + '_ {
        self.columns.iter().filter_map(move |c| {
            let value = c.values.get(i)?;
            let name = match split_kind(&c.name) {
                Some((base, kind))
                    if kind == c.values.kind()
                        && self.column(base).is_none_or(|v| v.get(i).is_none()) =>
                {
                    base
                }
                _ => c.name.as_str(),
            };
            Some((name, value))
        })
    }

    /// Rough size in bytes, as the output limit counts it.
    pub fn approx_bytes(&self) -> usize {
        let cols: usize = self
            .columns
            .iter()
            .map(|c| c.name.len() + c.values.approx_bytes())
            .sum();
        self.len() * 12 + cols
    }
}

/// `rh#text` → `("rh", "text")`: a column holding the values of field `rh` whose kind differs
/// from the kind of its column `rh`. The endings `#float`, `#int`, `#text` and `#flag` are
/// reserved for this.
pub fn split_kind(name: &str) -> Option<(&str, &str)> {
    let (base, kind) = name.rsplit_once('#')?;
    matches!(kind, "float" | "int" | "text" | "flag").then_some((base, kind))
}

impl Values {
    /// Number of entries.
    pub fn len(&self) -> usize {
        match self {
            Values::Float(v) => v.len(),
            Values::Int(v) => v.len(),
            Values::Text(v) => v.len(),
            Values::Flag(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The type name: `float`, `int`, `text` or `flag`.
    pub fn kind(&self) -> &'static str {
        match self {
            Values::Float(_) => "float",
            Values::Int(_) => "int",
            Values::Text(_) => "text",
            Values::Flag(_) => "flag",
        }
    }

    /// Entry `i` as a value, if present.
    pub fn get(&self, i: usize) -> Option<Value> {
        match self {
            Values::Float(v) => v[i].map(Value::Float),
            Values::Int(v) => v[i].map(Value::Int),
            Values::Text(v) => v[i].clone().map(Value::Text),
            Values::Flag(v) => v[i].map(Value::Flag),
        }
    }

    fn take(&self, indices: &[usize]) -> Values {
        fn pick<T: Clone>(v: &[Option<T>], indices: &[usize]) -> Vec<Option<T>> {
            indices.iter().map(|&i| v[i].clone()).collect()
        }
        match self {
            Values::Float(v) => Values::Float(pick(v, indices)),
            Values::Int(v) => Values::Int(pick(v, indices)),
            Values::Text(v) => Values::Text(pick(v, indices)),
            Values::Flag(v) => Values::Flag(pick(v, indices)),
        }
    }

    /// A column of type `kind` with `n` missing entries.
    fn empty_of(kind: &str, n: usize) -> Values {
        match kind {
            "float" => Values::Float(vec![None; n]),
            "int" => Values::Int(vec![None; n]),
            "text" => Values::Text(vec![None; n]),
            _ => Values::Flag(vec![None; n]),
        }
    }

    /// Sets entry `i` to `value`, which this column [`Values::accept`]ed.
    fn set(&mut self, i: usize, value: Value) {
        match (self, value) {
            (Values::Float(v), Value::Float(x)) => v[i] = Some(x),
            (Values::Float(v), Value::Int(x)) => v[i] = Some(x as f64),
            (Values::Int(v), Value::Int(x)) => v[i] = Some(x),
            (Values::Text(v), Value::Text(x)) => v[i] = Some(x),
            (Values::Flag(v), Value::Flag(x)) => v[i] = Some(x),
            (v, x) => unreachable!("set a {} entry to a {}", v.kind(), x.kind()),
        }
    }

    /// Whether values of `kind` can join this column: the same type, or ints and floats (the
    /// column becomes float if it was int).
    fn accept(&mut self, kind: &str) -> bool {
        match (self.kind(), kind) {
            (a, b) if a == b => true,
            ("float", "int") => true,
            ("int", "float") => {
                if let Values::Int(v) = self {
                    *self = Values::Float(v.iter().map(|x| x.map(|x| x as f64)).collect());
                }
                true
            }
            _ => false,
        }
    }

    /// Appends `other`, which this column [`Values::accept`]ed.
    fn extend(&mut self, other: Values) {
        match (self, other) {
            (Values::Float(a), Values::Float(b)) => a.extend(b),
            (Values::Float(a), Values::Int(b)) => {
                a.extend(b.into_iter().map(|x| x.map(|x| x as f64)))
            }
            (Values::Int(a), Values::Int(b)) => a.extend(b),
            (Values::Text(a), Values::Text(b)) => a.extend(b),
            (Values::Flag(a), Values::Flag(b)) => a.extend(b),
            (a, b) => unreachable!("extend {} with {}", a.kind(), b.kind()),
        }
    }

    fn pad_to(&mut self, n: usize) {
        match self {
            Values::Float(v) => v.resize(n, None),
            Values::Int(v) => v.resize(n, None),
            Values::Text(v) => v.resize(n, None),
            Values::Flag(v) => v.resize(n, None),
        }
    }

    fn approx_bytes(&self) -> usize {
        match self {
            Values::Float(v) => v.len() * 9,
            Values::Int(v) => v.len() * 9,
            Values::Text(v) => v
                .iter()
                .map(|s| 1 + s.as_ref().map_or(0, |s| s.len()))
                .sum(),
            Values::Flag(v) => v.len() * 2,
        }
    }
}

/// Builds a batch one event at a time.
#[derive(Debug, Default)]
pub struct Builder {
    batch: Batch,
}

impl Default for Batch {
    fn default() -> Self {
        Batch::empty()
    }
}

impl Builder {
    pub fn new() -> Self {
        Builder::default()
    }

    /// Adds an event. Its fields go into columns by the typing rule (see [`Batch::append`]):
    /// ints and floats of a field share a column; a field of another kind than the same field
    /// in earlier events goes into `name#kind`, so nothing is lost.
    pub fn push<'a>(
        &mut self,
        key: &str,
        ts_ms: i64,
        fields: impl IntoIterator<Item = (&'a str, Value)>,
    ) {
        let row = self.batch.len();
        let id = keys::intern(key);
        self.batch.key.push(id);
        self.batch.ts_ms.push(ts_ms);
        for (name, value) in fields {
            let at = self.batch.column_for(name, value.kind(), row + 1);
            let values = &mut self.batch.columns[at].values;
            values.pad_to(row + 1);
            values.set(row, value);
        }
    }

    pub fn len(&self) -> usize {
        self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    pub fn finish(mut self) -> Batch {
        let n = self.batch.len();
        for c in &mut self.batch.columns {
            c.values.pad_to(n);
        }
        self.batch
    }
}

impl Value {
    /// The type name: `float`, `int`, `text` or `flag`.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Float(_) => "float",
            Value::Int(_) => "int",
            Value::Text(_) => "text",
            Value::Flag(_) => "flag",
        }
    }

    /// As JSON.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Float(x) => serde_json::json!(x),
            Value::Int(x) => serde_json::json!(x),
            Value::Text(x) => serde_json::json!(x),
            Value::Flag(x) => serde_json::json!(x),
        }
    }

    /// From a JSON scalar; `None` for null, arrays and objects.
    pub fn from_json(v: &serde_json::Value) -> Option<Value> {
        match v {
            serde_json::Value::Bool(b) => Some(Value::Flag(*b)),
            serde_json::Value::Number(n) => Some(match n.as_i64() {
                Some(i) if !n.is_f64() => Value::Int(i),
                _ => Value::Float(n.as_f64()?),
            }),
            serde_json::Value::String(s) => Some(Value::Text(s.clone())),
            _ => None,
        }
    }
}

impl Batch {
    /// Event `i` as a JSON object: `{"key", "ts_ms", "fields": {...}}`.
    pub fn event_json(&self, i: usize) -> serde_json::Value {
        let fields: serde_json::Map<String, serde_json::Value> = self
            .fields(i)
            .map(|(name, value)| (name.to_owned(), value.to_json()))
            .collect();
        serde_json::json!({ "key": &*self.key_of(i), "ts_ms": self.ts_ms[i], "fields": fields })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyId;

    fn batch(keys: &[&str], temps: &[Option<f64>]) -> Batch {
        let mut b = Batch::empty();
        for (i, k) in keys.iter().enumerate() {
            b.key.push(keys::intern(k));
            b.ts_ms.push(i as i64);
        }
        b.columns.push(Column {
            name: "temp".into(),
            values: Values::Float(temps.to_vec()),
        });
        b
    }

    #[test]
    fn builder_keeps_fields_of_a_clashing_type_apart() {
        let mut b = Builder::new();
        b.push("s1", 1, [("temp", Value::Float(20.5))]);
        b.push(
            "s2",
            2,
            [("temp", Value::Text("n/a".into())), ("rh", Value::Int(40))],
        );
        b.push("s1", 3, [("temp", Value::Float(21.0))]);
        let batch = b.finish();
        batch.validate().unwrap();
        assert_eq!(&*batch.key_of(1), "s2");
        assert_eq!(
            batch.column("temp").unwrap().get(2),
            Some(Value::Float(21.0))
        );
        assert_eq!(
            batch.column("temp#text").unwrap().get(1),
            Some(Value::Text("n/a".into()))
        );
        assert_eq!(batch.column("rh").unwrap().get(0), None);
        assert_eq!(
            batch.event_json(1),
            serde_json::json!({"key": "s2", "ts_ms": 2, "fields": {"temp": "n/a", "rh": 40}})
        );
    }

    /// Builds a batch of events of `(field, value)`s, then reads it back as events.
    fn by_the_rule(events: &[&[(&str, Value)]]) -> (Batch, Vec<Vec<(String, Value)>>) {
        let mut b = Builder::new();
        for (i, fields) in events.iter().enumerate() {
            b.push("s1", i as i64, fields.iter().cloned());
        }
        let batch = b.finish();
        batch.validate().unwrap();
        let back = (0..batch.len())
            .map(|i| batch.fields(i).map(|(n, v)| (n.to_owned(), v)).collect())
            .collect();
        (batch, back)
    }

    fn columns(batch: &Batch) -> Vec<(&str, &Values)> {
        batch
            .columns
            .iter()
            .map(|c| (c.name.as_str(), &c.values))
            .collect()
    }

    /// The typing rule's examples, as the WIT states them (the SDKs' tests check the same).
    #[test]
    fn the_typing_rule_keeps_every_value_and_reads_back_under_the_field_name() {
        use Value::{Flag, Float, Int, Text};
        let (batch, back) = by_the_rule(&[&[("rh", Int(60))], &[("rh", Float(60.5))]]);
        assert_eq!(
            columns(&batch),
            [("rh", &Values::Float(vec![Some(60.0), Some(60.5)]))]
        );
        assert_eq!(back[0], [("rh".to_owned(), Float(60.0))]);

        let text = || Text("n/a".into());
        let (batch, back) =
            by_the_rule(&[&[("rh", Int(60))], &[("rh", text())], &[("rh", Int(61))]]);
        assert_eq!(
            columns(&batch),
            [
                ("rh", &Values::Int(vec![Some(60), None, Some(61)])),
                (
                    "rh#text",
                    &Values::Text(vec![None, Some("n/a".into()), None])
                ),
            ]
        );
        assert_eq!(back[1], [("rh".to_owned(), text())]);
        assert_eq!(back[2], [("rh".to_owned(), Int(61))]);

        let (batch, back) = by_the_rule(&[
            &[("rh", text())],
            &[("rh", Int(60))],
            &[("rh", Float(60.5))],
        ]);
        assert_eq!(
            columns(&batch),
            [
                ("rh", &Values::Text(vec![Some("n/a".into()), None, None])),
                (
                    "rh#float",
                    &Values::Float(vec![None, Some(60.0), Some(60.5)])
                ),
            ]
        );
        assert_eq!(back[1], [("rh".to_owned(), Float(60.0))]);

        let (batch, back) = by_the_rule(&[&[("ok", Flag(true))], &[("ok", Int(1))]]);
        assert_eq!(
            columns(&batch),
            [
                ("ok", &Values::Flag(vec![Some(true), None])),
                ("ok#int", &Values::Int(vec![None, Some(1)])),
            ]
        );
        assert_eq!(back[1], [("ok".to_owned(), Int(1))]);
    }

    #[test]
    fn a_suffixed_value_beside_its_plain_field_keeps_its_suffix() {
        // Only a hand-built batch has both for one event; nothing is merged or lost.
        let mut b = batch(&["a", "b"], &[Some(1.0), None]);
        b.columns.push(Column {
            name: "temp#text".into(),
            values: Values::Text(vec![Some("hot".into()), Some("cold".into())]),
        });
        let fields: Vec<_> = b.fields(0).collect();
        assert_eq!(
            fields,
            [
                ("temp", Value::Float(1.0)),
                ("temp#text", Value::Text("hot".into()))
            ]
        );
        assert_eq!(
            b.fields(1).collect::<Vec<_>>(),
            [("temp", Value::Text("cold".into()))]
        );
    }

    #[test]
    fn ints_and_floats_in_one_field_become_floats() {
        let mut b = Builder::new();
        b.push("s1", 1, [("rh", Value::Int(60))]);
        b.push("s1", 2, [("rh", Value::Float(60.5))]);
        b.push("s1", 3, [("rh", Value::Int(61))]);
        let mut batch = b.finish();
        let mut more = Builder::new();
        more.push("s2", 4, [("rh", Value::Int(7))]);
        batch.append(more.finish());
        batch.validate().unwrap();
        assert_eq!(batch.columns.len(), 1);
        assert_eq!(
            batch.column("rh"),
            Some(&Values::Float(vec![
                Some(60.0),
                Some(60.5),
                Some(61.0),
                Some(7.0)
            ]))
        );
    }

    #[test]
    fn take_split_and_append_keep_every_event_and_its_key() {
        let b = batch(
            &["a", "b", "a", "c"],
            &[Some(1.0), None, Some(3.0), Some(4.0)],
        );
        let parts = b.clone().split(3);
        assert_eq!(parts.len(), 2);
        let mut joined = Batch::empty();
        for p in parts {
            p.validate().unwrap();
            joined.append(p);
        }
        joined.validate().unwrap();
        assert_eq!(joined.len(), 4);
        for i in 0..4 {
            assert_eq!(joined.key_of(i), b.key_of(i));
            assert_eq!(joined.ts_ms[i], b.ts_ms[i]);
            assert_eq!(
                joined.column("temp").unwrap().get(i),
                b.column("temp").unwrap().get(i)
            );
        }
        let picked = b.take(&[3, 0]);
        assert_eq!((&*picked.key_of(0), &*picked.key_of(1)), ("c", "a"));
        assert_eq!(
            picked.column("temp").unwrap().get(0),
            Some(Value::Float(4.0))
        );
    }

    #[test]
    fn append_keeps_columns_of_different_types_apart() {
        let mut a = batch(&["a"], &[Some(1.0)]);
        let mut b = batch(&["b"], &[None]);
        b.columns[0].values = Values::Text(vec![Some("hot".into())]);
        a.append(b);
        a.validate().unwrap();
        assert_eq!(a.column("temp").unwrap().get(1), None);
        assert_eq!(
            a.column("temp#text").unwrap().get(1),
            Some(Value::Text("hot".into()))
        );
        // A suffixed column joins its kind's column; a widened `#int` becomes `#float`.
        let mut c = batch(&["c"], &[None]);
        c.columns[0].values = Values::Int(vec![Some(3)]);
        a.append(c);
        let mut d = batch(&["d"], &[None]);
        d.columns[0].name = "temp#text".into();
        d.columns[0].values = Values::Text(vec![Some("warm".into())]);
        a.append(d);
        a.validate().unwrap();
        assert_eq!(a.columns.len(), 2);
        assert_eq!(a.column("temp").unwrap().get(2), Some(Value::Float(3.0)));
        assert_eq!(
            a.column("temp#text"),
            Some(&Values::Text(vec![
                None,
                Some("hot".into()),
                None,
                Some("warm".into())
            ]))
        );
        let mut e = Batch::empty();
        e.append(batch(&["e"], &[None]));
        e.columns[0].values = Values::Text(vec![Some("x".into())]);
        for v in [Values::Int(vec![Some(1)]), Values::Float(vec![Some(1.5)])] {
            let mut f = batch(&["f"], &[None]);
            f.columns[0].values = v;
            e.append(f);
        }
        assert_eq!(
            e.column("temp#float"),
            Some(&Values::Float(vec![None, Some(1.0), Some(1.5)]))
        );
        assert!(e.column("temp#int").is_none());
    }

    #[test]
    fn validate_names_what_is_wrong() {
        let mut b = batch(&["a", "b"], &[Some(1.0), Some(2.0)]);
        b.key[1] = KeyId::MAX;
        assert_eq!(
            b.validate().unwrap_err(),
            "key id 4294967295 is not a key weir handed out"
        );
        let mut b = batch(&["a", "b"], &[Some(1.0)]);
        assert_eq!(
            b.validate().unwrap_err(),
            "column \"temp\" has 1 values for 2 events"
        );
        b.columns.clear();
        b.ts_ms.pop();
        assert_eq!(b.validate().unwrap_err(), "2 keys but 1 timestamps");
    }
}
