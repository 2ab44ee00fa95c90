//! The connect flows in the store: OAuth states (single use, short-lived), Mastodon apps cached per
//! instance and tenant, and removing a connection.

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use super::{Result, Store, StoreError, with_pool};
use crate::{
    ids,
    vault::{KeyRing, Slot},
};

const STATE_COLUMNS: &str = "state_hash, tenant_id, user_id, platform, return_url, instance_url, \
    pkce_verifier_enc, created_at, expires_at, consumed_at, dpop_key_enc, account_did, \
    account_handle, pds_url, auth_server";

/// A started flow, as stored. The verifier stays encrypted until [`OAuthState::verifier`].
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct OAuthState {
    pub state_hash: String,
    pub tenant_id: String,
    pub user_id: String,
    pub platform: String,
    pub return_url: String,
    pub instance_url: Option<String>,
    pub pkce_verifier_enc: Option<String>,
    pub expires_at: DateTime<Utc>,
    /// Bluesky: the session's DPoP private key, encrypted.
    pub dpop_key_enc: Option<String>,
    /// Bluesky: the account as resolved at the start (no DID when it started from a server URL).
    pub account_did: Option<String>,
    pub account_handle: Option<String>,
    pub pds_url: Option<String>,
    /// Bluesky: the authorization server's issuer.
    pub auth_server: Option<String>,
}

impl OAuthState {
    pub fn verifier(&self, vault: &KeyRing) -> Result<Option<SecretString>> {
        self.open(vault, "pkce_verifier", &self.pkce_verifier_enc)
    }

    pub fn dpop_key(&self, vault: &KeyRing) -> Result<Option<SecretString>> {
        self.open(vault, "dpop_key", &self.dpop_key_enc)
    }

    fn open(
        &self,
        vault: &KeyRing,
        column: &str,
        sealed: &Option<String>,
    ) -> Result<Option<SecretString>> {
        sealed
            .as_deref()
            .map(|e| vault.decrypt(state_slot(&self.state_hash, column), e))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("oauth state: {e}")))
    }
}

fn state_slot<'a>(hash: &'a str, column: &'a str) -> Slot<'a> {
    Slot {
        table: "oauth_states",
        row: hash,
        column,
    }
}

/// What an AT Protocol flow remembers besides the verifier.
#[derive(Debug, Clone, Default)]
pub(crate) struct AtprotoFlow<'a> {
    pub dpop_key: Option<&'a SecretString>,
    pub account_did: Option<&'a str>,
    pub account_handle: Option<&'a str>,
    pub pds_url: Option<&'a str>,
    pub auth_server: Option<&'a str>,
}

/// What to store when a flow starts.
#[derive(Debug, Clone)]
pub(crate) struct NewOAuthState<'a> {
    pub state_hash: &'a str,
    pub tenant_id: &'a str,
    pub user_id: &'a str,
    pub platform: &'a str,
    pub return_url: &'a str,
    pub instance_url: Option<&'a str>,
    pub pkce_verifier: Option<&'a SecretString>,
    pub expires_at: DateTime<Utc>,
    /// Bluesky only.
    pub atproto: AtprotoFlow<'a>,
}

/// How taking a state went.
#[derive(Debug)]
pub(crate) enum TakenState {
    /// Unused until now, and now used.
    Fresh(Box<OAuthState>),
    /// Known, but already used: a replay.
    Used(Box<OAuthState>),
    Unknown,
}

/// A Mastodon app registered on one instance for one tenant.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct MastodonApp {
    pub id: String,
    pub client_id: String,
    pub client_secret_enc: String,
    pub redirect_uri: String,
    pub scopes: String,
}

impl MastodonApp {
    pub fn client_secret(&self, vault: &KeyRing) -> Result<SecretString> {
        vault
            .decrypt(app_slot(&self.id), &self.client_secret_enc)
            .map_err(|e| StoreError::Corrupt(format!("mastodon app {}: {e}", self.id)))
    }
}

fn app_slot(id: &str) -> Slot<'_> {
    Slot {
        table: "mastodon_apps",
        row: id,
        column: "client_secret",
    }
}

