//! The registry's use cases, over the store traits.

use std::{sync::Arc, time::Duration};

use capstan_server::paging;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    alias::{
        decide_promotion, Alias, AliasAction, AliasHistoryEntry, AliasWrite, PromotionDecision,
    },
    cache::{AliasCache, CoalescedAliasReads, RecentRuns, ServableRuns},
    now_micros,
    run::{NewRun, Run, RunPatch, RunStatus},
    validate,
    watch::AliasWatch,
};
use crate::{
    error::{Error, Result, Validator},
    store::{blobs::BlobStore, ChangeHint, RegistryStore, RunCursor, RunFilter, RunOrder},
};

/// Retries of an internal optimistic write before giving up with ABORTED.
const WRITE_RETRIES: usize = 16;

pub struct Registry {
    pub(crate) store: Arc<dyn RegistryStore>,
    pub(crate) blobs: Arc<dyn BlobStore>,
    pub(crate) watch: AliasWatch,
    /// Serves only while every change is known here: with a single writer, or (with
    /// `AliasReads::Cached`) while the store's change listener is connected.
    aliases: AliasCache,
    /// Whether the cache may serve while the store's change listener is connected.
    cache_on_notifications: bool,
    /// What the cache does not serve: concurrent reads of an alias share one store read
    /// that began after they arrived.
    alias_reads: Arc<CoalescedAliasReads>,
    servable: ServableRuns,
    recent_runs: RecentRuns,
}

#[derive(Debug, Clone, Default)]
pub struct ListRuns {
    pub filter: RunFilter,
    pub order_by: String,
    pub page_size: i32,
    pub page_token: String,
}

#[derive(Debug, Clone)]
pub struct SetAlias {
    pub alias: String,
    pub run_id: Uuid,
    pub description: String,
    pub expected_revision: Option<i64>,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct PromoteRun {
    pub alias: String,
    pub run_id: Uuid,
    pub metric: String,
    pub higher_is_better: bool,
    pub force: bool,
    pub dry_run: bool,
    pub reason: String,
    pub expected_revision: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Promotion {
    pub alias: Alias,
    pub promoted: bool,
    pub previous_run_id: Option<Uuid>,
    pub decision: PromotionDecision,
}

fn parse_order(order_by: &str) -> Result<RunOrder> {
    let text = order_by.trim();
    let (field, desc) = match text.rsplit_once(' ') {
        Some((f, d)) if d.eq_ignore_ascii_case("desc") => (f.trim(), true),
        Some((f, d)) if d.eq_ignore_ascii_case("asc") => (f.trim(), false),
        _ => (text, false),
    };
    match field {
        "" => Ok(RunOrder::CreateTime { desc: true }),
        "create_time" => Ok(RunOrder::CreateTime { desc }),
        f => match f.strip_prefix("metrics.") {
            Some(name) if validate::key_ok(name) => Ok(RunOrder::Metric { name: name.into(), desc }),
            _ => Err(Error::invalid(
                "order_by",
                format!("{order_by:.80?} must be `create_time` or `metrics.<name>`, optionally followed by ` desc`"),
            )),
        },
    }
}

fn validate_filter(f: &RunFilter) -> Result<()> {
    let mut v = Validator::default();
    if let Some(mt) = &f.model_type {
        v.check(
            capstan_proto::artifact_uri::is_valid_model_type(mt),
            "model_type",
            || "must match [a-z0-9][a-z0-9_]{0,63}".into(),
        );
    }
    if let Some(p) = &f.name_prefix {
        v.check(
            p.chars().count() <= validate::MAX_NAME_CHARS,
            "name_prefix",
            || "is too long".into(),
        );
    }
    validate::string_map(&mut v, "tags", &f.tags);
    Ok(v.finish()?)
}

/// How alias reads are served where several processes write (see `AliasCache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasReads {
    /// From the store, every time: linearizable across replicas.
    Fresh,
    /// From memory while the store announces every change.
    Cached,
}

impl Registry {
    pub fn new(
        store: Arc<dyn RegistryStore>,
        blobs: Arc<dyn BlobStore>,
        reads: AliasReads,
    ) -> Arc<Self> {
        Arc::new(Self {
            blobs,
            watch: AliasWatch::new(),
            // Elsewhere live, when asked for, once the store's change listener is (see
            // `change_hint`).
            aliases: AliasCache::new(store.single_writer()),
            cache_on_notifications: reads == AliasReads::Cached,
            alias_reads: CoalescedAliasReads::new(store.clone()),
            servable: ServableRuns::default(),
            recent_runs: RecentRuns::default(),
            store,
        })
    }

    pub fn store(&self) -> &Arc<dyn RegistryStore> {
        &self.store
    }

