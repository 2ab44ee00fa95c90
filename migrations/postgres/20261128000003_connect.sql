-- Connect flows: OAuth authorization states, and Mastodon apps registered per instance and tenant.

-- One row per started flow. The state itself is never stored, only its SHA-256 (hex), so a copy of
-- the database cannot be used to finish someone's flow. Single use: consumed_at is set by
-- compare-and-set when the browser comes back.
CREATE TABLE oauth_states (
    state_hash          TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL REFERENCES tenants(id),
    user_id             TEXT NOT NULL,
    platform            TEXT NOT NULL,
    return_url          TEXT NOT NULL,
    instance_url        TEXT,
    -- The PKCE verifier, encrypted by the vault (slot oauth_states/<state_hash>/pkce_verifier).
    pkce_verifier_enc   TEXT,
    created_at          TIMESTAMPTZ NOT NULL,
    expires_at          TIMESTAMPTZ NOT NULL,
    consumed_at         TIMESTAMPTZ
);
CREATE INDEX oauth_states_by_expiry ON oauth_states (expires_at);

-- Mastodon has no global app: Herald registers one per instance (POST /api/v1/apps) and tenant,
-- and reuses it for every later connect and revoke there.
CREATE TABLE mastodon_apps (
    id                  TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL REFERENCES tenants(id),
    instance_url        TEXT NOT NULL,
    client_id           TEXT NOT NULL,
    -- Encrypted by the vault (slot mastodon_apps/<id>/client_secret).
    client_secret_enc   TEXT NOT NULL,
    redirect_uri        TEXT NOT NULL,
    scopes              TEXT NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL,
    UNIQUE (instance_url, tenant_id)
);

-- The app's own id of the user who connected the account (set by the connect flow).
ALTER TABLE connections ADD COLUMN user_id TEXT;
