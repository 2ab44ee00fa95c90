-- The share row is the queue entry on the store's own engines: workers claim due rows straight
-- from this table (jobs/src/share_feed.rs), in (run_at, id) order.
CREATE INDEX shares_due ON shares (run_at, id) WHERE state = 'queued';
CREATE INDEX shares_leased ON shares (lease_until) WHERE state = 'running';
-- A share resumed after a reconnect waits for the one parked before it to finish, so an account's
-- parked shares are posted in their original order.
ALTER TABLE shares ADD COLUMN after_share_id TEXT;
CREATE INDEX shares_after ON shares (after_share_id) WHERE after_share_id IS NOT NULL;
