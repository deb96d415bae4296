-- The data-key version each instance seals with, so a key rotation can wait until every instance has
-- taken up the new key before re-sealing.
ALTER TABLE instances ADD COLUMN key_version INTEGER NOT NULL DEFAULT 0;
