//! Read coalescing: concurrent reads of one alias share a store read that began after
//! they all arrived.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;

use super::Alias;
use crate::{
    domain::ports::RegistryStore,
    error::{Error, Result},
};

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

    /// How many aliases have a read in flight or readers waiting.
    pub fn busy_aliases(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The alias `alias` of `namespace`; `key` is its key in this process's maps.
    pub async fn get(
        self: &Arc<Self>,
        namespace: &str,
        alias: &str,
        key: &str,
    ) -> Result<Option<Alias>> {
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let slot = slots.entry(key.to_string()).or_default();
            slot.waiting.push(tx);
            !std::mem::replace(&mut slot.reading, true)
        };
        if lead {
            // The first flight runs in this request (no hand-off for a lone reader);
            // readers who arrived meanwhile are served by a task of their own.
            let mut flight = Flight::new(self.clone(), namespace, alias, key);
            flight.fly_once().await;
            if flight.more_waiting() {
                tokio::spawn(flight.fly());
            }
        }
        rx.await.map_err(|_| {
            tracing::error!(namespace, alias, "coalesced alias read lost its reader");
            Error::Unavailable {
                what: format!("the shared read of alias {alias:?} (interrupted)"),
                source: None,
            }
        })?
    }
}

struct Flight {
    reads: Arc<CoalescedAliasReads>,
    namespace: String,
    alias: String,
    key: String,
    /// The readers the read in progress answers (empty between reads).
    batch: Vec<Answer>,
}

impl Flight {
    fn new(reads: Arc<CoalescedAliasReads>, namespace: &str, alias: &str, key: &str) -> Self {
        Self {
            reads,
            namespace: namespace.to_string(),
            alias: alias.to_string(),
            key: key.to_string(),
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
            let Some(slot) = slots.get_mut(&self.key) else {
                return false;
            };
            if slot.waiting.is_empty() {
                slots.remove(&self.key);
                return false;
            }
            self.batch = std::mem::take(&mut slot.waiting);
        }
        let read = self
            .reads
            .store
            .get_alias(&self.namespace, &self.alias)
            .await;
        for answer in self.batch.drain(..) {
            // A closed receiver is a request that was cancelled meanwhile.
            let _ = answer.send(read.clone());
        }
        true
    }

    /// Whether readers arrived during the last read; if not, the slot is released.
    fn more_waiting(&self) -> bool {
        let mut slots = self.reads.slots.lock().unwrap_or_else(|p| p.into_inner());
        match slots.get(&self.key) {
            Some(slot) if !slot.waiting.is_empty() => true,
            _ => {
                slots.remove(&self.key);
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
            let slot = slots.entry(self.key.clone()).or_default();
            slot.reading = true;
            batch.append(&mut slot.waiting);
            slot.waiting = batch;
        }
        let flight = Flight::new(self.reads.clone(), &self.namespace, &self.alias, &self.key);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(flight.fly())),
            // Only when the runtime itself is going away; nobody is left to answer.
            Err(e) => tracing::warn!(error = %e, "alias read abandoned at shutdown"),
        }
    }
}
