#!/usr/bin/env bash
# Validates everything in deploy/ without a cluster or a Docker engine:
#   1. renders every overlay in deploy/k8s/overlays with `kubectl kustomize`,
#   2. validates each rendering with `kubernetes-validate --strict` against the oldest
#      supported Kubernetes (1.30: native preStop sleep) and the newest schema shipped,
#   3. asserts the production guard rails on the prod rendering (check_prod.py), and
#      proves those checks can fail (check_prod.py --self-test),
#   4. checks that manifest_env.py reads each service's environment and refuses cluster-only
#      values and keys the manifests do not set,
#   5. checks the alert rules (`promtool check rules`) and runs their cases
#      (`promtool test rules`), and checks the dashboard's and the rules' queries against
#      the metric names the services export (monitoring/check.py, and its --self-test),
#   6. lints the Dockerfiles (hadolint) and the scripts (shellcheck).
# Installs what is missing: kubectl, kubernetes-validate, PyYAML, promtool, hadolint and
# the script linter.
#
# Environment: RENDER_DIR keeps the rendered YAML there (default: a temporary dir);
# K8S_VERSIONS overrides the Kubernetes versions validated against; KUBECTL the binary.
# Exit status is non-zero when any step fails; every failure is named on stderr.
set -euo pipefail
LOG_TAG=validate
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_kubectl
ensure_pyyaml
ensure_kubernetes_validate
ensure_hadolint
ensure_shellcheck
ensure_promtool

K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 $("$PYTHON" -c 'import kubernetes_validate.utils as u; print(u.latest_version())')}"
if [ -n "${RENDER_DIR:-}" ]; then
  mkdir -p "$RENDER_DIR"
else
  RENDER_DIR="$(mktemp -d)"
  trap 'rm -rf "$RENDER_DIR"' EXIT
fi

passed=0
failed=0
step() { # step NAME COMMAND...: runs one check, counts it, shows its output on failure
  local name="$1" out
  shift
  if out="$("$@" 2>&1)"; then
    passed=$((passed + 1))
    log "ok   $name"
  else
    failed=$((failed + 1))
    log "FAIL $name"
    printf '%s\n' "$out" | sed 's/^/    /' >&2
  fi
}

must_fail() { # must_fail PATTERN COMMAND...: COMMAND fails and says PATTERN
  local pattern="$1" out
  shift
  if out="$("$@" 2>&1)"; then
    echo "expected a failure, got success:"
    printf '%s\n' "$out"
    return 1
  fi
  grep -qF -- "$pattern" <<<"$out" || { printf 'failed without saying %s:\n%s\n' "$pattern" "$out"; return 1; }
}

overlays=()
for dir in "$DEPLOY_DIR"/k8s/overlays/*/; do
  overlays+=("$(basename "$dir")")
done
[ "${#overlays[@]}" -gt 0 ] || die "no overlays under $DEPLOY_DIR/k8s/overlays"

render() { "$KUBECTL" kustomize "$DEPLOY_DIR/k8s/overlays/$1" >"$2"; }

for overlay in "${overlays[@]}"; do
  rendered="$RENDER_DIR/$overlay.yaml"
  step "render $overlay" render "$overlay" "$rendered"
  [ -s "$rendered" ] || continue
  for version in $K8S_VERSIONS; do
    step "kubernetes-validate --strict $overlay (Kubernetes $version)" \
      kubernetes-validate --strict --quiet -k "$version" "$rendered"
  done
done

prod="$RENDER_DIR/prod.yaml"
if [ -s "$prod" ]; then
  step "check_prod.py (production guard rails)" "$PYTHON" "$DEPLOY_DIR/check_prod.py" --rendered "$prod"
  step "check_prod.py --self-test (each check can fail)" "$PYTHON" "$DEPLOY_DIR/check_prod.py" --rendered "$prod" --self-test
  for service in registry-svc pipeline-svc; do
    step "manifest_env.py reads the $service environment" \
      "$PYTHON" "$DEPLOY_DIR/manifest_env.py" --rendered "$prod" "$service" --format describe
  done
  step "manifest_env.py refuses cluster-only values" must_fail "CAPSTAN_LISTEN=0.0.0.0:50051 binds every interface" \
    "$PYTHON" "$DEPLOY_DIR/manifest_env.py" --rendered "$prod" registry-svc
  step "manifest_env.py refuses keys the manifests do not set" must_fail "do not set CAPSTAN_NOT_IN_MANIFESTS" \
    "$PYTHON" "$DEPLOY_DIR/manifest_env.py" --rendered "$prod" pipeline-svc --set CAPSTAN_NOT_IN_MANIFESTS=1
else
  failed=$((failed + 1))
  log "FAIL the prod overlay did not render; production checks not run"
fi

monitoring="$DEPLOY_DIR/monitoring"
step "promtool check rules (alert rules)" promtool check rules "$monitoring/alerts.yaml"
step "promtool test rules (alert cases)" promtool test rules "$monitoring/alerts_test.yaml"
step "monitoring/check.py (dashboard and rules against the exported metrics)" \
  "$PYTHON" "$monitoring/check.py" --self-test

step "hadolint Dockerfiles" hadolint "$DEPLOY_DIR"/*.Dockerfile
step "shellcheck scripts" shellcheck -x -P SCRIPTDIR "$DEPLOY_DIR"/*.sh

echo "deploy: $passed passed, $failed failed"
[ "$failed" -eq 0 ] || die "$failed deploy check(s) failed (see above)"
