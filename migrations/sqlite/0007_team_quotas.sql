-- A team's quota overrides (JSON; absent fields take the platform's defaults), set by a
-- platform admin.
CREATE TABLE team_quotas (
    team_id    TEXT PRIMARY KEY REFERENCES teams(id) ON DELETE CASCADE,
    quota      TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
