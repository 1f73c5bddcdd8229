-- What the E2B-compatible API needs beside /v1: a paused sandbox that resumes on its next
-- request (autoResume), a create retried with the same Idempotency-Key that finds the sandbox
-- its first attempt made, and the sandbox a snapshot template was made from.
ALTER TABLE sandboxes ADD COLUMN auto_resume INTEGER NOT NULL DEFAULT 0 CHECK (auto_resume IN (0, 1));
ALTER TABLE sandboxes ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX sandboxes_idempotency ON sandboxes (team_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
ALTER TABLE templates ADD COLUMN source_sandbox_id TEXT;
