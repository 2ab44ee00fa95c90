//! Reads the API repeats on every request, kept for a few seconds.
//!
//! `POST /v1/shares` reads each target connection to validate the text for its platform before
//! anything is written; at thousands of requests a second that read was a transaction of its own
//! per request. What it needs (the connection's tenant, platform and account) does not change
//! within seconds, and what does (removal) is checked again inside the write's own transaction,
//! so a stale entry can never let a share onto a removed connection. Only what was found is kept;
//! a map with an expiry is all this needs, so no cache crate is pulled in for it.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Entries kept at most; past this the expired ones go, and if that is not enough, all of them.
const CAPACITY: usize = 10_000;

#[derive(Debug)]
pub(crate) struct Recent<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> Recent<K, V> {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().expect("recent reads lock");
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    pub(crate) fn put(&self, key: K, value: V) {
        let mut entries = self.entries.lock().expect("recent reads lock");
        if entries.len() >= CAPACITY {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(key, (Instant::now(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_for_its_ttl_only() {
        let recent = Recent::new(Duration::from_millis(50));
        recent.put("a", 1);
        assert_eq!(recent.get(&"a"), Some(1));
        assert_eq!(recent.get(&"b"), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(recent.get(&"a"), None);
    }

    #[test]
    fn it_never_grows_past_its_capacity() {
        let recent = Recent::new(Duration::from_secs(60));
        for i in 0..CAPACITY + 5 {
            recent.put(i, i);
        }
        assert!(recent.entries.lock().unwrap().len() <= CAPACITY);
        assert_eq!(recent.get(&(CAPACITY + 4)), Some(CAPACITY + 4));
    }
}
