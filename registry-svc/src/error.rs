//! The registry's one error enum, in the registry's own terms. It knows nothing of gRPC:
//! [`ServiceError`] says what kind of failure each variant is, and capstan-server's shared
//! mapping (used in `api::status`) makes the status.

use std::fmt;

use capstan_server::{
    error::{ErrorKind, ServiceError, Source},
    violations::Joined,
};
use uuid::Uuid;

pub use capstan_server::violations::{FieldViolation, Validator};

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request is malformed; every offending field is listed.
    #[error("invalid request: {}", Joined(.0))]
    Invalid(Vec<FieldViolation>),
    /// Something the request names does not exist.
    #[error("{0}")]
    NotFound(Missing),
    /// A concurrent change won: an alias moved past the expected revision, a run past the
    /// expected etag, or another writer's transaction got there first. Read and retry.
    #[error("{0}")]
    Conflict(String),
    /// What the request would create exists already (a run's artifact of that name, with
    /// other content).
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid, but not in the state it meets (a terminal run, an alias
    /// pointed at a run without an artifact, a refused promotion).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Content does not match what was promised, or a stored artifact is gone.
    #[error("{0}")]
    DataLoss(String),
    /// The caller's grants do not allow this write in this namespace.
    #[error("{0}")]
    PermissionDenied(String),
    /// A limit was reached (concurrent watches).
    #[error("{0}")]
    ResourceExhausted(String),
    /// Storage cannot be reached now (the database, the blob store); the same request
    /// may succeed later.
    #[error("{what} is unavailable")]
    Unavailable {
        what: String,
        #[source]
        source: Option<Source>,
    },
    /// Our bug, or corrupt stored data.
    #[error("{what}")]
    Internal {
        what: String,
        #[source]
        source: Option<Source>,
    },
}

/// What a request named that does not exist: its kind and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// Or the caller may not read it: nothing says which.
    Namespace(String),
    Run(Uuid),
    Alias(String),
    /// The alias never had this revision.
    AliasRevision {
        alias: String,
        revision: i64,
    },
    /// The run exists but has no artifact of this name.
    Artifact(Uuid, String),
    /// No blob of this SHA-256 is stored.
    Blob(String),
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Namespace(ns) => write!(f, "namespace {ns:?} does not exist or is not readable"),
            Self::Run(id) => write!(f, "run {id} does not exist"),
            Self::Alias(alias) => write!(f, "alias {alias:?} does not exist"),
            Self::AliasRevision { alias, revision } => {
                write!(f, "alias {alias:?} has no revision {revision}")
            }
            Self::Artifact(run, name) => write!(f, "run {run} has no artifact {name:?}"),
            Self::Blob(sha256) => write!(f, "blob {sha256} is not stored"),
        }
    }
}

impl Error {
    /// One invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldViolation::new(field, description)])
    }

    pub fn unavailable(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable {
            what: what.into(),
            source: Some(capstan_server::error::source(source)),
        }
    }

    pub fn internal(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Internal {
            what: what.into(),
            source: Some(capstan_server::error::source(source)),
        }
    }

    /// An internal error that has no cause beyond its description.
    pub fn bug(what: impl Into<String>) -> Self {
        Self::Internal {
            what: what.into(),
            source: None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<FieldViolation> for Error {
    fn from(v: FieldViolation) -> Self {
        Self::Invalid(vec![v])
    }
}

impl From<Vec<FieldViolation>> for Error {
    fn from(v: Vec<FieldViolation>) -> Self {
        Self::Invalid(v)
    }
}

impl ServiceError for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::Invalid,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Conflict(_) => ErrorKind::Aborted,
            Self::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Self::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            Self::DataLoss(_) => ErrorKind::DataLoss,
            Self::ResourceExhausted(_) => ErrorKind::ResourceExhausted,
            Self::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::Internal { .. } => ErrorKind::Internal,
        }
    }

    fn field_violations(&self) -> &[FieldViolation] {
        match self {
            Self::Invalid(list) => list,
            _ => &[],
        }
    }
}
