//! Each binary starts with exactly the environment the prod manifests give it (values the
//! cluster provides adapted to loopback) and reports SERVING on the health name its
//! probes ask for. A key the binary does not know would be ignored silently, so every
//! CAPSTAN_* key must also appear in the binary's --help.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use capstan_server::testing::{
    self,
    oidc::{OidcProvider, RS256},
    TestDb,
};
use capstan_tests::{binary, grpcurl, output_text, run_grpcurl, tools, Service};
use serde_json::Value;
use tempfile::TempDir;

/// What deploy/manifest_env.py reads off the rendered prod overlay for `service`.
fn manifest(service: &str, format: &str) -> Value {
    let out = Command::new(tools::python(&["yaml"]))
        .current_dir(tools::repo_root())
        .env("KUBECTL", tools::kubectl())
        .args([
            "deploy/manifest_env.py",
            "--overlay",
            "prod",
            service,
            "--format",
            format,
        ])
        .output()
        .expect("run deploy/manifest_env.py");
    assert!(
        out.status.success(),
        "deploy/manifest_env.py --overlay prod {service} --format {format}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("manifest_env JSON")
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

/// The health status grpcurl reports for `name` at `addr`, or its error text.
fn health(grpcurl: &Path, addr: &str, name: &str) -> String {
    let out = run_grpcurl(
        grpcurl,
        &[
            "-plaintext",
            "-d",
            &format!(r#"{{"service": "{name}"}}"#),
            addr,
            "grpc.health.v1.Health/Check",
        ],
        None,
    );
    output_text(&out)
}

/// Starts `service` with exactly the manifest's environment and checks its health. The
/// process lives as long as the result.
fn starts_with_manifest_env(
    service: &str,
    db_url: &str,
    extra: BTreeMap<&str, String>,
) -> (Service, TempDir) {
    let grpcurl = grpcurl();
    let describe = manifest(service, "describe");
    let probes = manifest(service, "probes");
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
    let addr = svc.addr.to_string();
    // The startup probe polls, as the kubelet does, while the store comes up (the port is
    // bound first); readiness and liveness must then agree at once.
    let startup = probes["startup"]["service"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut text = health(&grpcurl, &addr, startup);
    while !text.contains("\"SERVING\"") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        text = health(&grpcurl, &addr, startup);
    }
    assert!(
        text.contains("\"SERVING\""),
        "{service} startup probe ({startup:?}): {text}\nlog:\n{}",
        svc.log_text()
    );
    for probe in ["readiness", "liveness"] {
        let name = probes[probe]["service"].as_str().unwrap();
        let text = health(&grpcurl, &addr, name);
        assert!(
            text.contains("\"SERVING\""),
            "{service} {probe} probe ({name:?}): {text}"
        );
    }
    (svc, dir)
}

/// The `sub` of pipeline-svc's service-account tokens, which the prod manifests map to
/// the service role; the test OpenID Provider has a client of that name.
const PIPELINE_SERVICE_ACCOUNT: &str = "system:serviceaccount:capstan:pipeline-svc";

/// Stand-ins for the cluster's service-account issuer: a real OpenID Provider (its JWKS by
/// URL, as the manifests name the API server's), the machine's CA bundle for the cluster
/// CA, and a token for fetching the keys.
async fn cluster_issuer(dir: &Path) -> (OidcProvider, BTreeMap<&'static str, String>) {
    let provider = OidcProvider::start().await;
    let fetch_token = dir.join("kube-api-token");
    std::fs::write(&fetch_token, provider.token("admin-bot", RS256).await).unwrap();
    let extra = BTreeMap::from([
        (
            "CAPSTAN_OIDC_ISSUERS",
            format!("{0}={0}/jwks", provider.issuer),
        ),
        (
            "CAPSTAN_OIDC_CA_FILE",
            "/etc/ssl/certs/ca-certificates.crt".to_string(),
        ),
        (
            "CAPSTAN_OIDC_FETCH_TOKEN_FILE",
            fetch_token.display().to_string(),
        ),
    ]);
    (provider, extra)
}

/// registry-svc with the manifests' keys, trusting a stand-in cluster issuer: SERVING, and
/// a token of pipeline-svc's service account is accepted as the service role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_starts_with_the_prod_manifest_environment() {
    // Postgres, as in the prod manifests.
    let db = TestDb::postgres().await;
    let url = db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let (provider, extra) = cluster_issuer(dir.path()).await;
    let token = provider.token(PIPELINE_SERVICE_ACCOUNT, RS256).await;
    tokio::task::spawn_blocking(move || {
        let (registry, _dir) = starts_with_manifest_env("registry-svc", &url, extra);
        let out = run_grpcurl(
            &grpcurl(),
            &[
                "-plaintext",
                "-H",
                &format!("authorization: Bearer {token}"),
                "-d",
                r#"{"name": "from-the-service-account", "model_type": "seasonal_naive"}"#,
                &registry.addr.to_string(),
                "capstan.registry.v1.RegistryService/CreateRun",
            ],
            None,
        );
        assert!(
            out.status.success(),
            "the service-account token was refused: {}
registry log:
{}",
            output_text(&out),
            registry.log_text()
        );
    })
    .await
    .unwrap();
}

/// `BIN token …` into a file in `dir`: the bearer token a Secret would hold.
fn mint(bin: &Path, secret: &Path, role: &str, subject: &str, dir: &Path) -> PathBuf {
    let out = Command::new(bin)
        .arg("token")
        .arg("--jwt-secret-file")
        .arg(secret)
        .args(["--role", role, "--subject", subject])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} token: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join(format!("{subject}.token"));
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

/// pipeline-svc with the manifests' keys, the registry URL and token file pointing at a
/// real registry-svc that trusts a stand-in cluster issuer, the token file holding a
/// service-account token of that issuer (as the projected volume does): SERVING, and a
/// demo over that registry succeeds, so the token file and URL really are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_starts_with_the_prod_manifest_environment() {
    let db = TestDb::postgres().await;
    let url = db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let (provider, issuer) = cluster_issuer(dir.path()).await;
    let sa_token = provider.token(PIPELINE_SERVICE_ACCOUNT, RS256).await;
    tokio::task::spawn_blocking(move || {
        let (secret, _) = testing::jwt_secret(dir.path());
        let registry_bin = binary("registry-svc");
        let registry = Service::start(
            &registry_bin,
            &[
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                dir.path().join("registry").to_str().unwrap(),
                "--jwt-secret-file",
                secret.to_str().unwrap(),
                "--oidc-issuer",
                &issuer["CAPSTAN_OIDC_ISSUERS"],
                "--oidc-audience",
                "capstan-registry",
                "--oidc-roles-claim",
                "sub",
                "--oidc-role-map",
                &format!("{PIPELINE_SERVICE_ACCOUNT}=service"),
            ],
            &[],
            dir.path().join("registry.log"),
        )
        .unwrap();
        let token = dir.path().join("registry-token");
        std::fs::write(&token, &sa_token).unwrap();
        let extra = BTreeMap::from([
            ("CAPSTAN_REGISTRY_URL", registry.url()),
            ("CAPSTAN_REGISTRY_TOKEN_FILE", token.display().to_string()),
            ("CAPSTAN_JWT_SECRET_FILE", secret.display().to_string()),
        ]);
        let (pipeline, _pipeline_dir) = starts_with_manifest_env("pipeline-svc", &url, extra);
        let grpcurl = grpcurl();
        let admin = mint(&binary("pipeline-svc"), &secret, "admin", "e2e-operator", dir.path());
        let admin = std::fs::read_to_string(admin).unwrap();
        let out = run_grpcurl(
            &grpcurl,
            &[
                "-plaintext",
                "-max-time",
                "60",
                "-H",
                &format!("authorization: Bearer {}", admin.trim()),
                "-d",
                r#"{"demo": {"scenario": "showcase_minimal", "series_count": 3, "days": 120, "horizon": 7}}"#,
                &pipeline.addr.to_string(),
                "capstan.pipeline.v1.PipelineService/RunDemo",
            ],
            None,
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let events: Vec<Value> = serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("RunDemo output is not JSON ({e}): {text}"));
        let last = events.last().cloned().unwrap_or_default();
        assert!(
            out.status.success()
                && last["type"] == "OPERATION_EVENT_TYPE_FINISHED"
                && last["status"] == "OPERATION_STATUS_SUCCEEDED",
            "RunDemo through the registry did not succeed: {text}{}\npipeline log:\n{}\nregistry log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            pipeline.log_text(),
            registry.log_text()
        );
    })
    .await
    .unwrap();
}
