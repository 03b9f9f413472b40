//! Each binary starts with exactly the environment the prod manifests give it (values the
//! cluster provides adapted to loopback) and reports SERVING on the health name its
//! probes ask for. A key the binary does not know would be ignored silently, so every
//! CAPSTAN_* key must also appear in the binary's --help.

use std::{collections::BTreeMap, path::Path, process::Command};

use capstan_server::testing;
use capstan_tests::{binary, grpcurl, run_grpcurl, Service};
use serde_json::Value;

fn manifest(service: &str, format: &str) -> Option<Value> {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new("python3")
        .current_dir(repo)
        .args([
            "deploy/manifest_env.py",
            "--overlay",
            "prod",
            service,
            "--format",
            format,
        ])
        .output()
        .expect("python3");
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            std::env::var("CAPSTAN_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "CAPSTAN_REQUIRE_TOOLS=1 but rendering the prod overlay failed: {err}"
        );
        eprintln!("\n*** SKIPPED: cannot render the prod overlay (kubectl, PyYAML?): {err} ***\n");
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("manifest_env JSON"))
}

/// Loopback stand-ins for what the cluster provides.
fn adapt(
    key: &str,
    dir: &Path,
    db_url: &str,
    secret: &Path,
    extra: &BTreeMap<&str, String>,
) -> Option<String> {
    if let Some(v) = extra.get(key) {
        return Some(v.clone());
    }
    Some(match key {
        "CAPSTAN_LISTEN" => "127.0.0.1:0".into(),
        "CAPSTAN_METRICS_LISTEN" => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .ok()?
                .local_addr()
                .ok()?
                .port();
            format!("127.0.0.1:{port}")
        }
        "CAPSTAN_DATA_DIR" => dir.join("data").display().to_string(),
        "CAPSTAN_DATABASE_URL" => db_url.into(),
        "CAPSTAN_JWT_SECRET_FILE" => secret.display().to_string(),
        // Object storage becomes the local filesystem store; S3 itself is tested against moto.
        "CAPSTAN_ARTIFACT_STORE" => "fs".into(),
        "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY" => "loopback".into(),
        _ => return None,
    })
}

/// Starts `service` with exactly the manifest's environment and checks its health.
pub fn starts_with_manifest_env(service: &str, db_url: &str, extra: BTreeMap<&str, String>) {
    let Some(grpcurl) = grpcurl() else { return };
    let Some(describe) = manifest(service, "describe") else {
        return;
    };
    let probes = manifest(service, "probes").expect("probes");
    let bin = binary(service);
    let help =
        String::from_utf8(Command::new(&bin).arg("--help").output().unwrap().stdout).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt-secret");
    std::fs::write(&secret, "manifest-env-test-secret-0123456789\n").unwrap();

    let mut env: Vec<(String, String)> = Vec::new();
    for (key, spec) in describe.as_object().unwrap() {
        if key.starts_with("CAPSTAN_") {
            assert!(
                help.contains(&format!("[env: {key}=")),
                "{service} does not read {key}, which the manifests set"
            );
        }
        let value = if spec["cluster_only"].is_null() {
            spec["value"].as_str().unwrap_or_default().to_string()
        } else {
            adapt(key, dir.path(), db_url, &secret, &extra).unwrap_or_else(|| {
                panic!("no loopback stand-in for {key} ({})", spec["cluster_only"])
            })
        };
        env.push((key.clone(), value));
    }
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let svc = Service::start_clean_env(&bin, &env_refs, dir.path().join("log")).unwrap();
    for probe in ["startup", "readiness", "liveness"] {
        let name = probes[probe]["service"].as_str().unwrap();
        let out = run_grpcurl(
            &grpcurl,
            &[
                "-plaintext",
                "-d",
                &format!(r#"{{"service": "{name}"}}"#),
                &svc.addr.to_string(),
                "grpc.health.v1.Health/Check",
            ],
            None,
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("\"SERVING\""),
            "{service} {probe} probe ({name:?}): {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_starts_with_the_prod_manifest_environment() {
    let db = match testing::postgres("registry_starts_with_the_prod_manifest_environment").await {
        Some(db) => db,
        None => testing::sqlite(),
    };
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        starts_with_manifest_env("registry-svc", &url, BTreeMap::new())
    })
    .await
    .unwrap();
}
