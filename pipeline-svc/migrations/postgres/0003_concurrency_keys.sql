-- Concurrency keys: the names an operation holds while it runs (a demo its alias, a
-- provisioning its graph). Operations sharing a key run one at a time, in order of
-- `position` (the create time, then the operation id). Rows go when the operation ends.
CREATE TABLE operation_keys (
    concurrency_key TEXT NOT NULL,
    operation_id TEXT NOT NULL REFERENCES operations (operation_id),
    position BIGINT NOT NULL,
    -- 1 once the operation was admitted and holds the key (until it ends).
    held BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (concurrency_key, operation_id)
);
CREATE INDEX operation_keys_by_operation ON operation_keys (operation_id);
-- At most one holder per key, whatever races the claims lose.
CREATE UNIQUE INDEX operation_keys_one_holder ON operation_keys (concurrency_key) WHERE held = 1;

-- 1 while the job's operation was admitted to run (its keys held, its owner under the
-- limit of running operations); the per-owner limit counts these.
ALTER TABLE jobs ADD COLUMN admitted BIGINT NOT NULL DEFAULT 0;
-- Admitted operations of the same owner this job waits behind (0: no limit), as the
-- engine was configured when the operation was created.
ALTER TABLE jobs ADD COLUMN owner_limit BIGINT NOT NULL DEFAULT 0;
