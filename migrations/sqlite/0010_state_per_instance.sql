-- Routing state per account and instance: each instance writes only its own row (its counters, what it
-- saw of the account's limits), and readers combine the rows: counters summed, benches by the latest end.
CREATE TABLE account_state_by_instance (
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    instance TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (account_id, instance)
);
INSERT INTO account_state_by_instance (account_id, instance, state, updated_at_ms)
  SELECT account_id, 'local', state, updated_at_ms FROM account_state;
DROP TABLE account_state;
ALTER TABLE account_state_by_instance RENAME TO account_state;
