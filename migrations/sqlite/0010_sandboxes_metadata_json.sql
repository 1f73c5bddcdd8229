-- A sandbox's metadata as one JSON object, written with the sandbox (metadata never changes
-- after create), for lists: a page reads it with the row instead of looking up
-- sandbox_metadata once per sandbox (a third of a page's time in the database).
-- sandbox_metadata stays what metadata filters search (indexed) and what GET reads. NULL: a
-- row another replica wrote with code from before this migration; lists then read
-- sandbox_metadata for it.
ALTER TABLE sandboxes ADD COLUMN metadata_json TEXT;
UPDATE sandboxes SET metadata_json =
    (SELECT json_group_object(key, value) FROM sandbox_metadata m WHERE m.sandbox_id = sandboxes.id);
