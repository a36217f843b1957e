//! A bounded map in two generations, for the codec's per-peer caches.
//!
//! Lookups promote an entry from the old generation to the young one; when
//! the young generation holds half the capacity, the old one is dropped
//! whole and the young one becomes old. O(1) per operation, never more than
//! `capacity` entries, and an entry used at least once per half-capacity
//! insertions is never dropped.

use std::collections::HashMap;
use std::hash::Hash;

pub(super) struct Generations<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
    half: usize,
}

impl<K: Hash + Eq + Copy, V> Generations<K, V> {
    pub(super) fn new(capacity: usize) -> Self {
        Generations {
            young: HashMap::new(),
            old: HashMap::new(),
            half: (capacity / 2).max(1),
        }
    }

    pub(super) fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        if !self.young.contains_key(k) {
            let v = self.old.remove(k)?;
            self.insert(*k, v);
        }
        self.young.get_mut(k)
    }

    pub(super) fn insert(&mut self, k: K, v: V) {
        if self.young.len() >= self.half && !self.young.contains_key(&k) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(k, v);
    }

    pub(super) fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.young.values().chain(self.old.values())
    }

    /// Bytes held on the heap (by capacity).
    pub(super) fn heap_bytes(&self) -> usize {
        let per = std::mem::size_of::<(K, V)>() + 1;
        (self.young.capacity() + self.old.capacity()) * per
    }
}
