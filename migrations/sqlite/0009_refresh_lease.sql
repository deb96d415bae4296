-- One refresh per account across instances: a lease around the token call, and a version that every
-- token write must match (a writer holding an older pair can never overwrite a newer one).
ALTER TABLE accounts ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN refresh_holder TEXT;
ALTER TABLE accounts ADD COLUMN refresh_lease_until_ms INTEGER;
