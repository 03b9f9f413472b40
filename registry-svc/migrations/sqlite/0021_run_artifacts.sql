-- Several artifacts per run. The model stays in the artifact_* columns (what aliases serve),
-- with its media type beside them; the others are a JSON object by name. run_artifacts,
-- derived from both by the statement that writes a run, says which runs hold which blob:
-- the blob collector's question.
ALTER TABLE runs ADD COLUMN artifact_media_type TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN artifacts TEXT NOT NULL DEFAULT '{}';

CREATE TABLE run_artifacts (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE INDEX run_artifacts_by_sha256 ON run_artifacts (sha256);
INSERT INTO run_artifacts (run_id, name, sha256)
SELECT run_id, 'model', artifact_sha256 FROM runs WHERE artifact_sha256 IS NOT NULL;

CREATE TRIGGER run_artifacts_on_insert AFTER INSERT ON runs
WHEN NEW.artifact_sha256 IS NOT NULL OR NEW.artifacts <> '{}'
BEGIN
    INSERT INTO run_artifacts (run_id, name, sha256)
    SELECT NEW.run_id, 'model', NEW.artifact_sha256 WHERE NEW.artifact_sha256 IS NOT NULL;
    INSERT INTO run_artifacts (run_id, name, sha256)
    SELECT NEW.run_id, key, json_extract(value, '$.sha256') FROM json_each(NEW.artifacts);
END;

CREATE TRIGGER run_artifacts_on_update AFTER UPDATE OF artifact_sha256, artifacts ON runs
WHEN OLD.artifact_sha256 IS NOT NEW.artifact_sha256 OR OLD.artifacts IS NOT NEW.artifacts
BEGIN
    DELETE FROM run_artifacts WHERE run_id = NEW.run_id;
    INSERT INTO run_artifacts (run_id, name, sha256)
    SELECT NEW.run_id, 'model', NEW.artifact_sha256 WHERE NEW.artifact_sha256 IS NOT NULL;
    INSERT INTO run_artifacts (run_id, name, sha256)
    SELECT NEW.run_id, key, json_extract(value, '$.sha256') FROM json_each(NEW.artifacts);
END;
