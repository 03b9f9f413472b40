//! `pipeline-svc demo`: the real binary, registry and pipeline in one process on SQLite.
//! It exits 0 exactly when the operation succeeded.

use std::process::Command;

fn demo(dir: &std::path::Path, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pipeline-svc"))
        .arg("demo")
        .arg("--data-dir")
        .arg(dir)
        .args(["--series", "4", "--days", "150", "--horizon", "7"])
        .args(extra)
        .env_remove("RUST_LOG")
        .output()
        .expect("pipeline-svc binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn rich_demo_succeeds_and_writes_the_chart() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = demo(dir.path(), &[]);
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for needle in [
        "STEP",
        "safer_promote_flow",
        "scenario_simulate_and_save",
        "SUCCEEDED",
        "Champion:",
        "WAPE",
    ] {
        assert!(stdout.contains(needle), "{needle} missing from:\n{stdout}");
    }
    assert!(
        stderr.contains("▶ planning/scenario_simulate_and_save"),
        "live progress:\n{stderr}"
    );
    let chart = std::fs::read_to_string(dir.path().join("showcase-chart.svg")).unwrap();
    assert!(chart.contains("<svg"));
    assert!(stdout.contains("showcase-chart.svg"));
}

#[test]
fn failed_demo_exits_nonzero_and_names_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = demo(
        dir.path(),
        &[
            "--scenario",
            "showcase_minimal",
            "--fail-step",
            "register_candidates",
        ],
    );
    assert!(!ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("Failed step: register_candidates"),
        "{stdout}"
    );
    assert!(stdout.contains("FAILED"), "{stdout}");
}

#[test]
fn bad_parameters_exit_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = demo(dir.path(), &["--scenario", "nope"]);
    assert!(!ok);
    assert!(stderr.contains("scenario"), "{stderr}");
}
