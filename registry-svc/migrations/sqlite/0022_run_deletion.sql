-- DeleteRun marks a run deleted (every read skips it at once); the purge removes its rows
-- once the deletion grace period has passed, oldest first through this index.
ALTER TABLE runs ADD COLUMN delete_time BIGINT;
CREATE INDEX runs_deleted ON runs (delete_time) WHERE delete_time IS NOT NULL;
