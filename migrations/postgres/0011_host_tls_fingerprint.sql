-- The SHA-256 fingerprint (`sha256:<hex>`) of the certificate the host's agent serves its RPC
-- over, sent at registration: the control plane accepts only that certificate from it.
-- NULL for an agent on loopback, called over plain HTTP.
ALTER TABLE hosts ADD COLUMN tls_fingerprint TEXT;
