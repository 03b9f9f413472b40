//! The alias use cases: set, read, list, delete, history and rollback. Every change is one
//! compare-and-swap write of the store; an unconditional one is retried when a concurrent
//! writer won.

use capstan_server::paging;
use uuid::Uuid;

use super::{Alias, AliasAction, AliasHistoryEntry, AliasWrite};
use crate::{
    domain::{
        now_micros,
        registry::Registry,
        runs::{ModelRun, RunStatus},
        validate, WRITE_RETRIES,
    },
    error::{Error, Missing, Result, Validator},
};

#[derive(Debug, Clone)]
pub struct SetAlias {
    /// The alias's namespace, which the run must be in.
    pub namespace: String,
    pub alias: String,
    pub run_id: Uuid,
    pub description: String,
    pub expected_revision: Option<i64>,
    pub reason: String,
}

impl Registry {
    pub async fn set_alias(&self, req: SetAlias, actor: &str) -> Result<Alias> {
        Self::check_alias_fields(
            &req.alias,
            &req.description,
            &req.reason,
            req.expected_revision,
        )?;
        self.ensure_servable(&req.namespace, req.run_id, "run")
            .await?;
        let entry = self
            .write_alias_retrying(&AliasWrite {
                namespace: req.namespace,
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

    /// From memory while every change is known here, else from one store read shared
    /// with concurrent readers of the alias.
    pub async fn get_alias(&self, namespace: &str, alias: &str) -> Result<Alias> {
        let mut v = Validator::default();
        validate::alias(&mut v, "alias", alias);
        v.finish()?;
        let key = super::key(namespace, alias);
        let found = match self.aliases.get(&key) {
            Some(hit) => hit,
            None => {
                let generation = self.aliases.generation();
                let read = self.alias_reads.get(namespace, alias, &key).await?;
                self.aliases.put(&key, read.clone(), generation);
                read
            }
        };
        found.ok_or_else(|| Error::NotFound(Missing::Alias(alias.into())))
    }

    pub async fn list_aliases(
        &self,
        namespace: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<Alias>, String)> {
        let limit = paging::page_size(page_size)?;
        let query = format!("aliases|{namespace}");
        let after: Option<String> = paging::decode(page_token, &query)?;
        let mut aliases = self
            .store
            .list_aliases(namespace, after.as_deref(), limit + 1)
            .await?;
        let next = if aliases.len() > limit {
            aliases.truncate(limit);
            paging::encode(&query, &aliases[limit - 1].alias)
        } else {
            String::new()
        };
        Ok((aliases, next))
    }

    pub async fn delete_alias(
        &self,
        namespace: &str,
        alias: &str,
        expected_revision: Option<i64>,
        reason: &str,
        actor: &str,
    ) -> Result<()> {
        Self::check_alias_fields(alias, "", reason, expected_revision)?;
        self.write_alias_retrying(&AliasWrite {
            namespace: namespace.into(),
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
        namespace: &str,
        alias: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<AliasHistoryEntry>, String)> {
        let mut v = Validator::default();
        validate::alias(&mut v, "alias", alias);
        v.finish()?;
        let limit = paging::page_size(page_size)?;
        let query = format!("history|{namespace}|{alias}");
        let before: Option<i64> = paging::decode(page_token, &query)?;
        let mut entries = self
            .store
            .alias_history(namespace, alias, before, limit + 1)
            .await?;
        if entries.is_empty() && before.is_none() {
            return Err(Error::NotFound(Missing::Alias(alias.into())));
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
        namespace: &str,
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
            .alias_history(namespace, alias, Some(to_revision + 1), 1)
            .await?
            .into_iter()
            .find(|e| e.revision == to_revision)
            .ok_or_else(|| {
                Error::NotFound(Missing::AliasRevision {
                    alias: alias.into(),
                    revision: to_revision,
                })
            })?;
        let run_id = target.run_id.ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "revision {to_revision} of alias {alias:?} is a deletion"
            ))
        })?;
        self.ensure_servable(namespace, run_id, "run of that revision")
            .await?;
        let entry = self
            .write_alias_retrying(&AliasWrite {
                namespace: namespace.into(),
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

    /// The run, if an alias may point at it: SUCCEEDED, with an artifact.
    pub(super) async fn servable_run(
        &self,
        namespace: &str,
        id: Uuid,
        field: &str,
    ) -> Result<ModelRun> {
        let run = self.get_run(namespace, id).await?;
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

    /// Marks the run servable after checking it once; terminal runs never change.
    async fn ensure_servable(&self, namespace: &str, id: Uuid, field: &str) -> Result<()> {
        if !self.servable.contains(namespace, &id) {
            self.servable_run(namespace, id, field).await?;
            self.servable.insert(namespace, id);
        }
        Ok(())
    }

    pub(super) async fn write_alias(&self, w: &AliasWrite) -> Result<AliasHistoryEntry> {
        let written = self.store.write_alias(w).await;
        // Even a failed write may have committed (a lost reply), so always invalidate.
        self.alias_changed();
        if let Err(Error::NotFound(Missing::Run(id))) = &written {
            // Deleted since it was found servable.
            self.servable.remove(&w.namespace, id);
        }
        let entry = written?;
        metrics::counter!("capstan_alias_writes_total", "action" => w.action.as_str()).increment(1);
        Ok(entry)
    }

    /// An unconditional write retries when a concurrent writer won the race.
    async fn write_alias_retrying(&self, w: &AliasWrite) -> Result<AliasHistoryEntry> {
        let mut attempt = 0;
        loop {
            match self.write_alias(w).await {
                Err(Error::Conflict(_))
                    if w.expected_revision.is_none() && attempt < WRITE_RETRIES =>
                {
                    attempt += 1
                }
                other => return other,
            }
        }
    }

    pub(super) fn alias_of(entry: &AliasHistoryEntry) -> Alias {
        Alias {
            namespace: entry.namespace.clone(),
            alias: entry.alias.clone(),
            run_id: entry.run_id.unwrap_or_default(),
            description: entry.description.clone(),
            revision: entry.revision,
            update_time: entry.time,
            updated_by: entry.actor.clone(),
        }
    }

    pub(super) fn check_alias_fields(
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
}
