-- Instagram and Threads issue no refresh token: the long-lived access token is itself exchanged
-- for a new one, so the refresh sweep's partial index covers those platforms' connections too.
-- The predicate is written exactly as the sweep's query writes it, so both engines use the index.
DROP INDEX connections_by_expiry;
CREATE INDEX connections_by_expiry ON connections (token_expires_at, id)
    WHERE revoked_at IS NULL AND NOT needs_reauth
        AND (refresh_token_enc IS NOT NULL OR platform IN ('instagram', 'threads'));
