//! The real registry-svc binary (SQLite in a temp dir, port 0, auth on) driven by the
//! real grpcurl through server reflection.

use std::{
    io::{BufRead, BufReader},
    process::Command,
    time::Duration,
};

use capstan_tests::{binary, grpcurl, output_text, run_grpcurl, Service};
use serde_json::Value;

const SVC: &str = "capstan.registry.v1.RegistryService";

struct Ctx {
    grpcurl: std::path::PathBuf,
    addr: String,
    auth: String,
}

impl Ctx {
    /// Calls `method` with JSON `data`; returns (success, stdout JSON or error text).
    fn call(&self, method: &str, data: &str) -> (bool, String) {
        let out = run_grpcurl(
            &self.grpcurl,
            &[
                "-plaintext",
                "-H",
                &self.auth,
                "-d",
                "@",
                &self.addr,
                &format!("{SVC}/{method}"),
            ],
            Some(data),
        );
        let text = output_text(&out);
        (out.status.success(), text)
    }

    fn ok(&self, method: &str, data: &str) -> Value {
        let (ok, text) = self.call(method, data);
        assert!(ok, "{method} failed: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method}: not JSON ({e}): {text}"))
    }

    fn fails_with(&self, method: &str, data: &str, code: &str) -> String {
        let (ok, text) = self.call(method, data);
        assert!(!ok, "{method} should fail with {code}: {text}");
        assert!(
            text.contains(&format!("Code: {code}")),
            "{method}: expected {code}, got: {text}"
        );
        text
    }
}

