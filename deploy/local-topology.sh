#!/usr/bin/env bash
# The production topology on one machine, without a cluster: two registry-svc and two
# pipeline-svc processes on their own loopback ports, sharing one Postgres server, with
# JWT auth on. Each process gets exactly the environment keys that the rendered `prod`
# overlay sets (deploy/manifest_env.py refuses any other key); only values that make no
# sense off-cluster are replaced: addresses, mounted file paths, Secrets, Service URLs and
# object storage.
#
# Usage: deploy/local-topology.sh up | down | status | kill INSTANCE | clean
#   up      start every instance that is not running, wait until each reports SERVING
#           (on its readiness probe's health service) and write $STATE_DIR/topology.env;
#           after `kill`, `up` restarts just the killed instance
#   down    SIGTERM every instance (pipelines first), wait for a graceful exit
#   status  pid, health and metrics of each instance; exit 1 unless all are SERVING
#   kill    SIGKILL one instance (registry-1, registry-2, pipeline-1, pipeline-2), as a crash
#   clean   down, drop the topology databases and delete $STATE_DIR
#
# Environment:
#   STATE_DIR       secrets, tokens, data, logs, pids (default /tmp/capstan-topology)
#   BIN_DIR         directory with registry-svc and pipeline-svc (default: the first of
#                   ${CARGO_TARGET_DIR:-target}/release and .../debug that has them)
#   SKIP_PIPELINE   1: run without pipeline-svc when its binary is missing (said loudly);
#                   otherwise a missing binary is an error
#   PG_URL          Postgres server (default postgres://postgres@127.0.0.1:5432)
#   TOPOLOGY_DB     database name prefix (default capstan_topology): registry-svc uses
#                   ${TOPOLOGY_DB}_registry, pipeline-svc ${TOPOLOGY_DB}_pipeline, as in
#                   the cluster, where each service has its own database (Secret)
#   REGISTRY_PORTS  default "50151 50152";  PIPELINE_PORTS  default "50161 50162"
#   METRICS_OFFSET  metrics port = gRPC port + offset (default -40000: 10151, ...)
#   READY_TIMEOUT   seconds each process may take to report SERVING (default 90)
#
# $STATE_DIR/topology.env (KEY=VALUE lines) tells tests where everything is.
set -euo pipefail
LOG_TAG=local-topology
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE_DIR="${STATE_DIR:-/tmp/capstan-topology}"
PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432}"
TOPOLOGY_DB="${TOPOLOGY_DB:-capstan_topology}"
REGISTRY_PORTS="${REGISTRY_PORTS:-50151 50152}"
PIPELINE_PORTS="${PIPELINE_PORTS:-50161 50162}"
METRICS_OFFSET="${METRICS_OFFSET:--40000}"
READY_TIMEOUT="${READY_TIMEOUT:-90}"
MARKER="$STATE_DIR/.capstan-topology"
RENDERED="$STATE_DIR/prod.yaml"

[[ "$TOPOLOGY_DB" =~ ^[a-z][a-z0-9_]*$ ]] || die "TOPOLOGY_DB must be a plain lowercase name, got $TOPOLOGY_DB"
REGISTRY_DB_URL="$PG_URL/${TOPOLOGY_DB}_registry"
PIPELINE_DB_URL="$PG_URL/${TOPOLOGY_DB}_pipeline"

# instances: NAME SERVICE PORT, registries first (pipelines call them)
instances() {
  local i=1 port
  for port in $REGISTRY_PORTS; do echo "registry-$i registry-svc $port"; i=$((i + 1)); done
  i=1
  for port in $PIPELINE_PORTS; do echo "pipeline-$i pipeline-svc $port"; i=$((i + 1)); done
}

pid_file() { echo "$STATE_DIR/pids/$1.pid"; }

# The pid of a running instance started by this script, or nothing. The command line
# must name the instance's binary, so a reused pid is never taken for ours.
running_pid() {
  local name="$1" service="$2" file pid
  file="$(pid_file "$name")"
  [ -f "$file" ] || return 0
  pid="$(cat "$file")"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
    && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "/$service"; then
    echo "$pid"
  fi
}

