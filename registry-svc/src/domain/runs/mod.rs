//! Model runs: one training or evaluation of a model, with its parameters, metrics,
//! outcome and artifact.

pub mod filter;
mod lifecycle;
mod listing;
mod recent;
mod service;

use std::collections::BTreeMap;

use capstan_proto::artifact_uri::ArtifactUri;
use uuid::Uuid;

use super::Micros;

pub use lifecycle::{NewRun, RunPatch, MAX_HEARTBEAT_TIMEOUT_MS};
pub use listing::{ListRuns, RunCursor, RunFilter, RunOrder};
pub(super) use recent::RecentRuns;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub const ALL: [RunStatus; 5] = [
        Self::Pending,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// `PENDING → RUNNING → SUCCEEDED | FAILED | CANCELLED`; PENDING may end at once;
    /// staying put is allowed for non-terminal states; a terminal state never changes.
    pub fn can_become(self, next: RunStatus) -> bool {
        use RunStatus::*;
        match self {
            Pending => true,
            Running => next != Pending,
            Succeeded | Failed | Cancelled => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Running => "RUNNING",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// A stored artifact reference: the canonical URI and the content's hash and size.
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    pub uri: ArtifactUri,
    pub sha256: String,
    pub size_bytes: i64,
}

/// A model run as the registry keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRun {
    pub id: Uuid,
    /// Where the run lives: its artifact URIs start with it, and grants are given on it.
    pub namespace: String,
    /// Subjects of the callers that created the run and that changed it last.
    pub created_by: String,
    pub updated_by: String,
    pub request_id: Option<String>,
    pub name: String,
    pub model_type: String,
    pub params: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    pub metrics: BTreeMap<String, f64>,
    pub status: RunStatus,
    pub status_message: String,
    pub artifact: Option<Artifact>,
    pub create_time: Micros,
    pub update_time: Micros,
    pub heartbeat_time: Micros,
    /// Zero: no heartbeat expected.
    pub heartbeat_timeout_ms: i64,
    /// Bumped on every write; the etag is its decimal text.
    pub version: i64,
}

impl ModelRun {
    pub fn etag(&self) -> String {
        self.version.to_string()
    }
}
