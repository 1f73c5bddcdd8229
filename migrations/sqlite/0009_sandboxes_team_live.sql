-- A team's sandboxes that are not over, newest first: the default sandbox list (and E2B's),
-- which reads a page of them. With only (team_id, created_at, id) a team's stopped sandboxes
-- are walked past one by one, and with (team_id, status) the planner sorts all of them for
-- every page (PostgreSQL's choice before the table has statistics: 4 ms per page at 10,000).
-- Keep the predicate in step with LIVE_STATUSES_SQL in crates/wrenn-cp/src/db/sandboxes.rs:
-- the list writes it as these literals, in this order, so that both databases can prove the
-- index applies (SQLite matches the term as written).
CREATE INDEX sandboxes_team_live ON sandboxes (team_id, created_at, id)
    WHERE status IN ('pending', 'running', 'paused', 'missing');
