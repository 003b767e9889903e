//! Run an operator natively, in plain `cargo test`, through the same batch conversion the
//! component uses, with keyed state in memory.

use crate::batch::BatchBuilder;
use crate::context::{Context, Level, StateStore};
use crate::event::{Event, Message, Value};
use crate::rt;
use crate::{Aggregate, Decode, Transform};

/// An operator configured from TOML, as a pipeline config would configure it.
pub struct Harness<T> {
    op: T,
    ctx: Context,
}

impl<T> std::fmt::Debug for Harness<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

/// What one batch produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Events emitted, in order.
    pub events: Vec<Event>,
    /// Inputs sent to the dead-letter output: their index in the batch, and why.
    pub rejected: Vec<(usize, String)>,
    /// Log lines written while processing the batch.
    pub logs: Vec<(Level, String)>,
}

fn json_config(config_toml: &str) -> Result<String, String> {
    let table: toml::Table = toml::from_str(config_toml).map_err(|e| e.to_string())?;
    serde_json::to_string(&table).map_err(|e| e.to_string())
}

fn config_error(e: crate::wit::Error) -> String {
    match e {
        crate::wit::Error::Config(m)
        | crate::wit::Error::BadInput(m)
        | crate::wit::Error::Internal(m) => m,
    }
}

impl<T> Harness<T> {
    fn new(config_toml: &str, init: fn(&mut T) -> Result<(), String>) -> Result<Self, String>
    where
        T: serde::de::DeserializeOwned,
    {
        let op = rt::configure(&json_config(config_toml)?, init).map_err(config_error)?;
        Ok(Harness {
            op,
            ctx: Context::new(StateStore::Memory(Default::default())),
        })
    }

    /// The operator itself.
    pub fn operator(&mut self) -> &mut T {
        &mut self.op
    }

    /// Stores raw bytes for `key` under `name`, as an earlier version of the operator (or an
    /// earlier batch) would have.
    pub fn set_state(&mut self, key: &str, name: &str, value: &[u8]) {
        if let StateStore::Memory(map) = &mut self.ctx.state {
            map.insert((key.to_owned(), name.to_owned()), value.to_vec());
        }
    }

    /// The state stored for `key` under `name`, as raw bytes.
    pub fn state(&self, key: &str, name: &str) -> Option<Vec<u8>> {
        match &self.ctx.state {
            StateStore::Memory(map) => map.get(&(key.to_owned(), name.to_owned())).cloned(),
            StateStore::Host => None,
        }
    }

    fn outcome(&mut self, output: Result<rt::Output, rt::Error>) -> Outcome {
        let logs = std::mem::take(&mut self.ctx.logs);
        match output {
            Ok(out) => Outcome {
                events: rt::events_of(out.events),
                rejected: out
                    .rejected
                    .into_iter()
                    .map(|r| (r.index as usize, r.reason))
                    .collect(),
                logs,
            },
            Err(e) => panic!("the batch failed as a whole: {}", config_error(e)),
        }
    }
}

impl<T: Transform> Harness<T> {
    /// Configures a transformer from the TOML of its step's `config` table.
    pub fn transform(config_toml: &str) -> Result<Self, String> {
        Self::new(config_toml, T::init)
    }

    /// Runs one batch of events through the transformer.
    pub fn run(&mut self, events: Vec<Event>) -> Outcome {
        let mut builder = BatchBuilder::with_capacity(events.len());
        for mut e in events {
            builder.push(&mut e, None);
        }
        let out = rt::transform_with(&mut self.op, builder.finish(), &mut self.ctx);
        self.outcome(out)
    }
}

impl<T: Decode> Harness<T> {
    /// Configures a decoder from the TOML of its step's `config` table.
    pub fn decoder(config_toml: &str) -> Result<Self, String> {
        Self::new(config_toml, T::init)
    }

    /// Decodes one batch of messages.
    pub fn decode(&mut self, messages: Vec<Message>) -> Outcome {
        let messages = messages
            .into_iter()
            .map(|m| rt::WitMessage {
                topic: m.topic,
                payload: m.payload,
                received_ms: m.received_ms,
            })
            .collect();
        let out = rt::decode_with(&mut self.op, messages, &mut self.ctx);
        self.outcome(out)
    }
}

impl<T: Aggregate> Harness<T> {
    /// Configures an aggregator from the TOML of its step's `config` table.
    pub fn aggregator(config_toml: &str) -> Result<Self, String> {
        Self::new(config_toml, T::init)
    }

    /// Aggregates `events` as one window: creates an accumulator, adds the events, finishes.
    pub fn aggregate(&mut self, events: Vec<Event>) -> Vec<(String, Value)> {
        let acc = self.accumulate(events);
        self.finish(acc)
    }

    /// Aggregates two parts of a window separately and merges them, as session windows do.
    pub fn aggregate_merged(&mut self, a: Vec<Event>, b: Vec<Event>) -> Vec<(String, Value)> {
        let a = self.accumulate(a);
        let b = self.accumulate(b);
        let merged = rt::merge(&mut self.op, a, b).map_err(config_error).unwrap();
        self.finish(merged)
    }

    fn accumulate(&mut self, events: Vec<Event>) -> Vec<u8> {
        let group = vec![0; events.len()];
        let mut builder = BatchBuilder::with_capacity(events.len());
        for mut e in events {
            builder.push(&mut e, None);
        }
        let acc = rt::create::<T>();
        let mut accs = rt::add(&mut self.op, vec![acc], builder.finish(), group)
            .map_err(config_error)
            .unwrap();
        accs.remove(0)
    }

    fn finish(&mut self, acc: Vec<u8>) -> Vec<(String, Value)> {
        let mut out = rt::finish(&mut self.op, vec![acc])
            .map_err(config_error)
            .unwrap();
        out.remove(0)
            .into_iter()
            .map(|f| (f.name, rt::from_wit_value(f.value)))
            .collect()
    }
}
