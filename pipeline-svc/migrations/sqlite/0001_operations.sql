-- Operations engine schema. Times are microseconds since the Unix epoch; ids are UUID
-- text; flags are 0/1 integers so that both backends read them the same way.
CREATE TABLE operations (
    operation_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    progress_percent BIGINT NOT NULL,
    message TEXT NOT NULL,
    owner TEXT NOT NULL,
    execution_mode TEXT NOT NULL,
    request_id TEXT,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    result TEXT,
    error TEXT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    -- Sequence of the latest event: the next event takes last_sequence + 1 in the same
    -- transaction, which keeps the log gapless.
    last_sequence BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    start_time BIGINT,
    end_time BIGINT,
    UNIQUE (owner, request_id)
);
CREATE INDEX operations_by_create_time ON operations (create_time, operation_id);
CREATE INDEX operations_by_owner ON operations (owner, create_time, operation_id);

CREATE TABLE operation_steps (
    operation_id TEXT NOT NULL REFERENCES operations (operation_id),
    step_index BIGINT NOT NULL,
    name TEXT NOT NULL,
    phase TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT NOT NULL,
    start_time BIGINT,
    end_time BIGINT,
    attempt BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (operation_id, step_index)
);

CREATE TABLE operation_events (
    operation_id TEXT NOT NULL REFERENCES operations (operation_id),
    sequence BIGINT NOT NULL,
    time BIGINT NOT NULL,
    type TEXT NOT NULL,
    step TEXT NOT NULL,
    phase TEXT NOT NULL,
    status TEXT NOT NULL,
    step_status TEXT NOT NULL,
    percent BIGINT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (operation_id, sequence)
);

-- One job per operation. `lease_token` grows with every claim: it is the fencing token
-- that every write of a worker checks.
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    operation_id TEXT NOT NULL UNIQUE REFERENCES operations (operation_id),
    state TEXT NOT NULL,
    lease_owner TEXT NOT NULL,
    lease_token BIGINT NOT NULL,
    lease_expires BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    available_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE INDEX jobs_queued ON jobs (state, available_time);
CREATE INDEX jobs_leased ON jobs (state, lease_expires);
