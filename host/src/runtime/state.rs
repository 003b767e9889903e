//! Keyed state that weir keeps for an operator (the `state` import).
//!
//! State belongs to the pipeline step, not to a plugin instance: it moves to a rebuilt instance
//! after a trap and to the new version after a hot swap. Writes made during a call are pending
//! until the call succeeds; a call that fails leaves the state as it was before it.

use std::collections::{BTreeMap, HashMap, HashSet};

/// State per key, then per name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyedState {
    committed: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// Writes of the call in progress: `None` is a removal.
    pending: HashMap<String, HashMap<String, Option<Vec<u8>>>>,
    /// Keys whose committed state changed since [`KeyedState::track_changes`], while a copy
    /// is migrated for a swap.
    changed: Option<HashSet<String>>,
}

impl KeyedState {
    pub fn get(&self, key: &str, name: &str) -> Option<Vec<u8>> {
        if let Some(write) = self.pending.get(key).and_then(|names| names.get(name)) {
            return write.clone();
        }
        self.committed.get(key)?.get(name).cloned()
    }

    pub fn set(&mut self, key: &str, name: &str, value: Vec<u8>) {
        self.pending_for(key).insert(name.to_owned(), Some(value));
    }

    pub fn remove(&mut self, key: &str, name: &str) {
        self.pending_for(key).insert(name.to_owned(), None);
    }

    fn pending_for(&mut self, key: &str) -> &mut HashMap<String, Option<Vec<u8>>> {
        if !self.pending.contains_key(key) {
            self.pending.insert(key.to_owned(), HashMap::new());
        }
        self.pending.get_mut(key).expect("inserted above")
    }

    /// Makes the writes of the last call permanent.
    pub fn commit(&mut self) {
        for (key, names) in self.pending.drain() {
            if let Some(changed) = &mut self.changed {
                changed.insert(key.clone());
            }
            for (name, write) in names {
                match write {
                    Some(value) => {
                        self.committed
                            .entry(key.clone())
                            .or_default()
                            .insert(name, value);
                    }
                    None => {
                        if let Some(entry) = self.committed.get_mut(&key) {
                            entry.remove(&name);
                            if entry.is_empty() {
                                self.committed.remove(&key);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Forgets the writes of the last call.
    pub fn rollback(&mut self) {
        self.pending.clear();
    }

    /// Committed entries as (key, name, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &[u8])> {
        self.committed.iter().flat_map(|(key, names)| {
            names
                .iter()
                .map(move |(name, value)| (key.as_str(), name.as_str(), value.as_slice()))
        })
    }

    /// State made of committed entries (key, name, value), as [`KeyedState::iter`] gives them.
    pub fn from_entries(entries: impl IntoIterator<Item = (String, String, Vec<u8>)>) -> Self {
        let mut state = KeyedState::default();
        for (key, name, value) in entries {
            state.committed.entry(key).or_default().insert(name, value);
        }
        state
    }

    /// A copy of the committed state, and from now on a note of every key whose state changes,
    /// until [`KeyedState::changed_since_copy`]: a swap migrates the copy off the data path,
    /// then only the keys that changed meanwhile.
    pub fn copy_and_track_changes(&mut self) -> KeyedState {
        self.changed = Some(HashSet::new());
        KeyedState {
            committed: self.committed.clone(),
            ..KeyedState::default()
        }
    }

    /// The keys whose state changed since the last copy (all of them if no copy was taken);
    /// stops noting changes.
    pub fn changed_since_copy(&mut self) -> Option<HashSet<String>> {
        self.changed.take()
    }

    /// Stops noting changes (a swap was given up).
    pub fn stop_tracking(&mut self) {
        self.changed = None;
    }

    /// The committed state of `key`: (name, value) pairs.
    pub fn entries(&self, key: &str) -> Vec<(String, Vec<u8>)> {
        self.committed.get(key).map_or_else(Vec::new, |names| {
            names.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
        })
    }

    /// The keys with committed state, in order.
    pub fn key_names(&self) -> impl Iterator<Item = &str> {
        self.committed.keys().map(String::as_str)
    }

    /// Replaces the committed state of `key` (none: removes it).
    pub fn replace_key(&mut self, key: &str, entries: Vec<(String, Vec<u8>)>) {
        if entries.is_empty() {
            self.committed.remove(key);
        } else {
            self.committed
                .insert(key.to_owned(), entries.into_iter().collect());
        }
    }

    /// Number of keys with committed state.
    pub fn keys(&self) -> usize {
        self.committed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_visible_at_once_and_kept_only_when_committed() {
        let mut s = KeyedState::default();
        s.set("k", "n", b"1".to_vec());
        assert_eq!(s.get("k", "n"), Some(b"1".to_vec()));
        s.commit();
        s.set("k", "n", b"2".to_vec());
        s.remove("k", "other");
        assert_eq!(s.get("k", "n"), Some(b"2".to_vec()));
        s.rollback();
        assert_eq!(s.get("k", "n"), Some(b"1".to_vec()));
        s.remove("k", "n");
        assert_eq!(s.get("k", "n"), None);
        s.commit();
        assert_eq!(s.keys(), 0);
    }
}
