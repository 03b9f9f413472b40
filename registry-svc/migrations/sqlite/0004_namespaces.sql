-- Namespaces: every run and alias belongs to one (the first segment of its artifact URIs).
-- Data from before lives in `default`. Alias names and request ids are unique within a
-- namespace, so two teams can both have `production` and reuse a request id.
--
-- SQLite cannot change a table's keys in place, so runs, aliases and their history are
-- rebuilt. Migrations run in a transaction with foreign keys on, so the old runs table is
-- dropped only once no table references it: the new aliases table first references
-- runs_new (renamed along with it), and the derived tag and metric rows are rebuilt.
CREATE TABLE namespaces (
    name TEXT PRIMARY KEY,
    creator TEXT NOT NULL,
    create_time BIGINT NOT NULL
);
INSERT INTO namespaces (name, creator, create_time)
VALUES ('default', 'system', CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER));

CREATE TABLE runs_new (
    run_id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL REFERENCES namespaces (name),
    request_id TEXT,
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
    version BIGINT NOT NULL,
    created_by TEXT NOT NULL DEFAULT '',
    updated_by TEXT NOT NULL DEFAULT '',
    UNIQUE (namespace, request_id)
);
INSERT INTO runs_new (run_id, namespace, request_id, name, model_type, params, tags, metrics,
                      status, status_message, artifact_uri, artifact_sha256,
                      artifact_size_bytes, create_time, update_time, heartbeat_time,
                      heartbeat_timeout_ms, version)
SELECT run_id, 'default', request_id, name, model_type, params, tags, metrics, status,
       status_message, artifact_uri, artifact_sha256, artifact_size_bytes, create_time,
       update_time, heartbeat_time, heartbeat_timeout_ms, version
FROM runs;

CREATE TABLE aliases_new (
    namespace TEXT NOT NULL,
    alias TEXT NOT NULL,
    run_id TEXT NOT NULL REFERENCES runs_new (run_id),
    description TEXT NOT NULL,
    revision BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    updated_by TEXT NOT NULL,
    previous_run_id TEXT NOT NULL DEFAULT '',
    last_action TEXT NOT NULL DEFAULT 'SET',
    last_reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (namespace, alias)
);
INSERT INTO aliases_new (namespace, alias, run_id, description, revision, update_time,
                         updated_by, previous_run_id, last_action, last_reason)
SELECT 'default', alias, run_id, description, revision, update_time, updated_by,
       previous_run_id, last_action, last_reason
FROM aliases;

CREATE TABLE alias_history_new (
    namespace TEXT NOT NULL,
    alias TEXT NOT NULL,
    revision BIGINT NOT NULL,
    run_id TEXT NOT NULL,
    previous_run_id TEXT NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    description TEXT NOT NULL,
    time BIGINT NOT NULL,
    PRIMARY KEY (namespace, alias, revision)
);
INSERT INTO alias_history_new (namespace, alias, revision, run_id, previous_run_id, action,
                               reason, actor, description, time)
SELECT 'default', alias, revision, run_id, previous_run_id, action, reason, actor,
       description, time
FROM alias_history;

DROP TABLE alias_history;
DROP TABLE aliases;
DROP TABLE run_tags;
DROP TABLE run_metrics;
DROP TABLE runs;
ALTER TABLE runs_new RENAME TO runs;
ALTER TABLE aliases_new RENAME TO aliases;
ALTER TABLE alias_history_new RENAME TO alias_history;

CREATE INDEX runs_by_create_time ON runs (namespace, create_time, run_id);
CREATE INDEX runs_running ON runs (status, heartbeat_timeout_ms);

CREATE TABLE run_tags (
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX run_tags_by_kv ON run_tags (key, value);
INSERT INTO run_tags (run_id, key, value)
SELECT r.run_id, j.key, j.value FROM runs r, json_each(r.tags) j;

CREATE TABLE run_metrics (
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    key TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX run_metrics_by_value ON run_metrics (key, value, run_id);
INSERT INTO run_metrics (run_id, key, value)
SELECT r.run_id, j.key, j.value FROM runs r, json_each(r.metrics) j;

CREATE TRIGGER run_indexes_on_insert AFTER INSERT ON runs
BEGIN
    INSERT INTO run_tags (run_id, key, value)
    SELECT NEW.run_id, key, value FROM json_each(NEW.tags);
    INSERT INTO run_metrics (run_id, key, value)
    SELECT NEW.run_id, key, value FROM json_each(NEW.metrics);
END;

CREATE TRIGGER run_indexes_on_update AFTER UPDATE OF tags, metrics ON runs
WHEN OLD.tags IS NOT NEW.tags OR OLD.metrics IS NOT NEW.metrics
BEGIN
    DELETE FROM run_tags WHERE run_id = NEW.run_id;
    DELETE FROM run_metrics WHERE run_id = NEW.run_id;
    INSERT INTO run_tags (run_id, key, value)
    SELECT NEW.run_id, key, value FROM json_each(NEW.tags);
    INSERT INTO run_metrics (run_id, key, value)
    SELECT NEW.run_id, key, value FROM json_each(NEW.metrics);
END;

CREATE TRIGGER alias_history_on_insert AFTER INSERT ON aliases
BEGIN
    INSERT INTO alias_history (namespace, alias, revision, run_id, previous_run_id, action,
                               reason, actor, description, time)
    VALUES (NEW.namespace, NEW.alias, NEW.revision, NEW.run_id, NEW.previous_run_id,
            NEW.last_action, NEW.last_reason, NEW.updated_by, NEW.description,
            NEW.update_time);
END;

CREATE TRIGGER alias_history_on_update AFTER UPDATE ON aliases
WHEN NEW.revision <> OLD.revision
BEGIN
    INSERT INTO alias_history (namespace, alias, revision, run_id, previous_run_id, action,
                               reason, actor, description, time)
    VALUES (NEW.namespace, NEW.alias, NEW.revision, NEW.run_id, NEW.previous_run_id,
            NEW.last_action, NEW.last_reason, NEW.updated_by, NEW.description,
            NEW.update_time);
END;
