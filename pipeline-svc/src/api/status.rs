//! Where the pipeline's errors become gRPC statuses: through the workspace's one mapping
//! (`capstan_server::error::to_status`), by the kind each variant declares. A lost
//! database or an unreachable dependency is UNAVAILABLE (clients retry), a lost lease or
//! a lost compare-and-swap ABORTED (retry from a fresh read), and an internal error tells
//! the client only the request id (the log has the cause).

use tonic::Status;

use crate::error::Error;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        capstan_server::error::to_status(&e)
    }
}
