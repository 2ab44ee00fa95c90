-- App-wide rate limits, shared fairly between tenants (jobs/src/store/app_limits.rs).

-- One row per platform app: its budget in the current window (as the platform reported it, or as
-- learned from the calls Herald made before the platform said it was spent), Herald's own count of
-- calls in the window, and until when the platform said the app must wait. Every change is made
-- under this row's lock (the first statement of each transaction upserts it).
CREATE TABLE app_limits (
    platform        TEXT NOT NULL,
    app_id          TEXT NOT NULL,
    window_id       INTEGER NOT NULL DEFAULT 0,
    window_ends_at  TEXT,
    budget          INTEGER,
    reported_used   INTEGER NOT NULL DEFAULT 0,
    window_used     INTEGER NOT NULL DEFAULT 0,
    closed_until    TEXT,
    updated_at      TEXT NOT NULL,
    PRIMARY KEY (platform, app_id)
);

-- Each tenant's calls in a platform app's window (window_id), and until when it waits for having
-- used its fair share of a scarce budget.
CREATE TABLE app_limit_tenants (
    platform        TEXT NOT NULL,
    app_id          TEXT NOT NULL,
    tenant_id       TEXT NOT NULL REFERENCES tenants(id),
    window_id       INTEGER NOT NULL,
    calls           INTEGER NOT NULL,
    deferred_until  TEXT,
    PRIMARY KEY (platform, app_id, tenant_id)
);

-- The work due on a platform, by tenant, read when the app's budget is scarce.
CREATE INDEX shares_queued_by_platform ON shares (platform, run_at, tenant_id) WHERE state = 'queued';
