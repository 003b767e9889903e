//! What an operator can do besides looking at its input: emit events, keep keyed state, log.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::event::{Event, Str};

/// Log levels, as weir's log knows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Where keyed state lives: in weir (inside a component) or in memory (native tests).
#[derive(Debug)]
pub(crate) enum StateStore {
    Host,
    Memory(BTreeMap<(String, String), Vec<u8>>),
}

impl StateStore {
    pub(crate) fn for_target() -> Self {
        if cfg!(target_arch = "wasm32") {
            StateStore::Host
        } else {
            StateStore::Memory(BTreeMap::new())
        }
    }

    fn get(&self, key: &Str, name: &str) -> Option<Vec<u8>> {
        match self {
            StateStore::Host => crate::host::state_get(crate::keys::id(key), name),
            StateStore::Memory(map) => map.get(&(key.to_string(), name.to_owned())).cloned(),
        }
    }

    fn set(&mut self, key: &Str, name: &str, value: &[u8]) {
        match self {
            StateStore::Host => crate::host::state_set(crate::keys::id(key), name, value),
            StateStore::Memory(map) => {
                map.insert((key.to_string(), name.to_owned()), value.to_vec());
            }
        }
    }

    fn remove(&mut self, key: &Str, name: &str) {
        match self {
            StateStore::Host => crate::host::state_remove(crate::keys::id(key), name),
            StateStore::Memory(map) => {
                map.remove(&(key.to_string(), name.to_owned()));
            }
        }
    }
}

/// Passed to an operator for each input: collects what it emits and gives access to keyed state
/// and the log.
#[derive(Debug)]
pub struct Context {
    pub(crate) emitted: Vec<Event>,
    pub(crate) rejected: Vec<crate::wit::Rejected>,
    pub(crate) state: StateStore,
    pub(crate) logs: Vec<(Level, String)>,
}

impl Context {
    pub(crate) fn new(state: StateStore) -> Self {
        Context {
            emitted: Vec::new(),
            rejected: Vec::new(),
            state,
            logs: Vec::new(),
        }
    }

    /// Sends `event` on to the next step. Call it once to pass an event through (map), not at all
    /// to drop it (filter), or several times (flat-map, or a detector's alerts).
    #[inline]
    pub fn emit(&mut self, event: Event) {
        self.emitted.push(event);
    }

    /// Sends input `index` of the batch to the dead-letter output with `reason` (for
    /// [`crate::Transform::process_batch`]; `process` rejects an event by returning an error).
    pub fn reject(&mut self, index: usize, reason: impl Into<String>) {
        self.rejected.push(crate::wit::Rejected {
            index: index as u32,
            reason: reason.into(),
        });
    }

    /// Keyed state kept by weir for `key`: it survives restarts, crashes and hot swaps of the
    /// operator, and is rolled back with a batch that fails.
    pub fn state(&mut self, key: &Str) -> KeyState<'_> {
        KeyState {
            store: &mut self.state,
            key: key.clone(),
        }
    }

    /// Writes a line to weir's log, tagged with this operator's name.
    pub fn log(&mut self, level: Level, message: impl Into<String>) {
        let message = message.into();
        if cfg!(target_arch = "wasm32") {
            crate::host::log(level, &message);
        } else {
            self.logs.push((level, message));
        }
    }
}

/// State stored by weir for one key. Values are stored as JSON, so an operator rewritten in
/// another language can read them.
#[derive(Debug)]
pub struct KeyState<'a> {
    store: &'a mut StateStore,
    key: Str,
}

impl KeyState<'_> {
    /// The value stored under `name`. A value that no longer deserializes as `T` (the operator
    /// changed its state layout) reads as absent.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        let bytes = self.store.get(&self.key, name)?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Stores `value` under `name`.
    pub fn set<T: Serialize>(&mut self, name: &str, value: &T) {
        let bytes = serde_json::to_vec(value).expect("state values serialize to JSON");
        self.store.set(&self.key, name, &bytes);
    }

    /// Removes what is stored under `name`.
    pub fn remove(&mut self, name: &str) {
        self.store.remove(&self.key, name);
    }

    /// The raw bytes stored under `name`.
    pub fn get_bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.store.get(&self.key, name)
    }

    /// Stores raw bytes under `name`.
    pub fn set_bytes(&mut self, name: &str, value: &[u8]) {
        self.store.set(&self.key, name, value);
    }
}

/// The keyed state of one key as a [`crate::Migrate`] sees it: the values an earlier version
/// stored, to be replaced by this version's. Values are JSON, as [`KeyState`] stores them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoredState {
    key: Str,
    entries: BTreeMap<String, Vec<u8>>,
}

impl StoredState {
    /// The state of `key`, made of (name, value) pairs.
    pub fn new(key: impl Into<Str>, entries: impl IntoIterator<Item = (String, Vec<u8>)>) -> Self {
        StoredState {
            key: key.into(),
            entries: entries.into_iter().collect(),
        }
    }

    /// The key this state belongs to.
    pub fn key(&self) -> &Str {
        &self.key
    }

    /// The value stored under `name`, if it deserializes as `T`.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        serde_json::from_slice(self.entries.get(name)?).ok()
    }

    /// Stores `value` under `name`.
    pub fn set<T: Serialize>(&mut self, name: &str, value: &T) {
        let bytes = serde_json::to_vec(value).expect("state values serialize to JSON");
        self.entries.insert(name.to_owned(), bytes);
    }

    /// Removes what is stored under `name`.
    pub fn remove(&mut self, name: &str) {
        self.entries.remove(name);
    }

    /// The raw bytes stored under `name`.
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        self.entries.get(name).map(Vec::as_slice)
    }

    /// Stores raw bytes under `name`.
    pub fn set_bytes(&mut self, name: &str, value: &[u8]) {
        self.entries.insert(name.to_owned(), value.to_vec());
    }

    /// The (name, value) pairs, in name order.
    pub fn into_entries(self) -> Vec<(String, Vec<u8>)> {
        self.entries.into_iter().collect()
    }
}
