-- Namespaces: every run and alias belongs to one (the first segment of its artifact URIs).
-- Data from before lives in `default`. Alias names and request ids are unique within a
-- namespace, so two teams can both have `production` and reuse a request id.
CREATE TABLE namespaces (
    name TEXT PRIMARY KEY,
    creator TEXT NOT NULL,
    create_time BIGINT NOT NULL
);
INSERT INTO namespaces (name, creator, create_time)
VALUES ('default', 'system', (EXTRACT(EPOCH FROM now()) * 1000000)::BIGINT);

ALTER TABLE runs ADD COLUMN namespace TEXT NOT NULL DEFAULT 'default' REFERENCES namespaces (name);
ALTER TABLE runs ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN updated_by TEXT NOT NULL DEFAULT '';
ALTER TABLE runs DROP CONSTRAINT runs_request_id_key;
ALTER TABLE runs ADD CONSTRAINT runs_request_id_key UNIQUE (namespace, request_id);
DROP INDEX runs_by_create_time;
CREATE INDEX runs_by_create_time ON runs (namespace, create_time, run_id);

ALTER TABLE aliases ADD COLUMN namespace TEXT NOT NULL DEFAULT 'default';
ALTER TABLE aliases DROP CONSTRAINT aliases_pkey;
ALTER TABLE aliases ADD PRIMARY KEY (namespace, alias);

ALTER TABLE alias_history ADD COLUMN namespace TEXT NOT NULL DEFAULT 'default';
ALTER TABLE alias_history DROP CONSTRAINT alias_history_pkey;
ALTER TABLE alias_history ADD PRIMARY KEY (namespace, alias, revision);

CREATE OR REPLACE FUNCTION alias_history_append() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO alias_history (namespace, alias, revision, run_id, previous_run_id, action,
                               reason, actor, description, time)
    VALUES (NEW.namespace, NEW.alias, NEW.revision, NEW.run_id, NEW.previous_run_id,
            NEW.last_action, NEW.last_reason, NEW.updated_by, NEW.description, NEW.update_time);
    RETURN NULL;
END;
$$;
