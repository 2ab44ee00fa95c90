-- The refresh sweep renews Instagram's and Threads' 60-day tokens days ahead (a second pass with a
-- longer window). Its own partial index keeps that pass a range scan of those platforms' due
-- tokens instead of every refreshable token expiring within days (X's expire every two hours).
-- The predicate is written exactly as the sweep's query writes it, so both engines use the index.
CREATE INDEX connections_long_lived_by_expiry ON connections (token_expires_at, id)
    WHERE revoked_at IS NULL AND NOT needs_reauth AND platform IN ('instagram', 'threads');
