//! Model runs: one training or evaluation of a model, with its parameters, metrics,
//! outcome and artifact.

mod deletion;
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

/// A stored artifact reference: the canonical URI, the content's hash and size, and the
/// media type the upload gave (may be empty).
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    pub uri: ArtifactUri,
    pub sha256: String,
    pub size_bytes: i64,
    pub media_type: String,
}

/// The name of a run's model among its artifacts: uploads that name no artifact attach it.
pub const MODEL_ARTIFACT: &str = "model";
/// Artifacts a run may hold besides its model.
pub const MAX_ATTACHMENTS: usize = 64;

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
    /// The model: what aliases serve (`MODEL_ARTIFACT` among the run's artifacts).
    pub artifact: Option<Artifact>,
    /// The run's other artifacts by name (charts, reports); once attached, they keep
    /// their content.
    pub attachments: BTreeMap<String, Artifact>,
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

    /// The artifact called `name` (`MODEL_ARTIFACT` is the model).
    pub fn artifact_named(&self, name: &str) -> Option<&Artifact> {
        if name == MODEL_ARTIFACT {
            self.artifact.as_ref()
        } else {
            self.attachments.get(name)
        }
    }
}