# alive PID: the process exists and has not exited. An exited process that nobody has reaped
# yet (a zombie: our instances are reparented to init once `up` returns, and some inits
# reap late) is gone: it holds no port, lease or connection any more.
alive() {
  local state
  state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)"
  [ -n "$state" ] && [ "$state" != Z ]
}

find_bin_dir() {
  if [ -n "${BIN_DIR:-}" ]; then
    [ -x "$BIN_DIR/registry-svc" ] || die "BIN_DIR=$BIN_DIR has no registry-svc"
    echo "$BIN_DIR"
    return
  fi
  local target="${CARGO_TARGET_DIR:-$REPO_ROOT/target}" dir
  for dir in "$target/release" "$target/debug"; do
    if [ -x "$dir/registry-svc" ] && [ -x "$dir/pipeline-svc" ]; then echo "$dir"; return; fi
  done
  for dir in "$target/release" "$target/debug"; do
    if [ -x "$dir/registry-svc" ]; then echo "$dir"; return; fi
  done
  die "no registry-svc in $target/release or $target/debug: cargo build --release -p registry-svc -p pipeline-svc, or set BIN_DIR"
}

psql_admin() { psql "$PG_URL/postgres" -v ON_ERROR_STOP=1 -qAtc "$1"; }

ensure_database() {
  local db="$1"
  if [ -z "$(psql_admin "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]; then
    log "creating database $db"
    psql_admin "CREATE DATABASE $db" || [ -n "$(psql_admin "SELECT 1 FROM pg_database WHERE datname = '$db'")" ] \
      || die "cannot create database $db"
  fi
}

