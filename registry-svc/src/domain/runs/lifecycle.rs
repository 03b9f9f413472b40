//! A run's life: what a new run may hold, and what an update may change in which state
//! (`PENDING → RUNNING → SUCCEEDED | FAILED | CANCELLED`; a terminal run keeps its outcome).

use std::collections::BTreeMap;

use capstan_proto::artifact_uri;
use uuid::Uuid;

use super::{Artifact, ModelRun, RunStatus, MAX_ATTACHMENTS, MODEL_ARTIFACT};
use crate::{
    domain::{validate, Micros},
    error::{Error, Result, Validator},
};

#[derive(Debug, Clone, Default)]
pub struct NewRun {
    pub namespace: String,
    pub request_id: Option<String>,
    pub name: String,
    pub model_type: String,
    pub params: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    pub metrics: BTreeMap<String, f64>,
    /// Pending or Running.
    pub status: Option<RunStatus>,
    pub heartbeat_timeout_ms: i64,
}

pub const MAX_HEARTBEAT_TIMEOUT_MS: i64 = 7 * 24 * 3600 * 1000;

impl NewRun {
    pub fn validate(&self) -> Result<()> {
        let mut v = Validator::default();
        validate::namespace(&mut v, "namespace", &self.namespace);
        if let Some(id) = &self.request_id {
            validate::request_id(&mut v, "request_id", id);
        }
        validate::name(&mut v, "name", &self.name);
        v.check(
            artifact_uri::is_valid_model_type(&self.model_type),
            "model_type",
            || {
                format!(
                    "{:.80?} must match [a-z0-9][a-z0-9_]{{0,63}}",
                    self.model_type
                )
            },
        );
        validate::string_map(&mut v, "params", &self.params);
        validate::string_map(&mut v, "tags", &self.tags);
        validate::metrics(&mut v, "metrics", &self.metrics);
        v.check(
            matches!(
                self.status,
                None | Some(RunStatus::Pending | RunStatus::Running)
            ),
            "status",
            || "a new run starts PENDING or RUNNING".into(),
        );
        v.check(
            (0..=MAX_HEARTBEAT_TIMEOUT_MS).contains(&self.heartbeat_timeout_ms),
            "heartbeat_timeout",
            || "must be between 0 and 7 days".into(),
        );
        Ok(v.finish()?)
    }

    pub fn into_run(self, id: Uuid, now: Micros, actor: &str) -> ModelRun {
        ModelRun {
            id,
            namespace: self.namespace,
            created_by: actor.into(),
            updated_by: actor.into(),
            request_id: self.request_id,
            name: self.name,
            model_type: self.model_type,
            params: self.params,
            tags: self.tags,
            metrics: self.metrics,
            status: self.status.unwrap_or(RunStatus::Pending),
            status_message: String::new(),
            artifact: None,
            attachments: BTreeMap::new(),
            create_time: now,
            update_time: now,
            heartbeat_time: now,
            heartbeat_timeout_ms: self.heartbeat_timeout_ms,
            version: 1,
        }
    }
}

/// The fields an update changes (AIP-134 mask already applied).
#[derive(Debug, Clone, Default)]
pub struct RunPatch {
    pub expected_etag: Option<String>,
    pub name: Option<String>,
    pub params: Option<BTreeMap<String, String>>,
    pub tags: Option<BTreeMap<String, String>>,
    pub metrics: Option<BTreeMap<String, f64>>,
    pub status: Option<RunStatus>,
    pub status_message: Option<String>,
    pub heartbeat_timeout_ms: Option<i64>,
    /// The model.
    pub artifact: Option<Artifact>,
    /// Another artifact, by name (not `MODEL_ARTIFACT`).
    pub attachment: Option<(String, Artifact)>,
}

