-- The share row is the queue entry on the store's own engines: workers claim due rows straight
-- from this table (jobs/src/share_feed.rs), in (run_at, id) order, with FOR UPDATE SKIP LOCKED.
CREATE INDEX shares_due ON shares (run_at, id) WHERE state = 'queued';
CREATE INDEX shares_leased ON shares (lease_until) WHERE state = 'running';
-- A share resumed after a reconnect waits for the one parked before it to finish, so an account's
-- parked shares are posted in their original order.
ALTER TABLE shares ADD COLUMN after_share_id TEXT;
CREATE INDEX shares_after ON shares (after_share_id) WHERE after_share_id IS NOT NULL;

-- Every write that makes a share queued (a new share, a retry, a deferral, a resume, a replay)
-- wakes the workers of every process at once; they sleep until the earliest due time otherwise.
-- Postgres sends a transaction's notifications at commit and folds identical ones into one.
CREATE FUNCTION herald_share_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('herald_share_queued', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER shares_queued_notify AFTER INSERT OR UPDATE OF state, run_at ON shares
    FOR EACH ROW WHEN (NEW.state = 'queued') EXECUTE FUNCTION herald_share_queued();