    pub async fn create_run(&self, new: NewRun) -> Result<Run> {
        new.validate()?;
        let run = new.into_run(Uuid::new_v4(), now_micros());
        let (run, created) = self.store.insert_run(&run).await?;
        if created {
            self.recent_runs.keep(&run);
        }
        Ok(run)
    }

    pub async fn get_run(&self, id: Uuid) -> Result<Run> {
        self.store
            .get_run(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("run {id} does not exist")))
    }

    pub async fn list_runs(&self, req: &ListRuns) -> Result<(Vec<Run>, String)> {
        let limit = paging::page_size(req.page_size).map_err(Error::from)?;
        let order = parse_order(&req.order_by)?;
        validate_filter(&req.filter)?;
        let query = format!("{:?}|{:?}", req.filter, order);
        let after: Option<RunCursor> =
            paging::decode(&req.page_token, &query).map_err(Error::from)?;
        match (&after, &order) {
            (None, _)
            | (Some(RunCursor::CreateTime(..)), RunOrder::CreateTime { .. })
            | (Some(RunCursor::Metric(..)), RunOrder::Metric { .. }) => {}
            _ => return Err(Error::invalid("page_token", "does not match order_by")),
        }
        let mut runs = self
            .store
            .list_runs(&req.filter, &order, after.as_ref(), limit + 1)
            .await?;
        let next = if runs.len() > limit {
            runs.truncate(limit);
            let last = &runs[limit - 1];
            let cursor = match &order {
                RunOrder::CreateTime { .. } => RunCursor::CreateTime(last.create_time, last.id),
                RunOrder::Metric { name, .. } => {
                    RunCursor::Metric(last.metrics.get(name).copied().unwrap_or_default(), last.id)
                }
            };
            paging::encode(&query, &cursor)
        } else {
            String::new()
        };
        Ok((runs, next))
    }

    /// Read-modify-write with an optimistic version check, retried on races with other
    /// writers (heartbeats, the reaper, other replicas); a client etag mismatch is final.
    /// It starts from this process's last write of the run when it has one (no read);
    /// whatever that copy refuses is tried again from the store.
    pub async fn update_run(&self, id: Uuid, patch: &RunPatch) -> Result<Run> {
        patch.validate()?;
        let mut guess = self.recent_runs.take(&id);
        for _ in 0..WRITE_RETRIES {
            let guessed = guess.is_some();
            let mut run = match guess.take() {
                Some(run) => run,
                None => self.get_run(id).await?,
            };
            let version = run.version;
            match patch.apply(&mut run, now_micros()) {
                Err(_) if guessed => continue,
                applied => applied?,
            }
            if self.store.update_run(&run, version).await? {
                self.recent_runs.keep(&run);
                return Ok(run);
            }
        }
        Err(Error::Aborted(format!(
            "run {id} is being changed concurrently; retry"
        )))
    }

    pub async fn fail_expired_runs(&self) -> Result<u64> {
        self.store.fail_expired_runs(now_micros()).await
    }

