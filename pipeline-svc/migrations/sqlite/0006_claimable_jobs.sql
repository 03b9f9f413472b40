-- A hint for the claim: 1 while a queued job waits behind another operation's
-- concurrency key, so that the claim's index skips it instead of re-checking every waiter
-- on every claim (admission still checks each job it takes). Set when the operation is
-- created or retried behind a key; cleared when the keys ahead of it are freed.
ALTER TABLE jobs ADD COLUMN blocked BIGINT NOT NULL DEFAULT 0;
CREATE INDEX jobs_claimable ON jobs (available_time) WHERE state = 'queued' AND blocked = 0;
