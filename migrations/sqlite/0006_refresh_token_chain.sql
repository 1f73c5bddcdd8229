-- The refresh token a token was issued in exchange for. A rotated token stays valid for a
-- short grace (revoked_at in the future) so an agent that lost the response can retry; its
-- replacement's first use, or a sibling issued from it, ends that grace early.
ALTER TABLE host_refresh_tokens ADD COLUMN replaces_id TEXT;
