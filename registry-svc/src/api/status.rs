//! The one place where the registry's errors become gRPC statuses: capstan-server's
//! shared mapping (an internal error tells the client only its request id).

use tonic::Status;

use crate::error::Error;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        capstan_server::error::to_status(&e)
    }
}
