#!/usr/bin/env python3
"""Checks the Grafana dashboard and the alert rules against the metrics the services export.

The exported names are read from the services' Rust sources: every `counter!`, `gauge!` and
`histogram!` of the `metrics` crate names its metric in its first argument. A query may use
a counter or gauge by its name, a histogram by its name plus `_bucket`, `_sum` or `_count`
(the series the Prometheus exporter writes). The check fails when

- dashboard.json is not JSON, or a panel target has no `expr`;
- a query of the dashboard or an `expr` of alerts.yaml names a metric nobody exports, or a
  histogram series of a metric that is no histogram;
- an exported metric appears on no panel of the dashboard (each one is shown somewhere).

  deploy/monitoring/check.py             check; prints what it checked, exits 1 on a finding
  deploy/monitoring/check.py --self-test  also proves each check can fail
"""

import argparse
import copy
import json
import pathlib
import re
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SOURCES = ["proto/server/src", "registry-svc/src", "pipeline-svc/src"]
MACRO = re.compile(r"\b(counter|gauge|histogram)!\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"")
METRIC = re.compile(r"\bcapstan_[a-z0-9_]+\b")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def exported(root):
    """{name: kind} of every metric recorded in the services' sources."""
    found = {}
    for folder in SOURCES:
        for path in sorted((root / folder).rglob("*.rs")):
            for kind, name in MACRO.findall(path.read_text()):
                if found.get(name, kind) != kind:
                    raise SystemExit(f"{name} is a {found[name]} and a {kind} ({path})")
                found[name] = kind
    return found


def dashboard_queries(dashboard):
    """(where, expr) of every panel target and query variable, rows' panels included."""
    out = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                if "expr" not in target:
                    out.append((f"panel {panel.get('title')!r}", None))
                else:
                    out.append((f"panel {panel.get('title')!r}", target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var.get("query")
            expr = query.get("query") if isinstance(query, dict) else query
            out.append((f"variable {var.get('name')!r}", expr))
    return out


def rule_queries(rules):
    return [
        (f"rule {rule.get('alert') or rule.get('record')!r}", rule.get("expr"))
        for group in rules.get("groups", [])
        for rule in group.get("rules", [])
    ]


def resolve(series, metrics):
    """The exported metric a series name belongs to, or why it belongs to none."""
    if series in metrics:
        return series, None
    for suffix in HISTOGRAM_SERIES:
        base = series[: -len(suffix)]
        if series.endswith(suffix) and base in metrics:
            if metrics[base] == "histogram":
                return base, None
            return None, f"{series}: {base} is a {metrics[base]}, not a histogram"
    return None, f"{series} is exported by neither service"


def findings(metrics, dashboard, rules):
    problems = []
    shown = set()
    for source, queries in (("dashboard", dashboard_queries(dashboard)), ("alerts", rule_queries(rules))):
        for where, expr in queries:
            if not expr:
                problems.append(f"{source} {where}: no expr")
                continue
            for series in METRIC.findall(expr):
                base, why = resolve(series, metrics)
                if why:
                    problems.append(f"{source} {where}: {why}")
                elif source == "dashboard":
                    shown.add(base)
    for name in sorted(set(metrics) - shown):
        problems.append(f"dashboard: {metrics[name]} {name} is on no panel")
    return problems


def self_test(metrics, dashboard, rules):
    """Each kind of finding is found."""
    cases = []
    unknown = copy.deepcopy(dashboard)
    unknown["panels"][1]["targets"][0]["expr"] = "rate(capstan_not_exported_total[5m])"
    cases.append(("an unknown metric", unknown, rules, "capstan_not_exported_total is exported by neither"))
    not_histogram = copy.deepcopy(dashboard)
    not_histogram["panels"][1]["targets"].append({"expr": "capstan_jobs_queued_bucket"})
    cases.append(("a histogram series of a gauge", not_histogram, rules, "is a gauge, not a histogram"))
    no_expr = copy.deepcopy(dashboard)
    no_expr["panels"][1]["targets"].append({"refId": "Z"})
    cases.append(("a target without expr", no_expr, rules, "no expr"))
    bad_rule = copy.deepcopy(rules)
    bad_rule["groups"][0]["rules"][0]["expr"] = "capstan_grpc_calls_total"
    cases.append(("an unknown metric in a rule", dashboard, bad_rule, "capstan_grpc_calls_total is exported"))
    fewer = dict(metrics, capstan_only_exported_total="counter")
    failed = []
    for what, d, r, expect in cases:
        if not any(expect in p for p in findings(metrics, d, r)):
            failed.append(what)
    if not any("capstan_only_exported_total is on no panel" in p for p in findings(fewer, dashboard, rules)):
        failed.append("an exported metric on no panel")
    return failed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dashboard", type=pathlib.Path, default=HERE / "dashboard.json")
    parser.add_argument("--rules", type=pathlib.Path, default=HERE / "alerts.yaml")
    parser.add_argument("--root", type=pathlib.Path, default=ROOT)
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    try:
        dashboard = json.loads(args.dashboard.read_text())
    except json.JSONDecodeError as e:
        print(f"{args.dashboard}: not JSON: {e}", file=sys.stderr)
        return 1
    rules = yaml.safe_load(args.rules.read_text())
    metrics = exported(args.root)
    if not metrics:
        print(f"no metrics found in {SOURCES} under {args.root}", file=sys.stderr)
        return 1
    problems = findings(metrics, dashboard, rules)
    for p in problems:
        print(p, file=sys.stderr)
    if args.self_test:
        failed = self_test(metrics, dashboard, rules)
        for what in failed:
            print(f"self-test: {what} went unnoticed", file=sys.stderr)
        problems += failed
    queries = len(dashboard_queries(dashboard)) + len(rule_queries(rules))
    print(f"{len(metrics)} exported metrics, {queries} queries: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
