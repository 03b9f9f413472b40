-- An alias write becomes one statement: the alias row carries what its history entry needs
-- (the run it replaced, the action and its reason), and the database appends the entry in
-- the same statement. Deletions remove the row, so they still write their entry themselves.
-- Every history entry also wakes the watchers of all replicas.
ALTER TABLE aliases ADD COLUMN previous_run_id TEXT NOT NULL DEFAULT '';
ALTER TABLE aliases ADD COLUMN last_action TEXT NOT NULL DEFAULT 'SET';
ALTER TABLE aliases ADD COLUMN last_reason TEXT NOT NULL DEFAULT '';

CREATE FUNCTION alias_history_append() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO alias_history (alias, revision, run_id, previous_run_id, action, reason, actor,
                               description, time)
    VALUES (NEW.alias, NEW.revision, NEW.run_id, NEW.previous_run_id, NEW.last_action,
            NEW.last_reason, NEW.updated_by, NEW.description, NEW.update_time);
    RETURN NULL;
END;
$$;

CREATE TRIGGER alias_history_on_write AFTER INSERT OR UPDATE OF revision ON aliases
FOR EACH ROW EXECUTE FUNCTION alias_history_append();

CREATE FUNCTION alias_history_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('capstan_alias', NEW.alias);
    RETURN NULL;
END;
$$;

CREATE TRIGGER alias_history_notify AFTER INSERT ON alias_history
FOR EACH ROW EXECUTE FUNCTION alias_history_notify();
