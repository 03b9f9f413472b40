//! Channels to Capstan servers: one address, or a client-side balanced pool over several,
//! each call carrying a bearer token.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::{channel::Change, Channel, Endpoint},
    Request, Status,
};

use crate::ConnectError;

/// Adds `authorization: Bearer …` to every call when a token is set. Clones share the
/// token: [`BearerToken::replace`] changes it for every channel made with one of them
/// (a token file rotated on disk).
#[derive(Clone, Default)]
pub struct BearerToken(Arc<RwLock<Option<MetadataValue<Ascii>>>>);

impl BearerToken {
    pub fn new(token_value: Option<&str>) -> Result<Self, ConnectError> {
        let token = Self::default();
        if let Some(t) = token_value {
            token.replace(t)?;
        }
        Ok(token)
    }

    /// Sends `token` from now on; a value that is no valid header leaves the old one.
    pub fn replace(&self, token: &str) -> Result<(), ConnectError> {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ConnectError::Token)?;
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(value);
        Ok(())
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        // Writers only store a whole value, so a poisoned lock still holds one.
        let token = self
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(value) = token {
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// The channel every typed client runs over.
pub type AuthedChannel = InterceptedService<Channel, BearerToken>;

/// An endpoint with the timeouts, windows and keep-alives every Capstan client wants.
pub fn endpoint(url: &str) -> Result<Endpoint, ConnectError> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|cause| ConnectError::Endpoint {
            url: url.to_string(),
            cause,
        })?
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
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Connects to `urls` and wraps the channel with the token.
///
/// One `http://ip:port` connects directly. Several comma-separated URLs, or a host name
/// (such as a Kubernetes headless Service), get a client-side balanced channel over every
/// address they resolve to, re-resolved periodically: HTTP/2 pins a connection to one
/// pod, so balancing must happen here.
pub async fn connect(urls: &str, token: Option<&str>) -> Result<AuthedChannel, ConnectError> {
    connect_with(urls, BearerToken::new(token)?).await
}

/// [`connect`] with a token that may change while the channel lives.
pub async fn connect_with(urls: &str, token: BearerToken) -> Result<AuthedChannel, ConnectError> {
    let list: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let channel = match list.as_slice() {
        [] => return Err(ConnectError::NoUrl),
        [one] if is_literal_address(one) => {
            endpoint(one)?
                .connect()
                .await
                .map_err(|cause| ConnectError::Endpoint {
                    url: one.to_string(),
                    cause,
                })?
        }
        _ => balanced(list.iter().map(|u| u.to_string()).collect()).await?,
    };
    Ok(InterceptedService::new(channel, token))
}

fn host_port(url: &str) -> &str {
    url.split("://")
        .nth(1)
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or("")
}

fn is_literal_address(url: &str) -> bool {
    let host = host_port(url);
    host.parse::<SocketAddr>().is_ok() || host.starts_with("localhost:")
}

async fn resolve(urls: &[String]) -> BTreeSet<SocketAddr> {
    let mut addrs = BTreeSet::new();
    for url in urls {
        match tokio::net::lookup_host(host_port(url)).await {
            Ok(found) => addrs.extend(found),
            Err(e) => tracing::warn!(error = %e, %url, "cannot resolve server address"),
        }
    }
    addrs
}

async fn balanced(urls: Vec<String>) -> Result<Channel, ConnectError> {
    if let Some(u) = urls.iter().find(|u| !u.starts_with("http://")) {
        return Err(ConnectError::Balance(format!(
            "balanced channels take http:// URLs, got {u:?}"
        )));
    }
    let first = resolve(&urls).await;
    if first.is_empty() {
        return Err(ConnectError::Balance(format!(
            "none of {urls:?} resolves to an address"
        )));
    }
    let (channel, changes) = Channel::balance_channel::<SocketAddr>(64);
    tokio::spawn(async move {
        let mut current = BTreeSet::new();
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
async fn reachable(addrs: &BTreeSet<SocketAddr>) -> BTreeSet<SocketAddr> {
    let mut probes = tokio::task::JoinSet::new();
    for &a in addrs {
        probes.spawn(async move {
            let ok = tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(a)).await;
            matches!(ok, Ok(Ok(_))).then_some(a)
        });
    }
    let mut up = BTreeSet::new();
    while let Some(probe) = probes.join_next().await {
        match probe {
            Ok(Some(a)) => {
                up.insert(a);
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "address probe failed"),
        }
    }
    if up.is_empty() {
        addrs.clone()
    } else {
        up
    }
}