#[test]
fn grpcurl_drives_the_registry_binary() {
    let grpcurl = grpcurl();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, format!("e2e-secret-{}\n", uuid::Uuid::new_v4())).unwrap();
    let bin = binary("registry-svc");
    let secret_s = secret.to_str().unwrap();
    let data_dir = dir.path().join("data");
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut svc = Service::start(
        &bin,
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--jwt-secret-file",
            secret_s,
            "--metrics-listen",
            &metrics_addr,
        ],
        &[],
        dir.path().join("registry.log"),
    )
    .unwrap();

    // The operator's path to a token: the binary's own `token` command.
    let token = Command::new(&bin)
        .args([
            "token",
            "--jwt-secret-file",
            secret_s,
            "--role",
            "admin",
            "--subject",
            "e2e",
        ])
        .output()
        .unwrap();
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
    let ctx = Ctx {
        grpcurl: grpcurl.clone(),
        addr: svc.addr.to_string(),
        auth: format!("authorization: Bearer {token}"),
    };

    // Reflection needs no token, and lists the service.
    let list = run_grpcurl(&grpcurl, &["-plaintext", &ctx.addr, "list"], None);
    let services = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success()
            && services.contains(SVC)
            && services.contains("grpc.health.v1.Health"),
        "{services}"
    );
    let health = run_grpcurl(
        &grpcurl,
        &["-plaintext", &ctx.addr, "grpc.health.v1.Health/Check"],
        None,
    );
    assert!(String::from_utf8_lossy(&health.stdout).contains("SERVING"));
    let describe = run_grpcurl(
        &grpcurl,
        &[
            "-plaintext",
            &ctx.addr,
            "describe",
            &format!("{SVC}.PromoteRun"),
        ],
        None,
    );
    assert!(String::from_utf8_lossy(&describe.stdout).contains("PromoteRunRequest"));

    // Without a token: UNAUTHENTICATED.
    let anon = run_grpcurl(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            "{}",
            &ctx.addr,
            &format!("{SVC}/ListRuns"),
        ],
        None,
    );
    assert!(String::from_utf8_lossy(&anon.stderr).contains("Unauthenticated"));

    let run = ctx.ok("CreateRun", r#"{"name": "e2e", "model_type": "seasonal_naive", "status": "RUN_STATUS_RUNNING", "metrics": {"wape": 0.12}}"#);
    let run_id = run["runId"].as_str().unwrap().to_string();

    let content = b"{\"weights\": [1, 2, 3]}";
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(content));
    let b64 = base64_encode(content);
    let upload = ctx.ok(
        "UploadArtifact",
        &format!(
            r#"{{"header": {{"run_id": "{run_id}", "name": "model.json", "expected_sha256": "{sha}", "expected_size": {}}}}}
               {{"chunk": "{}"}} {{"chunk": "{}"}}"#,
            content.len(),
            &b64[..8],
            &b64[8..]
        ),
    );
    assert_eq!(upload["sha256"], sha.as_str());
    assert_eq!(
        upload["artifactUri"],
        format!("default/seasonal_naive-model_{sha}.json").as_str()
    );

    ctx.ok("UpdateRun", &format!(r#"{{"run": {{"run_id": "{run_id}", "status": "RUN_STATUS_SUCCEEDED"}}, "update_mask": {{"paths": ["status"]}}}}"#));
    let alias = ctx.ok(
        "SetAlias",
        &format!(r#"{{"alias": "demo-production", "run_id": "{run_id}", "expected_revision": 0}}"#),
    );
    assert_eq!(alias["revision"], "1");
    let got = ctx.ok("GetAlias", r#"{"alias": "demo-production"}"#);
    assert_eq!(got["runId"], run_id.as_str());
    assert_eq!(got["updatedBy"], "e2e");

    let stale = ctx.fails_with(
        "SetAlias",
        &format!(r#"{{"alias": "demo-production", "run_id": "{run_id}", "expected_revision": 7}}"#),
        "Aborted",
    );
    assert!(stale.contains("revision 1"), "{stale}");

    let other = ctx.ok("CreateRun", r#"{"name": "placeholder", "model_type": "seasonal_naive", "status": "RUN_STATUS_RUNNING"}"#);
    let other_id = other["runId"].as_str().unwrap();
    let placeholder = ctx.fails_with(
        "UpdateRun",
        &format!(
            r#"{{"run": {{"run_id": "{other_id}", "artifact_uri": "demo/safer-promote-placeholder.joblib", "artifact_sha256": "{}", "artifact_size_bytes": 1}}}}"#,
            "0".repeat(64)
        ),
        "InvalidArgument",
    );
    assert!(placeholder.contains("artifact_uri"), "{placeholder}");
    let unchanged = ctx.ok("GetRun", &format!(r#"{{"run_id": "{other_id}"}}"#));
    assert!(
        unchanged.get("artifactUri").is_none(),
        "nothing written: {unchanged}"
    );

    let history = ctx.ok("ListAliasHistory", r#"{"alias": "demo-production"}"#);
    assert_eq!(history["entries"].as_array().unwrap().len(), 1);

    // Prometheus metrics on their own port count the calls by method and code.
    let metrics = http_get(&metrics_addr, "/metrics");
    assert!(
        metrics.contains("capstan_grpc_requests_total")
            && metrics.contains("SetAlias")
            && metrics.contains("ABORTED"),
        "{metrics}"
    );

    // SIGTERM with a watch stream open: the stream ends and the process exits cleanly. The
    // signal waits for the stream's first message: grpcurl may take a while to connect.
    let mut watch = Command::new(&grpcurl)
        .args([
            "-plaintext",
            "-H",
            &ctx.auth,
            "-d",
            r#"{"aliases": ["demo-production"]}"#,
            &ctx.addr,
            &format!("{SVC}/WatchAliases"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().expect("piped stdout");
    let (snapshot_tx, snapshot_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("ALIAS_EVENT_TYPE_SNAPSHOT") {
                // The receiver is gone only if the test already failed.
                let _ = snapshot_tx.send(());
            }
            lines.push(line);
        }
        lines.join("\n")
    });
    let snapshot = snapshot_rx.recv_timeout(Duration::from_secs(30));
    let status = svc.terminate(Duration::from_secs(15)).unwrap();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        svc.log_text()
    );
    let watched = watch.wait_with_output().unwrap();
    let streamed = reader.join().expect("stdout reader");
    assert!(
        snapshot.is_ok(),
        "WatchAliases sent no snapshot within 30 s: {streamed}{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    assert!(
        svc.log_text().contains("stopped cleanly"),
        "{}",
        svc.log_text()
    );
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn base64_encode(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
