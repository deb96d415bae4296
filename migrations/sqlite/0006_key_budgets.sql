ALTER TABLE client_keys ADD COLUMN budget_usd_day REAL;
ALTER TABLE client_keys ADD COLUMN budget_usd_month REAL;
ALTER TABLE client_keys ADD COLUMN budget_tokens_day INTEGER;
CREATE INDEX requests_key_at ON requests(client_key, at_ms);
