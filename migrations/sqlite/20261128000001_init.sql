-- Herald's store on SQLite. Times are RFC 3339 text in UTC, always bound from Rust, so text order
-- is time order. Ids are prefixed UUIDv7 text.
CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL
);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT REFERENCES tenants(id),
    role         TEXT NOT NULL CHECK (role IN ('tenant', 'operator')),
    secret_hash  TEXT NOT NULL,
    label        TEXT,
    created_at   TEXT NOT NULL,
    revoked_at   TEXT
);

CREATE TABLE connections (
    id                   TEXT PRIMARY KEY,
    tenant_id            TEXT NOT NULL REFERENCES tenants(id),
    platform             TEXT NOT NULL,
    platform_account_id  TEXT NOT NULL,
    handle               TEXT NOT NULL,
    extras               TEXT NOT NULL DEFAULT '{}',
    scopes               TEXT NOT NULL DEFAULT '',
    access_token_enc     TEXT,
    refresh_token_enc    TEXT,
    dpop_key_enc         TEXT,
    token_expires_at     TEXT,
    token_generation     INTEGER NOT NULL DEFAULT 0,
    needs_reauth         BOOLEAN NOT NULL DEFAULT FALSE,
    last_error           TEXT,
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL,
    revoked_at           TEXT,
    UNIQUE (tenant_id, platform, platform_account_id)
);
CREATE INDEX connections_by_tenant ON connections (tenant_id, created_at);
CREATE INDEX connections_reauth ON connections (needs_reauth, platform) WHERE needs_reauth;
CREATE INDEX connections_by_expiry ON connections (token_expires_at)
    WHERE revoked_at IS NULL AND NOT needs_reauth AND refresh_token_enc IS NOT NULL;

CREATE TABLE shares (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id),
    connection_id    TEXT NOT NULL REFERENCES connections(id),
    platform         TEXT NOT NULL,
    url              TEXT NOT NULL,
    title            TEXT,
    body             TEXT,
    image_url        TEXT,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    run_at           TEXT NOT NULL,
    not_after        TEXT,
    lease_until      TEXT,
    first_sent_at    TEXT,
    last_error_class TEXT,
    last_error       TEXT,
    last_status      INTEGER,
    post_id          TEXT,
    post_url         TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    finished_at      TEXT
);
CREATE INDEX shares_by_url ON shares (tenant_id, url, created_at);
CREATE INDEX shares_by_tenant ON shares (tenant_id, created_at);
CREATE INDEX shares_active ON shares (state, run_at) WHERE state IN ('queued', 'running', 'parked');
CREATE INDEX shares_by_connection ON shares (connection_id, state, created_at);

CREATE TABLE share_attempts (
    id               TEXT PRIMARY KEY,
    share_id         TEXT NOT NULL REFERENCES shares(id),
    number           INTEGER NOT NULL,
    started_at       TEXT NOT NULL,
    finished_at      TEXT,
    outcome          TEXT,
    error_class      TEXT,
    error_message    TEXT,
    platform_status  INTEGER
);
CREATE INDEX share_attempts_by_share ON share_attempts (share_id, number);

CREATE TABLE idempotency_keys (
    tenant_id     TEXT NOT NULL REFERENCES tenants(id),
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    share_ids     TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
