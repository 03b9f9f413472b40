//! Read-through caches for the hot read paths.
//!
//! Alias reads are served from memory. Every alias change — written here, or announced
//! by another replica through the store's notifications — clears the cache and bumps a
//! generation; a read that raced a change (generation moved while it read the store) is
//! not cached. A short TTL bounds staleness should a notification be lost. Writes never
//! use the cache: compare-and-swap always checks the store, so no update is lost.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        RwLock,
    },
    time::{Duration, Instant},
};

use uuid::Uuid;

use super::alias::Alias;

const TTL: Duration = Duration::from_secs(2);
const MAX_ENTRIES: usize = 10_000;

#[derive(Default)]
pub struct AliasCache {
    generation: AtomicU64,
    entries: RwLock<HashMap<String, (Option<Alias>, Instant)>>,
}

impl AliasCache {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// `Some(value)` when cached and fresh (`Some(None)`: known not to exist).
    pub fn get(&self, alias: &str) -> Option<Option<Alias>> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .get(alias)
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(a, _)| a.clone())
    }

    /// Caches what was read at `generation`, unless an invalidation happened since.
    pub fn put(&self, alias: &str, value: Option<Alias>, generation: u64) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if self.generation() != generation {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(alias.to_string(), (value, Instant::now()));
    }

    pub fn invalidate(&self) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }
}

/// Runs known to be SUCCEEDED with an artifact. Terminal runs never change status and
/// their artifact is fixed, so membership never has to be revoked.
#[derive(Default)]
pub struct ServableRuns(RwLock<HashSet<Uuid>>);

impl ServableRuns {
    pub fn contains(&self, id: &Uuid) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    pub fn insert(&self, id: Uuid) {
        let mut set = self.0.write().unwrap_or_else(|p| p.into_inner());
        if set.len() >= MAX_ENTRIES {
            set.clear();
        }
        set.insert(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alias(rev: i64) -> Alias {
        Alias {
            alias: "a".into(),
            run_id: Uuid::nil(),
            description: String::new(),
            revision: rev,
            update_time: 0,
            updated_by: String::new(),
        }
    }

    #[test]
    fn a_read_that_raced_a_change_is_not_cached() {
        let c = AliasCache::default();
        let g = c.generation();
        c.invalidate(); // a write committed while the read was in flight
        c.put("a", Some(alias(1)), g);
        assert_eq!(c.get("a"), None);
        let g = c.generation();
        c.put("a", Some(alias(2)), g);
        assert_eq!(c.get("a"), Some(Some(alias(2))));
        c.invalidate();
        assert_eq!(c.get("a"), None);
    }
}
