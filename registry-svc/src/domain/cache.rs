//! Read-through caches and read coalescing for the hot read paths, and the runs this
//! process wrote last (a starting point for their next update).
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
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use tokio::sync::oneshot;
use uuid::Uuid;

use super::{alias::Alias, run::Run};
use crate::{
    error::{Error, Result},
    store::RegistryStore,
};

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

/// Runs this process wrote last and that may still change (not terminal): the likely
/// state an UpdateRun of one of them starts from, saving its read. Only a guess — the
/// versioned write refuses a stale copy, and UpdateRun then starts over from the store.
#[derive(Default)]
pub struct RecentRuns(Mutex<HashMap<Uuid, Run>>);

/// Few: a run stays here only between two of its writes.
const MAX_RECENT_RUNS: usize = 1_024;
/// Larger runs (up to ~600 KB of params and tags) are not kept: memory stays a few MB.
const MAX_RECENT_RUN_BYTES: usize = 8 << 10;

/// About what a run holds on the heap.
fn approx_bytes(run: &Run) -> usize {
    let text = |m: &std::collections::BTreeMap<String, String>| {
        m.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    };
    text(&run.params)
        + text(&run.tags)
        + run.metrics.keys().map(|k| k.len() + 8).sum::<usize>()
        + run.name.len()
        + run.status_message.len()
}

impl RecentRuns {
    /// Removes and returns the copy of `id`, if any: one update uses it.
    pub fn take(&self, id: &Uuid) -> Option<Run> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id)
    }

    pub fn keep(&self, run: &Run) {
        if run.status.is_terminal() || approx_bytes(run) > MAX_RECENT_RUN_BYTES {
            return;
        }
        let mut runs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if runs.len() >= MAX_RECENT_RUNS {
            runs.clear();
        }
        runs.insert(run.id, run.clone());
    }
}

type Answer = oneshot::Sender<Result<Option<Alias>>>;

#[derive(Default)]
struct Slot {
    reading: bool,
    waiting: Vec<Answer>,
}

/// Concurrent reads of one alias share a store read — but only one that *started after*
/// they arrived, so every answer is as fresh as a read of its own (read-your-writes holds
/// across replicas, unlike a cache). Under load many readers of a hot alias cost one
/// query per round trip instead of one each; a lone reader reads inline.
pub struct CoalescedAliasReads {
    store: Arc<dyn RegistryStore>,
    slots: Mutex<HashMap<String, Slot>>,
}

impl CoalescedAliasReads {
    pub fn new(store: Arc<dyn RegistryStore>) -> Arc<Self> {
        Arc::new(Self {
            store,
            slots: Mutex::default(),
        })
    }

    pub async fn get(self: &Arc<Self>, alias: &str) -> Result<Option<Alias>> {
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let slot = slots.entry(alias.to_string()).or_default();
            slot.waiting.push(tx);
            !std::mem::replace(&mut slot.reading, true)
        };
        if lead {
            // The first flight runs in this request (no hand-off for a lone reader);
            // readers who arrived meanwhile are served by a task of their own.
            let mut flight = Flight::new(self.clone(), alias);
            flight.fly_once().await;
            if flight.more_waiting() {
                tokio::spawn(flight.fly());
            }
        }
        rx.await.map_err(|_| {
            tracing::error!(alias, "coalesced alias read lost its reader");
            Error::Unavailable("alias read was interrupted; retry".into())
        })?
    }
}

struct Flight {
    reads: Arc<CoalescedAliasReads>,
    alias: String,
    /// The readers the read in progress answers (empty between reads).
    batch: Vec<Answer>,
}

impl Flight {
    fn new(reads: Arc<CoalescedAliasReads>, alias: &str) -> Self {
        Self {
            reads,
            alias: alias.to_string(),
            batch: Vec::new(),
        }
    }

    /// Serves waiters until none are left.
    async fn fly(mut self) {
        while self.fly_once().await {}
    }

    /// Takes the waiters present now, reads once, answers them. `false` (and the slot is
    /// released) when nobody was waiting.
    async fn fly_once(&mut self) -> bool {
        {
            let mut slots = self.reads.slots.lock().unwrap_or_else(|p| p.into_inner());
            let Some(slot) = slots.get_mut(&self.alias) else {
                return false;
            };
            if slot.waiting.is_empty() {
                slots.remove(&self.alias);
                return false;
            }
            self.batch = std::mem::take(&mut slot.waiting);
        }
        let read = self.reads.store.get_alias(&self.alias).await;
        for answer in self.batch.drain(..) {
            // A closed receiver is a request that was cancelled meanwhile.
            let _ = answer.send(read.clone());
        }
        true
    }

