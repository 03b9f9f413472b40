-- The tag and metric index rows (they serve ListRuns filters and ordering) are derived by
-- the database from the run's JSON columns in the statement that writes the run: a run
-- write is one statement, and the index can never disagree with the run.
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