prepare_state() {
  local bin="$1"
  mkdir -p "$STATE_DIR"/{logs,pids,registry-shared}
  touch "$MARKER"
  # The cluster mounts this from the capstan-jwt Secret; here it is made once and kept.
  if [ ! -s "$STATE_DIR/jwt-secret" ]; then
    (umask 077 && "$PYTHON" -c 'import secrets; print(secrets.token_hex(32))' >"$STATE_DIR/jwt-secret")
  fi
  # kube-root-ca.crt in the cluster: a self-signed stand-in, made once.
  if [ ! -s "$STATE_DIR/kube-api-ca.crt" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=capstan-local-topology" \
      -keyout "$STATE_DIR/kube-api-ca.key" -out "$STATE_DIR/kube-api-ca.crt" 2>/dev/null \
      || die "openssl cannot make the stand-in cluster CA (apt-get install openssl)"
  fi
  # capstan-registry-token in the cluster: pipeline-svc's `service` identity at the registry.
  (umask 077 && "$bin/registry-svc" token --jwt-secret-file "$STATE_DIR/jwt-secret" \
    --role service --subject pipeline-svc --ttl-seconds 2592000 >"$STATE_DIR/registry-token")
  (umask 077 && "$bin/registry-svc" token --jwt-secret-file "$STATE_DIR/jwt-secret" \
    --role admin --subject topology-operator --ttl-seconds 604800 >"$STATE_DIR/admin.token")
  ensure_kubectl
  ensure_pyyaml
  "$KUBECTL" kustomize "$DEPLOY_DIR/k8s/overlays/prod" >"$RENDERED" || die "cannot render the prod overlay"
}

loopback_list() { # loopback_list PREFIX PORTS -> PREFIX127.0.0.1:P1,PREFIX127.0.0.1:P2
  local out="" port
  for port in $2; do out="${out:+$out,}${1}127.0.0.1:$port"; done
  echo "$out"
}

start_instance() {
  local name="$1" service="$2" port="$3" bin="$4" data
  local sets=(
    --set "CAPSTAN_LISTEN=127.0.0.1:$port"
    --set "CAPSTAN_METRICS_LISTEN=127.0.0.1:$((port + METRICS_OFFSET))"
    --set "CAPSTAN_JWT_SECRET_FILE=$STATE_DIR/jwt-secret"
  )
  case "$service" in
    registry-svc)
      # Replicas share one blob directory, as pods share the S3 bucket; the AWS keys are
      # then unused but still set, so the key set stays the manifests'.
      data="$STATE_DIR/registry-shared"
      sets+=(
        --set "CAPSTAN_DATABASE_URL=$REGISTRY_DB_URL"
        --set "CAPSTAN_ARTIFACT_STORE=fs"
        --set "AWS_ACCESS_KEY_ID=unused-with-fs-store"
        --set "AWS_SECRET_ACCESS_KEY=unused-with-fs-store"
        # The cluster's service-account issuer has no twin here: tokens are HS256 from
        # jwt-secret, and the issuer named instead is a loopback port nothing serves (its key
        # refresh fails and is logged; no token names it). The CA and fetch token the
        # manifests mount are stood in for by files made in prepare_state.
        --set "CAPSTAN_OIDC_ISSUERS=https://127.0.0.1:9=https://127.0.0.1:9/openid/v1/jwks"
        --set "CAPSTAN_OIDC_CA_FILE=$STATE_DIR/kube-api-ca.crt"
        --set "CAPSTAN_OIDC_FETCH_TOKEN_FILE=$STATE_DIR/registry-token"
      )
      ;;
    pipeline-svc)
      # Every registry replica, as a client-side balancer sees them behind the headless Service.
      data="$STATE_DIR/$name"
      sets+=(
        --set "CAPSTAN_DATABASE_URL=$PIPELINE_DB_URL"
        --set "CAPSTAN_REGISTRY_URL=${TOPOLOGY_REGISTRY_URL:-$(loopback_list http:// "$REGISTRY_PORTS")}"
        --set "CAPSTAN_REGISTRY_TOKEN_FILE=$STATE_DIR/registry-token"
      )
      ;;
  esac
  mkdir -p "$data"
  sets+=(--set "CAPSTAN_DATA_DIR=$data")
  # Fails here, with the manifests' reasons, when a cluster-only value is left unreplaced.
  "$PYTHON" "$DEPLOY_DIR/manifest_env.py" --rendered "$RENDERED" "$service" "${sets[@]}" \
    >"$STATE_DIR/$name.env" || die "$name: the prod manifests' environment cannot be adapted (see above)"
  {
    echo "=== $(date -u +%FT%TZ) starting $service on 127.0.0.1:$port with:"
    sed 's/^/    /' "$STATE_DIR/$name.env"
  } >>"$STATE_DIR/logs/$name.log"
  # manifest_env.py execs the binary, so $! is the service's own pid.
  nohup "$PYTHON" "$DEPLOY_DIR/manifest_env.py" --rendered "$RENDERED" "$service" "${sets[@]}" \
    -- "$bin/$service" >>"$STATE_DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$(pid_file "$name")"
  log "$name: started $service (pid $!) on 127.0.0.1:$port, log $STATE_DIR/logs/$name.log"
}

# health ADDR SERVICE -> SERVING, NOT_SERVING, NotFound (no such health service), ... or UNREACHABLE
health() {
  local out code
  if out="$(grpcurl -plaintext -max-time 2 -d "{\"service\": \"$2\"}" "$1" grpc.health.v1.Health/Check 2>&1)"; then
    sed -n 's/.*"status": "\([A-Z_]*\)".*/\1/p' <<<"$out" | head -1
  else
    code="$(sed -n 's/^ *Code: \([A-Za-z]*\).*/\1/p' <<<"$out" | head -1)"
    echo "${code:-UNREACHABLE}"
  fi
}

readiness_service() { # the health service name the readiness probe of SERVICE checks
  "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["readiness"]["service"])' \
    < <("$PYTHON" "$DEPLOY_DIR/manifest_env.py" --rendered "$RENDERED" "$1" --format probes)
}

