//! What the integration tests share: each test's database (the workspace's one fixture,
//! `capstan_server::testing`, whose `test_on_both_backends!` runs a test on SQLite and on
//! Postgres), tokens, clients, and the servers and processes of `server`, `stack` and
//! `replica`.

pub mod noop;
pub mod provisioning;
pub mod replica;
pub mod server;
#[cfg(feature = "demo")]
pub mod stack;

use std::time::Duration;

use capstan_client::AuthedChannel;
use capstan_server::auth::{issue_hs256, Role};

/// One test's database (and a temporary directory beside it): the workspace's one
/// fixture.
pub use capstan_server::testing::TestDb;

/// Waits (at most `limit`) until `f` returns `Some`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub const SECRET: &[u8] = b"capstan-test-secret-0123456789";

pub fn token(subject: &str, role: Role) -> String {
    issue_hs256(SECRET, subject, role, 3600).expect("token")
}

pub type OperationsClient =
    capstan_proto::pipeline::v1::operations_service_client::OperationsServiceClient<AuthedChannel>;
pub type ProvisioningClient =
    capstan_proto::pipeline::v1::provisioning_service_client::ProvisioningServiceClient<
        AuthedChannel,
    >;

/// Every event of `stream` until its end, the terminal event (heartbeats dropped); at
/// most a minute. `what` names the stream in failures.
pub async fn until_finished(
    stream: &mut tonic::Streaming<capstan_proto::pipeline::v1::OperationEvent>,
    what: &str,
) -> Vec<capstan_proto::pipeline::v1::OperationEvent> {
    use capstan_proto::pipeline::v1::OperationEventType;
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(e))) if e.r#type == OperationEventType::Heartbeat as i32 => {}
            Ok(Ok(Some(e))) => events.push(e),
            Ok(Ok(None)) => return events,
            Ok(Err(s)) => panic!("{what}: the stream failed: {s}"),
            Err(_) => panic!("{what} did not finish in 60 s: {events:#?}"),
        }
    }
}

pub async fn channel(url: &str, token: &str) -> AuthedChannel {
    capstan_client::connect(url, Some(token))
        .await
        .expect("connect")
}

pub async fn operations_client(url: &str, token: &str) -> OperationsClient {
    OperationsClient::new(channel(url, token).await)
}
