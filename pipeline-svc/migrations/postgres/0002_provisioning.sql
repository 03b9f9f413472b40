-- Graph provisioning: what a provisioning request creates. Times are microseconds since
-- the Unix epoch; ids are UUID text; lists are JSON arrays. Tenancy is a column of every
-- row a user may reach (subscriptions.user_id, graphs.owner) and every read filters on it.
CREATE TABLE subscriptions (
    subscription_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    plan TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    graph_id TEXT NOT NULL,
    checkout_id TEXT,
    repository TEXT,
    operation_id TEXT NOT NULL REFERENCES operations (operation_id),
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE INDEX subscriptions_by_user ON subscriptions (user_id, graph_id, status);
CREATE INDEX subscriptions_by_graph ON subscriptions (graph_id);

-- One row per billing checkout: its id is CompleteCheckout's idempotency key, unique
-- whoever sends it, claimed in the transaction that creates the operation.
CREATE TABLE checkouts (
    checkout_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    subscription_id TEXT NOT NULL REFERENCES subscriptions (subscription_id),
    operation_id TEXT NOT NULL REFERENCES operations (operation_id),
    create_time BIGINT NOT NULL
);

CREATE TABLE graphs (
    graph_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    repository TEXT,
    status TEXT NOT NULL,
    backend TEXT NOT NULL,
    location TEXT NOT NULL,
    -- The operation that created the graph: only its compensations may delete it.
    operation_id TEXT NOT NULL REFERENCES operations (operation_id),
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE INDEX graphs_by_owner ON graphs (owner, create_time, graph_id);
CREATE INDEX graphs_by_create_time ON graphs (create_time, graph_id);

CREATE TABLE graph_schemas (
    graph_id TEXT PRIMARY KEY REFERENCES graphs (graph_id),
    schema_type TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    ddl TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    tables TEXT NOT NULL,
    create_time BIGINT NOT NULL
);

-- One pool per subscription, sized by its plan.
CREATE TABLE credit_pools (
    credit_pool_id TEXT PRIMARY KEY,
    subscription_id TEXT NOT NULL UNIQUE REFERENCES subscriptions (subscription_id),
    graph_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    plan TEXT NOT NULL,
    allocated_credits BIGINT NOT NULL,
    remaining_credits BIGINT NOT NULL,
    create_time BIGINT NOT NULL
);
CREATE INDEX credit_pools_by_graph ON credit_pools (graph_id);
