//! Runs between protobuf messages and domain types; wire input is checked on the way in
//! (an AIP-134 field mask becomes a [`RunPatch`]).

use std::collections::BTreeMap;

use capstan_proto::{artifact_uri::ArtifactUri, registry::v1 as pb};
use prost_types::{Duration, Timestamp};

use crate::{
    domain::{
        runs::{Artifact, ModelRun, NewRun, RunPatch, RunStatus, MODEL_ARTIFACT},
        Micros,
    },
    error::{Error, Result},
};

pub fn timestamp(micros: Micros) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    })
}

fn duration_ms(field: &str, d: &Duration) -> Result<i64> {
    if d.seconds < 0 || d.nanos < 0 || d.seconds > i64::MAX / 2000 {
        return Err(Error::invalid(field, "must be a non-negative duration"));
    }
    Ok(d.seconds * 1000 + i64::from(d.nanos) / 1_000_000)
}

pub fn status_to_pb(s: RunStatus) -> pb::RunStatus {
    match s {
        RunStatus::Pending => pb::RunStatus::Pending,
        RunStatus::Running => pb::RunStatus::Running,
        RunStatus::Succeeded => pb::RunStatus::Succeeded,
        RunStatus::Failed => pb::RunStatus::Failed,
        RunStatus::Cancelled => pb::RunStatus::Cancelled,
    }
}

/// `UNSPECIFIED` is `None`; numbers outside the enum are refused.
pub fn status_from_pb(field: &str, value: i32) -> Result<Option<RunStatus>> {
    match pb::RunStatus::try_from(value) {
        Ok(pb::RunStatus::Unspecified) => Ok(None),
        Ok(pb::RunStatus::Pending) => Ok(Some(RunStatus::Pending)),
        Ok(pb::RunStatus::Running) => Ok(Some(RunStatus::Running)),
        Ok(pb::RunStatus::Succeeded) => Ok(Some(RunStatus::Succeeded)),
        Ok(pb::RunStatus::Failed) => Ok(Some(RunStatus::Failed)),
        Ok(pb::RunStatus::Cancelled) => Ok(Some(RunStatus::Cancelled)),
        Err(_) => Err(Error::invalid(field, format!("{value} is not a RunStatus"))),
    }
}

pub fn artifact_to_pb(name: String, a: Artifact) -> pb::RunArtifact {
    pb::RunArtifact {
        name,
        uri: a.uri.to_string(),
        sha256: a.sha256,
        size_bytes: a.size_bytes,
        media_type: a.media_type,
    }
}

pub fn run_to_pb(r: ModelRun) -> pb::Run {
    let (uri, sha, size) = match &r.artifact {
        Some(a) => (a.uri.to_string(), a.sha256.clone(), a.size_bytes),
        None => (String::new(), String::new(), 0),
    };
    let artifacts = r
        .artifact
        .map(|a| (MODEL_ARTIFACT.to_string(), a))
        .into_iter()
        .chain(r.attachments)
        .map(|(name, a)| artifact_to_pb(name, a))
        .collect();
    pb::Run {
        run_id: r.id.to_string(),
        namespace: r.namespace,
        created_by: r.created_by,
        updated_by: r.updated_by,
        etag: r.version.to_string(),
        name: r.name,
        model_type: r.model_type,
        params: r.params.into_iter().collect(),
        tags: r.tags.into_iter().collect(),
        metrics: r.metrics.into_iter().collect(),
        status: status_to_pb(r.status) as i32,
        artifact_uri: uri,
        artifact_sha256: sha,
        artifact_size_bytes: size,
        artifacts,
        create_time: timestamp(r.create_time),
        update_time: timestamp(r.update_time),
        heartbeat_timeout: (r.heartbeat_timeout_ms > 0).then(|| Duration {
            seconds: r.heartbeat_timeout_ms / 1000,
            nanos: ((r.heartbeat_timeout_ms % 1000) * 1_000_000) as i32,
        }),
        heartbeat_time: timestamp(r.heartbeat_time),
        status_message: r.status_message,
        request_id: r.request_id.unwrap_or_default(),
    }
}

