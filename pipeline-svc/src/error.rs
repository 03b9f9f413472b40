//! The pipeline's one error enum. It knows nothing of gRPC: `api::status` maps it to
//! `tonic::Status` in one place.

use capstan_server::violations::Joined;
pub use capstan_server::violations::{FieldViolation, Validator};

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("invalid request: {}", Joined(.0))]
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

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Vec<FieldViolation>> for Error {
    fn from(v: Vec<FieldViolation>) -> Self {
        Self::InvalidArgument(v)
    }
}
