-- ListRuns filters on params (`params.K = "v"`) read an index table kept like run_tags: the
-- statement that writes a run derives its rows. Deleting a run takes its rows along.
CREATE TABLE run_params (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
INSERT INTO run_params (run_id, key, value)
SELECT r.run_id, p.key, p.value FROM runs r, json_each(r.params) p;

CREATE TRIGGER run_params_on_insert AFTER INSERT ON runs
WHEN NEW.params <> '{}'
BEGIN
    INSERT INTO run_params (run_id, key, value)
    SELECT NEW.run_id, key, value FROM json_each(NEW.params);
END;

CREATE TRIGGER run_params_on_update AFTER UPDATE OF params ON runs
WHEN OLD.params IS NOT NEW.params
BEGIN
    DELETE FROM run_params WHERE run_id = NEW.run_id;
    INSERT INTO run_params (run_id, key, value)
    SELECT NEW.run_id, key, value FROM json_each(NEW.params);
END;

-- A selective map condition is answered from the index alone: (key, value) finds the
-- entries and run_id, inside the index, is what the condition returns.
CREATE INDEX run_params_by_kv ON run_params (key, value, run_id);
CREATE INDEX run_tags_by_kv_run ON run_tags (key, value, run_id);
DROP INDEX run_tags_by_kv;