impl RunPatch {
    /// Checks the fields on their own (before the run is read).
    pub fn validate(&self) -> Result<()> {
        let mut v = Validator::default();
        if let Some(n) = &self.name {
            validate::name(&mut v, "run.name", n);
        }
        if let Some(p) = &self.params {
            validate::string_map(&mut v, "run.params", p);
        }
        if let Some(t) = &self.tags {
            validate::string_map(&mut v, "run.tags", t);
        }
        if let Some(m) = &self.metrics {
            validate::metrics(&mut v, "run.metrics", m);
        }
        if let Some(m) = &self.status_message {
            validate::text(&mut v, "run.status_message", m);
        }
        if let Some(h) = self.heartbeat_timeout_ms {
            v.check(
                (0..=MAX_HEARTBEAT_TIMEOUT_MS).contains(&h),
                "run.heartbeat_timeout",
                || "must be between 0 and 7 days".into(),
            );
        }
        if let Some(a) = &self.artifact {
            v.check(
                validate::sha256_hex_ok(&a.sha256),
                "run.artifact_sha256",
                || "must be 64 lowercase hex characters".into(),
            );
            v.check(a.size_bytes >= 0, "run.artifact_size_bytes", || {
                "must not be negative".into()
            });
        }
        Ok(v.finish()?)
    }

    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.params.is_none()
            && self.tags.is_none()
            && self.metrics.is_none()
            && self.status.is_none()
            && self.status_message.is_none()
            && self.heartbeat_timeout_ms.is_none()
            && self.artifact.is_none()
            && self.attachment.is_none()
    }

    /// Applies the patch to `run` (read in the same transaction) or says why not.
    pub fn apply(&self, run: &mut ModelRun, now: Micros) -> Result<()> {
        if let Some(etag) = &self.expected_etag {
            if *etag != run.etag() {
                return Err(Error::Conflict(format!(
                    "run {} changed: etag is {}, request expected {etag}",
                    run.id,
                    run.etag()
                )));
            }
        }
        if run.status.is_terminal() {
            // Only annotations may change once the outcome is final.
            let touches_outcome = self.params.is_some()
                || self.metrics.is_some()
                || self.artifact.is_some()
                || self.attachment.is_some()
                || self.heartbeat_timeout_ms.is_some()
                || self.status_message.is_some()
                || self.status.is_some_and(|s| s != run.status);
            if touches_outcome {
                return Err(Error::FailedPrecondition(format!(
                    "run {} is {} (terminal): only name and tags may change",
                    run.id,
                    run.status.as_str()
                )));
            }
        }
        if let Some(next) = self.status {
            if !run.status.can_become(next) {
                return Err(Error::FailedPrecondition(format!(
                    "run {} cannot go from {} to {}",
                    run.id,
                    run.status.as_str(),
                    next.as_str()
                )));
            }
            run.status = next;
        }
        if let Some(n) = &self.name {
            run.name = n.clone();
        }
        if let Some(p) = &self.params {
            run.params = p.clone();
        }
        if let Some(t) = &self.tags {
            run.tags = t.clone();
        }
        if let Some(m) = &self.metrics {
            run.metrics = m.clone();
        }
        if let Some(m) = &self.status_message {
            run.status_message = m.clone();
        }
        if let Some(h) = self.heartbeat_timeout_ms {
            run.heartbeat_timeout_ms = h;
        }
        if let Some(a) = &self.artifact {
            belongs_to(a, run)?;
            run.artifact = Some(a.clone());
        }
        if let Some((name, a)) = &self.attachment {
            belongs_to(a, run)?;
            attach(run, name, a)?;
        }
        run.update_time = now;
        run.heartbeat_time = now;
        run.version += 1;
        Ok(())
    }
}

/// An artifact's URI names the run's namespace and model type.
fn belongs_to(a: &Artifact, run: &ModelRun) -> Result<()> {
    if a.uri.namespace() != run.namespace {
        return Err(Error::invalid(
            "run.artifact_uri",
            format!(
                "namespace {:?} in the URI differs from the run's {:?}",
                a.uri.namespace(),
                run.namespace
            ),
        ));
    }
    if a.uri.model_type() != run.model_type {
        return Err(Error::invalid(
            "run.artifact_uri",
            format!(
                "model type {:?} in the URI differs from the run's {:?}",
                a.uri.model_type(),
                run.model_type
            ),
        ));
    }
    Ok(())
}

/// Adds a named artifact. Its content is final: the same content again changes nothing
/// (a retried upload), other content is refused.
fn attach(run: &mut ModelRun, name: &str, a: &Artifact) -> Result<()> {
    debug_assert_ne!(name, MODEL_ARTIFACT);
    match run.attachments.get(name) {
        Some(old) if old.sha256 == a.sha256 => Ok(()),
        Some(old) => Err(Error::AlreadyExists(format!(
            "run {} already has an artifact {name:?} (SHA-256 {}); an attached artifact keeps its content",
            run.id, old.sha256
        ))),
        None if run.attachments.len() >= MAX_ATTACHMENTS => Err(Error::FailedPrecondition(
            format!(
                "run {} has {MAX_ATTACHMENTS} artifacts besides its model, the most it may hold",
                run.id
            ),
        )),
        None => {
            run.attachments.insert(name.to_string(), a.clone());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn status() -> impl Strategy<Value = RunStatus> {
        prop::sample::select(RunStatus::ALL.to_vec())
    }

    fn run(status: RunStatus) -> ModelRun {
        let mut r = NewRun {
            name: "r".into(),
            model_type: "m".into(),
            ..Default::default()
        }
        .into_run(Uuid::nil(), 0, "tester");
        r.status = status;
        r
    }

    proptest! {
        // Any sequence of requested transitions: the applied path is always legal,
        // terminal states never change, and refused ones change nothing.
        #[test]
        fn transitions_follow_the_machine(steps in prop::collection::vec(status(), 0..12)) {
            let mut r = run(RunStatus::Pending);
            for (i, next) in steps.into_iter().enumerate() {
                let before = r.clone();
                let res = RunPatch { status: Some(next), ..Default::default() }.apply(&mut r, i as i64);
                if before.status.is_terminal() && next != before.status {
                    prop_assert!(res.is_err());
                }
                match res {
                    Ok(()) => {
                        prop_assert!(before.status.can_become(next) || before.status == next);
                        prop_assert_eq!(r.status, next);
                        prop_assert_eq!(r.version, before.version + 1);
                    }
                    Err(_) => prop_assert_eq!(&r, &before),
                }
            }
        }
    }

    #[test]
    fn running_cannot_go_back_to_pending() {
        let mut r = run(RunStatus::Running);
        let err = RunPatch {
            status: Some(RunStatus::Pending),
            ..Default::default()
        }
        .apply(&mut r, 1);
        assert!(matches!(err, Err(Error::FailedPrecondition(_))));
    }

    #[test]
    fn stale_etag_is_aborted() {
        let mut r = run(RunStatus::Running);
        let err = RunPatch {
            expected_etag: Some("7".into()),
            name: Some("x".into()),
            ..Default::default()
        }
        .apply(&mut r, 1);
        assert!(matches!(err, Err(Error::Conflict(_))));
    }
}
