-- Registry schema. Times are microseconds since the Unix epoch; ids are UUID text.
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    request_id TEXT UNIQUE,
    name TEXT NOT NULL,
    model_type TEXT NOT NULL,
    params TEXT NOT NULL,
    tags TEXT NOT NULL,
    metrics TEXT NOT NULL,
    status TEXT NOT NULL,
    status_message TEXT NOT NULL DEFAULT '',
    artifact_uri TEXT,
    artifact_sha256 TEXT,
    artifact_size_bytes BIGINT,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    heartbeat_time BIGINT NOT NULL,
    heartbeat_timeout_ms BIGINT NOT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX runs_by_create_time ON runs (create_time, run_id);
CREATE INDEX runs_running ON runs (status, heartbeat_timeout_ms);

CREATE TABLE run_tags (
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX run_tags_by_kv ON run_tags (key, value);

CREATE TABLE run_metrics (
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    key TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX run_metrics_by_value ON run_metrics (key, value, run_id);

CREATE TABLE aliases (
    alias TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    description TEXT NOT NULL,
    revision BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    updated_by TEXT NOT NULL
);

CREATE TABLE alias_history (
    alias TEXT NOT NULL,
    revision BIGINT NOT NULL,
    run_id TEXT NOT NULL,
    previous_run_id TEXT NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    description TEXT NOT NULL,
    time BIGINT NOT NULL,
    PRIMARY KEY (alias, revision)
);
