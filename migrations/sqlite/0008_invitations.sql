-- An owner's or admin's invitation of an email (with or without an account yet) into a team.
-- Signup accepts every pending invitation of its email; with signup set to invite, only an
-- invited email may sign up.
CREATE TABLE invitations (
    id          TEXT PRIMARY KEY,
    team_id     TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    email       TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    invited_by  TEXT REFERENCES users(id) ON DELETE SET NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    UNIQUE (team_id, email)
);
CREATE INDEX invitations_email ON invitations (email);
