-- Instances that serve from this database, each writing a heartbeat.
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    version TEXT NOT NULL,
    address TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL
);
