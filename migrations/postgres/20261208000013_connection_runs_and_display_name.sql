-- What the platform calls the account (Mastodon's and Bluesky's display name, the name of an X or
-- LinkedIn member, a Facebook page or an Instagram or Threads account); NULL where it gives none.
ALTER TABLE connections ADD COLUMN display_name TEXT;

-- A refresh or follower sync asked for (by the API, a sweep or a retry) is recorded as a run before
-- its job is pushed, and the job carries the run's id, so the id the caller is given is the run the
-- worker executes. token_refreshes.result goes 'queued' -> 'running' -> the outcome;
-- follower_sync_runs.state 'queued' -> 'running' -> 'finished' (or 'skipped'). A failed refresh is
-- now named by its results, so a run in flight never counts as a failure.
DROP INDEX token_refreshes_failed;
CREATE INDEX token_refreshes_failed ON token_refreshes (at) WHERE result IN ('invalid_grant', 'transient');
CREATE INDEX token_refreshes_in_flight ON token_refreshes (connection_id) WHERE result IN ('queued', 'running');

-- The run that first saw an account: at the end of that run it is a gain.
ALTER TABLE followers ADD COLUMN first_seen_run TEXT;
-- GET /v1/connections/{id}/followers lists the newest first.
CREATE INDEX followers_newest ON followers (connection_id, relation, first_seen_at, platform_account_id);

-- The accounts each finished run gained and lost (the followers table keeps only the current
-- ones), written in the transaction that finishes the run. seq orders them for paging.
CREATE TABLE follower_changes (
    seq                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    connection_id        TEXT NOT NULL REFERENCES connections(id),
    run_id               TEXT NOT NULL REFERENCES follower_sync_runs(id),
    relation             TEXT NOT NULL,
    change               TEXT NOT NULL CHECK (change IN ('gained', 'lost')),
    platform_account_id  TEXT NOT NULL,
    handle               TEXT NOT NULL,
    at                   TIMESTAMPTZ NOT NULL
);
CREATE INDEX follower_changes_by_connection ON follower_changes (connection_id, seq);
