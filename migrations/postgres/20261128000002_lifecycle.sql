-- Token lifecycle, replay, sweeps and follower sync.

-- The refresh sweep pages through due connections in expiry order: (expiry, id) keeps every page
-- an index range scan, so a sweep costs time in proportion to the connections that are due.
DROP INDEX connections_by_expiry;
CREATE INDEX connections_by_expiry ON connections (token_expires_at, id)
    WHERE revoked_at IS NULL AND NOT needs_reauth AND refresh_token_enc IS NOT NULL;

-- A platform's rate limit on an account: its shares wait until then without calling.
ALTER TABLE connections ADD COLUMN rate_limited_until TIMESTAMPTZ;

-- Single-flight refresh: a lease on the connection, taken by compare-and-set.
ALTER TABLE connections ADD COLUMN refresh_lock_until TIMESTAMPTZ;
ALTER TABLE connections ADD COLUMN refresh_lock_owner TEXT;

-- A replay gives a share a fresh attempt budget: attempts before this number do not count.
ALTER TABLE shares ADD COLUMN budget_from INTEGER NOT NULL DEFAULT 0;

CREATE TABLE share_replays (
    id           TEXT PRIMARY KEY,
    share_id     TEXT NOT NULL REFERENCES shares(id),
    from_state   TEXT NOT NULL,
    forced       BOOLEAN NOT NULL DEFAULT FALSE,
    reason       TEXT,
    by_key       TEXT NOT NULL,
    replayed_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX share_replays_by_share ON share_replays (share_id, replayed_at);
CREATE INDEX shares_by_state_time ON shares (state, updated_at);

CREATE TABLE token_refreshes (
    id             TEXT PRIMARY KEY,
    connection_id  TEXT NOT NULL REFERENCES connections(id),
    platform       TEXT NOT NULL,
    result         TEXT NOT NULL,
    message        TEXT,
    at             TIMESTAMPTZ NOT NULL
);
CREATE INDEX token_refreshes_by_connection ON token_refreshes (connection_id, at);
CREATE INDEX token_refreshes_failed ON token_refreshes (at) WHERE result NOT IN ('succeeded', 'skipped');

-- One row per sweep tick: the process that inserts it runs the sweep.
CREATE TABLE sweep_ticks (
    sweep   TEXT NOT NULL,
    tick    TEXT NOT NULL,
    ran_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (sweep, tick)
);

CREATE TABLE followers (
    connection_id        TEXT NOT NULL REFERENCES connections(id),
    relation             TEXT NOT NULL,
    platform_account_id  TEXT NOT NULL,
    handle               TEXT NOT NULL,
    first_seen_at        TIMESTAMPTZ NOT NULL,
    last_seen_run        TEXT NOT NULL,
    PRIMARY KEY (connection_id, relation, platform_account_id)
);
CREATE INDEX followers_by_run ON followers (connection_id, relation, last_seen_run);

CREATE TABLE follower_sync_runs (
    id             TEXT PRIMARY KEY,
    connection_id  TEXT NOT NULL REFERENCES connections(id),
    relation       TEXT NOT NULL,
    state          TEXT NOT NULL,
    cursor         TEXT,
    pages          INTEGER NOT NULL DEFAULT 0,
    seen           INTEGER NOT NULL DEFAULT 0,
    gained         INTEGER NOT NULL DEFAULT 0,
    lost           INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    started_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    finished_at    TIMESTAMPTZ
);
CREATE INDEX follower_sync_runs_open ON follower_sync_runs (connection_id, relation, state);
