//! The one place where the pipeline's errors become gRPC statuses.

use capstan_server::violations;
use tonic::Status;

use crate::error::Error;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::InvalidArgument(list) => violations::invalid_argument(message, list),
            Error::NotFound(_) => Status::not_found(message),
            Error::FailedPrecondition(_) => Status::failed_precondition(message),
            Error::Aborted(_) | Error::LeaseLost(_) => Status::aborted(message),
            Error::DataLoss(_) => Status::data_loss(message),
            Error::PermissionDenied(_) => Status::permission_denied(message),
            Error::ResourceExhausted(_) => Status::resource_exhausted(message),
            Error::Unavailable(_) => Status::unavailable(message),
            Error::Internal(_) => Status::internal(message),
        }
    }
}
