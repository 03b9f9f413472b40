#!/usr/bin/env bash
# Capstan's PostgreSQL write and read paths as a share of what PostgreSQL itself does with
# the same statements, in one session: `pgbench` replays the SQL the registry store sends
# (on a database the release registry-svc migrated, so with the same tables, indexes and
# triggers), interleaved with `bench --backend postgres --phases requests`.
# usage: tests/bench/pg_peer.sh [BIN_DIR] [OUT_DIR] [ROUNDS]
#   BIN_DIR holds the release registry-svc and bench (default target/release).
# Postgres at 127.0.0.1:5432 as postgres (CAPSTAN_PG_HOST/CAPSTAN_PG_PORT to change).
set -euo pipefail
bin=${1:-target/release} out=${2:-/tmp/pg-peer} rounds=${3:-2}
host=${CAPSTAN_PG_HOST:-127.0.0.1} port=${CAPSTAN_PG_PORT:-5432}
secs=${PGBENCH_SECONDS:-5}
mkdir -p "$out"
db="capstan_pg_peer_$$"
psql=(psql -X -q -v ON_ERROR_STOP=1 -h "$host" -p "$port" -U postgres)
work=$(mktemp -d)
cleanup() {
  [ -n "${registry:-}" ] && kill "$registry" 2>/dev/null || true
  "${psql[@]}" -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  rm -rf "$work"
}
trap cleanup EXIT
"${psql[@]}" -d postgres -c "CREATE DATABASE $db"

# The registry's own migrations make the schema: start it once, until its storage is ready.
listen="127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$bin/registry-svc" --auth disabled --listen "$listen" --data-dir "$work/data" \
  --database-url "postgres://postgres@$host:$port/$db" > "$work/registry.log" 2>&1 &
registry=$!
# It listens before its storage is ready; the migrations are done at "storage ready".
for _ in $(seq 1 300); do grep -q 'storage ready' "$work/registry.log" && break; sleep 0.1; done
grep -q 'storage ready' "$work/registry.log" || { cat "$work/registry.log" >&2; exit 1; }
kill "$registry"; wait "$registry" 2>/dev/null || true; registry=

# Two runs for the aliases to point at, as CreateRun stores them.
"${psql[@]}" -d "$db" <<'SQL'
INSERT INTO runs (name, params, tags, metrics, status, status_message, run_id, request_id,
                  model_type, create_time, update_time, heartbeat_time, heartbeat_timeout_ms,
                  version, namespace, created_by, updated_by)
SELECT 'peer', '{}', '{}', '{"wape":0.2}', 'SUCCEEDED', '', 'run-' || i, NULL,
       'seasonal_naive', 0, 0, 0, 0, 1, 'default', 'bench', 'bench'
FROM generate_series(0, 1) AS i;
INSERT INTO aliases (alias, run_id, description, revision, update_time, updated_by,
                     last_action, last_reason, previous_run_id, namespace)
VALUES ('peer-read', 'run-0', '', 1, 0, 'bench', 'SET', '', '', 'default');
SQL

# SetAlias without an expected revision: the store's one upsert (aliases.rs); the
# database's trigger appends the history entry from the old values, as for the service.
cat > "$work/set_alias.sql" <<'SQL'
\set r random(0, 1)
INSERT INTO aliases (alias, run_id, description, revision, update_time, updated_by, last_action, last_reason, previous_run_id, namespace) VALUES ('peer-' || :client_id, 'run-' || :r, '', (SELECT COALESCE(MAX(revision), 0) + 1 FROM alias_history WHERE namespace = 'default' AND alias = 'peer-' || :client_id), 0, 'bench', 'SET', 'bench', '', 'default') ON CONFLICT (namespace, alias) DO UPDATE SET previous_run_id = aliases.run_id, run_id = excluded.run_id, description = excluded.description, revision = aliases.revision + 1, update_time = excluded.update_time, updated_by = excluded.updated_by, last_action = excluded.last_action, last_reason = excluded.last_reason WHERE 1 = 1 RETURNING revision, previous_run_id;
SQL
# CreateRun then UpdateRun (status only): the store's insert and its versioned update
# (runs.rs), each its own transaction as the two RPCs are.
cat > "$work/lifecycle.sql" <<'SQL'
INSERT INTO runs (name, params, tags, metrics, status, status_message, run_id, request_id, model_type, create_time, update_time, heartbeat_time, heartbeat_timeout_ms, version, namespace, created_by, updated_by) VALUES ('lifecycle', '{"season":"7"}', '{}', '{"wape":0.2}', 'RUNNING', '', gen_random_uuid()::text, NULL, 'seasonal_naive', 0, 0, 0, 0, 1, 'default', 'bench', 'bench') ON CONFLICT (namespace, request_id) DO NOTHING RETURNING run_id \gset
UPDATE runs SET name = 'lifecycle', params = '{"season":"7"}', tags = '{}', metrics = '{"wape":0.2}', status = 'SUCCEEDED', status_message = '', artifact_uri = NULL, artifact_sha256 = NULL, artifact_size_bytes = NULL, update_time = 1, heartbeat_time = 0, heartbeat_timeout_ms = 0, version = 2, updated_by = 'bench' WHERE run_id = :run_id AND version = 1;
SQL
# GetAlias: the store's one select by primary key.
cat > "$work/get_alias.sql" <<'SQL'
SELECT alias, run_id, description, revision, update_time, updated_by, namespace FROM aliases WHERE namespace = 'default' AND alias = 'peer-read';
SQL

pgb() { # NAME CLIENTS SCRIPT
  pgbench -n -M prepared -h "$host" -p "$port" -U postgres -c "$2" -j "$(( $2 < 2 ? 1 : 2 ))" \
    -T "$secs" -l --log-prefix "$out/$1" -f "$work/$3" "$db" > "$out/$1.txt" 2>&1 \
    || { cat "$out/$1.txt" >&2; exit 1; }
}
for round in $(seq 1 "$rounds"); do
  echo "== round $round pgbench (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  pgb "pgbench-set-$round" 16 set_alias.sql
  pgb "pgbench-lifecycle-$round" 16 lifecycle.sql
  pgb "pgbench-get-$round" 1 get_alias.sql
  echo "== round $round capstan (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  "$bin/bench" --backend postgres --phases requests --duration-secs "$secs" --warmup-secs 1 \
    --out "$out/capstan-$round.json" > "$out/capstan-$round.log" 2>&1
done
python3 "$(dirname "$0")/pg_peer_summary.py" "$out"
