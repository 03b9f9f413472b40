//! The README's grpcurl walkthrough, run verbatim (bar the port) against the real binary:
//! it must keep working as documented.

use capstan_tests::{binary, grpcurl, output_text, tools, Service};

fn block_after(readme: &str, marker: &str) -> String {
    let start = readme
        .find(marker)
        .unwrap_or_else(|| panic!("README lost {marker:?}"));
    let rest = &readme[start..];
    let open = rest.find("```sh\n").expect("a sh block") + 6;
    let close = rest[open..].find("```").expect("block end");
    rest[open..open + close].to_string()
}

#[test]
fn readme_grpcurl_examples_work_when_pasted() {
    // The script calls grpcurl by name: fail here, saying how to get it, if it is missing.
    grpcurl();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let script = block_after(&readme, "## Try it with grpcurl")
        + &block_after(&readme, "a placeholder URI is refused");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let svc = Service::start(
        &binary("registry-svc"),
        &[
            "--auth",
            "disabled",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
        dir.path().join("log"),
    )
    .unwrap();
    assert!(
        script.contains("R=127.0.0.1:50051"),
        "README's address line changed"
    );
    let script = script.replace("R=127.0.0.1:50051", &format!("R={}", svc.addr));
    let pipeline_script = block_after(&readme, "## The pipeline with grpcurl");
    assert!(
        pipeline_script.contains("P=127.0.0.1:50052"),
        "README's pipeline address line changed"
    );
    let pipeline = Service::start(
        &binary("pipeline-svc"),
        &[
            "--auth",
            "disabled",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().join("pipeline").to_str().unwrap(),
            "--registry-url",
            &svc.url(),
        ],
        &[],
        dir.path().join("pipeline.log"),
    )
    .unwrap();
    let script = format!(
        "{script}\n{}",
        pipeline_script.replace("P=127.0.0.1:50052", &format!("P={}", pipeline.addr))
    );
    let out = tools::command("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = output_text(&out);
    let codes: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Code: "))
        .collect();
    assert_eq!(
        codes,
        [
            "FailedPrecondition",
            "Aborted",
            "NotFound",
            "InvalidArgument",
            "FailedPrecondition",
            "InvalidArgument"
        ],
        "only the documented errors:\n{text}"
    );
    for expected in [
        "OPERATION_STATUS_SUCCEEDED",
        "EVENT_TYPE_",
        "winningRunId",
        "GRAPH_STATUS_ACTIVE",
        "PurchaseOrder",
        "ALIAS_EVENT_TYPE_SNAPSHOT",
        "\"metadata\"",
        "\"chunk\"",
        "ALIAS_ACTION_PROMOTE",
        "grpc.health.v1.Health",
        "SERVING",
        "\"creator\": \"system\"",
        "\"namespace\": \"team-a\"",
    ] {
        assert!(
            text.contains(expected),
            "README walkthrough output lacks {expected}:\n{text}"
        );
    }
}
