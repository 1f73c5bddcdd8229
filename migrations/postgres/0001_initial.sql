-- Wrenn control plane, initial schema (PostgreSQL).
-- Any-driver rules: IDs TEXT, timestamps BIGINT epoch-ms, JSON as TEXT, booleans BOOLEAN.
-- Keep in step with ../sqlite/0001_initial.sql (same tables, columns and indexes).

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,          -- stored lower-cased
    password_hash TEXT,                          -- NULL for accounts without a password (OAuth later)
    name          TEXT NOT NULL DEFAULT '',
    is_admin      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    BIGINT NOT NULL
);

CREATE TABLE teams (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    slug       TEXT NOT NULL UNIQUE,
    is_byoc    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL
);

CREATE TABLE memberships (
    team_id    TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role       TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    team_id      TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    created_by   TEXT REFERENCES users(id) ON DELETE SET NULL,
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT
);
CREATE INDEX api_keys_team_page ON api_keys (team_id, created_at, id);

CREATE TABLE hosts (
    id                TEXT PRIMARY KEY,
    team_id           TEXT REFERENCES teams(id) ON DELETE CASCADE,  -- NULL: platform host; set: BYOC
    name              TEXT NOT NULL,
    address           TEXT NOT NULL DEFAULT '',
    status            TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'online', 'unreachable')),
    last_heartbeat_at BIGINT,
    specs             TEXT NOT NULL DEFAULT '{}',
    created_by        TEXT REFERENCES users(id) ON DELETE SET NULL,
    created_at        BIGINT NOT NULL
);
CREATE INDEX hosts_team ON hosts (team_id);
CREATE INDEX hosts_status ON hosts (status);

CREATE TABLE host_registration_tokens (
    id         TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    team_id    TEXT REFERENCES teams(id) ON DELETE CASCADE,
    host_id    TEXT REFERENCES hosts(id) ON DELETE CASCADE,
    created_by TEXT REFERENCES users(id) ON DELETE SET NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);

CREATE TABLE host_refresh_tokens (
    id         TEXT PRIMARY KEY,
    host_id    TEXT NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX host_refresh_tokens_host ON host_refresh_tokens (host_id);

CREATE TABLE templates (
    id           TEXT PRIMARY KEY,
    team_id      TEXT REFERENCES teams(id) ON DELETE CASCADE,  -- NULL: platform template
    name         TEXT NOT NULL,
    default_user TEXT NOT NULL DEFAULT 'user',
    default_env  TEXT NOT NULL DEFAULT '{}',
    vcpus        BIGINT NOT NULL,
    memory_mb    BIGINT NOT NULL,
    disk_size_mb BIGINT NOT NULL,
    is_snapshot  BOOLEAN NOT NULL DEFAULT FALSE,
    size_bytes   BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
-- NULLs never collide in a UNIQUE index, so platform and team names get one partial index each.
CREATE UNIQUE INDEX templates_platform_name ON templates (name) WHERE team_id IS NULL;
CREATE UNIQUE INDEX templates_team_name ON templates (team_id, name) WHERE team_id IS NOT NULL;

CREATE TABLE template_hosts (
    template_id TEXT NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
    host_id     TEXT NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (template_id, host_id)
);
CREATE INDEX template_hosts_host ON template_hosts (host_id);

CREATE TABLE sandboxes (
    id             TEXT PRIMARY KEY CHECK (char_length(id) = 20),
    team_id        TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    host_id        TEXT REFERENCES hosts(id) ON DELETE SET NULL,
    template       TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('pending', 'running', 'paused', 'stopped', 'error', 'missing')),
    vcpus          BIGINT NOT NULL,
    memory_mb      BIGINT NOT NULL,
    disk_size_mb   BIGINT NOT NULL,
    timeout_sec    BIGINT NOT NULL,
    end_at         BIGINT,
    on_timeout     TEXT NOT NULL CHECK (on_timeout IN ('kill', 'pause')),
    envd_token_enc TEXT,                     -- AES-256-GCM, base64(nonce || ciphertext)
    envd_version   TEXT,
    host_ip        TEXT,
    error          TEXT,
    created_at     BIGINT NOT NULL,
    started_at     BIGINT,
    last_active_at BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX sandboxes_team_page ON sandboxes (team_id, created_at, id);
CREATE INDEX sandboxes_team_status ON sandboxes (team_id, status);
CREATE INDEX sandboxes_host_status ON sandboxes (host_id, status);
CREATE INDEX sandboxes_status_end ON sandboxes (status, end_at);

CREATE TABLE sandbox_metadata (
    sandbox_id TEXT NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (sandbox_id, key)
);
CREATE INDEX sandbox_metadata_lookup ON sandbox_metadata (key, value, sandbox_id);

CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY,
    team_id     TEXT REFERENCES teams(id) ON DELETE CASCADE,  -- NULL: platform-level action
    actor_type  TEXT NOT NULL CHECK (actor_type IN ('user', 'api_key', 'host', 'system')),
    actor_id    TEXT,
    action      TEXT NOT NULL,
    target_type TEXT NOT NULL DEFAULT '',
    target_id   TEXT,
    details     TEXT NOT NULL DEFAULT '{}',
    created_at  BIGINT NOT NULL
);
CREATE INDEX audit_log_team_page ON audit_log (team_id, created_at, id);
