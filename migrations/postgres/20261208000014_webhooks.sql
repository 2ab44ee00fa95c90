-- Signed lifecycle webhooks (issue 15): a tenant's endpoints, the outbox of events written in the
-- same transaction as the state change behind each, and one delivery row per (event, endpoint),
-- which is also the delivery queue (jobs/src/webhooks/feed.rs).
CREATE TABLE webhook_endpoints (
    id                    TEXT PRIMARY KEY,
    tenant_id             TEXT NOT NULL REFERENCES tenants(id),
    url                   TEXT NOT NULL,
    description           TEXT,
    -- A JSON array of event types; NULL means every type.
    event_types           TEXT,
    enabled               BOOLEAN NOT NULL DEFAULT TRUE,
    disabled_reason       TEXT,
    disabled_at           TIMESTAMPTZ,
    -- The signing secret (`whsec_...`), sealed by the vault; after a rotation the previous one
    -- keeps signing beside it until previous_secret_until.
    secret_enc            TEXT NOT NULL,
    previous_secret_enc   TEXT,
    previous_secret_until TIMESTAMPTZ,
    -- Since when every attempt has failed (NULL after a success): 5 days of it disables.
    failing_since         TIMESTAMPTZ,
    created_at            TIMESTAMPTZ NOT NULL,
    updated_at            TIMESTAMPTZ NOT NULL
);
CREATE INDEX webhook_endpoints_by_tenant ON webhook_endpoints (tenant_id, id);
CREATE INDEX webhook_endpoints_failing ON webhook_endpoints (failing_since)
    WHERE failing_since IS NOT NULL AND enabled;

-- seq orders the events of one subject (a share, a connection) as they were committed.
CREATE TABLE webhook_events (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    tenant_id   TEXT NOT NULL,
    type        TEXT NOT NULL,
    subject     TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX webhook_events_by_tenant ON webhook_events (tenant_id, created_at);
-- Events past the retention (30 days) are pruned once none of their deliveries is left.
CREATE INDEX webhook_events_by_time ON webhook_events (created_at);

CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,
    endpoint_id      TEXT NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    event_id         TEXT NOT NULL REFERENCES webhook_events(id),
    event_seq        BIGINT NOT NULL,
    subject          TEXT NOT NULL,
    -- pending (waiting for next_attempt_at), sending (under a lease), delivered, failed.
    state            TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ,
    lease_until      TIMESTAMPTZ,
    last_attempt_at  TIMESTAMPTZ,
    last_status      INTEGER,
    last_response    TEXT,
    last_error       TEXT,
    delivered_at     TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at, event_seq)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (lease_until)
    WHERE state = 'sending';
CREATE INDEX webhook_deliveries_open ON webhook_deliveries (endpoint_id, subject, event_seq)
    WHERE state IN ('pending', 'sending');
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, event_seq);
CREATE INDEX webhook_deliveries_by_event ON webhook_deliveries (event_id);
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (created_at)
    WHERE state IN ('delivered', 'failed');

-- A delivery that becomes due now (a new event, a resend, a replay, a lease given back) wakes the
-- delivery feed of every process; notifications are sent at commit.
CREATE FUNCTION herald_webhook_due() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('herald_webhook_due', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER webhook_deliveries_due_notify AFTER INSERT OR UPDATE OF state ON webhook_deliveries
    FOR EACH ROW WHEN (NEW.state = 'pending') EXECUTE FUNCTION herald_webhook_due();
