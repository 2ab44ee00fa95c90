-- Images captured at enqueue (issue 17). A blob is stored once per content (its SHA-256), shared
-- by every share that carries the same bytes, and deleted by the worker's media sweep once no
-- unfinished share (queued, running, parked, outcome_unknown) uses it and it was last used more
-- than the sweep's grace ago (so an enqueue writing a new use of it cannot race the delete).
CREATE TABLE media_blobs (
    sha256       TEXT PRIMARY KEY,
    content_type TEXT NOT NULL,
    bytes        BYTEA NOT NULL,
    size_bytes   BIGINT NOT NULL,
    width        INTEGER NOT NULL,
    height       INTEGER NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX media_blobs_by_last_use ON media_blobs (last_used_at);

-- A share's images, in order, each with its alt text and where it was fetched from. No foreign
-- key to the blob: a finished share keeps its list after its blob is gone (its post is made).
CREATE TABLE share_media (
    share_id   TEXT NOT NULL REFERENCES shares(id),
    position   INTEGER NOT NULL,
    sha256     TEXT NOT NULL,
    alt        TEXT,
    source_url TEXT NOT NULL,
    PRIMARY KEY (share_id, position)
);
CREATE INDEX share_media_by_blob ON share_media (sha256);

-- How many images a share carries, so a worker reads `share_media` only for shares that have some.
ALTER TABLE shares ADD COLUMN media_count INTEGER NOT NULL DEFAULT 0;
