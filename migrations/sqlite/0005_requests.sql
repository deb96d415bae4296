CREATE TABLE requests (
    id TEXT PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    client_key TEXT,
    account TEXT,
    accounts_tried TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    model TEXT,
    stream INTEGER NOT NULL DEFAULT 0,
    status INTEGER NOT NULL,
    error_type TEXT,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0,
    cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
    ttfb_ms INTEGER,
    duration_ms INTEGER NOT NULL,
    ratelimit_status TEXT,
    cost_usd REAL NOT NULL DEFAULT 0
);
CREATE INDEX requests_at ON requests(at_ms);
