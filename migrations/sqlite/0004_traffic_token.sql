-- A sandbox whose ports (all but envd's) are private: requests through the proxy must carry
-- this token (E2B's trafficAccessToken). NULL: public. AES-256-GCM like envd_token_enc.
ALTER TABLE sandboxes ADD COLUMN traffic_token_enc TEXT;
