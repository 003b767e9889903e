//! The glue behind the export macros: one call per batch in, one call per event to the operator.
//! Also used by [`crate::testing`], so native tests run exactly this code.

use std::cell::RefCell;
use std::thread::LocalKey;

use crate::batch::{Emitted, Rows, to_events};
use crate::context::StoredState;
use crate::context::{Context, StateStore};
use crate::event::{Message, Value};
use crate::{Aggregate, Decode, Migrate, Transform};

pub use crate::bindings::aggregator::exports::weir::operator::aggregate::Guest as AggregateGuest;
pub use crate::bindings::decoder::exports::weir::operator::decode::Guest as DecodeGuest;
pub use crate::bindings::transformer::exports::weir::operator::transform::Guest as TransformGuest;
pub use crate::wit::{Batch, Error, Field, Message as WitMessage, Output};

type Slot<T> = LocalKey<RefCell<Option<T>>>;

/// Deserializes the operator from its JSON config and runs its `init`.
pub fn configure<T: serde::de::DeserializeOwned>(
    config: &str,
    init: fn(&mut T) -> Result<(), String>,
) -> Result<T, Error> {
    let config = if config.trim().is_empty() {
        "{}"
    } else {
        config
    };
    let mut op: T = serde_json::from_str(config).map_err(|e| Error::Config(e.to_string()))?;
    init(&mut op).map_err(Error::Config)?;
    Ok(op)
}

pub fn init<T: serde::de::DeserializeOwned>(
    slot: &'static Slot<T>,
    config: &str,
    init: fn(&mut T) -> Result<(), String>,
) -> Result<(), Error> {
    let op = configure(config, init)?;
    slot.with(|s| *s.borrow_mut() = Some(op));
    Ok(())
}

pub fn with_operator<T, R>(
    slot: &'static Slot<T>,
    f: impl FnOnce(&mut T) -> Result<R, Error>,
) -> Result<R, Error> {
    slot.with(|s| match s.borrow_mut().as_mut() {
        Some(op) => f(op),
        None => Err(Error::Internal("called before init".into())),
    })
}

pub fn transform<T: Transform>(op: &mut T, events: Batch) -> Result<Output, Error> {
    let mut ctx = Context::new(StateStore::for_target());
    transform_with(op, events, &mut ctx)
}

pub(crate) fn transform_with<T: Transform>(
    op: &mut T,
    events: Batch,
    ctx: &mut Context,
) -> Result<Output, Error> {
    ctx.rejected.clear();
    let events = op.process_batch(events, ctx).map_err(Error::BadInput)?;
    Ok(Output {
        events,
        rejected: std::mem::take(&mut ctx.rejected),
    })
}

/// The default [`Transform::process_batch`]: the batch one event at a time through
/// [`Transform::process`]. An operator that overrides `process_batch` can fall back on it.
pub fn each_event<T: Transform>(
    op: &mut T,
    events: Batch,
    ctx: &mut Context,
) -> Result<Batch, String> {
    let mut rows = Rows::new(events)?;
    let mut out = Emitted::new(rows.len());
    let width = rows.width();
    let mut spare = Vec::with_capacity(width);
    let mut index = 0;
    while let Some((event, hint)) = rows.next_event(spare) {
        let result = op.process(event, ctx);
        spare = out.add(index, result, &mut ctx.emitted, Some(hint));
        if spare.capacity() == 0 {
            // The event was not emitted: its fields went with it.
            spare = Vec::with_capacity(width);
        }
        index += 1;
    }
    ctx.rejected.append(&mut out.rejected);
    Ok(out.builder.finish())
}

pub fn decode<T: Decode>(op: &mut T, messages: Vec<WitMessage>) -> Result<Output, Error> {
    let mut ctx = Context::new(StateStore::for_target());
    decode_with(op, messages, &mut ctx)
}

pub(crate) fn decode_with<T: Decode>(
    op: &mut T,
    messages: Vec<WitMessage>,
    ctx: &mut Context,
) -> Result<Output, Error> {
    let mut out = Emitted::new(messages.len());
    for (index, m) in messages.into_iter().enumerate() {
        let message = Message {
            topic: m.topic,
            payload: m.payload,
            received_ms: m.received_ms,
        };
        let result = op.decode(message, ctx);
        out.add(index, result, &mut ctx.emitted, None);
    }
    Ok(Output {
        events: out.builder.finish(),
        rejected: out.rejected,
    })
}

fn load_acc<T: Aggregate>(bytes: &[u8]) -> Result<T::Acc, Error> {
    read_acc(bytes).map_err(Error::BadInput)
}

