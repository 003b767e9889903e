//! Keys by id. weir interns every key and hands out ids that stay the same for the life of an
//! instance (weir starts a fresh instance when it forgets keys), so this cache of id ↔ text is
//! valid for as long as it exists: each key's text crosses the boundary once, not once per batch.
//! Natively (in tests) the ids are assigned here.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::event::Str;

/// Slots of the direct-mapped cache in front of [`Cache::names`].
const RECENT: usize = 1024;

#[derive(Default)]
struct Cache {
    /// The text of recently seen ids, by `id % RECENT`: a batch's keys are found here without
    /// hashing.
    recent: Vec<Option<(u32, Str)>>,
    names: HashMap<u32, Str, BuildHasherDefault<IntHasher>>,
    ids: HashMap<Str, u32>,
    /// Ids by the address of the cached `Str`: events carry the very `Str`s handed out by
    /// [`name`], which this finds without hashing their text. The cache keeps every `Str` it
    /// hands out alive, so an address is never reused for another key.
    by_address: HashMap<usize, u32, BuildHasherDefault<IntHasher>>,
}

fn address(name: &Str) -> usize {
    std::rc::Rc::as_ptr(name) as *const u8 as usize
}

/// Hashes an integer key (an id or an address) by spreading it with a multiplication.
#[derive(Default)]
pub(crate) struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::default();
}

fn remember(cache: &mut Cache, id: u32, name: Str) {
    cache.by_address.insert(address(&name), id);
    cache.names.insert(id, name.clone());
    cache.ids.insert(name, id);
}

impl Cache {
    /// The text of key `id`, through [`Cache::recent`] (which must not be empty).
    #[inline]
    fn name(&mut self, id: u32) -> Str {
        let slot = id as usize % RECENT;
        match &self.recent[slot] {
            Some((at, name)) if *at == id => name.clone(),
            _ => self.name_slow(id, slot),
        }
    }

    #[cold]
    fn name_slow(&mut self, id: u32, slot: usize) -> Str {
        let name = match self.names.get(&id) {
            Some(name) => name.clone(),
            None => {
                let name: Str = Str::from(crate::host::key_name(id));
                remember(self, id, name.clone());
                name
            }
        };
        self.recent[slot] = Some((id, name.clone()));
        name
    }

    fn ready(&mut self) -> &mut Self {
        if self.recent.is_empty() {
            self.recent.resize(RECENT, None);
        }
        self
    }
}

/// The text of key `id`.
pub(crate) fn name(id: u32) -> Str {
    CACHE.with(|c| c.borrow_mut().ready().name(id))
}

/// The text of each key of `ids`, in order.
pub(crate) fn names(ids: &[u32]) -> Vec<Str> {
    CACHE.with(|c| {
        let mut cache = c.borrow_mut();
        let cache = cache.ready();
        let mut names = Vec::with_capacity(ids.len());
        names.extend(ids.iter().map(|&id| cache.name(id)));
        names
    })
}

/// The id of key `name`.
pub(crate) fn id(name: &Str) -> u32 {
    CACHE.with(|c| {
        let mut cache = c.borrow_mut();
        if let Some(&id) = cache.by_address.get(&address(name)) {
            return id;
        }
        if let Some(&id) = cache.ids.get(name) {
            return id;
        }
        let id = if cfg!(target_arch = "wasm32") {
            crate::host::key_id(name)
        } else {
            cache.names.len() as u32
        };
        remember(&mut cache, id, name.clone());
        id
    })
}
