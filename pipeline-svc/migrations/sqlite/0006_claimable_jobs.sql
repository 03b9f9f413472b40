-- A hint for the claim: 1 while a queued job waits behind another operation's
-- concurrency key, so that the claim's index skips it instead of re-checking every waiter
-- on every claim (admission still checks each job it takes). Set when the operation is
-- created or retried behind a key; cleared when the keys ahead of it are freed. The
-- queue's index leads with it, so a claim reads only jobs that may run.
ALTER TABLE jobs ADD COLUMN blocked BIGINT NOT NULL DEFAULT 0;
DROP INDEX jobs_queued;
CREATE INDEX jobs_queued ON jobs (state, blocked, available_time);
