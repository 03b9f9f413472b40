//! A Python service with stubs generated from our protos (grpcio-tools) drives the real
//! registry-svc binary: streaming upload, watch, guarded promotion, rich error details.

use std::process::Command;

use capstan_tests::{binary, output_text, tools, Service};

#[test]
fn python_generated_stubs_drive_the_registry() {
    let python = tools::python(&["grpc", "grpc_tools", "grpc_status"]);
    let repo = tools::repo_root();
    let dir = tempfile::tempdir().unwrap();
    let stubs = dir.path().join("stubs");
    std::fs::create_dir_all(&stubs).unwrap();
    let gen = Command::new(&python)
        .current_dir(repo)
        .args([
            "-m",
            "grpc_tools.protoc",
            "-Iproto",
            &format!("--python_out={}", stubs.display()),
        ])
        .arg(format!("--grpc_python_out={}", stubs.display()))
        .arg("proto/capstan/registry/v1/registry.proto")
        .output()
        .unwrap();
    assert!(
        gen.status.success(),
        "stub generation: {}",
        String::from_utf8_lossy(&gen.stderr)
    );

    let secret = dir.path().join("secret");
    std::fs::write(&secret, "python-client-test-secret-0123456789").unwrap();
    let bin = binary("registry-svc");
    let data = dir.path().join("data");
    let svc = Service::start(
        &bin,
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--jwt-secret-file",
            secret.to_str().unwrap(),
        ],
        &[],
        dir.path().join("log"),
    )
    .unwrap();
    let token = Command::new(&bin)
        .args([
            "token",
            "--jwt-secret-file",
            secret.to_str().unwrap(),
            "--role",
            "service",
            "--subject",
            "py",
        ])
        .output()
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap();
    let out = Command::new(&python)
        .arg(repo.join("tests/python/registry_client.py"))
        .args([&svc.addr.to_string(), token.trim(), stubs.to_str().unwrap()])
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(
        out.status.success() && text.contains("all checks passed"),
        "{text}\nserver log:\n{}",
        svc.log_text()
    );
}
