//! How alias changes travel: `WatchAliases` (the current value of each alias, then every
//! change, in revision order), and the store's announcements of other replicas' changes,
//! which wake watchers and keep the alias cache honest.
//!
//! Per-alias revisions are gapless and serialized by compare-and-swap, so a watcher that
//! remembers the last revision it sent and asks the store for later ones never misses or
//! repeats a change. Wake-ups come from this process's writes, from the store's
//! announcements of other replicas' changes, and from a poll as the fallback.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::StreamExt;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use capstan_server::telemetry::InFlight;

use super::{Alias, AliasAction, AliasHistoryEntry};
use crate::{
    domain::{ports::ChangeHint, registry::Registry, validate, Micros},
    error::{Error, Result, Validator},
};

const POLL: Duration = Duration::from_secs(1);
const MAX_WATCHERS: usize = 10_000;
const MAX_WATCHED_ALIASES: usize = 100;

pub struct AliasWatch {
    tick: watch::Sender<u64>,
    slots: Arc<Semaphore>,
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
        }
    }

    pub fn notify(&self) {
        self.tick.send_modify(|n| *n = n.wrapping_add(1));
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
                                tracing::warn!("alias notification stream ended; watchers fall back to polling");
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
            loop {
                tokio::select! {
                    _ = tick.changed() => {}
                    _ = tokio::time::sleep(POLL) => {}
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                }
                match this.changes(&namespace, all, &names, &mut seen).await {
                    Ok(events) => {
                        if !send_all(&tx, events).await {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %capstan_server::error::Chain(&e), "alias watch poll failed; retrying")
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

    async fn changes(
        &self,
        namespace: &str,
        all: bool,
        names: &[String],
        seen: &mut HashMap<String, i64>,
    ) -> Result<Vec<AliasEvent>> {
        let changed: Vec<String> = if all {
            self.store
                .alias_revisions(namespace)
                .await?
                .into_iter()
                .filter(|(a, r)| seen.get(a).is_none_or(|s| r > s))
                .map(|(a, _)| a)
                .collect()
        } else {
            names.to_vec()
        };
        let mut events = Vec::new();
        for name in changed {
            let after = seen.get(&name).copied().unwrap_or(0);
            for entry in self
                .store
                .alias_changes(namespace, &name, after, 1000)
                .await?
            {
                seen.insert(name.clone(), entry.revision);
                events.push(AliasEvent::of(entry));
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

async fn send_all(tx: &mpsc::Sender<Result<AliasEvent>>, events: Vec<AliasEvent>) -> bool {
    for e in events {
        if tx.send(Ok(e)).await.is_err() {
            return false;
        }
    }
    true
}
