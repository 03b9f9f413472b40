//! Tokens of a real OpenID Provider (`oidc-provider`, on loopback) against a real
//! registry over gRPC: accepted with the roles their claims map to, and refused as
//! UNAUTHENTICATED when their audience, issuer, key, expiry or algorithm is wrong; the
//! provider's key rotation is followed without a restart, and an outage of its JWKS keeps
//! the keys already fetched.

use std::time::{Duration, Instant};

use capstan_proto::registry::v1 as pb;
use capstan_server::{
    auth::Role,
    testing::{
        oidc::{claims, OidcProvider, EDDSA, ES256, OTHER_AUDIENCE, RS256},
        TestDb,
    },
};
use tonic::Code;

use crate::support::{start_with, Server};

async fn registry(provider: &OidcProvider, extra: &[&str]) -> Server {
    let mut flags = provider.server_flags();
    flags.extend(extra.iter().map(ToString::to_string));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    start_with(TestDb::sqlite(), &flags).await
}

async fn create_run(server: &Server, token: &str) -> Result<pb::Run, tonic::Status> {
    server
        .with_token(token)
        .await
        .create_run(pb::CreateRunRequest {
            name: "oidc".into(),
            model_type: "seasonal_naive".into(),
            status: pb::RunStatus::Running as i32,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn list_runs(
    server: &Server,
    token: &str,
    namespace: &str,
) -> Result<pb::ListRunsResponse, tonic::Status> {
    server
        .with_token(token)
        .await
        .list_runs(pb::ListRunsRequest {
            namespace: namespace.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn issuer_tokens_are_accepted_with_roles_from_their_claims() {
    let provider = OidcProvider::start().await;
    let server = registry(&provider, &[]).await;
    for resource in [RS256, ES256, EDDSA] {
        let admin = provider.token("admin-bot", resource).await;
        let alg = alg_of(&admin);
        create_run(&server, &admin)
            .await
            .unwrap_or_else(|s| panic!("admin token ({alg}) refused: {s:?}"));
        let writer = provider.token("ci-bot", resource).await;
        create_run(&server, &writer)
            .await
            .unwrap_or_else(|s| panic!("service token ({alg}) refused: {s:?}"));
        // A reader reads where its `namespaces` claim grants it (team-b) and may not write.
        let reader = provider.token("reader-bot", resource).await;
        list_runs(&server, &reader, "team-b")
            .await
            .unwrap_or_else(|s| panic!("user token ({alg}) refused: {s:?}"));
        let denied = create_run(&server, &reader).await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{alg}: {denied:?}");
        // A client whose claims map to no role is known but may do nothing.
        let nobody = provider.token("nobody", resource).await;
        let denied = list_runs(&server, &nobody, "team-b").await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{alg}: {denied:?}");
        assert!(denied.message().contains("no Capstan role"), "{denied:?}");
    }
    // The services' own HS256 tokens keep working beside the issuer's.
    create_run(&server, &server.token(Role::Service, "pipeline"))
        .await
        .expect("HS256 token");
}

fn alg_of(token: &str) -> String {
    format!(
        "{:?}",
        jsonwebtoken::decode_header(token).expect("header").alg
    )
}

#[tokio::test]
async fn wrong_tokens_are_unauthenticated() {
    let provider = OidcProvider::start().await;
    let server = registry(&provider, &["--oidc-leeway-seconds", "0"]).await;
    let expiring = provider.token("expiring-bot", RS256).await;
    let exp = claims(&expiring)["exp"].as_u64().expect("exp");
    let cases = [
        (
            "wrong audience",
            provider.token("admin-bot", OTHER_AUDIENCE).await,
            "InvalidAudience",
        ),
        (
            "wrong issuer",
            provider.forge("wrong-issuer").await,
            "is not accepted",
        ),
        (
            "wrong kid",
            provider.forge("wrong-kid").await,
            "key \"not-published-",
        ),
        (
            "alg none",
            provider.forge("none").await,
            "invalid bearer token",
        ),
        (
            "HS256 under the RSA public key",
            provider.forge("hs256-public").await,
            "HS256",
        ),
        ("expired", expiring, "ExpiredSignature"),
    ];
    // The expiring token is valid for one second: wait until it is past.
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (case, token, says) in cases {
        for status in [
            create_run(&server, &token).await.unwrap_err(),
            list_runs(&server, &token, "default").await.unwrap_err(),
        ] {
            assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
            assert!(status.message().contains(says), "{case}: {status:?}");
        }
    }
    // And nothing was written by any of them.
    let admin = provider.token("admin-bot", RS256).await;
    assert!(list_runs(&server, &admin, "default")
        .await
        .unwrap()
        .runs
        .is_empty());
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn a_key_rotation_at_the_provider_is_followed_without_a_restart() {
    let provider = OidcProvider::start().await;
    // The JWKS by its URL this time (no discovery), refetched at most once a second.
    let jwks = format!("{0}={0}/jwks", provider.issuer);
    let server = start_with(
        TestDb::sqlite(),
        &provider
            .server_flags()
            .iter()
            .map(String::as_str)
            .map(|f| {
                if f == provider.issuer {
                    jwks.as_str()
                } else {
                    f
                }
            })
            .chain(["--oidc-jwks-min-refetch-seconds", "1"])
            .collect::<Vec<_>>(),
    )
    .await;
    let before = provider.token("ci-bot", ES256).await;
    create_run(&server, &before)
        .await
        .expect("token before the rotation");

    let kids = provider.rotate().await;
    let after = provider.token("ci-bot", ES256).await;
    let kid = jsonwebtoken::decode_header(&after).unwrap().kid.unwrap();
    assert!(kids.contains(&kid), "{kid} is one of the new keys {kids:?}");
    // The first call may fall within a second of the last fetch; the next fetch finds it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match create_run(&server, &after).await {
            Ok(_) => break,
            Err(s) if s.code() == Code::Unauthenticated && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(s) => panic!("the rotated key {kid} was not taken up: {s:?}"),
        }
    }
    // The old key is still published, so tokens signed before go on working.
    create_run(&server, &before)
        .await
        .expect("token of the old key");
}

#[tokio::test]
async fn unknown_keys_refetch_at_most_once_per_interval() {
    let provider = OidcProvider::start().await;
    let server = registry(&provider, &[]).await;
    let admin = provider.token("admin-bot", RS256).await;
    create_run(&server, &admin)
        .await
        .expect("the keys are fetched");
    let fetched = provider.jwks_requests().await;
    assert!(fetched >= 1, "the registry fetched the JWKS");
    let started = Instant::now();
    for _ in 0..20 {
        let forged = provider.forge("wrong-kid").await;
        let s = list_runs(&server, &forged, "default").await.unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    }
    // At most one fetch per 10 s (the default), however many made-up kids arrive.
    let allowed = 1 + started.elapsed().as_secs() / 10;
    let more = provider.jwks_requests().await - fetched;
    assert!(
        more <= allowed,
        "20 unknown kids in {:?} fetched the JWKS {more} more times",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_jwks_outage_keeps_the_cached_keys() {
    let provider = OidcProvider::start().await;
    let server = registry(
        &provider,
        &[
            "--oidc-jwks-refresh-seconds",
            "1",
            "--oidc-jwks-min-refetch-seconds",
            "0",
        ],
    )
    .await;
    let admin = provider.token("admin-bot", EDDSA).await;
    create_run(&server, &admin).await.expect("keys fetched");
    drop(provider);
    // The keys are older than the refresh period now: each call starts a fetch that fails.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        create_run(&server, &admin)
            .await
            .expect("the cached key still verifies while the IdP is down");
    }
}
