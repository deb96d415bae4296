-- The request log keyed by time: rows live in the time-ordered key itself (no rowid table and no
-- separate time index), and only requests with a client key enter the key index, so each logged
-- request touches one or two B-trees instead of four.
CREATE TABLE requests_by_time (
    id TEXT NOT NULL,
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
    cost_usd REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (at_ms, id)
) WITHOUT ROWID;
INSERT INTO requests_by_time (id, at_ms, client_key, account, accounts_tried, attempts, method, path, model, stream,
    status, error_type, input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens, ttfb_ms,
    duration_ms, ratelimit_status, cost_usd)
  SELECT id, at_ms, client_key, account, accounts_tried, attempts, method, path, model, stream, status,
    error_type, input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens, ttfb_ms, duration_ms,
    ratelimit_status, cost_usd FROM requests;
DROP TABLE requests;
ALTER TABLE requests_by_time RENAME TO requests;
CREATE INDEX requests_key_at ON requests(client_key, at_ms) WHERE client_key IS NOT NULL;
