CREATE TABLE payloads (
    request_id TEXT PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    request TEXT,
    response TEXT
);
CREATE INDEX payloads_at ON payloads(at_ms);
