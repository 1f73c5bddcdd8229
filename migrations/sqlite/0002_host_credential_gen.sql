-- Credential generation of a host: revoking its credentials bumps it, and a registered agent
-- refuses control-plane tokens minted for any other generation.
ALTER TABLE hosts ADD COLUMN credential_gen INTEGER NOT NULL DEFAULT 1;
