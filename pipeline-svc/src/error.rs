//! The pipeline's one error enum, in the domain's terms. It knows nothing of gRPC: each
//! variant says which [`ErrorKind`] it is, and `api::status` turns it into a
//! `tonic::Status` through the workspace's one mapping (`capstan_server::error`).

pub use capstan_server::error::Source;
pub use capstan_server::violations::{FieldViolation, Validator};
use capstan_server::{
    error::{ErrorKind, ServiceError},
    violations::Joined,
};

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request breaks its rules; every violation is reported at once.
    #[error("invalid request: {}", Joined(.0))]
    Invalid(Vec<FieldViolation>),
    /// `kind` names what was looked for (`operation`, `graph`…), `id` which one.
    #[error("{kind} {id} does not exist")]
    NotFound { kind: &'static str, id: String },
    /// The operation existed, ended, and was purged once its retention ran out (its
    /// tombstone says so); NOT_FOUND on the wire, like any other missing operation.
    #[error("operation {id} was purged after the {retention_days}-day retention")]
    Purged { id: String, retention_days: i64 },
    /// Another writer changed the thing between our read and our write (a lost
    /// compare-and-swap, a serialization failure); a retry from a fresh read may succeed.
    #[error("{0}")]
    Conflict(String),
    /// The thing exists, but its state does not allow this (a finished operation, a
    /// refused promotion, a status move its state machine forbids).
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// A limit was reached (watchers, artifact size); retry later or ask for less.
    #[error("{0}")]
    Exhausted(String),
    /// Data that failed its verification (a checksum, an artifact that does not load).
    #[error("{0}")]
    Corrupt(String),
    /// A dependency (the database, the registry, a graph database) cannot be reached
    /// right now; retrying is safe.
    #[error("{message}")]
    Unavailable {
        message: String,
        #[source]
        source: Option<Source>,
    },
    /// This worker's lease was taken over (or released): it must stop writing.
    #[error("lease lost: {0}")]
    LeaseLost(String),
    /// A bug or a broken invariant: nothing the caller can fix.
    #[error("internal error: {message}")]
    Internal {
        message: String,
        #[source]
        source: Option<Source>,
    },
}

impl ServiceError for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::Invalid,
            Self::NotFound { .. } | Self::Purged { .. } => ErrorKind::NotFound,
            Self::Conflict(_) | Self::LeaseLost(_) => ErrorKind::Aborted,
            Self::Precondition(_) => ErrorKind::FailedPrecondition,
            Self::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Self::Exhausted(_) => ErrorKind::ResourceExhausted,
            Self::Corrupt(_) => ErrorKind::DataLoss,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::Internal { .. } => ErrorKind::Internal,
        }
    }

    fn field_violations(&self) -> &[FieldViolation] {
        match self {
            Self::Invalid(v) => v,
            _ => &[],
        }
    }
}

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldViolation::new(field, description)])
    }

    pub fn not_found(kind: &'static str, id: impl std::fmt::Display) -> Self {
        Self::NotFound {
            kind,
            id: id.to_string(),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// Unavailable because of `source`, whose text ends the message.
    pub fn unavailable_from(
        what: impl std::fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable {
            message: format!("{what}: {source}"),
            source: Some(capstan_server::error::source(source)),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal {
            message: message.into(),
            source: None,
        }
    }

    /// Internal because of `source`, whose text ends the message.
    pub fn internal_from(
        what: impl std::fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Internal {
            message: format!("{what}: {source}"),
            source: Some(capstan_server::error::source(source)),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Vec<FieldViolation>> for Error {
    fn from(v: Vec<FieldViolation>) -> Self {
        Self::Invalid(v)
    }
}
