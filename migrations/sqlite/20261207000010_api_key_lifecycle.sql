-- API keys with a lifecycle (jobs/src/store/keys.rs): scopes, an optional expiry, and when the key
-- was last used (written at most about once a minute per key and API process).
-- `scopes` is space-separated (read, share, connect, admin). Keys made before scopes existed get
-- the scopes that keep what they could do: a tenant key reads, shares and connects; an operator
-- key reads and administers (replays, keys). NULL is read the same way, so a key written by an
-- older binary during a rolling deploy keeps working.
ALTER TABLE api_keys ADD COLUMN scopes TEXT;
ALTER TABLE api_keys ADD COLUMN expires_at TEXT;
ALTER TABLE api_keys ADD COLUMN last_used_at TEXT;
UPDATE api_keys SET scopes = CASE role WHEN 'operator' THEN 'read admin' ELSE 'read share connect' END;
-- `herald keys list` and `GET /v1/keys` page by id, optionally one tenant's.
CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, id);