    /// Whether readers arrived during the last read; if not, the slot is released.
    fn more_waiting(&self) -> bool {
        let mut slots = self.reads.slots.lock().unwrap_or_else(|p| p.into_inner());
        match slots.get(&self.alias) {
            Some(slot) if !slot.waiting.is_empty() => true,
            _ => {
                slots.remove(&self.alias);
                false
            }
        }
    }
}

impl Drop for Flight {
    /// The request leading a read was cancelled mid-read: its batch (who arrived before
    /// that read began, so any later read still answers them correctly) goes back to the
    /// waiters, and a task of its own serves them.
    fn drop(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut batch = std::mem::take(&mut self.batch);
        {
            let mut slots = self.reads.slots.lock().unwrap_or_else(|p| p.into_inner());
            let slot = slots.entry(self.alias.clone()).or_default();
            slot.reading = true;
            batch.append(&mut slot.waiting);
            slot.waiting = batch;
        }
        let flight = Flight::new(self.reads.clone(), &self.alias);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(flight.fly())),
            // Only when the runtime itself is going away; nobody is left to answer.
            Err(e) => tracing::warn!(error = %e, "alias read abandoned at shutdown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::run::{NewRun, RunStatus};

    #[test]
    fn recent_runs_keep_only_small_runs_that_may_still_change() {
        let recent = RecentRuns::default();
        let run = |status: RunStatus, param_bytes: usize| {
            let mut r = NewRun {
                name: "r".into(),
                model_type: "m".into(),
                params: [("p".to_string(), "x".repeat(param_bytes))].into(),
                ..Default::default()
            }
            .into_run(Uuid::new_v4(), 0);
            r.status = status;
            r
        };
        let small = run(RunStatus::Running, 100);
        recent.keep(&small);
        assert_eq!(recent.take(&small.id).map(|r| r.id), Some(small.id));
        assert!(recent.take(&small.id).is_none(), "a copy serves one update");
        let large = run(RunStatus::Running, MAX_RECENT_RUN_BYTES);
        recent.keep(&large);
        assert!(recent.take(&large.id).is_none(), "large runs are not kept");
        let done = run(RunStatus::Succeeded, 100);
        recent.keep(&done);
        assert!(
            recent.take(&done.id).is_none(),
            "terminal runs are not kept"
        );
    }

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

    /// Hundreds of concurrent readers, a third of them cancelled at once (some while they
    /// lead a read): every reader that stays gets the alias, and none is left hanging.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_reads_answer_everyone_despite_cancellations() {
        use crate::{
            domain::{
                alias::{AliasAction, AliasWrite},
                run::NewRun,
            },
            store::sql::SqlStore,
        };
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}?mode=rwc", dir.path().join("r.db").display());
        let store: Arc<dyn RegistryStore> = Arc::new(SqlStore::connect(&url).await.unwrap());
        let run = NewRun {
            name: "r".into(),
            model_type: "m".into(),
            ..Default::default()
        }
        .into_run(Uuid::new_v4(), 1);
        store.insert_run(&run).await.unwrap();
        store
            .write_alias(&AliasWrite {
                alias: "hot".into(),
                run_id: Some(run.id),
                description: String::new(),
                expected_revision: None,
                action: AliasAction::Set,
                reason: String::new(),
                actor: "t".into(),
                time: 1,
            })
            .await
            .unwrap();

        let reads = CoalescedAliasReads::new(store);
        let mut kept = Vec::new();
        for round in 0..20u64 {
            for i in 0..30u64 {
                let reads = reads.clone();
                if i % 3 == 0 {
                    // Gives up after a few µs: often while leading a read.
                    let patience = Duration::from_micros((round * 7 + i) % 60);
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(patience, reads.get("hot")).await;
                    });
                } else {
                    kept.push(tokio::spawn(async move { reads.get("hot").await }));
                }
            }
            tokio::task::yield_now().await;
        }
        for task in kept {
            let got = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("a reader was left hanging")
                .unwrap()
                .unwrap()
                .expect("the alias exists");
            assert_eq!((got.run_id, got.revision), (run.id, 1));
        }
        // The last flight releases the slot right after its final answers.
        let mut slots = usize::MAX;
        for _ in 0..100 {
            slots = reads.slots.lock().unwrap().len();
            if slots == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(slots, 0, "the slot is released once nobody waits");
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
