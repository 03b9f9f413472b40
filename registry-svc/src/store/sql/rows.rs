//! Stored rows read back as domain values, and the columns they are read from.

use std::collections::BTreeMap;

use capstan_proto::artifact_uri::ArtifactUri;
use sqlx::{any::AnyRow, Row};
use uuid::Uuid;

use super::db_error;
use crate::{
    domain::{
        aliases::{Alias, AliasAction, AliasHistoryEntry},
        namespaces::Namespace,
        runs::{Artifact, ModelRun, RunStatus},
    },
    error::{Error, Result},
};

pub const ALIAS_COLS: &str =
    "namespace, alias, run_id, description, revision, update_time, updated_by";

pub const HISTORY_COLS: &str =
    "namespace, alias, revision, run_id, previous_run_id, action, reason, actor, description, time";

pub const NAMESPACE_COLS: &str = "name, creator, create_time";

pub const RUN_COLS: &str =
    "r.run_id, r.namespace, r.created_by, r.updated_by, r.request_id, r.name, r.model_type, r.params, r.tags, r.metrics, r.status, \
     r.status_message, r.artifact_uri, r.artifact_sha256, r.artifact_size_bytes, \
     r.artifact_media_type, r.artifacts, r.create_time, r.update_time, r.heartbeat_time, r.heartbeat_timeout_ms, r.version";

/// A stored value that does not read back: corrupt data or a schema out of step.
fn corrupt(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::bug(format!("stored {what} is unreadable: {detail}"))
}

pub fn parse_uuid(col: &str, s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| corrupt(col, e))
}

/// An empty text stands for "none".
pub fn parse_opt_uuid(col: &str, s: &str) -> Result<Option<Uuid>> {
    (!s.is_empty()).then(|| parse_uuid(col, s)).transpose()
}

fn uuid_col(row: &AnyRow, col: &str) -> Result<Uuid> {
    parse_uuid(col, &row.try_get::<String, _>(col).map_err(db_error)?)
}

fn opt_uuid_col(row: &AnyRow, col: &str) -> Result<Option<Uuid>> {
    parse_opt_uuid(col, &row.try_get::<String, _>(col).map_err(db_error)?)
}

fn json_col<T: serde::de::DeserializeOwned>(row: &AnyRow, col: &str) -> Result<T> {
    let s: String = row.try_get(col).map_err(db_error)?;
    serde_json::from_str(&s).map_err(|e| corrupt(col, e))
}

/// A run's artifact besides its model, as its `artifacts` JSON object holds it by name.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct StoredArtifact {
    pub uri: String,
    pub sha256: String,
    pub size_bytes: i64,
    #[serde(default)]
    pub media_type: String,
}

/// The `artifacts` column of a run.
pub fn attachments_json(attachments: &BTreeMap<String, Artifact>) -> String {
    let stored: BTreeMap<&str, StoredArtifact> = attachments
        .iter()
        .map(|(name, a)| {
            let s = StoredArtifact {
                uri: a.uri.to_string(),
                sha256: a.sha256.clone(),
                size_bytes: a.size_bytes,
                media_type: a.media_type.clone(),
            };
            (name.as_str(), s)
        })
        .collect();
    to_json(&stored)
}

fn attachments_col(row: &AnyRow) -> Result<BTreeMap<String, Artifact>> {
    let stored: BTreeMap<String, StoredArtifact> = json_col(row, "artifacts")?;
    stored
        .into_iter()
        .map(|(name, s)| {
            let a = Artifact {
                uri: ArtifactUri::parse(&s.uri).map_err(|e| corrupt("artifacts", e))?,
                sha256: s.sha256,
                size_bytes: s.size_bytes,
                media_type: s.media_type,
            };
            Ok((name, a))
        })
        .collect()
}

pub fn run_from_row(row: &AnyRow) -> Result<ModelRun> {
    let status: String = row.try_get("status").map_err(db_error)?;
    let uri: Option<String> = row.try_get("artifact_uri").map_err(db_error)?;
    let artifact = match uri {
        Some(uri) => Some(Artifact {
            uri: ArtifactUri::parse(&uri).map_err(|e| corrupt("artifact_uri", e))?,
            sha256: row
                .try_get::<Option<String>, _>("artifact_sha256")
                .map_err(db_error)?
                .unwrap_or_default(),
            size_bytes: row
                .try_get::<Option<i64>, _>("artifact_size_bytes")
                .map_err(db_error)?
                .unwrap_or(0),
            media_type: row.try_get("artifact_media_type").map_err(db_error)?,
        }),
        None => None,
    };
    Ok(ModelRun {
        id: uuid_col(row, "run_id")?,
        namespace: row.try_get("namespace").map_err(db_error)?,
        created_by: row.try_get("created_by").map_err(db_error)?,
        updated_by: row.try_get("updated_by").map_err(db_error)?,
        request_id: row.try_get("request_id").map_err(db_error)?,
        name: row.try_get("name").map_err(db_error)?,
        model_type: row.try_get("model_type").map_err(db_error)?,
        params: json_col(row, "params")?,
        tags: json_col(row, "tags")?,
        metrics: json_col(row, "metrics")?,
        status: RunStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        status_message: row.try_get("status_message").map_err(db_error)?,
        artifact,
        attachments: attachments_col(row)?,
        create_time: row.try_get("create_time").map_err(db_error)?,
        update_time: row.try_get("update_time").map_err(db_error)?,
        heartbeat_time: row.try_get("heartbeat_time").map_err(db_error)?,
        heartbeat_timeout_ms: row.try_get("heartbeat_timeout_ms").map_err(db_error)?,
        version: row.try_get("version").map_err(db_error)?,
    })
}

pub fn alias_from_row(row: &AnyRow) -> Result<Alias> {
    Ok(Alias {
        namespace: row.try_get("namespace").map_err(db_error)?,
        alias: row.try_get("alias").map_err(db_error)?,
        run_id: uuid_col(row, "run_id")?,
        description: row.try_get("description").map_err(db_error)?,
        revision: row.try_get("revision").map_err(db_error)?,
        update_time: row.try_get("update_time").map_err(db_error)?,
        updated_by: row.try_get("updated_by").map_err(db_error)?,
    })
}

pub fn history_from_row(row: &AnyRow) -> Result<AliasHistoryEntry> {
    let action: String = row.try_get("action").map_err(db_error)?;
    Ok(AliasHistoryEntry {
        namespace: row.try_get("namespace").map_err(db_error)?,
        alias: row.try_get("alias").map_err(db_error)?,
        revision: row.try_get("revision").map_err(db_error)?,
        run_id: opt_uuid_col(row, "run_id")?,
        previous_run_id: opt_uuid_col(row, "previous_run_id")?,
        action: AliasAction::parse(&action).ok_or_else(|| corrupt("action", &action))?,
        reason: row.try_get("reason").map_err(db_error)?,
        actor: row.try_get("actor").map_err(db_error)?,
        description: row.try_get("description").map_err(db_error)?,
        time: row.try_get("time").map_err(db_error)?,
    })
}

pub fn namespace_from_row(row: &AnyRow) -> Result<Namespace> {
    Ok(Namespace {
        name: row.try_get("name").map_err(db_error)?,
        creator: row.try_get("creator").map_err(db_error)?,
        create_time: row.try_get("create_time").map_err(db_error)?,
    })
}

pub fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}
