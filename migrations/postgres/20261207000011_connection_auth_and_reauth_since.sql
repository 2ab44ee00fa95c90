-- When a connection was flagged needs_reauth (NULL while it is not): how long reauthorize prompts
-- stay unanswered (herald_connections_needing_reauth_over_48h, herald_reauth_cleared_seconds).
-- Connections flagged before this column existed count from their last change.
ALTER TABLE connections ADD COLUMN needs_reauth_since TIMESTAMPTZ;
UPDATE connections SET needs_reauth_since = updated_at WHERE needs_reauth;

-- How a connection authenticates: 'app_password' for a Bluesky app password (kept encrypted in
-- the access-token slot), 'oauth' for every other connection (tokens from an OAuth grant or an
-- import). Written by Store::upsert_connection with the rule the Bluesky client follows
-- (extras.auth, else OAuth when a DPoP key or a refresh token is stored).
ALTER TABLE connections ADD COLUMN auth TEXT NOT NULL DEFAULT 'oauth'
    CHECK (auth IN ('oauth', 'app_password'));
UPDATE connections SET auth = 'app_password'
WHERE platform = 'bluesky'
  AND (extras::jsonb ->> 'auth' = 'app_password'
       OR (extras::jsonb ->> 'auth' IS NULL AND dpop_key_enc IS NULL AND refresh_token_enc IS NULL));
