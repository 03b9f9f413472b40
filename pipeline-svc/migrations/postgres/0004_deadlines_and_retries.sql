-- Operation deadlines: when the operation must have ended (unix microseconds; NULL: no
-- deadline) and the timeout it was computed from, which a RetryOperation starts afresh.
-- Stored with the operation so that whichever replica runs it enforces it.
ALTER TABLE operations ADD COLUMN deadline BIGINT;
ALTER TABLE operations ADD COLUMN timeout_micros BIGINT;

-- RetryOperation's idempotency: the request ids each operation was retried with.
CREATE TABLE operation_retries (
    operation_id TEXT NOT NULL REFERENCES operations (operation_id),
    request_id TEXT NOT NULL,
    retry_time BIGINT NOT NULL,
    PRIMARY KEY (operation_id, request_id)
);
