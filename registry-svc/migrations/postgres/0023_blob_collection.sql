-- The blob collector. An upload (or a reference being written) leases its blob first; the
-- collector marks a blob as being removed only while no run refers to it and no lease
-- holds it, and a lease is refused while such a mark stands (on Postgres both take the
-- blob's advisory lock first, so one of the two wins). Marks and leases expire, so that a
-- crashed holder blocks nothing for long. One replica collects at a time: the holder of
-- the collector's lease row.
CREATE TABLE blob_leases (
    lease_id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    expire_time BIGINT NOT NULL
);
CREATE INDEX blob_leases_by_sha256 ON blob_leases (sha256, expire_time);

CREATE TABLE blob_removals (
    sha256 TEXT PRIMARY KEY,
    expire_time BIGINT NOT NULL
);

CREATE TABLE blob_collector (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expire_time BIGINT NOT NULL
);
