-- ListRuns filters on params (`params.K = "v"`) read an index table kept like run_tags: the
-- statement that writes a run derives its rows. Deleting a run takes its rows along.
CREATE TABLE run_params (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
INSERT INTO run_params (run_id, key, value)
SELECT r.run_id, p.key, p.value FROM runs r, jsonb_each_text(r.params::jsonb) p;

CREATE FUNCTION run_params_refresh() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        DELETE FROM run_params WHERE run_id = NEW.run_id;
    END IF;
    IF NEW.params <> '{}' THEN
        INSERT INTO run_params (run_id, key, value)
        SELECT NEW.run_id, key, value FROM jsonb_each_text(NEW.params::jsonb);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER run_params_on_insert AFTER INSERT ON runs
FOR EACH ROW WHEN (NEW.params <> '{}')
EXECUTE FUNCTION run_params_refresh();

CREATE TRIGGER run_params_on_update AFTER UPDATE OF params ON runs
FOR EACH ROW WHEN (OLD.params IS DISTINCT FROM NEW.params)
EXECUTE FUNCTION run_params_refresh();

-- A selective map condition is answered from the index alone: (key, value) finds the
-- entries and run_id, inside the index, is what the condition returns (index-only scans).
CREATE INDEX run_params_by_kv ON run_params (key, value, run_id);
CREATE INDEX run_tags_by_kv_run ON run_tags (key, value, run_id);
DROP INDEX run_tags_by_kv;
