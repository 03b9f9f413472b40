//! The pipeline's one error enum. It knows nothing of gRPC: `api::status` maps it to
//! `tonic::Status` in one place.

use std::fmt;

/// One offending request field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("invalid request: {}", Violations(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    DataLoss(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    /// This worker's lease was taken over (or released): it must stop writing.
    #[error("lease lost: {0}")]
    LeaseLost(String),
    #[error("internal error: {0}")]
    Internal(String),
}

struct Violations<'a>(&'a [FieldViolation]);

impl fmt::Display for Violations<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.description)?;
        }
        Ok(())
    }
}

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}

/// Registry-svc's shared helpers (pagination) report in its own error type.
impl From<registry_svc::error::Error> for Error {
    fn from(e: registry_svc::error::Error) -> Self {
        use registry_svc::error::Error as R;
        match e {
            R::InvalidArgument(v) => Self::InvalidArgument(
                v.into_iter()
                    .map(|v| FieldViolation::new(v.field, v.description))
                    .collect(),
            ),
            R::NotFound(m) => Self::NotFound(m),
            R::AlreadyExists(m) | R::FailedPrecondition(m) => Self::FailedPrecondition(m),
            R::Aborted(m) => Self::Aborted(m),
            R::DataLoss(m) => Self::DataLoss(m),
            R::PermissionDenied(m) => Self::PermissionDenied(m),
            R::ResourceExhausted(m) => Self::ResourceExhausted(m),
            R::Unavailable(m) => Self::Unavailable(m),
            R::Internal(m) => Self::Internal(m),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Collects field violations so that a request reports all its problems at once.
#[derive(Default)]
pub struct Validator {
    list: Vec<FieldViolation>,
}

impl Validator {
    pub fn check(&mut self, ok: bool, field: &str, description: impl FnOnce() -> String) {
        if !ok {
            self.list.push(FieldViolation::new(field, description()));
        }
    }
    pub fn finish(self) -> Result<()> {
        if self.list.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(self.list))
        }
    }
}
