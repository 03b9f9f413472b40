//! The one place where the pipeline's errors become gRPC statuses. A lost database or an
//! unreachable dependency is UNAVAILABLE (clients retry), a lost lease or a lost
//! compare-and-swap ABORTED (retry from a fresh read).

use capstan_server::violations;
use tonic::Status;

use crate::error::Error;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::Invalid(list) => violations::invalid_argument(message, list),
            Error::NotFound { .. } => Status::not_found(message),
            Error::Precondition(_) => Status::failed_precondition(message),
            Error::Conflict(_) | Error::LeaseLost(_) => Status::aborted(message),
            Error::Corrupt(_) => Status::data_loss(message),
            Error::PermissionDenied(_) => Status::permission_denied(message),
            Error::Exhausted(_) => Status::resource_exhausted(message),
            Error::Unavailable { .. } => Status::unavailable(message),
            Error::Internal { .. } => Status::internal(message),
        }
    }
}
