-- The duplicate guard (HERALD_DUPLICATE_WINDOW_SECS): a digest of a share's normalized URL and
-- text (ShareRequest::duplicate_key), so "the same post to the same connection lately" is one
-- indexed lookup. NULL on shares written before the guard, which it therefore never matches.
ALTER TABLE shares ADD COLUMN duplicate_key TEXT;
CREATE INDEX shares_duplicates ON shares (connection_id, duplicate_key, created_at)
    WHERE duplicate_key IS NOT NULL;

-- The tenant's share list, newest first, filtered by state (GET /v1/shares?state=).
CREATE INDEX shares_by_tenant_state ON shares (tenant_id, state, id);

-- PATCH /v1/shares/{id}: an edit is a compare-and-set on this, so two edits made at once cannot
-- combine into a share neither of them checked.
ALTER TABLE shares ADD COLUMN edits INTEGER NOT NULL DEFAULT 0;
