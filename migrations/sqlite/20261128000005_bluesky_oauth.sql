-- AT Protocol OAuth (Bluesky): what a started flow must remember besides the PKCE verifier.
-- The session's DPoP private key, encrypted by the vault (slot oauth_states/<state_hash>/dpop_key):
-- the pushed request, the code exchange and every later call are signed with it.
ALTER TABLE oauth_states ADD COLUMN dpop_key_enc TEXT;
-- The account as resolved when the flow started (absent when it started from a server URL): the
-- token answer's `sub` must be this DID.
ALTER TABLE oauth_states ADD COLUMN account_did TEXT;
ALTER TABLE oauth_states ADD COLUMN account_handle TEXT;
ALTER TABLE oauth_states ADD COLUMN pds_url TEXT;
-- The authorization server's issuer: the callback's `iss` must equal it.
ALTER TABLE oauth_states ADD COLUMN auth_server TEXT;
