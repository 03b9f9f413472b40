-- Retention: terminal operations are purged (with their events, steps, job, keys and
-- retry request ids) once they ended longer ago than the retention. What stays of each is
-- a tombstone, so that a read of it says it was purged (to its owner only), not merely
-- that it does not exist.
CREATE TABLE operation_tombstones (
    operation_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    purge_time BIGINT NOT NULL,
    -- The retention it was purged under, in days: what the NOT_FOUND message names.
    retention_days BIGINT NOT NULL
);

-- Work one replica does at a time (the purger): the holder of the named row, until its
-- lease expires.
CREATE TABLE replica_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expire_time BIGINT NOT NULL
);

-- The purger's candidates, oldest end first: a terminal operation changes no more, so
-- its update time is its end.
CREATE INDEX operations_ended ON operations (update_time, operation_id)
    WHERE status IN ('SUCCEEDED', 'FAILED', 'CANCELLED');
-- An operation a subscription, checkout or graph names is kept; these answer "does one?".
CREATE INDEX subscriptions_by_operation ON subscriptions (operation_id);
CREATE INDEX checkouts_by_operation ON checkouts (operation_id);
CREATE INDEX graphs_by_operation ON graphs (operation_id);
