-- The run index trigger costs a PL/pgSQL call and two INSERT ... SELECT per run write,
-- about a quarter of PostgreSQL's time in a CreateRun -> UpdateRun lifecycle (pgbench, 16
-- clients). Most writes need less: an update that leaves tags and metrics alone (status
-- changes, heartbeats) needs no call at all, and an empty object needs no INSERT.
CREATE OR REPLACE FUNCTION run_indexes_refresh() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        DELETE FROM run_tags WHERE run_id = NEW.run_id;
        DELETE FROM run_metrics WHERE run_id = NEW.run_id;
    END IF;
    IF NEW.tags <> '{}' THEN
        INSERT INTO run_tags (run_id, key, value)
        SELECT NEW.run_id, key, value FROM jsonb_each_text(NEW.tags::jsonb);
    END IF;
    IF NEW.metrics <> '{}' THEN
        INSERT INTO run_metrics (run_id, key, value)
        SELECT NEW.run_id, key, value::double precision FROM jsonb_each_text(NEW.metrics::jsonb);
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER run_indexes ON runs;

CREATE TRIGGER run_indexes_on_insert AFTER INSERT ON runs
FOR EACH ROW WHEN (NEW.tags <> '{}' OR NEW.metrics <> '{}')
EXECUTE FUNCTION run_indexes_refresh();

CREATE TRIGGER run_indexes_on_update AFTER UPDATE OF tags, metrics ON runs
FOR EACH ROW WHEN (OLD.tags IS DISTINCT FROM NEW.tags OR OLD.metrics IS DISTINCT FROM NEW.metrics)
EXECUTE FUNCTION run_indexes_refresh();
