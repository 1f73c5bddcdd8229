-- What a host's agent reported in its last heartbeat (vCPUs, memory, disk, sandboxes) and when
-- the control plane heard it: the scheduler's least-loaded placement reads it.
ALTER TABLE hosts ADD COLUMN capacity TEXT NOT NULL DEFAULT '{}';
ALTER TABLE hosts ADD COLUMN capacity_at BIGINT;
-- The reconciler's claim on a host (ms): with several control-plane replicas, one of them
-- reconciles a host per interval.
ALTER TABLE hosts ADD COLUMN reconcile_lease_until BIGINT;
