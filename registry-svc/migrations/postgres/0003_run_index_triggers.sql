-- The tag and metric index rows (they serve ListRuns filters and ordering) are derived by
-- the database from the run's JSON columns in the statement that writes the run: a run
-- write is one statement, and the index can never disagree with the run. Metric values
-- go JSON text -> float8 (correctly rounded), giving back the exact f64 that was written.
CREATE FUNCTION run_indexes_refresh() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF OLD.tags = NEW.tags AND OLD.metrics = NEW.metrics THEN
            RETURN NULL;
        END IF;
        DELETE FROM run_tags WHERE run_id = NEW.run_id;
        DELETE FROM run_metrics WHERE run_id = NEW.run_id;
    END IF;
    INSERT INTO run_tags (run_id, key, value)
    SELECT NEW.run_id, key, value FROM jsonb_each_text(NEW.tags::jsonb);
    INSERT INTO run_metrics (run_id, key, value)
    SELECT NEW.run_id, key, value::double precision FROM jsonb_each_text(NEW.metrics::jsonb);
    RETURN NULL;
END;
$$;

CREATE TRIGGER run_indexes AFTER INSERT OR UPDATE OF tags, metrics ON runs
FOR EACH ROW EXECUTE FUNCTION run_indexes_refresh();
