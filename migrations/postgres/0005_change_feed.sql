-- Announce every committed change an instance must act on (accounts, keys, settings and sessions, routing
-- state), so that the others pick it up at once instead of on their next periodic check. One notification
-- per statement; PostgreSQL delivers them at commit and folds duplicates within a transaction.
CREATE OR REPLACE FUNCTION switchyard_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('switchyard_changes', TG_TABLE_NAME);
    RETURN NULL;
END
$$;
CREATE TRIGGER accounts_announce AFTER INSERT OR UPDATE OR DELETE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION switchyard_announce();
CREATE TRIGGER client_keys_announce AFTER INSERT OR UPDATE OR DELETE ON client_keys
    FOR EACH STATEMENT EXECUTE FUNCTION switchyard_announce();
CREATE TRIGGER settings_announce AFTER INSERT OR UPDATE OR DELETE ON settings
    FOR EACH STATEMENT EXECUTE FUNCTION switchyard_announce();
CREATE TRIGGER account_state_announce AFTER INSERT OR UPDATE OR DELETE ON account_state
    FOR EACH STATEMENT EXECUTE FUNCTION switchyard_announce();
