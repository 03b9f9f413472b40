//! The alert rules and the dashboard in deploy/monitoring hold: promtool accepts the rules
//! and their cases pass, and every query names a metric the services export (and every
//! exported metric is on the dashboard).

use std::process::Command;

use capstan_tests::{output_text, tools};

fn promtool(args: &[&str]) {
    let out = Command::new(tools::require("promtool"))
        .current_dir(tools::repo_root().join("deploy/monitoring"))
        .args(args)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {}: {}",
        args.join(" "),
        output_text(&out)
    );
}

#[test]
fn promtool_accepts_the_alert_rules_and_their_cases_pass() {
    promtool(&["check", "rules", "alerts.yaml"]);
    promtool(&["test", "rules", "alerts_test.yaml"]);
}

#[test]
fn the_dashboard_and_the_rules_query_only_exported_metrics() {
    let out = Command::new(tools::python(&["yaml"]))
        .current_dir(tools::repo_root())
        .args(["deploy/monitoring/check.py", "--self-test"])
        .output()
        .expect("run deploy/monitoring/check.py");
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 problem(s)"),
        "{}",
        output_text(&out)
    );
}
