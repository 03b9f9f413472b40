//! How alias changes travel: `WatchAliases` (the current value of each alias, then every
//! change, in revision order), and the store's announcements of other replicas' changes,
//! which wake watchers and keep the alias cache honest.
//!
//! Per-alias revisions are gapless and serialized by compare-and-swap, so a watcher that
//! remembers the last revision it sent and asks the store for later ones never misses or
//! repeats a change. Wake-ups come from this process's writes and from the replica's one
//! source of announcements of other replicas' changes (see
//! [`capstan_server::fanout`]): a watcher never polls, so an idle one costs the database
//! nothing, and watchers woken by one change at the same position share one read.

use std::{collections::HashMap, sync::Arc, time::Duration};

use capstan_server::fanout::Coalesce;

use futures::StreamExt;
use tokio::{
    sync::{mpsc, watch, Semaphore},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use capstan_server::telemetry::InFlight;

use super::{Alias, AliasAction, AliasHistoryEntry};
use crate::{
    domain::{ports::ChangeHint, registry::Registry, validate, Micros},
    error::{Error, Result, Validator},
};

/// How soon a watcher whose read failed tries again (only while reads fail).
const RETRY: Duration = Duration::from_secs(1);
const MAX_WATCHERS: usize = 10_000;
const MAX_WATCHED_ALIASES: usize = 100;
/// History entries read at once.
const READ_BATCH: usize = 1000;

pub struct AliasWatch {
    /// Wake-ups so far; a watcher re-reads when it moves.
    tick: watch::Sender<u64>,
    slots: Arc<Semaphore>,
    /// The newest revision of each alias of a namespace, shared by the wake-up's watchers.
    revisions: Coalesce<String, Vec<(String, i64)>, Error>,
    /// An alias's history after a revision, shared likewise.
    history: Coalesce<(String, String, i64), Vec<AliasHistoryEntry>, Error>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasEventKind {
    Snapshot,
    Changed,
    Deleted,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AliasEvent {
    pub kind: AliasEventKind,
    pub namespace: String,
    pub alias: String,
    pub run_id: Option<Uuid>,
    pub description: String,
    pub revision: i64,
    pub time: Micros,
    pub actor: String,
}

impl AliasEvent {
    fn of(entry: AliasHistoryEntry) -> Self {
        Self {
            kind: if entry.action == AliasAction::Delete {
                AliasEventKind::Deleted
            } else {
                AliasEventKind::Changed
            },
            namespace: entry.namespace,
            alias: entry.alias,
            run_id: entry.run_id,
            description: entry.description,
            revision: entry.revision,
            time: entry.time,
            actor: entry.actor,
        }
    }
}

impl Default for AliasWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl AliasWatch {
    pub fn new() -> Self {
        Self {
            tick: watch::channel(0).0,
            slots: Arc::new(Semaphore::new(MAX_WATCHERS)),
            revisions: Coalesce::default(),
            history: Coalesce::default(),
        }
    }

    pub fn notify(&self) {
        self.tick.send_modify(|n| *n += 1);
    }
}

impl Registry {
    /// An alias changed here or on another replica: drop cached reads, wake watchers.
    pub(super) fn alias_changed(&self) {
        self.aliases.invalidate();
        self.watch.notify();
    }

    /// What the store's change listener said; see [`ChangeHint`].
    fn change_hint(&self, hint: ChangeHint) {
        match hint {
            ChangeHint::Changed => self.alias_changed(),
            ChangeHint::Listening => {
                self.aliases.set_live(self.cache_on_notifications);
                // Changes made while nobody listened: watchers look now, not at their poll.
                self.watch.notify();
            }
            ChangeHint::Lost => self.aliases.set_live(false),
        }
    }

    /// Follows the store's announcements of other replicas' changes: wakes local watchers
    /// and keeps the alias cache (see `Registry::change_hint`).
    pub fn spawn_change_listener(self: &Arc<Self>, shutdown: CancellationToken) {
        if let Some(mut hints) = self.store.alias_change_hints() {
            let this = self.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        h = hints.next() => match h {
                            Some(hint) => this.change_hint(hint),
                            None => {
                                this.change_hint(ChangeHint::Lost);
                                tracing::error!("alias notification stream ended; watchers see only this replica's writes");
                                return;
                            }
                        },
                        _ = shutdown.cancelled() => return,
                    }
                }
            });
        }
    }

    /// Starts a watch; events arrive on the receiver until it is dropped or `shutdown`.
    /// Follows `names` (empty: every alias) of `namespace` only.
    pub async fn watch_aliases(
        self: &Arc<Self>,
        namespace: String,
        names: Vec<String>,
        shutdown: CancellationToken,
    ) -> Result<mpsc::Receiver<Result<AliasEvent>>> {
        let mut v = Validator::default();
        v.check(names.len() <= MAX_WATCHED_ALIASES, "aliases", || {
            format!("at most {MAX_WATCHED_ALIASES}")
        });
        for (i, n) in names.iter().enumerate() {
            validate::alias(&mut v, &format!("aliases[{i}]"), n);
        }
        v.finish()?;
        let permit = self.watch.slots.clone().try_acquire_owned().map_err(|_| {
            Error::ResourceExhausted(format!("at most {MAX_WATCHERS} alias watches at once"))
        })?;
        let (tx, rx) = mpsc::channel(64);
        let mut tick = self.watch.tick.subscribe();
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _watching = InFlight::enter(metrics::gauge!("capstan_alias_watchers"));
            let all = names.is_empty();
            let mut seen: HashMap<String, i64> = HashMap::new();
            let snapshot = this.snapshot(&namespace, &names, &mut seen).await;
            let ok = match snapshot {
                Ok(events) => send_all(&tx, events).await,
                Err(e) => {
                    // The stream ends with the error; a closed receiver has nobody to tell.
                    let _ = tx.send(Err(e)).await;
                    false
                }
            };
            if !ok {
                return;
            }
            let mut retry: Option<Instant> = None;
            loop {
                tokio::select! {
                    // The sender lives as long as the registry.
                    _ = tick.changed() => {}
                    _ = until(retry) => {}
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                }
                let epoch = *tick.borrow_and_update();
                match this
                    .changes(&namespace, all, &names, &mut seen, epoch)
                    .await
                {
                    Ok(events) => {
                        retry = None;
                        if !send_all(&tx, events).await {
                            return;
                        }
                    }
                    Err(e) => {
                        retry = Some(Instant::now() + RETRY);
                        tracing::warn!(error = %capstan_server::error::Chain(&*e), "alias watch read failed; retrying")
                    }
                }
            }
        });
        Ok(rx)
    }

    async fn snapshot(
        &self,
        namespace: &str,
        names: &[String],
        seen: &mut HashMap<String, i64>,
    ) -> Result<Vec<AliasEvent>> {
        let mut events = Vec::new();
        if names.is_empty() {
            for (alias, rev) in self.store.alias_revisions(namespace).await? {
                seen.insert(alias, rev);
            }
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .store
                    .list_aliases(namespace, after.as_deref(), 500)
                    .await?;
                let Some(last) = page.last() else { break };
                after = Some(last.alias.clone());
                for a in page {
                    // A change racing the listing is sent again as a change; keep the newer.
                    seen.entry(a.alias.clone())
                        .and_modify(|r| *r = (*r).min(a.revision))
                        .or_insert(a.revision);
                    events.push(snapshot_event(a));
                }
            }
            return Ok(events);
        }
        for name in names {
            match self.store.get_alias(namespace, name).await? {
                Some(a) => {
                    seen.insert(name.clone(), a.revision);
                    events.push(snapshot_event(a));
                }
                None => {
                    let last = self
                        .store
                        .alias_history(namespace, name, None, 1)
                        .await?
                        .first()
                        .map_or(0, |e| e.revision);
                    seen.insert(name.clone(), last);
                }
            }
        }
        Ok(events)
    }

    /// What changed after `seen`, read once for all the watchers of wake-up `epoch` that
    /// stand where this one does.
    async fn changes(
        &self,
        namespace: &str,
        all: bool,
        names: &[String],
        seen: &mut HashMap<String, i64>,
        epoch: u64,
    ) -> std::result::Result<Vec<AliasEvent>, Arc<Error>> {
        let changed: Vec<String> = if all {
            let store = self.store.clone();
            let ns = namespace.to_string();
            let read = async move { store.alias_revisions(&ns).await };
            self.watch
                .revisions
                .read(namespace.to_string(), epoch, read)
                .await?
                .iter()
                .filter(|(a, r)| seen.get(a).is_none_or(|s| r > s))
                .map(|(a, _)| a.clone())
                .collect()
        } else {
            names.to_vec()
        };
        let mut events = Vec::new();
        for name in changed {
            loop {
                let after = seen.get(&name).copied().unwrap_or(0);
                let (store, ns, n) = (self.store.clone(), namespace.to_string(), name.clone());
                let read = async move { store.alias_changes(&ns, &n, after, READ_BATCH).await };
                let key = (namespace.to_string(), name.clone(), after);
                let page = self.watch.history.read(key, epoch, read).await?;
                for entry in page.iter() {
                    seen.insert(name.clone(), entry.revision);
                    events.push(AliasEvent::of(entry.clone()));
                }
                if page.len() < READ_BATCH {
                    break;
                }
            }
        }
        Ok(events)
    }
}

fn snapshot_event(a: Alias) -> AliasEvent {
    AliasEvent {
        kind: AliasEventKind::Snapshot,
        namespace: a.namespace,
        alias: a.alias,
        run_id: Some(a.run_id),
        description: a.description,
        revision: a.revision,
        time: a.update_time,
        actor: a.updated_by,
    }
}

/// Never, or at `at`.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn send_all(tx: &mpsc::Sender<Result<AliasEvent>>, events: Vec<AliasEvent>) -> bool {
    for e in events {
        if tx.send(Ok(e)).await.is_err() {
            return false;
        }
    }
    true
}
