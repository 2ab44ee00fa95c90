//! Connected accounts and their encrypted tokens.

use chrono::{DateTime, Utc};
use herald_platforms::{Account, Credentials, PlatformKind};
use secrecy::SecretString;

use super::{Pool, Result, Store, StoreError, with_pool};
use crate::{
    ids,
    vault::{KeyRing, Slot, VaultError},
};

pub(super) const COLUMNS: &str = "id, tenant_id, platform, platform_account_id, handle, extras, scopes, \
    access_token_enc, refresh_token_enc, dpop_key_enc, token_expires_at, token_generation, \
    needs_reauth, last_error, created_at, updated_at, revoked_at, rate_limited_until, user_id, \
    needs_reauth_since, auth, display_name";

/// A connection as stored; token columns hold vault envelopes, never clear text.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConnectionRow {
    pub id: String,
    pub tenant_id: String,
    pub platform: String,
    pub platform_account_id: String,
    pub handle: String,
    pub extras: String,
    pub scopes: String,
    pub access_token_enc: Option<String>,
    pub refresh_token_enc: Option<String>,
    pub dpop_key_enc: Option<String>,
    pub token_expires_at: Option<DateTime<Utc>>,
    pub token_generation: i64,
    pub needs_reauth: bool,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The platform rate-limited this account until then.
    pub rate_limited_until: Option<DateTime<Utc>>,
    /// The app's id of the user who connected the account (connect flow only).
    pub user_id: Option<String>,
    /// When the connection was flagged `needs_reauth`; `None` while it is not.
    pub needs_reauth_since: Option<DateTime<Utc>>,
    /// `app_password` (a Bluesky app password) or `oauth` (every other connection).
    pub auth: String,
    /// What the platform calls the account, where it gives a name.
    pub display_name: Option<String>,
}

impl ConnectionRow {
    pub fn platform_kind(&self) -> Option<PlatformKind> {
        PlatformKind::parse(&self.platform)
    }

    pub fn account(&self) -> Account {
        let extras = serde_json::from_str(&self.extras).unwrap_or_default();
        Account {
            platform_account_id: self.platform_account_id.clone(),
            handle: self.handle.clone(),
            extras,
        }
    }

    /// A Bluesky connection that logs in with an app password.
    pub(crate) fn is_app_password(&self) -> bool {
        self.auth == AUTH_APP_PASSWORD
    }

    pub fn has_refresh_token(&self) -> bool {
        self.refresh_token_enc.is_some()
    }

    /// Whether Herald holds what renewing the access token takes: a refresh token, or on
    /// Instagram and Threads the long-lived access token itself. (The API asks too, before it
    /// queues a refresh.)
    pub fn can_refresh(&self) -> bool {
        self.has_refresh_token()
            || self
                .platform_kind()
                .is_some_and(PlatformKind::refreshes_access_token)
    }

    /// When the user must connect again: the access token's expiry, if it expires and Herald
    /// cannot renew it (`platform_refreshes`: the platform's client has a refresh at all).
    /// LinkedIn without partner refresh tokens is the common case: 60 days, then nothing.
    pub fn reconnect_by(&self, platform_refreshes: bool) -> Option<DateTime<Utc>> {
        self.token_expires_at
            .filter(|_| !(platform_refreshes && self.can_refresh()))
    }

    /// Decrypts the tokens for one call.
    pub fn credentials(&self, vault: &KeyRing) -> Result<Credentials, VaultError> {
        let open = |column: &str, env: &Option<String>| {
            env.as_deref()
                .map(|e| {
                    vault.decrypt(
                        Slot {
                            table: "connections",
                            row: &self.id,
                            column,
                        },
                        e,
                    )
                })
                .transpose()
        };
        Ok(Credentials {
            access_token: open("access_token", &self.access_token_enc)?,
            refresh_token: open("refresh_token", &self.refresh_token_enc)?,
            dpop_key: open("dpop_key", &self.dpop_key_enc)?,
            expires_at: self.token_expires_at,
        })
    }
}

