//! The bounded map behind every access cache: two generations, lookups
//! promote; a full generation becomes the old one and the older is dropped.

use std::collections::HashMap;
use std::hash::Hash;

use super::CACHE_ENTRIES;

/// A map bounded in entries: two generations, lookups promote.
#[derive(Debug)]
pub(super) struct Bounded<K, V> {
    current: HashMap<K, V>,
    previous: HashMap<K, V>,
}

impl<K: Hash + Eq + Clone, V: Clone> Bounded<K, V> {
    pub(super) fn new() -> Self {
        Bounded {
            current: HashMap::new(),
            previous: HashMap::new(),
        }
    }

    pub(super) fn get(&mut self, key: &K) -> Option<V> {
        if let Some(v) = self.current.get(key) {
            return Some(v.clone());
        }
        let v = self.previous.remove(key)?;
        self.insert(key.clone(), v.clone());
        Some(v)
    }

    pub(super) fn insert(&mut self, key: K, value: V) {
        if self.current.len() >= CACHE_ENTRIES && !self.current.contains_key(&key) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, value);
    }

    pub(super) fn remove(&mut self, key: &K) {
        self.current.remove(key);
        self.previous.remove(key);
    }

    /// Drops every entry whose key `drop` picks.
    pub(super) fn remove_where(&mut self, mut drop: impl FnMut(&K) -> bool) {
        self.current.retain(|k, _| !drop(k));
        self.previous.retain(|k, _| !drop(k));
    }

    pub(super) fn clear(&mut self) {
        self.current.clear();
        self.previous.clear();
    }

    pub(super) fn contains(&self, key: &K) -> bool {
        self.current.contains_key(key) || self.previous.contains_key(key)
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &K> {
        self.current.keys().chain(self.previous.keys())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_keeps_two_generations() {
        let mut map: Bounded<u32, ()> = Bounded::new();
        // Two full generations, then one more key: the first generation
        // is dropped.
        for k in 0..=(CACHE_ENTRIES as u32 * 2) {
            map.insert(k, ());
        }
        assert!(map.current.len() <= CACHE_ENTRIES && map.previous.len() <= CACHE_ENTRIES);
        // The oldest generation is gone, the newer ones are found.
        assert!(map.get(&0).is_none());
        assert!(map.get(&(CACHE_ENTRIES as u32 * 2 - 1)).is_some());
        map.remove(&(CACHE_ENTRIES as u32 * 2 - 1));
        assert!(map.get(&(CACHE_ENTRIES as u32 * 2 - 1)).is_none());
        map.remove_where(|k| k % 2 == 0);
        assert!(map.keys().all(|k| k % 2 == 1));
        map.clear();
        assert_eq!(map.keys().count(), 0);
    }
}