fn sorted<V>(m: std::collections::HashMap<String, V>) -> BTreeMap<String, V> {
    m.into_iter().collect()
}

impl TryFrom<pb::CreateRunRequest> for NewRun {
    type Error = Error;
    fn try_from(r: pb::CreateRunRequest) -> Result<Self> {
        Ok(NewRun {
            // The api layer sets it once the caller's grant on it is checked.
            namespace: String::new(),
            request_id: (!r.request_id.is_empty()).then_some(r.request_id),
            name: r.name,
            model_type: r.model_type,
            params: sorted(r.params),
            tags: sorted(r.tags),
            metrics: sorted(r.metrics),
            status: status_from_pb("status", r.status)?,
            heartbeat_timeout_ms: r
                .heartbeat_timeout
                .as_ref()
                .map(|d| duration_ms("heartbeat_timeout", d))
                .transpose()?
                .unwrap_or(0),
        })
    }
}

const UPDATABLE: [&str; 8] = [
    "name",
    "params",
    "tags",
    "metrics",
    "status",
    "status_message",
    "heartbeat_timeout",
    "artifact",
];

fn artifact_from_pb(run: &pb::Run) -> Result<Artifact> {
    Ok(Artifact {
        uri: ArtifactUri::parse(&run.artifact_uri)
            .map_err(|e| Error::invalid("run.artifact_uri", e.to_string()))?,
        sha256: run.artifact_sha256.clone(),
        size_bytes: run.artifact_size_bytes,
        // What UpdateRun sets is a reference only: no media type comes with it.
        media_type: String::new(),
    })
}

/// Applies the AIP-134 field mask; an empty mask means "every field that is set".
pub fn patch_from_pb(run: &pb::Run, mask: Option<&prost_types::FieldMask>) -> Result<RunPatch> {
    let paths: Vec<String> = match mask {
        Some(m) if !m.paths.is_empty() => m.paths.clone(),
        _ => {
            let mut p = Vec::new();
            let mut set = |cond: bool, name: &str| {
                if cond {
                    p.push(name.to_string())
                }
            };
            set(!run.name.is_empty(), "name");
            set(!run.params.is_empty(), "params");
            set(!run.tags.is_empty(), "tags");
            set(!run.metrics.is_empty(), "metrics");
            set(run.status != 0, "status");
            set(!run.status_message.is_empty(), "status_message");
            set(run.heartbeat_timeout.is_some(), "heartbeat_timeout");
            set(
                !run.artifact_uri.is_empty()
                    || !run.artifact_sha256.is_empty()
                    || run.artifact_size_bytes != 0,
                "artifact",
            );
            p
        }
    };
    let mut patch = RunPatch {
        expected_etag: (!run.etag.is_empty()).then(|| run.etag.clone()),
        ..Default::default()
    };
    for path in &paths {
        match path.as_str() {
            "name" => patch.name = Some(run.name.clone()),
            "params" => patch.params = Some(sorted(run.params.clone())),
            "tags" => patch.tags = Some(sorted(run.tags.clone())),
            "metrics" => patch.metrics = Some(sorted(run.metrics.clone())),
            "status" => {
                patch.status = Some(status_from_pb("run.status", run.status)?.ok_or_else(|| {
                    Error::invalid("run.status", "must not be RUN_STATUS_UNSPECIFIED")
                })?)
            }
            "status_message" => patch.status_message = Some(run.status_message.clone()),
            "heartbeat_timeout" => {
                patch.heartbeat_timeout_ms = Some(
                    run.heartbeat_timeout
                        .as_ref()
                        .map(|d| duration_ms("run.heartbeat_timeout", d))
                        .transpose()?
                        .unwrap_or(0),
                )
            }
            "artifact" | "artifact_uri" | "artifact_sha256" | "artifact_size_bytes" => {
                patch.artifact = Some(artifact_from_pb(run)?)
            }
            other => {
                return Err(Error::invalid(
                    "update_mask",
                    format!(
                        "{other:.64?} is not updatable; use one of {}",
                        UPDATABLE.join(", ")
                    ),
                ))
            }
        }
    }
    if patch.is_empty() {
        return Err(Error::invalid("update_mask", "names no field to update"));
    }
    Ok(patch)
}
