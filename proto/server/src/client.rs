//! Channels for typed clients: connect to a Capstan service and attach a bearer token.

use std::time::Duration;

use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Channel, Endpoint},
    Request, Status,
};

/// Adds `authorization: Bearer …` to every call when a token is set.
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    pub fn new(token: Option<&str>) -> anyhow::Result<Self> {
        Ok(Self(match token {
            Some(t) => Some(format!("Bearer {t}").parse()?),
            None => None,
        }))
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type AuthedChannel = InterceptedService<Channel, BearerToken>;

/// An endpoint with the timeouts and keep-alives every Capstan client wants.
pub fn endpoint(url: &str) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true))
}

/// Connects to `url` (`http://host:port`) and wraps the channel with the token.
pub async fn connect(url: &str, token: Option<&str>) -> anyhow::Result<AuthedChannel> {
    let channel = endpoint(url)?.connect().await?;
    Ok(InterceptedService::new(channel, BearerToken::new(token)?))
}

/// A typed registry client.
pub type RegistryClient =
    capstan_proto::registry::v1::registry_service_client::RegistryServiceClient<AuthedChannel>;

pub async fn registry_client(
    url: &str,
    token: Option<&str>,
    max_message_bytes: usize,
) -> anyhow::Result<RegistryClient> {
    Ok(RegistryClient::new(connect(url, token).await?)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes))
}