impl Store {
    /// Stores a started flow, and drops states that expired more than a day ago (kept that long so
    /// a late or replayed callback still finds where to send the browser back).
    pub(crate) async fn insert_oauth_state(
        &self,
        new: &NewOAuthState<'_>,
        vault: &KeyRing,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let seal = |column: &str, v: Option<&SecretString>| {
            v.map(|v| vault.encrypt(state_slot(new.state_hash, column), v))
                .transpose()
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        };
        let verifier = seal("pkce_verifier", new.pkce_verifier)?;
        let dpop_key = seal("dpop_key", new.atproto.dpop_key)?;
        let a = &new.atproto;
        with_pool!(
            &self.pool,
            "DELETE FROM oauth_states WHERE expires_at < $1",
            |p, sql| {
                sqlx::query(sql)
                    .bind(now - chrono::Duration::days(1))
                    .execute(p)
                    .await?;
            }
        );
        with_pool!(
            &self.pool,
            "INSERT INTO oauth_states (state_hash, tenant_id, user_id, platform, return_url, instance_url, pkce_verifier_enc, created_at, expires_at, \
             dpop_key_enc, account_did, account_handle, pds_url, auth_server) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            |p, sql| {
                sqlx::query(sql)
                    .bind(new.state_hash)
                    .bind(new.tenant_id)
                    .bind(new.user_id)
                    .bind(new.platform)
                    .bind(new.return_url)
                    .bind(new.instance_url)
                    .bind(&verifier)
                    .bind(now)
                    .bind(new.expires_at)
                    .bind(&dpop_key)
                    .bind(a.account_did)
                    .bind(a.account_handle)
                    .bind(a.pds_url)
                    .bind(a.auth_server)
                    .execute(p)
                    .await?;
            }
        );
        Ok(())
    }

    /// Marks a state used, by compare-and-set: of two callbacks with the same state, one gets
    /// `Fresh` and the other `Used`. Expiry and platform are the caller's to check.
    pub(crate) async fn take_oauth_state(
        &self,
        state_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<TakenState> {
        let q = format!(
            "UPDATE oauth_states SET consumed_at = $2 WHERE state_hash = $1 AND consumed_at IS NULL RETURNING {STATE_COLUMNS}"
        );
        let taken: Option<OAuthState> = with_pool!(&self.pool, &q, |p, sql| sqlx::query_as(sql)
            .bind(state_hash)
            .bind(now)
            .fetch_optional(p)
            .await?);
        if let Some(s) = taken {
            return Ok(TakenState::Fresh(Box::new(s)));
        }
        let q = format!("SELECT {STATE_COLUMNS} FROM oauth_states WHERE state_hash = $1");
        let known: Option<OAuthState> = with_pool!(&self.pool, &q, |p, sql| sqlx::query_as(sql)
            .bind(state_hash)
            .fetch_optional(p)
            .await?);
        Ok(known.map_or(TakenState::Unknown, |s| TakenState::Used(Box::new(s))))
    }

    pub(crate) async fn mastodon_app(
        &self,
        instance_url: &str,
        tenant_id: &str,
    ) -> Result<Option<MastodonApp>> {
        Ok(with_pool!(
            &self.pool,
            "SELECT id, tenant_id, instance_url, client_id, client_secret_enc, redirect_uri, scopes, created_at \
             FROM mastodon_apps WHERE instance_url = $1 AND tenant_id = $2",
            |p, sql| sqlx::query_as(sql)
                .bind(instance_url)
                .bind(tenant_id)
                .fetch_optional(p)
                .await?
        ))
    }

    /// Caches a registered app. If another request registered one for the same instance and tenant
    /// first, that one is kept and returned (the other registration is simply never used).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn save_mastodon_app(
        &self,
        tenant_id: &str,
        instance_url: &str,
        client_id: &str,
        client_secret: &SecretString,
        redirect_uri: &str,
        scopes: &str,
        vault: &KeyRing,
        now: DateTime<Utc>,
    ) -> Result<MastodonApp> {
        let id = ids::new("mapp");
        let secret = vault
            .encrypt(app_slot(&id), client_secret)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        with_pool!(
            &self.pool,
            "INSERT INTO mastodon_apps (id, tenant_id, instance_url, client_id, client_secret_enc, redirect_uri, scopes, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (instance_url, tenant_id) DO NOTHING",
            |p, sql| {
                sqlx::query(sql)
                    .bind(&id)
                    .bind(tenant_id)
                    .bind(instance_url)
                    .bind(client_id)
                    .bind(&secret)
                    .bind(redirect_uri)
                    .bind(scopes)
                    .bind(now)
                    .execute(p)
                    .await?;
            }
        );
        self.mastodon_app(instance_url, tenant_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("mastodon app vanished after insert".into()))
    }

    /// Forgets a cached app (registered for a redirect URI or scopes no longer in use).
    pub(crate) async fn delete_mastodon_app(&self, id: &str) -> Result<()> {
        with_pool!(
            &self.pool,
            "DELETE FROM mastodon_apps WHERE id = $1",
            |p, sql| {
                sqlx::query(sql).bind(id).execute(p).await?;
            }
        );
        Ok(())
    }

    /// Records which of the app's users connected the account.
    pub(crate) async fn set_connection_user(&self, id: &str, user_id: &str) -> Result<()> {
        with_pool!(
            &self.pool,
            "UPDATE connections SET user_id = $2 WHERE id = $1",
            |p, sql| {
                sqlx::query(sql).bind(id).bind(user_id).execute(p).await?;
            }
        );
        Ok(())
    }

    /// Soft-deletes a tenant's connection and erases its tokens. The generation moves on, so a
    /// refresh in flight cannot write tokens back. Returns whether a live connection was removed.
    pub async fn remove_connection(
        &self,
        tenant_id: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let done = with_pool!(
            &self.pool,
            "UPDATE connections SET revoked_at = $3, access_token_enc = NULL, refresh_token_enc = NULL, \
             dpop_key_enc = NULL, token_generation = token_generation + 1, refresh_lock_until = NULL, \
             refresh_lock_owner = NULL, updated_at = $3 WHERE id = $1 AND tenant_id = $2 AND revoked_at IS NULL",
            |p, sql| {
                sqlx::query(sql)
                    .bind(id)
                    .bind(tenant_id)
                    .bind(now)
                    .execute(p)
                    .await?
                    .rows_affected()
            }
        );
        Ok(done > 0)
    }
}
