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
        .initial_stream_window_size(Some(8 * 1024 * 1024))
        .initial_connection_window_size(Some(16 * 1024 * 1024))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true))
}

/// How often balanced channels re-resolve their hosts (pods come and go), and how often
/// they probe the addresses they have: a dead server leaves the pool within a probe.
const RESOLVE_EVERY: Duration = Duration::from_secs(15);
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Connects to `urls` and wraps the channel with the token.
///
/// One `http://ip:port` connects directly. Several comma-separated URLs, or a host name
/// (such as a Kubernetes headless Service), get a client-side balanced channel over every
/// address they resolve to, re-resolved periodically: HTTP/2 pins a connection to one
/// pod, so balancing must happen here.
pub async fn connect(urls: &str, token: Option<&str>) -> anyhow::Result<AuthedChannel> {
    let list: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let channel = match list.as_slice() {
        [] => anyhow::bail!("no server URL given"),
        [one] if is_literal_address(one) => endpoint(one)?.connect().await?,
        _ => balanced(list.iter().map(|u| u.to_string()).collect()).await?,
    };
    Ok(InterceptedService::new(channel, BearerToken::new(token)?))
}

fn is_literal_address(url: &str) -> bool {
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or("");
    host.parse::<std::net::SocketAddr>().is_ok() || host.starts_with("localhost:")
}

async fn resolve(urls: &[String]) -> std::collections::BTreeSet<std::net::SocketAddr> {
    let mut addrs = std::collections::BTreeSet::new();
    for url in urls {
        let host = url
            .split("://")
            .nth(1)
            .unwrap_or(url)
            .split('/')
            .next()
            .unwrap_or("");
        match tokio::net::lookup_host(host).await {
            Ok(found) => addrs.extend(found),
            Err(e) => tracing::warn!(error = %e, %url, "cannot resolve server address"),
        }
    }
    addrs
}

async fn balanced(urls: Vec<String>) -> anyhow::Result<Channel> {
    use tonic::transport::channel::Change;
    for u in &urls {
        anyhow::ensure!(
            u.starts_with("http://"),
            "balanced channels take http:// URLs, got {u:?}"
        );
    }
    let first = resolve(&urls).await;
    anyhow::ensure!(!first.is_empty(), "none of {urls:?} resolves to an address");
    let (channel, changes) = Channel::balance_channel::<std::net::SocketAddr>(64);
    tokio::spawn(async move {
        let mut current = std::collections::BTreeSet::new();
        let mut resolved = first;
        let mut last_resolve = tokio::time::Instant::now();
        loop {
            let next = reachable(&resolved).await;
            for gone in current.difference(&next) {
                if changes.send(Change::Remove(*gone)).await.is_err() {
                    return;
                }
            }
            for added in next.difference(&current) {
                match endpoint(&format!("http://{added}")) {
                    Ok(ep) => {
                        if changes.send(Change::Insert(*added, ep)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::error!(error = %e, %added, "cannot build an endpoint"),
                }
            }
            current = next;
            tokio::time::sleep(PROBE_EVERY).await;
            if changes.is_closed() {
                return; // The channel was dropped.
            }
            if last_resolve.elapsed() >= RESOLVE_EVERY {
                last_resolve = tokio::time::Instant::now();
                let found = resolve(&urls).await;
                // A failed lookup keeps the last good set rather than emptying the pool.
                if !found.is_empty() {
                    resolved = found;
                }
            }
        }
    });
    Ok(channel)
}

/// The addresses that accept a TCP connection; all of them when none does, so that
/// calls fail with the real error instead of finding an empty pool.
async fn reachable(
    addrs: &std::collections::BTreeSet<std::net::SocketAddr>,
) -> std::collections::BTreeSet<std::net::SocketAddr> {
    let probes = addrs.iter().map(|a| async move {
        let ok = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(a),
        )
        .await;
        matches!(ok, Ok(Ok(_))).then_some(*a)
    });
    let up: std::collections::BTreeSet<_> = futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect();
    if up.is_empty() {
        addrs.clone()
    } else {
        up
    }
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