/// Live connections of one platform and `auth` ([`Store::connection_counts`]).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ConnectionCount {
    pub platform: String,
    pub auth: String,
    pub live: i64,
    pub needing_reauth: i64,
    pub flagged_before: i64,
}

/// Tokens and identity to store for an account.
#[derive(Debug, Clone)]
pub struct NewConnection {
    pub platform: PlatformKind,
    pub platform_account_id: String,
    pub handle: String,
    /// The platform's name for the account; `None` keeps the one stored.
    pub display_name: Option<String>,
    pub extras: serde_json::Map<String, serde_json::Value>,
    pub scopes: Vec<String>,
    pub tokens: StoredTokens,
}

/// Tokens to write. A `None` refresh token never overwrites a stored one.
#[derive(Debug, Clone, Default)]
pub struct StoredTokens {
    pub access_token: Option<SecretString>,
    pub refresh_token: Option<SecretString>,
    pub dpop_key: Option<SecretString>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// `connections.auth` of a Bluesky app-password connection.
pub(crate) const AUTH_APP_PASSWORD: &str = "app_password";

/// `extras.auth` when it names one of the two ways a connection authenticates.
fn explicit_auth(extras: &serde_json::Map<String, serde_json::Value>) -> Option<&str> {
    extras
        .get("auth")
        .and_then(|v| v.as_str())
        .filter(|a| matches!(*a, "oauth" | AUTH_APP_PASSWORD))
}

impl NewConnection {
    /// Whether storing this over `existing` (the live connection of the same account, if any)
    /// leaves a Bluesky app-password connection: the rule `connections.auth` is written with,
    /// and the one the Bluesky client follows (`extras.auth`, else OAuth when a DPoP key or a
    /// refresh token is stored).
    pub(crate) fn is_app_password(&self, existing: Option<&ConnectionRow>) -> bool {
        if self.platform != PlatformKind::Bluesky {
            return false;
        }
        if let Some(auth) = explicit_auth(&self.extras) {
            return auth == AUTH_APP_PASSWORD;
        }
        let t = &self.tokens;
        let oauth = t.dpop_key.is_some()
            || t.refresh_token.is_some()
            || existing.is_some_and(|e| e.dpop_key_enc.is_some() || e.refresh_token_enc.is_some());
        !oauth
    }
}

fn seal(
    vault: &KeyRing,
    row: &str,
    column: &str,
    v: &Option<SecretString>,
) -> Result<Option<String>> {
    v.as_ref()
        .map(|s| {
            vault.encrypt(
                Slot {
                    table: "connections",
                    row,
                    column,
                },
                s,
            )
        })
        .transpose()
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store {
    /// Creates the connection, or updates the one this tenant already has for the same platform
    /// account (same id, same history). Returns the stored row.
    pub async fn upsert_connection(
        &self,
        tenant_id: &str,
        new: &NewConnection,
        vault: &KeyRing,
        now: DateTime<Utc>,
    ) -> Result<ConnectionRow> {
        let candidate = ids::new(ids::CONNECTION);
        let extras = serde_json::Value::Object(new.extras.clone()).to_string();
        let scopes = new.scopes.join(" ");
        let select = format!("SELECT {COLUMNS} FROM connections WHERE id = $1");
        let row = with_pool!(
            &self.pool,
            "INSERT INTO connections (id, tenant_id, platform, platform_account_id, handle, extras, scopes, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) ON CONFLICT (tenant_id, platform, platform_account_id) DO NOTHING",
            |p, sql| {
                let mut tx = crate::store::Engine::begin_write(p).await?;
                sqlx::query(sql)
                    .bind(&candidate)
                    .bind(tenant_id)
                    .bind(new.platform.as_str())
                    .bind(&new.platform_account_id)
                    .bind(&new.handle)
                    .bind(&extras)
                    .bind(&scopes)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                let id: String = sqlx::query_scalar(crate::store::with_engine(p, "SELECT id FROM connections WHERE tenant_id = $1 AND platform = $2 AND platform_account_id = $3"))
                .bind(tenant_id)
                .bind(new.platform.as_str())
                .bind(&new.platform_account_id)
                .fetch_one(&mut *tx)
                .await?;
                let t = &new.tokens;
                sqlx::query(crate::store::with_engine(p, "UPDATE connections SET handle = $2, extras = $3, scopes = $4, \
                access_token_enc = $5, refresh_token_enc = COALESCE($6, refresh_token_enc), \
                dpop_key_enc = COALESCE($7, dpop_key_enc), token_expires_at = $8, \
                token_generation = token_generation + 1, revoked_at = NULL, updated_at = $9, \
                auth = CASE WHEN platform <> 'bluesky' THEN 'oauth' WHEN $10 IS NOT NULL THEN $10 \
                    WHEN COALESCE($7, dpop_key_enc) IS NOT NULL OR COALESCE($6, refresh_token_enc) IS NOT NULL THEN 'oauth' \
                    ELSE 'app_password' END, display_name = COALESCE($11, display_name) WHERE id = $1"))
                .bind(&id)
                .bind(&new.handle)
                .bind(&extras)
                .bind(&scopes)
                .bind(seal(vault, &id, "access_token", &t.access_token)?)
                .bind(seal(vault, &id, "refresh_token", &t.refresh_token)?)
                .bind(seal(vault, &id, "dpop_key", &t.dpop_key)?)
                .bind(t.expires_at)
                .bind(now)
                .bind(explicit_auth(&new.extras))
                .bind(&new.display_name)
                .execute(&mut *tx)
                .await?;
                let row: ConnectionRow = sqlx::query_as(crate::store::with_engine(p, &select))
                    .bind(&id)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                row
            }
        );
        Ok(row)
    }

    /// Any tenant's connection: for workers, which act on ids from payloads.
    pub async fn connection(&self, id: &str) -> Result<Option<ConnectionRow>> {
        let q = format!("SELECT {COLUMNS} FROM connections WHERE id = $1");
        Ok(with_pool!(&self.pool, &q, |p, sql| sqlx::query_as(sql)
            .bind(id)
            .fetch_optional(p)
            .await?))
    }

    /// The connections with these ids, in one statement (the share feed reads a batch's
    /// connections at once).
    pub(crate) async fn connections_by_ids(&self, ids: &[&str]) -> Result<Vec<ConnectionRow>> {
        connections_in(&self.pool, ids).await
    }

    /// [`Store::tenant_connection`], as read up to [`super::RECENT_CONNECTION_TTL`] ago. For
    /// validating a share only: its write checks the connection again in its own transaction.
    pub async fn recent_tenant_connection(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<ConnectionRow>> {
        let key = (tenant_id.to_owned(), id.to_owned());
        if let Some(row) = self.recent_connections.get(&key) {
            return Ok(Some(row));
        }
        let row = self.tenant_connection(tenant_id, id).await?;
        if let Some(row) = &row {
            self.recent_connections.put(key, row.clone());
        }
        Ok(row)
    }

    /// One tenant's connection; another tenant's id is simply not found.
    pub async fn tenant_connection(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<ConnectionRow>> {
        let q = format!(
            "SELECT {COLUMNS} FROM connections WHERE id = $1 AND tenant_id = $2 AND revoked_at IS NULL"
        );
        Ok(with_pool!(&self.pool, &q, |p, sql| sqlx::query_as(sql)
            .bind(id)
            .bind(tenant_id)
            .fetch_optional(p)
            .await?))
    }

    /// A tenant's connections, oldest first, paged by id. `refresh_failing_since` keeps those
    /// with 3 or more failed refreshes since then.
    pub async fn list_connections(
        &self,
        tenant_id: &str,
        filter: &ConnectionFilter<'_>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ConnectionRow>> {
        let q = format!(
            "SELECT {COLUMNS} FROM connections WHERE tenant_id = $1 AND revoked_at IS NULL \
             AND ($2 IS NULL OR needs_reauth = $2) AND ($3 IS NULL OR id > $3) \
             AND ($5 IS NULL OR id IN (SELECT connection_id FROM token_refreshes WHERE at >= $5 \
                 AND result IN ('invalid_grant', 'transient') GROUP BY connection_id HAVING COUNT(*) >= 3)) \
             AND ($6 IS NULL OR user_id = $6) AND ($7 IS NULL OR platform = $7) \
             ORDER BY id LIMIT $4"
        );
        Ok(with_pool!(&self.pool, &q, |p, sql| {
            sqlx::query_as(sql)
                .bind(tenant_id)
                .bind(filter.needs_reauth)
                .bind(after)
                .bind(limit)
                .bind(filter.refresh_failing_since)
                .bind(filter.user_id)
                .bind(filter.platform)
                .fetch_all(p)
                .await?
        }))
    }

    /// Flags dead credentials: every job for this connection parks until it is reconnected.
    pub async fn mark_needs_reauth(
        &self,
        id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        // A connection flagged just now (not already flagged) announces it to the tenant's
        // webhooks, in the same transaction.
        let newly = format!(
            "UPDATE connections SET needs_reauth = TRUE, last_error = $2, updated_at = $3, \
             needs_reauth_since = $3 WHERE id = $1 AND NOT needs_reauth RETURNING {COLUMNS}"
        );
        with_pool!(
            &self.pool,
            "UPDATE connections SET needs_reauth = TRUE, last_error = $2, updated_at = $3, \
             needs_reauth_since = CASE WHEN needs_reauth THEN COALESCE(needs_reauth_since, $3) ELSE $3 END WHERE id = $1",
            |p, sql| {
                let mut tx = super::Engine::begin_write(p).await?;
                let flagged: Option<ConnectionRow> = sqlx::query_as(super::with_engine(p, &newly))
                    .bind(id)
                    .bind(reason)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                if flagged.is_none() {
                    sqlx::query(sql)
                        .bind(id)
                        .bind(reason)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
                super::webhooks::record_connection(
                    p,
                    &mut tx,
                    crate::webhooks::EventType::ConnectionNeedsReauth,
                    flagged.as_ref(),
                    Some(reason),
                    now,
                )
                .await?;
                tx.commit().await?;
            }
        );
        crate::webhooks::wake();
        Ok(())
    }

    /// Live connections by platform and `auth`, with how many are flagged `needs_reauth`, and
    /// of those how many were flagged before `flagged_before`.
    pub async fn connection_counts(
        &self,
        flagged_before: DateTime<Utc>,
    ) -> Result<Vec<ConnectionCount>> {
        Ok(with_pool!(
            &self.pool,
            "SELECT platform, auth, COUNT(*) AS live, \
             SUM(CASE WHEN needs_reauth THEN 1 ELSE 0 END) AS needing_reauth, \
             SUM(CASE WHEN needs_reauth AND needs_reauth_since < $1 THEN 1 ELSE 0 END) AS flagged_before \
             FROM connections WHERE revoked_at IS NULL GROUP BY platform, auth",
            |p, sql| sqlx::query_as(sql)
                .bind(flagged_before)
                .fetch_all(p)
                .await?
        ))
    }

    /// Re-encrypts every token not yet under the ring's primary key, in batches. Each row is
    /// rewritten only if its ciphertexts are still the ones read, so a concurrent token write wins.
    pub async fn reencrypt_connections(&self, vault: &KeyRing, now: DateTime<Utc>) -> Result<u64> {
        let current = format!("v1.{}.%", vault.primary_id());
        let mut changed = 0;
        loop {
            let q = format!(
                "SELECT {COLUMNS} FROM connections WHERE (access_token_enc IS NOT NULL AND access_token_enc NOT LIKE $1) \
                 OR (refresh_token_enc IS NOT NULL AND refresh_token_enc NOT LIKE $1) \
                 OR (dpop_key_enc IS NOT NULL AND dpop_key_enc NOT LIKE $1) ORDER BY id LIMIT 200"
            );
            let rows: Vec<ConnectionRow> = with_pool!(&self.pool, &q, |p, sql| sqlx::query_as(sql)
                .bind(&current)
                .fetch_all(p)
                .await?);
            if rows.is_empty() {
                return Ok(changed);
            }
            let mut progressed = false;
            for row in rows {
                let creds = row
                    .credentials(vault)
                    .map_err(|e| StoreError::Corrupt(format!("connection {}: {e}", row.id)))?;
                let access = seal(vault, &row.id, "access_token", &creds.access_token)?;
                let refresh = seal(vault, &row.id, "refresh_token", &creds.refresh_token)?;
                let dpop = seal(vault, &row.id, "dpop_key", &creds.dpop_key)?;
                let done = with_pool!(
                    &self.pool,
                    "UPDATE connections SET access_token_enc = $2, refresh_token_enc = $3, dpop_key_enc = $4, updated_at = $5 \
                    WHERE id = $1 AND access_token_enc IS NOT DISTINCT FROM $6 AND refresh_token_enc IS NOT DISTINCT FROM $7 AND dpop_key_enc IS NOT DISTINCT FROM $8",
                    |p, sql| {
                        sqlx::query(sql)
                            .bind(&row.id)
                            .bind(access)
                            .bind(refresh)
                            .bind(dpop)
                            .bind(now)
                            .bind(&row.access_token_enc)
                            .bind(&row.refresh_token_enc)
                            .bind(&row.dpop_key_enc)
                            .execute(p)
                            .await?
                            .rows_affected()
                    }
                );
                changed += done;
                progressed |= done > 0;
            }
            if !progressed {
                return Ok(changed);
            }
        }
    }

    /// Stores the name the platform gives the account (from a verify).
    pub(crate) async fn set_display_name(&self, id: &str, name: Option<&str>) -> Result<()> {
        with_pool!(
            &self.pool,
            "UPDATE connections SET display_name = $2 WHERE id = $1",
            |p, sql| {
                sqlx::query(sql).bind(id).bind(name).execute(p).await?;
            }
        );
        Ok(())
    }

    /// Records that the platform rate-limited this account until `until` (never shortening a
    /// longer wait already recorded).
    pub(crate) async fn set_rate_limited(&self, id: &str, until: DateTime<Utc>) -> Result<()> {
        with_pool!(
            &self.pool,
            "UPDATE connections SET rate_limited_until = $2 WHERE id = $1 AND (rate_limited_until IS NULL OR rate_limited_until < $2)",
            |p, sql| {
                sqlx::query(sql).bind(id).bind(until).execute(p).await?;
            }
        );
        Ok(())
    }
}

/// Which of a tenant's connections to list; `None` leaves a field out.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionFilter<'a> {
    pub needs_reauth: Option<bool>,
    /// Only connections with 3 or more failed refreshes since then.
    pub refresh_failing_since: Option<DateTime<Utc>>,
    /// The app's own id of the user who connected the account.
    pub user_id: Option<&'a str>,
    /// A platform's wire name (`mastodon`, `bluesky`, ...).
    pub platform: Option<&'a str>,
}

/// The connections with these ids, in one statement (unknown ids are left out).
pub(super) async fn connections_in(pool: &Pool, ids: &[&str]) -> Result<Vec<ConnectionRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(match pool {
        // An array, not JSON, so Postgres reads the ids by primary key (see `claim_due`).
        Pool::Postgres(p) => {
            let q = format!("SELECT {COLUMNS} FROM connections WHERE id = ANY($1::text[])");
            sqlx::query_as(sqlx::AssertSqlSafe(q))
                .bind(ids)
                .fetch_all(p)
                .await?
        }
        Pool::Sqlite(p) => {
            let json =
                serde_json::to_string(ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let q = format!(
                "SELECT {COLUMNS} FROM connections WHERE id IN (SELECT value FROM json_each(?1))"
            );
            sqlx::query_as(sqlx::AssertSqlSafe(q))
                .bind(json)
                .fetch_all(p)
                .await?
        }
    })
}
