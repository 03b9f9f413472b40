//! One error model for both services: each crate keeps one error enum in its own domain
//! terms, says for each variant which [`ErrorKind`] it is, and this module turns it into a
//! `tonic::Status` the same way everywhere.
//!
//! # Adopting it
//!
//! ```
//! use capstan_server::error::{ErrorKind, ServiceError, Source};
//! use capstan_server::violations::FieldViolation;
//!
//! #[derive(Debug, thiserror::Error)]
//! pub enum Error {
//!     #[error("invalid request")]
//!     Invalid(Vec<FieldViolation>),
//!     #[error("widget {0} does not exist")]
//!     NotFound(String),
//!     #[error("{what} is unavailable")]
//!     Unavailable { what: String, #[source] source: Source },
//!     #[error("{what}")]
//!     Internal { what: String, #[source] source: Option<Source> },
//! }
//!
//! impl ServiceError for Error {
//!     fn kind(&self) -> ErrorKind {
//!         match self {
//!             Self::Invalid(_) => ErrorKind::Invalid,
//!             Self::NotFound(_) => ErrorKind::NotFound,
//!             Self::Unavailable { .. } => ErrorKind::Unavailable,
//!             Self::Internal { .. } => ErrorKind::Internal,
//!         }
//!     }
//!     fn field_violations(&self) -> &[FieldViolation] {
//!         match self {
//!             Self::Invalid(v) => v,
//!             _ => &[],
//!         }
//!     }
//! }
//!
//! // In the crate's api/ (the orphan rule wants the impl in the crate of `Error`):
//! impl From<Error> for tonic::Status {
//!     fn from(e: Error) -> Self {
//!         capstan_server::error::to_status(&e)
//!     }
//! }
//!
//! let status = tonic::Status::from(Error::NotFound("w1".into()));
//! assert_eq!(status.code(), tonic::Code::NotFound);
//! assert_eq!(status.message(), "widget w1 does not exist");
//! ```
//!
//! What the client is told:
//! - an [`ErrorKind::Internal`] error: only "internal error" and the request id (see
//!   [`crate::serve::request_id`]); the error and its whole source chain go to the log,
//!   under the same id. A client can do nothing with our bug's details, and they may
//!   hold what it must not see.
//! - [`ErrorKind::Invalid`]: the message and every field violation as
//!   `google.rpc.BadRequest` details.
//! - every other kind: the error's message (its `Display`, without the sources).
//!   Unavailable and data-loss errors are logged with their source chain as well: they
//!   are the operator's to act on.
//!
//! Database failures are classified once, in [`crate::db::classify`], so that a lost
//! connection or a restarting server is `Unavailable` in every crate.

use std::{error::Error as StdError, fmt, sync::Arc};

use tonic::{Code, Status};

use crate::violations::{self, FieldViolation};

/// A kept cause: shared, so that error enums holding one stay `Clone` (an answer may go
/// to several waiters).
pub type Source = Arc<dyn StdError + Send + Sync + 'static>;

/// What kind of failure an error is, which decides its status code and what the client
/// may do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is wrong (field violations say where); retrying cannot help.
    Invalid,
    /// Something the request names does not exist.
    NotFound,
    /// What the request would create exists already.
    AlreadyExists,
    /// The request is valid but the state it meets does not allow it (a terminal run, a
    /// refused promotion); retrying without changing the state cannot help.
    FailedPrecondition,
    /// A concurrent change won (compare-and-swap, etag, a lost transaction race): read
    /// again and retry the read-modify-write.
    Aborted,
    /// A limit was reached (watchers, sizes).
    ResourceExhausted,
    /// The caller's role does not allow it.
    PermissionDenied,
    /// Stored content is lost or corrupt.
    DataLoss,
    /// A dependency (the database, the blob store, another service) cannot be reached
    /// now: the same request may succeed later as it is.
    Unavailable,
    /// Our bug. The client hears only that, and the request id.
    Internal,
}

