//! Keys, interned: every key weir sees (a sensor id, a location) gets a small id, the same in
//! every batch and for every operator for as long as the process runs. Batches carry ids, so a
//! batch crosses into a plugin with no string per event, and grouping by key compares integers.
//!
//! Ids are not stable across restarts: anything stored (state, checkpoints, output ids) uses the
//! key's text. The table only grows; its size is the number of distinct keys seen.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

/// An interned key.
pub type KeyId = u32;

#[derive(Default)]
struct Table {
    names: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, KeyId>,
}

static TABLE: LazyLock<RwLock<Table>> = LazyLock::new(RwLock::default);

/// The id of `name`, assigned on first use.
pub fn intern(name: &str) -> KeyId {
    if let Some(&id) = TABLE.read().expect("key table lock").ids.get(name) {
        return id;
    }
    let mut table = TABLE.write().expect("key table lock");
    if let Some(&id) = table.ids.get(name) {
        return id;
    }
    let id = KeyId::try_from(table.names.len()).expect("fewer than 2^32 distinct keys");
    let name: Arc<str> = Arc::from(name);
    table.names.push(name.clone());
    table.ids.insert(name, id);
    id
}

/// The text of key `id`, if it was ever assigned.
pub fn name(id: KeyId) -> Option<Arc<str>> {
    TABLE
        .read()
        .expect("key table lock")
        .names
        .get(id as usize)
        .cloned()
}

/// Whether `id` was ever assigned.
pub fn is_assigned(id: KeyId) -> bool {
    (id as usize) < TABLE.read().expect("key table lock").names.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_name_gets_the_same_id_and_ids_give_back_names() {
        let a = intern("keys-test/a");
        let b = intern("keys-test/b");
        assert_ne!(a, b);
        assert_eq!(intern("keys-test/a"), a);
        assert_eq!(name(b).as_deref(), Some("keys-test/b"));
        assert!(is_assigned(a));
        assert_eq!(name(KeyId::MAX), None);
    }
}
