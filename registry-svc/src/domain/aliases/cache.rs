//! What the alias read path keeps in memory: alias values while every change is known
//! here, and the runs known to be servable.
//!
//! Alias reads are served from memory while every change is known here: always with a
//! single writer (embedded SQLite), and on Postgres while the store's change listener is
//! connected. Every alias change — written here, or announced by another replica — clears
//! the cache and bumps a generation; a read that raced a change (generation moved while it
//! read the store) is not cached. While the listener is down nothing is served from memory,
//! and it is cleared again when the listener is back (changes in between went unheard).
//! Another replica's change is thus seen here as soon as its announcement arrives (PostgreSQL
//! sends it at commit); a short TTL bounds staleness should one be late. Writes never use
//! the cache: compare-and-swap always checks the store, so no update is lost.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        RwLock,
    },
    time::{Duration, Instant},
};

use uuid::Uuid;

use super::Alias;

const TTL: Duration = Duration::from_secs(2);
const MAX_ENTRIES: usize = 10_000;

pub struct AliasCache {
    generation: AtomicU64,
    /// Whether every change is known here, so that entries can be trusted.
    live: AtomicBool,
    entries: RwLock<HashMap<String, (Option<Alias>, Instant)>>,
}

impl AliasCache {
    pub fn new(live: bool) -> Self {
        Self {
            generation: AtomicU64::new(0),
            live: AtomicBool::new(live),
            entries: RwLock::default(),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// `Some(value)` when cached and fresh (`Some(None)`: known not to exist).
    pub fn get(&self, alias: &str) -> Option<Option<Alias>> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .get(alias)
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(a, _)| a.clone())
    }

    /// Caches what was read at `generation`, unless an invalidation happened since.
    pub fn put(&self, alias: &str, value: Option<Alias>, generation: u64) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if self.generation() != generation || !self.live.load(Ordering::Acquire) {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(alias.to_string(), (value, Instant::now()));
    }

    pub fn invalidate(&self) {
        self.clear_and(|| ());
    }

    /// Starts (`true`) or stops trusting entries, clearing them either way: what was
    /// cached before may have changed unheard.
    pub fn set_live(&self, live: bool) {
        self.clear_and(|| self.live.store(live, Ordering::Release));
    }

    fn clear_and(&self, also: impl FnOnce()) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        also();
        entries.clear();
    }
}

/// Runs known to be SUCCEEDED with an artifact. Terminal runs never change status and
/// their artifact is fixed, so membership is revoked only when a run is deleted (an alias
/// write refused for a deleted run says so on every replica).
#[derive(Default)]
pub struct ServableRuns(RwLock<HashSet<(String, Uuid)>>);

impl ServableRuns {
    /// Whether `id` was found servable in `namespace` (nowhere else counts).
    pub fn contains(&self, namespace: &str, id: &Uuid) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(namespace.to_string(), *id))
    }

    pub fn remove(&self, namespace: &str, id: &Uuid) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(namespace.to_string(), *id));
    }

    pub fn insert(&self, namespace: &str, id: Uuid) {
        let mut set = self.0.write().unwrap_or_else(|p| p.into_inner());
        if set.len() >= MAX_ENTRIES {
            set.clear();
        }
        set.insert((namespace.to_string(), id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alias(rev: i64) -> Alias {
        Alias {
            namespace: "default".into(),
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
        let c = AliasCache::new(true);
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

    #[test]
    fn nothing_is_served_or_kept_while_changes_go_unheard() {
        let c = AliasCache::new(false);
        c.put("a", Some(alias(1)), c.generation());
        assert_eq!(c.get("a"), None, "not live: nothing kept");

        c.set_live(true);
        c.put("a", Some(alias(1)), c.generation());
        assert_eq!(c.get("a"), Some(Some(alias(1))));

        // The listener is lost: the entry (perhaps changed unheard) is gone, and a read
        // that began before is not kept either.
        let g = c.generation();
        c.set_live(false);
        assert_eq!(c.get("a"), None);
        c.put("a", Some(alias(1)), g);
        c.put("a", Some(alias(1)), c.generation());
        assert_eq!(c.get("a"), None);

        // Back: a read from while it was lost is not kept; a new one is.
        let g = c.generation();
        c.set_live(true);
        c.put("a", Some(alias(1)), g);
        assert_eq!(c.get("a"), None);
        c.put("a", Some(alias(2)), c.generation());
        assert_eq!(c.get("a"), Some(Some(alias(2))));
    }
}