impl ErrorKind {
    pub fn code(self) -> Code {
        match self {
            Self::Invalid => Code::InvalidArgument,
            Self::NotFound => Code::NotFound,
            Self::AlreadyExists => Code::AlreadyExists,
            Self::FailedPrecondition => Code::FailedPrecondition,
            Self::Aborted => Code::Aborted,
            Self::ResourceExhausted => Code::ResourceExhausted,
            Self::PermissionDenied => Code::PermissionDenied,
            Self::DataLoss => Code::DataLoss,
            Self::Unavailable => Code::Unavailable,
            Self::Internal => Code::Internal,
        }
    }
}

/// An error that knows what kind of failure it is. Implemented by each crate's one error
/// enum; [`to_status`] does the rest.
pub trait ServiceError: StdError + Send + Sync + 'static {
    fn kind(&self) -> ErrorKind;

    /// The offending fields of an [`ErrorKind::Invalid`] error.
    fn field_violations(&self) -> &[FieldViolation] {
        &[]
    }
}

/// The status a client receives for `e`; logs what the operator needs (see the module
/// documentation). Carries the request id as `x-request-id` metadata when there is one.
pub fn to_status<E: ServiceError + ?Sized>(e: &E) -> Status {
    let kind = e.kind();
    let request_id = crate::serve::request_id();
    let id = request_id.as_deref().unwrap_or("none");
    let mut status = match kind {
        ErrorKind::Internal => {
            tracing::error!(request_id = id, error = %Chain(e), "internal error");
            Status::internal(format!(
                "internal error (request id {id}: the server log has the cause)"
            ))
        }
        ErrorKind::Invalid => {
            violations::invalid_argument(e.to_string(), e.field_violations().to_vec())
        }
        ErrorKind::Unavailable | ErrorKind::DataLoss => {
            tracing::warn!(request_id = id, code = ?kind.code(), error = %Chain(e), "request failed");
            Status::new(kind.code(), e.to_string())
        }
        _ => Status::new(kind.code(), e.to_string()),
    };
    if let Some(value) = request_id.and_then(|id| id.parse().ok()) {
        status.metadata_mut().insert("x-request-id", value);
    }
    status
}

/// An error and its sources, `outer: cause: root cause`, for logs.
pub struct Chain<'a, E: ?Sized>(pub &'a E);

impl<E: StdError + ?Sized> fmt::Display for Chain<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            write!(f, ": {cause}")?;
            next = cause.source();
        }
        Ok(())
    }
}

/// Keeps `e` as a [`Source`].
pub fn source(e: impl StdError + Send + Sync + 'static) -> Source {
    Arc::new(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum TestError {
        #[error("bad")]
        Invalid(Vec<FieldViolation>),
        #[error("store lost")]
        Unavailable(#[source] std::io::Error),
        #[error("decoding a stored row")]
        Internal(#[source] std::io::Error),
    }

    impl ServiceError for TestError {
        fn kind(&self) -> ErrorKind {
            match self {
                Self::Invalid(_) => ErrorKind::Invalid,
                Self::Unavailable(_) => ErrorKind::Unavailable,
                Self::Internal(_) => ErrorKind::Internal,
            }
        }
        fn field_violations(&self) -> &[FieldViolation] {
            match self {
                Self::Invalid(v) => v,
                _ => &[],
            }
        }
    }

    #[test]
    fn internal_errors_hide_their_cause_and_give_the_request_id() {
        let e = TestError::Internal(std::io::Error::other("secret path /etc/x"));
        let status = to_status(&e);
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"), "{}", status.message());
        assert!(
            status.message().contains("request id"),
            "{}",
            status.message()
        );
        assert_eq!(
            Chain(&e).to_string(),
            "decoding a stored row: secret path /etc/x"
        );
    }

    #[test]
    fn other_kinds_keep_their_message_and_code() {
        let e = TestError::Unavailable(std::io::Error::other("reset"));
        let status = to_status(&e);
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unavailable, "store lost")
        );
        let e = TestError::Invalid(vec![FieldViolation::new("name", "is empty")]);
        let status = to_status(&e);
        assert_eq!(status.code(), Code::InvalidArgument);
        use tonic_types::StatusExt;
        let details = status
            .get_details_bad_request()
            .expect("BadRequest details");
        assert_eq!(details.field_violations[0].field, "name");
    }
}
