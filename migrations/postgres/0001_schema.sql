-- The whole schema as SQLite's steps 1-8 leave it, in PostgreSQL types. Times are epoch milliseconds.
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    access_token TEXT,
    refresh_token TEXT,
    api_key TEXT,
    expires_at_ms BIGINT,
    email TEXT,
    account_uuid TEXT,
    org_uuid TEXT,
    org_name TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    priority BIGINT NOT NULL DEFAULT 0,
    weight BIGINT NOT NULL DEFAULT 1,
    plan TEXT
);
CREATE TABLE pending_logins (
    state TEXT PRIMARY KEY,
    verifier TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    console BOOLEAN NOT NULL,
    account TEXT,
    expires_at_ms BIGINT NOT NULL
);
CREATE TABLE account_state (
    account_id TEXT PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE TABLE client_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    rpm BIGINT,
    tpm BIGINT,
    concurrency BIGINT,
    accounts TEXT,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT,
    revoked_at_ms BIGINT,
    updated_at_ms BIGINT NOT NULL,
    budget_usd_day DOUBLE PRECISION,
    budget_usd_month DOUBLE PRECISION,
    budget_tokens_day BIGINT
);
CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    source TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log(at_ms);
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
-- The request log keyed by time (its primary key is the time-ordered index), with a partial index for the
-- requests that carry a client key (budgets, `--key` filters).
CREATE TABLE requests (
    id TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    client_key TEXT,
    account TEXT,
    accounts_tried TEXT NOT NULL DEFAULT '',
    attempts BIGINT NOT NULL DEFAULT 0,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    model TEXT,
    stream BOOLEAN NOT NULL DEFAULT FALSE,
    status BIGINT NOT NULL,
    error_type TEXT,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    cache_read_tokens BIGINT NOT NULL DEFAULT 0,
    cache_creation_tokens BIGINT NOT NULL DEFAULT 0,
    ttfb_ms BIGINT,
    duration_ms BIGINT NOT NULL,
    ratelimit_status TEXT,
    cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (at_ms, id)
);
CREATE INDEX requests_key_at ON requests(client_key, at_ms) WHERE client_key IS NOT NULL;
CREATE TABLE payloads (
    request_id TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    request TEXT,
    response TEXT
);
CREATE INDEX payloads_at ON payloads(at_ms);
