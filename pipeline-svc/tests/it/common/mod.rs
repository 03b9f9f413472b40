//! What the integration tests share: each test's databases (the workspace's one fixture,
//! `capstan_server::testing`), running a test on both backends, tokens, clients, and
//! the servers and processes of `server`, `stack` and `replica`.

pub mod noop;
pub mod provisioning;
pub mod replica;
pub mod server;
#[cfg(feature = "demo")]
pub mod stack;

use std::time::Duration;

use capstan_server::{
    auth::{issue_hs256, Role},
    client::AuthedChannel,
};

/// One test's database (and a temporary directory beside it): the workspace's one
/// fixture.
pub use capstan_server::testing::TestDb;

/// Runs each named `async fn(TestDb)` on SQLite and on Postgres, as tests
/// `<name>::sqlite` and `<name>::postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    super::$name(capstan_server::testing::sqlite()).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    if let Some(db) =
                        capstan_server::testing::postgres(concat!(module_path!(), "::postgres"))
                            .await
                    {
                        super::$name(db).await;
                    }
                }
            }
        )*
    };
}

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

pub type PipelineClient =
    capstan_proto::pipeline::v1::pipeline_service_client::PipelineServiceClient<AuthedChannel>;
pub type OperationsClient =
    capstan_proto::pipeline::v1::operations_service_client::OperationsServiceClient<AuthedChannel>;
pub type ProvisioningClient =
    capstan_proto::pipeline::v1::provisioning_service_client::ProvisioningServiceClient<
        AuthedChannel,
    >;

pub async fn channel(url: &str, token: &str) -> AuthedChannel {
    capstan_server::client::connect(url, Some(token))
        .await
        .expect("connect")
}

pub async fn pipeline_client(url: &str, token: &str) -> PipelineClient {
    PipelineClient::new(channel(url, token).await)
}

pub async fn operations_client(url: &str, token: &str) -> OperationsClient {
    OperationsClient::new(channel(url, token).await)
}
