CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    access_token TEXT,
    refresh_token TEXT,
    api_key TEXT,
    expires_at_ms INTEGER,
    email TEXT,
    account_uuid TEXT,
    org_uuid TEXT,
    org_name TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE pending_logins (
    state TEXT PRIMARY KEY,
    verifier TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    console INTEGER NOT NULL,
    account TEXT,
    expires_at_ms INTEGER NOT NULL
);
