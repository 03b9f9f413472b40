//! pipeline→registry with the pipeline's token in a file, as Kubernetes projects a
//! service-account token: a real OpenID Provider's token for audience capstan-registry,
//! which the registry verifies through the issuer's JWKS. A rewrite of the file is taken
//! up without a restart; an expired token fails the demo with an error that names the file.

use std::time::Duration;

use capstan_proto::pipeline::v1 as pb;
use capstan_server::{
    auth::Role,
    testing::oidc::{claims, OidcProvider, ES256, RS256},
};

use crate::common::{stack::*, token, TestDb};

/// Longer than the token file's recheck period.
const RECHECK: Duration = Duration::from_millis(1200);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_registry_token_file_is_read_again_when_it_changes() {
    let provider = OidcProvider::start().await;
    let db = TestDb::sqlite();
    let mut registry_flags = provider.server_flags();
    registry_flags.extend(["--oidc-leeway-seconds".to_string(), "0".to_string()]);
    let base = Base::start_with(&db, &registry_flags).await;
    let file = base
        .pipeline_args
        .registry_token_file
        .clone()
        .expect("a token file");
    std::fs::write(&file, provider.token("pipeline-svc", RS256).await).unwrap();
    let stack = Stack::on(base, |_| {}, Vec::new()).await;
    let ops = token("ops", Role::Admin);
    let demo = || run_demo(&stack.pipeline_url, &ops, demo_request("showcase_minimal"));

    let (_, op) = demo().await;
    assert_eq!(op.status, pb::OperationStatus::Succeeded as i32, "{op:#?}");

    // An expired token in the file: the next demo fails, saying which file and why.
    let expiring = provider.token("expiring-bot", RS256).await;
    let exp = claims(&expiring)["exp"].as_u64().expect("exp");
    std::fs::write(&file, &expiring).unwrap();
    while unix_now() <= exp {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(RECHECK).await;
    let (_, op) = demo().await;
    assert_eq!(op.status, pb::OperationStatus::Failed as i32, "{op:#?}");
    let error = op.error.expect("an error");
    assert!(
        error.message.contains("--registry-token-file")
            && error.message.contains(&file.display().to_string())
            && error.message.contains("ExpiredSignature"),
        "{error:?}"
    );

    // A fresh token (another key, too): the pipeline goes on without a restart.
    std::fs::write(&file, provider.token("pipeline-svc", ES256).await).unwrap();
    tokio::time::sleep(RECHECK).await;
    let (_, op) = demo().await;
    assert_eq!(op.status, pb::OperationStatus::Succeeded as i32, "{op:#?}");
    stack.stop().await;
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
