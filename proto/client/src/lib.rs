//! Typed Rust clients of the Capstan services, for the services themselves and for any
//! service outside this repository: only the protos and tonic underneath.
//!
//! - [`connect`] makes an [`AuthedChannel`]: one `http://ip:port`, or a client-side
//!   balanced pool over several comma-separated URLs or a host name's addresses (a
//!   Kubernetes headless Service), each call carrying the bearer token.
//! - The typed clients ([`RegistryClient`], [`PipelineClient`], [`OperationsClient`],
//!   [`ProvisioningClient`]) run over it.
//! - [`Retry`] retries calls that failed in transit, for calls safe to send twice.
//! - [`Propagate`] sends the caller's trace context (W3C `traceparent`, `baggage`) and
//!   request id with each call, so that the server's spans join the caller's trace.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use capstan_client::{pb::registry::v1 as registry, registry_client};
//!
//! let mut client = registry_client("http://127.0.0.1:50051", Some("token"), 8 << 20).await?;
//! let alias = client
//!     .get_alias(registry::GetAliasRequest { alias: "prod".into(), ..Default::default() })
//!     .await?
//!     .into_inner();
//! println!("prod is run {} (revision {})", alias.run_id, alias.revision);
//! # Ok(())
//! # }
//! ```

mod channel;
mod error;
mod propagate;
mod retry;

pub use capstan_proto as pb;
pub use channel::{connect, connect_with, endpoint, AuthedChannel, BearerToken};
pub use error::ConnectError;
pub use propagate::Propagate;
pub use retry::{failed_in_transit, Retry};

use capstan_proto::{pipeline::v1 as pipeline, registry::v1 as registry};

pub type RegistryClient = registry::registry_service_client::RegistryServiceClient<AuthedChannel>;
pub type PipelineClient = pipeline::pipeline_service_client::PipelineServiceClient<AuthedChannel>;
pub type OperationsClient =
    pipeline::operations_service_client::OperationsServiceClient<AuthedChannel>;
pub type ProvisioningClient =
    pipeline::provisioning_service_client::ProvisioningServiceClient<AuthedChannel>;

/// A registry client over [`connect`]`(urls, token)` that sends and accepts messages up to
/// `max_message_bytes` (artifacts travel in chunks far smaller than the default 8 MiB).
pub async fn registry_client(
    urls: &str,
    token: Option<&str>,
    max_message_bytes: usize,
) -> Result<RegistryClient, ConnectError> {
    Ok(RegistryClient::new(connect(urls, token).await?)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes))
}
