//! Bluesky app passwords on their way out (`HERALD_BLUESKY_APP_PASSWORDS`,
//! `herald bluesky purge-app-passwords`).

use chrono::{DateTime, Utc};

use super::{ConnectionRow, Result, Store, connections::COLUMNS, with_pool};

/// What `last_error` says of a connection whose app password was erased.
pub const APP_PASSWORD_ERASED: &str =
    "the Bluesky app password was erased (the account has moved to OAuth): reconnect it with OAuth";

impl Store {
    /// The tenant's live connection of this platform account, if there is one.
    pub async fn tenant_connection_of_account(
        &self,
        tenant_id: &str,
        platform: &str,
        platform_account_id: &str,
    ) -> Result<Option<ConnectionRow>> {
        let q = format!(
            "SELECT {COLUMNS} FROM connections WHERE tenant_id = $1 AND platform = $2 \
             AND platform_account_id = $3 AND revoked_at IS NULL"
        );
        Ok(with_pool!(&self.pool, &q, |p, sql| sqlx::query_as(sql)
            .bind(tenant_id)
            .bind(platform)
            .bind(platform_account_id)
            .fetch_optional(p)
            .await?))
    }

    /// Live Bluesky connections still holding an app password for an account (a DID) that has
    /// a live OAuth connection. Within one tenant, connecting with OAuth replaces the password
    /// (the connection keeps its id), so these are other tenants' connections of that account.
    pub async fn app_passwords_moved_to_oauth(&self) -> Result<Vec<ConnectionRow>> {
        let q = format!(
            "SELECT {COLUMNS} FROM connections c WHERE c.platform = 'bluesky' AND c.auth = 'app_password' \
             AND c.revoked_at IS NULL AND c.access_token_enc IS NOT NULL AND EXISTS (\
                 SELECT 1 FROM connections o WHERE o.platform = 'bluesky' AND o.auth = 'oauth' \
                 AND o.revoked_at IS NULL AND o.platform_account_id = c.platform_account_id) \
             ORDER BY c.id"
        );
        Ok(with_pool!(&self.pool, &q, |p, sql| sqlx::query_as(sql)
            .fetch_all(p)
            .await?))
    }

    /// Erases a connection's stored app password and flags it `needs_reauth`, so its work parks
    /// until it is reconnected with OAuth. The token generation moves on, so a login in flight
    /// cannot write anything back. False if it no longer holds one.
    pub async fn erase_app_password(&self, id: &str, now: DateTime<Utc>) -> Result<bool> {
        // A connection not flagged before announces `connection.needs_reauth`, in the same
        // transaction.
        let newly = format!(
            "UPDATE connections SET access_token_enc = NULL, token_generation = token_generation + 1, \
             needs_reauth = TRUE, last_error = $3, updated_at = $2, needs_reauth_since = $2 \
             WHERE id = $1 AND auth = 'app_password' AND revoked_at IS NULL AND access_token_enc IS NOT NULL \
             AND NOT needs_reauth RETURNING {COLUMNS}"
        );
        let erased = with_pool!(
            &self.pool,
            "UPDATE connections SET access_token_enc = NULL, token_generation = token_generation + 1, \
             needs_reauth = TRUE, last_error = $3, updated_at = $2, \
             needs_reauth_since = CASE WHEN needs_reauth THEN COALESCE(needs_reauth_since, $2) ELSE $2 END \
             WHERE id = $1 AND auth = 'app_password' AND revoked_at IS NULL AND access_token_enc IS NOT NULL",
            |p, sql| {
                let mut tx = super::Engine::begin_write(p).await?;
                let flagged: Option<ConnectionRow> = sqlx::query_as(super::with_engine(p, &newly))
                    .bind(id)
                    .bind(now)
                    .bind(APP_PASSWORD_ERASED)
                    .fetch_optional(&mut *tx)
                    .await?;
                let erased = flagged.is_some()
                    || sqlx::query(sql)
                        .bind(id)
                        .bind(now)
                        .bind(APP_PASSWORD_ERASED)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                        == 1;
                super::webhooks::record_connection(
                    p,
                    &mut tx,
                    crate::webhooks::EventType::ConnectionNeedsReauth,
                    flagged.as_ref(),
                    Some(APP_PASSWORD_ERASED),
                    now,
                )
                .await?;
                tx.commit().await?;
                erased
            }
        );
        crate::webhooks::wake();
        Ok(erased)
    }
}
