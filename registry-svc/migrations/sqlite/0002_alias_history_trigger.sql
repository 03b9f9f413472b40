-- An alias write becomes one statement: the alias row carries what its history entry needs
-- (the run it replaced, the action and its reason), and the database appends the entry in
-- the same statement. Deletions remove the row, so they still write their entry themselves.
ALTER TABLE aliases ADD COLUMN previous_run_id TEXT NOT NULL DEFAULT '';
ALTER TABLE aliases ADD COLUMN last_action TEXT NOT NULL DEFAULT 'SET';
ALTER TABLE aliases ADD COLUMN last_reason TEXT NOT NULL DEFAULT '';

CREATE TRIGGER alias_history_on_insert AFTER INSERT ON aliases
BEGIN
    INSERT INTO alias_history (alias, revision, run_id, previous_run_id, action, reason, actor,
                               description, time)
    VALUES (NEW.alias, NEW.revision, NEW.run_id, NEW.previous_run_id, NEW.last_action,
            NEW.last_reason, NEW.updated_by, NEW.description, NEW.update_time);
END;

CREATE TRIGGER alias_history_on_update AFTER UPDATE ON aliases
WHEN NEW.revision <> OLD.revision
BEGIN
    INSERT INTO alias_history (alias, revision, run_id, previous_run_id, action, reason, actor,
                               description, time)
    VALUES (NEW.alias, NEW.revision, NEW.run_id, NEW.previous_run_id, NEW.last_action,
            NEW.last_reason, NEW.updated_by, NEW.description, NEW.update_time);
END;
