//! Events and values as an operator sees them: one event at a time, with named fields.

use std::fmt;
use std::rc::Rc;

/// A shared, immutable string: event keys and field names. Cloning one is a reference-count
/// increment, so copying a key or a field name from one event to another costs no allocation.
pub type Str = Rc<str>;

/// One value of an event.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Float(f64),
    Int(i64),
    Text(String),
    Flag(bool),
}

impl Value {
    /// The value as a number, if it is one (`Int` is widened to `f64`).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Float(x) => Some(x),
            Value::Int(x) => Some(x as f64),
            _ => None,
        }
    }

    /// The value as text, if it is text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a flag, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Flag(b) => Some(b),
            _ => None,
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::Float(_) => "float",
            Value::Int(_) => "int",
            Value::Text(_) => "text",
            Value::Flag(_) => "flag",
        }
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Value::Float(x)
    }
}
impl From<i64> for Value {
    fn from(x: i64) -> Self {
        Value::Int(x)
    }
}
impl From<bool> for Value {
    fn from(x: bool) -> Self {
        Value::Flag(x)
    }
}
impl From<String> for Value {
    fn from(x: String) -> Self {
        Value::Text(x)
    }
}
impl From<&str> for Value {
    fn from(x: &str) -> Self {
        Value::Text(x.to_owned())
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Float(x) => write!(f, "{x}"),
            Value::Int(x) => write!(f, "{x}"),
            Value::Text(s) => write!(f, "{s:?}"),
            Value::Flag(b) => write!(f, "{b}"),
        }
    }
}

/// One event: a key (the sensor, the location, ...), an event time, and named values.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// What the event is about, e.g. a sensor id.
    pub key: Str,
    /// When it happened, in milliseconds since the Unix epoch.
    pub ts_ms: i64,
    pub(crate) fields: Vec<(Str, Value)>,
}

impl Event {
    /// A new event without fields.
    pub fn new(key: impl Into<Str>, ts_ms: i64) -> Self {
        Event {
            key: key.into(),
            ts_ms,
            fields: Vec::new(),
        }
    }

    /// This event with `name` set to `value` (builder style).
    pub fn with(mut self, name: impl AsRef<str> + Into<Str>, value: impl Into<Value>) -> Self {
        self.set(name, value);
        self
    }

    /// The value of field `name`.
    #[inline]
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields
            .iter()
            .find(|(n, _)| same_name(n, name))
            .map(|(_, v)| v)
    }

    /// The value of field `name` as a number (`Int` widened), if it is a number.
    #[inline]
    pub fn f64(&self, name: &str) -> Option<f64> {
        self.get(name).and_then(Value::as_f64)
    }

    /// The value of field `name` as text, if it is text.
    #[inline]
    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }

    /// Sets field `name`, replacing any value it had. Replacing a field's value allocates
    /// nothing; a new field's name is allocated once unless it is passed as a [`Str`].
    #[inline]
    pub fn set(&mut self, name: impl AsRef<str> + Into<Str>, value: impl Into<Value>) {
        let value = value.into();
        match self
            .fields
            .iter_mut()
            .find(|(n, _)| same_name(n, name.as_ref()))
        {
            Some((_, v)) => *v = value,
            None => self.fields.push((name.into(), value)),
        }
    }

    /// Removes field `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<Value> {
        let at = self.fields.iter().position(|(n, _)| same_name(n, name))?;
        Some(self.fields.remove(at).1)
    }

    /// The fields, in the order they were set.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.fields.iter().map(|(n, v)| (&**n, v))
    }
}

/// Whether two field names are the same: often they are the same text (a [`Str`] handed on), which
/// needs no comparison of the bytes.
#[inline]
fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && (std::ptr::eq(a.as_ptr(), b.as_ptr()) || same_short(a, b))
}

/// Whether two byte strings of one length are equal. Field names are short: a loop in place
/// costs less than a call to `memcmp`, which is what `==` on slices becomes.
#[inline]
fn same_short(a: &[u8], b: &[u8]) -> bool {
    if a.len() > 16 {
        return a == b;
    }
    let mut same = true;
    for (x, y) in a.iter().zip(b) {
        same &= x == y;
    }
    same
}

/// A raw message, as it reached weir (input of a decoder).
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    /// When weir received it, in milliseconds since the Unix epoch.
    pub received_ms: i64,
}

impl Message {
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>, received_ms: i64) -> Self {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            received_ms,
        }
    }
}