    /// Runs the heartbeat reaper every `interval` until `shutdown`.
    pub fn spawn_reaper(self: &Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                match this.fail_expired_runs().await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::warn!(runs = n, "marked runs FAILED after heartbeat timeout");
                        metrics::counter!("capstan_runs_reaped_total").increment(n);
                    }
                    Err(e) => tracing::error!(error = %e, "heartbeat reaper failed"),
                }
            }
        });
    }

    async fn servable_run(&self, id: Uuid, field: &str) -> Result<Run> {
        let run = self
            .store
            .get_run(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("run {id} does not exist")))?;
        // Terminal runs never change, so this check stays true after it is made.
        if run.status != RunStatus::Succeeded || run.artifact.is_none() {
            return Err(Error::FailedPrecondition(format!(
                "{field} {id} is {}{}: an alias may only point at a SUCCEEDED run with an artifact",
                run.status.as_str(),
                if run.artifact.is_none() {
                    " without an artifact"
                } else {
                    ""
                }
            )));
        }
        Ok(run)
    }

    /// An alias changed here or on another replica: drop cached reads, wake watchers.
    pub(crate) fn alias_changed(&self) {
        self.aliases.invalidate();
        self.watch.notify();
    }

    /// What the store's change listener said; see [`ChangeHint`].
    pub(crate) fn change_hint(&self, hint: ChangeHint) {
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

    /// Marks the run servable after checking it once; terminal runs never change.
    async fn ensure_servable(&self, id: Uuid, field: &str) -> Result<()> {
        if !self.servable.contains(&id) {
            self.servable_run(id, field).await?;
            self.servable.insert(id);
        }
        Ok(())
    }

    async fn write_alias(&self, w: &AliasWrite) -> Result<AliasHistoryEntry> {
        let written = self.store.write_alias(w).await;
        // Even a failed write may have committed (a lost reply), so always invalidate.
        self.alias_changed();
        let entry = written?;
        metrics::counter!("capstan_alias_writes_total", "action" => w.action.as_str()).increment(1);
        Ok(entry)
    }

    fn alias_of(entry: &AliasHistoryEntry) -> Alias {
        Alias {
            alias: entry.alias.clone(),
            run_id: entry.run_id.unwrap_or_default(),
            description: entry.description.clone(),
            revision: entry.revision,
            update_time: entry.time,
            updated_by: entry.actor.clone(),
        }
    }

    fn check_alias_fields(
        alias: &str,
        description: &str,
        reason: &str,
        expected: Option<i64>,
    ) -> Result<()> {
        let mut v = Validator::default();
        validate::alias(&mut v, "alias", alias);
        validate::text(&mut v, "description", description);
        validate::text(&mut v, "reason", reason);
        v.check(expected.is_none_or(|e| e >= 0), "expected_revision", || {
            "must not be negative".into()
        });
        Ok(v.finish()?)
    }

    /// An unconditional write retries when a concurrent writer won the race.
    async fn write_alias_retrying(&self, w: &AliasWrite) -> Result<AliasHistoryEntry> {
        let mut attempt = 0;
        loop {
            match self.write_alias(w).await {
                Err(Error::Aborted(_))
                    if w.expected_revision.is_none() && attempt < WRITE_RETRIES =>
                {
                    attempt += 1
                }
                other => return other,
            }
        }
    }

    pub async fn set_alias(&self, req: SetAlias, actor: &str) -> Result<Alias> {
        Self::check_alias_fields(
            &req.alias,
            &req.description,
            &req.reason,
            req.expected_revision,
        )?;
        self.ensure_servable(req.run_id, "run").await?;
        let entry = self
            .write_alias_retrying(&AliasWrite {
                alias: req.alias,
                run_id: Some(req.run_id),
                description: req.description,
                expected_revision: req.expected_revision,
                action: AliasAction::Set,
                reason: req.reason,
                actor: actor.into(),
                time: now_micros(),
            })
            .await?;
        Ok(Self::alias_of(&entry))
    }

    pub async fn get_alias(&self, alias: &str) -> Result<Alias> {
        let mut v = Validator::default();
        validate::alias(&mut v, "alias", alias);
        v.finish()?;
        let found = match self.aliases.get(alias) {
            Some(hit) => hit,
            None => {
                let generation = self.aliases.generation();
                let read = self.alias_reads.get(alias).await?;
                self.aliases.put(alias, read.clone(), generation);
                read
            }
        };
        found.ok_or_else(|| Error::NotFound(format!("alias {alias:?} does not exist")))
    }

    pub async fn list_aliases(
        &self,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<Alias>, String)> {
        let limit = paging::page_size(page_size).map_err(Error::from)?;
        let after: Option<String> = paging::decode(page_token, "aliases").map_err(Error::from)?;
        let mut aliases = self.store.list_aliases(after.as_deref(), limit + 1).await?;
        let next = if aliases.len() > limit {
            aliases.truncate(limit);
            paging::encode("aliases", &aliases[limit - 1].alias)
        } else {
            String::new()
        };
        Ok((aliases, next))
    }

    pub async fn delete_alias(
        &self,
        alias: &str,
        expected_revision: Option<i64>,
        reason: &str,
        actor: &str,
    ) -> Result<()> {
        Self::check_alias_fields(alias, "", reason, expected_revision)?;
        self.write_alias_retrying(&AliasWrite {
            alias: alias.into(),
            run_id: None,
            description: String::new(),
            expected_revision,
            action: AliasAction::Delete,
            reason: reason.into(),
            actor: actor.into(),
            time: now_micros(),
        })
        .await?;
        Ok(())
    }

    pub async fn alias_history(
        &self,
        alias: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<AliasHistoryEntry>, String)> {
        let mut v = Validator::default();
        validate::alias(&mut v, "alias", alias);
        v.finish()?;
        let limit = paging::page_size(page_size).map_err(Error::from)?;
        let query = format!("history|{alias}");
        let before: Option<i64> = paging::decode(page_token, &query).map_err(Error::from)?;
        let mut entries = self.store.alias_history(alias, before, limit + 1).await?;
        if entries.is_empty() && before.is_none() {
            return Err(Error::NotFound(format!("alias {alias:?} has no history")));
        }
        let next = if entries.len() > limit {
            entries.truncate(limit);
            paging::encode(&query, &entries[limit - 1].revision)
        } else {
            String::new()
        };
        Ok((entries, next))
    }

    pub async fn rollback_alias(
        &self,
        alias: &str,
        to_revision: i64,
        expected_revision: Option<i64>,
        reason: &str,
        actor: &str,
    ) -> Result<Alias> {
        Self::check_alias_fields(alias, "", reason, expected_revision)?;
        if to_revision <= 0 {
            return Err(Error::invalid(
                "to_revision",
                format!("must be positive, got {to_revision}"),
            ));
        }
        let target = self
            .store
            .alias_history(alias, Some(to_revision + 1), 1)
            .await?
            .into_iter()
            .find(|e| e.revision == to_revision)
            .ok_or_else(|| {
                Error::NotFound(format!("alias {alias:?} has no revision {to_revision}"))
            })?;
        let run_id = target.run_id.ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "revision {to_revision} of alias {alias:?} is a deletion"
            ))
        })?;
        self.ensure_servable(run_id, "run of that revision").await?;
        let entry = self
            .write_alias_retrying(&AliasWrite {
                alias: alias.into(),
                run_id: Some(run_id),
                description: target.description,
                expected_revision,
                action: AliasAction::Rollback,
                reason: if reason.is_empty() {
                    format!("rollback to revision {to_revision}")
                } else {
                    reason.into()
                },
                actor: actor.into(),
                time: now_micros(),
            })
            .await?;
        Ok(Self::alias_of(&entry))
    }

    /// Compares and swaps atomically: the write is conditional on the revision the
    /// comparison saw, and re-decided if another writer got there first.
    pub async fn promote_run(&self, req: PromoteRun, actor: &str) -> Result<Promotion> {
        Self::check_alias_fields(&req.alias, "", &req.reason, req.expected_revision)?;
        if !validate::key_ok(&req.metric) {
            return Err(Error::invalid(
                "metric",
                "must be 1-128 characters of [A-Za-z0-9_.-/]",
            ));
        }
        let challenger = self.servable_run(req.run_id, "run").await?;
        for _ in 0..WRITE_RETRIES {
            let current = self.store.get_alias(&req.alias).await?;
            let seen_revision = current.as_ref().map_or(0, |a| a.revision);
            if let Some(exp) = req.expected_revision {
                if exp != seen_revision {
                    return Err(Error::Aborted(format!(
                        "alias {:?} is at revision {seen_revision}, not the expected {exp}",
                        req.alias
                    )));
                }
            }
            let incumbent = match &current {
                Some(a) => Some((
                    a.run_id,
                    self.store
                        .get_run(a.run_id)
                        .await?
                        .and_then(|r| r.metrics.get(&req.metric).copied()),
                )),
                None => None,
            };
            let decision = decide_promotion(
                &req.metric,
                req.higher_is_better,
                (challenger.id, challenger.metrics.get(&req.metric).copied()),
                incumbent,
            );
            if !decision.allowed && !req.force {
                return Err(Error::FailedPrecondition(format!(
                    "promotion of run {} to {:?} refused: {}; pass force to override",
                    challenger.id, req.alias, decision.explanation
                )));
            }
            let previous_run_id = current.as_ref().map(|a| a.run_id);
            if req.dry_run {
                let alias = Alias {
                    alias: req.alias.clone(),
                    run_id: challenger.id,
                    description: current
                        .as_ref()
                        .map(|a| a.description.clone())
                        .unwrap_or_default(),
                    revision: seen_revision + 1,
                    update_time: now_micros(),
                    updated_by: actor.into(),
                };
                return Ok(Promotion {
                    alias,
                    promoted: false,
                    previous_run_id,
                    decision,
                });
            }
            let forced = !decision.allowed;
            let write = AliasWrite {
                alias: req.alias.clone(),
                run_id: Some(challenger.id),
                description: current
                    .as_ref()
                    .map(|a| a.description.clone())
                    .unwrap_or_default(),
                expected_revision: Some(seen_revision),
                action: AliasAction::Promote,
                reason: format!(
                    "{}{}{}",
                    if forced { "FORCED: " } else { "" },
                    decision.explanation,
                    if req.reason.is_empty() {
                        String::new()
                    } else {
                        format!(" — {}", req.reason)
                    }
                ),
                actor: actor.into(),
                time: now_micros(),
            };
            match self.write_alias(&write).await {
                Ok(entry) => {
                    if forced {
                        tracing::warn!(alias = %req.alias, run = %challenger.id, "forced promotion of a worse run");
                    }
                    return Ok(Promotion {
                        alias: Self::alias_of(&entry),
                        promoted: true,
                        previous_run_id,
                        decision,
                    });
                }
                Err(Error::Aborted(_)) if req.expected_revision.is_none() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Aborted(format!(
            "alias {:?} is changing too fast to promote; retry",
            req.alias
        )))
    }
}