wait_serving() {
  local name="$1" service="$2" port="$3" probe deadline status pid
  probe="$(readiness_service "$service")"
  deadline=$((SECONDS + READY_TIMEOUT))
  # The pid just recorded (or checked by running_pid): while it execs from the pyenv shim
  # through manifest_env.py to the binary, its /proc cmdline is briefly empty, so only
  # whether the process is still alive counts here.
  pid="$(cat "$(pid_file "$name")")"
  while :; do
    if ! alive "$pid"; then
      tail -n 20 "$STATE_DIR/logs/$name.log" | sed 's/^/    /' >&2
      die "$name exited before reporting SERVING (log: $STATE_DIR/logs/$name.log)"
    fi
    status="$(health "127.0.0.1:$port" "$probe")"
    [ "$status" = SERVING ] && break
    [ "$SECONDS" -lt "$deadline" ] \
      || die "$name: health of \"$probe\" is still $status after ${READY_TIMEOUT}s (log: $STATE_DIR/logs/$name.log)"
    sleep 0.3
  done
  status="$(health "127.0.0.1:$port" "")"
  [ "$status" = SERVING ] || die "$name: overall health (service \"\") is $status"
  log "$name: SERVING ($probe) on 127.0.0.1:$port"
}

write_topology_env() {
  local bin="$1" with_pipeline="$2" pipeline_addrs=""
  [ "$with_pipeline" = 0 ] || pipeline_addrs="$(loopback_list "" "$PIPELINE_PORTS")"
  {
    echo "TOPOLOGY_STATE_DIR=$STATE_DIR"
    echo "TOPOLOGY_BIN_DIR=$bin"
    echo "TOPOLOGY_REGISTRY_ADDRS=$(loopback_list "" "$REGISTRY_PORTS")"
    echo "TOPOLOGY_PIPELINE_ADDRS=$pipeline_addrs"
    echo "TOPOLOGY_JWT_SECRET_FILE=$STATE_DIR/jwt-secret"
    echo "TOPOLOGY_ADMIN_TOKEN_FILE=$STATE_DIR/admin.token"
    echo "TOPOLOGY_REGISTRY_DATABASE_URL=$REGISTRY_DB_URL"
    echo "TOPOLOGY_PIPELINE_DATABASE_URL=$PIPELINE_DB_URL"
    echo "TOPOLOGY_PID_DIR=$STATE_DIR/pids"
    echo "TOPOLOGY_LOG_DIR=$STATE_DIR/logs"
  } >"$STATE_DIR/topology.env"
}

cmd_up() {
  local bin with_pipeline=1 name service port pid wanted started=()
  bin="$(find_bin_dir)"
  if [ ! -x "$bin/pipeline-svc" ]; then
    [ "${SKIP_PIPELINE:-0}" = 1 ] \
      || die "no pipeline-svc in $bin (build it, or set SKIP_PIPELINE=1 to run the registries alone)"
    log "SKIPPING pipeline-svc: no binary in $bin and SKIP_PIPELINE=1 — this is NOT the full topology"
    with_pipeline=0
  fi
  log "binaries from $bin"
  command -v psql >/dev/null || die "psql is needed to create the topology databases"
  psql_admin "SELECT 1" >/dev/null || die "Postgres is unreachable at $PG_URL"
  ensure_grpcurl
  prepare_state "$bin"
  ensure_database "${TOPOLOGY_DB}_registry"
  if [ "$with_pipeline" = 1 ]; then ensure_database "${TOPOLOGY_DB}_pipeline"; fi

  # Replicas of a service start together, as a Deployment's pods do (so migrations race
  # as they do in the cluster); pipelines start once the registries serve.
  local services=(registry-svc)
  if [ "$with_pipeline" = 1 ]; then services+=(pipeline-svc); fi
  for wanted in "${services[@]}"; do
    while read -r name service port; do
      [ "$service" = "$wanted" ] || continue
      pid="$(running_pid "$name" "$service")"
      if [ -n "$pid" ]; then
        log "$name: already running (pid $pid)"
      else
        start_instance "$name" "$service" "$port" "$bin"
        started+=("$name")
      fi
    done < <(instances)
    while read -r name service port; do
      if [ "$service" = "$wanted" ]; then wait_serving "$name" "$service" "$port"; fi
    done < <(instances)
  done
  write_topology_env "$bin" "$with_pipeline"
  log "up: ${#started[@]} started; details in $STATE_DIR/topology.env"
}