fn save_acc<T: Aggregate>(acc: &T::Acc) -> Vec<u8> {
    write_acc(acc)
}

pub(crate) fn read_acc<A: serde::de::DeserializeOwned + Default>(
    bytes: &[u8],
) -> Result<A, String> {
    if bytes.is_empty() {
        return Ok(A::default());
    }
    postcard::from_bytes(bytes).map_err(|e| format!("accumulator does not decode: {e}"))
}

pub(crate) fn write_acc<A: serde::Serialize>(acc: &A) -> Vec<u8> {
    postcard::to_allocvec(acc).expect("accumulators serialize")
}

/// One key's stored state as `migrate` passes it: the key's id and its (name, value) pairs.
pub type StoredEntries = (u32, Vec<(String, Vec<u8>)>);

/// Converts keyed state written in `old_layout`, key by key, with the operator's [`Migrate`].
pub fn migrate_state<T: Migrate>(
    op: &mut T,
    old_layout: &str,
    states: Vec<StoredEntries>,
) -> Result<Vec<StoredEntries>, Error> {
    states
        .into_iter()
        .map(|(id, entries)| {
            let mut state = StoredState::new(crate::keys::name(id), entries);
            op.migrate_state(old_layout, &mut state)
                .map_err(|e| Error::BadInput(format!("key {}: {e}", state.key())))?;
            Ok((id, state.into_entries()))
        })
        .collect()
}

/// Converts accumulators written in `old_layout`, one for one.
pub fn migrate_accumulators<T: Migrate>(
    op: &mut T,
    old_layout: &str,
    accumulators: Vec<Vec<u8>>,
) -> Result<Vec<Vec<u8>>, Error> {
    accumulators
        .iter()
        .map(|acc| {
            op.migrate_accumulator(old_layout, acc)
                .map_err(Error::BadInput)
        })
        .collect()
}

pub fn create<T: Aggregate>() -> Vec<u8> {
    save_acc::<T>(&T::Acc::default())
}

pub fn add<T: Aggregate>(
    op: &mut T,
    accumulators: Vec<Vec<u8>>,
    events: Batch,
    group: Vec<u32>,
) -> Result<Vec<Vec<u8>>, Error> {
    let mut accs = accumulators
        .iter()
        .map(|a| load_acc::<T>(a))
        .collect::<Result<Vec<_>, _>>()?;
    let events = to_events(events).map_err(Error::BadInput)?;
    if group.len() != events.len() {
        return Err(Error::BadInput(format!(
            "{} group indexes for {} events",
            group.len(),
            events.len()
        )));
    }
    for (event, g) in events.iter().zip(group) {
        let acc = accs.get_mut(g as usize).ok_or_else(|| {
            Error::BadInput(format!(
                "group {g} is out of range ({} accumulators)",
                accumulators.len()
            ))
        })?;
        op.add(acc, event);
    }
    Ok(accs.iter().map(save_acc::<T>).collect())
}

pub fn merge<T: Aggregate>(op: &mut T, a: Vec<u8>, b: Vec<u8>) -> Result<Vec<u8>, Error> {
    let mut a = load_acc::<T>(&a)?;
    let b = load_acc::<T>(&b)?;
    op.merge(&mut a, b);
    Ok(save_acc::<T>(&a))
}

pub fn finish<T: Aggregate>(
    op: &mut T,
    accumulators: Vec<Vec<u8>>,
) -> Result<Vec<Vec<Field>>, Error> {
    accumulators
        .iter()
        .map(|a| {
            let acc = load_acc::<T>(a)?;
            Ok(op
                .finish(&acc)
                .into_iter()
                .map(|(name, value)| Field {
                    name,
                    value: to_wit_value(value),
                })
                .collect())
        })
        .collect()
}

pub(crate) fn to_wit_value(v: Value) -> crate::wit::Value {
    match v {
        Value::Float(x) => crate::wit::Value::Float(x),
        Value::Int(x) => crate::wit::Value::Int(x),
        Value::Text(x) => crate::wit::Value::Text(x),
        Value::Flag(x) => crate::wit::Value::Flag(x),
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn from_wit_value(v: crate::wit::Value) -> Value {
    match v {
        crate::wit::Value::Float(x) => Value::Float(x),
        crate::wit::Value::Int(x) => Value::Int(x),
        crate::wit::Value::Text(x) => Value::Text(x),
        crate::wit::Value::Flag(x) => Value::Flag(x),
    }
}

/// Events back from a batch (used by the test harness).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn events_of(batch: Batch) -> Vec<crate::event::Event> {
    to_events(batch).expect("batches built by this crate are well formed")
}
