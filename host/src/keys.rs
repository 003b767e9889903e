//! Keys, interned: every key weir sees (a sensor id, a location) gets a small id, so a batch
//! crosses into a plugin with no string per event, and grouping by key compares integers.
//!
//! Ids are never reused while weir runs, and nothing stored or emitted depends on them: state,
//! checkpoints, windows and output ids all use the key's text. That lets the table forget keys:
//! [`sweep`] (called by the engine and by `weir replay` between two inputs, never during a batch)
//! drops the keys nobody interned since the previous sweep, once the table has grown to twice
//! its size after that sweep. A forgotten key seen again gets a new id. Plugins cache ids, so a
//! sweep that forgets anything starts a new [`generation`]: every plugin instance is rebuilt
//! before its next call (as after a trap), and an id is stable for the life of an instance, which
//! is what the contract promises. Memory follows the keys in use, not every key ever seen.
//!
//! A key that is too long (see the pipelines' `max_key_bytes`) is refused where it is made; a
//! plugin asking for such a key gets [`REFUSED`], and the events carrying it become dead letters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};

/// An interned key.
pub type KeyId = u32;

/// The id a plugin gets for a key weir refuses to intern (too long, or no ids left): events with
/// it are dead-lettered one by one. Never assigned to a key.
pub const REFUSED: KeyId = KeyId::MAX;

/// Below this many keys the table is never swept.
const SWEEP_FLOOR: usize = 4096;

struct Entry {
    id: KeyId,
    /// The sweep round in which the key was last interned.
    used: AtomicU64,
}

#[derive(Default)]
struct Table {
    ids: HashMap<Arc<str>, Entry>,
    names: HashMap<KeyId, Arc<str>>,
    next: KeyId,
    /// The current sweep round.
    round: u64,
    /// The table's size after the last sweep.
    kept: usize,
}

impl Table {
    fn lookup(&self, name: &str) -> Option<KeyId> {
        let entry = self.ids.get(name)?;
        entry.used.store(self.round, Ordering::Relaxed);
        Some(entry.id)
    }

    fn insert(&mut self, name: &str) -> KeyId {
        if let Some(id) = self.lookup(name) {
            return id;
        }
        let id = self.next;
        if id == REFUSED {
            return REFUSED;
        }
        self.next += 1;
        let name: Arc<str> = Arc::from(name);
        self.names.insert(id, name.clone());
        self.ids.insert(
            name,
            Entry {
                id,
                used: AtomicU64::new(self.round),
            },
        );
        id
    }

    fn sweep_due(&self) -> bool {
        self.names.len() >= SWEEP_FLOOR.max(self.kept * 2)
    }

    /// Forgets every key not interned in the current round, and starts the next round.
    fn sweep(&mut self) -> Vec<KeyId> {
        let round = self.round;
        let mut forgotten = Vec::new();
        self.ids.retain(|_, entry| {
            let keep = entry.used.load(Ordering::Relaxed) == round;
            if !keep {
                forgotten.push(entry.id);
            }
            keep
        });
        for id in &forgotten {
            self.names.remove(id);
        }
        self.round += 1;
        self.kept = self.names.len();
        self.ids.shrink_to_fit();
        self.names.shrink_to_fit();
        forgotten
    }
}

static TABLE: LazyLock<RwLock<Table>> = LazyLock::new(RwLock::default);

/// Bumped by every sweep that forgets a key: ids handed out before may be gone.
static GENERATION: AtomicU64 = AtomicU64::new(0);

fn read() -> std::sync::RwLockReadGuard<'static, Table> {
    TABLE.read().unwrap_or_else(|e| e.into_inner())
}

fn write() -> std::sync::RwLockWriteGuard<'static, Table> {
    TABLE.write().unwrap_or_else(|e| e.into_inner())
}

/// The id of `name`, assigned on first use; [`REFUSED`] once every id has been handed out (over
/// four billion distinct keys since weir started).
pub fn intern(name: &str) -> KeyId {
    if let Some(id) = read().lookup(name) {
        return id;
    }
    write().insert(name)
}

/// The text of key `id`, if it is known (assigned and not forgotten since).
pub fn name(id: KeyId) -> Option<Arc<str>> {
    read().names.get(&id).cloned()
}

/// Whether `id` names a key now.
pub fn is_assigned(id: KeyId) -> bool {
    read().names.contains_key(&id)
}

/// The first of `ids` that names no key now, if any.
pub fn first_unknown(ids: &[KeyId]) -> Option<KeyId> {
    let table = read();
    ids.iter().copied().find(|id| !table.names.contains_key(id))
}

/// Keys in the table now.
pub fn len() -> usize {
    read().names.len()
}

/// The current generation: it changes when a sweep forgets keys.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// If the table has grown to twice its size after the last sweep (and past a floor), forgets
/// every key not interned since that sweep. Returns the ids forgotten (empty if none), so that
/// holders of ids can drop theirs. Call it only between two batches.
pub fn sweep() -> Vec<KeyId> {
    if !read().sweep_due() {
        return Vec::new();
    }
    let mut table = write();
    if !table.sweep_due() {
        return Vec::new();
    }
    let forgotten = table.sweep();
    if !forgotten.is_empty() {
        GENERATION.fetch_add(1, Ordering::AcqRel);
        tracing::debug!(
            forgotten = forgotten.len(),
            kept = table.kept,
            "forgot keys not seen since the last sweep"
        );
    }
    forgotten
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
        assert_eq!(name(REFUSED), None);
        assert!(!is_assigned(REFUSED));
    }

    #[test]
    fn a_sweep_forgets_keys_not_seen_since_the_last_one_and_never_reuses_ids() {
        // A table of its own: the process-wide one is shared by every test running.
        let mut t = Table::default();
        let old: Vec<KeyId> = (0..SWEEP_FLOOR * 2)
            .map(|i| t.insert(&format!("old/{i}")))
            .collect();
        let kept = t.insert("kept");
        assert!(t.sweep_due());
        // The keys were all interned in this round: the first sweep only closes it.
        assert_eq!(t.sweep(), Vec::<KeyId>::new());
        assert!(!t.sweep_due(), "no sweep before the table doubles again");
        assert_eq!(t.lookup("kept"), Some(kept), "a key in use keeps its id");
        let forgotten = t.sweep();
        assert_eq!(forgotten.len(), old.len());
        assert!(
            old.iter()
                .all(|id| forgotten.contains(id) && !t.names.contains_key(id))
        );
        assert_eq!(t.names.len(), 1);
        let again = t.insert("old/0");
        assert!(
            !old.contains(&again) && again != kept,
            "a forgotten key gets a new id"
        );
        assert_eq!(t.names.get(&again).map(|n| &**n), Some("old/0"));
    }

    #[test]
    fn ids_run_out_into_refused() {
        let mut t = Table {
            next: REFUSED - 1,
            ..Table::default()
        };
        assert_eq!(t.insert("last"), REFUSED - 1);
        assert_eq!(t.insert("one too many"), REFUSED);
        assert_eq!(t.insert("last"), REFUSED - 1);
    }
}