# stop NAME SERVICE SIGNAL: signals the instance and waits until it is gone
stop_instance() {
  local name="$1" service="$2" signal="$3" pid waited=0
  pid="$(running_pid "$name" "$service")"
  if [ -z "$pid" ]; then
    rm -f "$(pid_file "$name")"
    return 0
  fi
  kill "-$signal" "$pid"
  # SIGTERM: the drain may take CAPSTAN_SHUTDOWN_DEADLINE_SECONDS (20) and a little more.
  while alive "$pid"; do
    if [ "$waited" -ge 300 ]; then
      log "$name (pid $pid) still running 30 s after SIG$signal; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  rm -f "$(pid_file "$name")"
  log "$name: stopped (SIG$signal, pid $pid)"
}

cmd_down() {
  local name service port
  while read -r name service port; do
    stop_instance "$name" "$service" TERM
  done < <(instances | tac)
}

cmd_kill() {
  local target="${1:-}" name service port
  while read -r name service port; do
    if [ "$name" = "$target" ]; then
      [ -n "$(running_pid "$name" "$service")" ] || die "$name is not running"
      stop_instance "$name" "$service" KILL
      return
    fi
  done < <(instances)
  die "unknown instance ${target:-(none)}; one of: $(instances | cut -d' ' -f1 | tr '\n' ' ')"
}

cmd_status() {
  local name service port pid probe status metrics all=0
  [ -f "$RENDERED" ] || die "not set up: run $0 up"
  ensure_grpcurl
  while read -r name service port; do
    pid="$(running_pid "$name" "$service")"
    if [ -z "$pid" ] && [ "$service" = pipeline-svc ] \
      && grep -qx 'TOPOLOGY_PIPELINE_ADDRS=' "$STATE_DIR/topology.env" 2>/dev/null; then
      printf '%-11s %-13s 127.0.0.1:%-6s %s\n' "$name" "$service" "$port" "skipped (SKIP_PIPELINE=1)"
      continue
    fi
    if [ -z "$pid" ]; then
      printf '%-11s %-13s 127.0.0.1:%-6s %s\n' "$name" "$service" "$port" "not running"
      all=1
      continue
    fi
    probe="$(readiness_service "$service")"
    status="$(health "127.0.0.1:$port" "$probe")"
    metrics="$("$PYTHON" -c 'import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=2); print("ok")' \
      "http://127.0.0.1:$((port + METRICS_OFFSET))/metrics" 2>/dev/null || echo unreachable)"
    printf '%-11s %-13s 127.0.0.1:%-6s pid %-8s %-12s metrics %s\n' "$name" "$service" "$port" "$pid" "$status" "$metrics"
    [ "$status" = SERVING ] || all=1
  done < <(instances)
  return "$all"
}

cmd_clean() {
  cmd_down
  if command -v psql >/dev/null && psql_admin "SELECT 1" >/dev/null 2>&1; then
    psql_admin "DROP DATABASE IF EXISTS ${TOPOLOGY_DB}_pipeline WITH (FORCE)"
    psql_admin "DROP DATABASE IF EXISTS ${TOPOLOGY_DB}_registry WITH (FORCE)"
    log "dropped ${TOPOLOGY_DB}_registry and ${TOPOLOGY_DB}_pipeline"
  else
    log "Postgres unreachable: databases ${TOPOLOGY_DB}_* left in place"
  fi
  if [ -f "$MARKER" ]; then
    rm -rf "$STATE_DIR"
    log "removed $STATE_DIR"
  elif [ -e "$STATE_DIR" ]; then
    log "$STATE_DIR has no $(basename "$MARKER") marker: not removing it"
  fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  kill) cmd_kill "${2:-}" ;;
  clean) cmd_clean ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
