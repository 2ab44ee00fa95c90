//! Tenants and API keys. A key is shown once (`hk_<key id>_<secret>`); only a SHA-256 of the
//! secret is stored. The secret has 256 bits of entropy, so a fast hash is enough.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{Result, Store, with_pool};
use crate::ids;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyRole {
    /// Acts for one tenant, sees only that tenant's data.
    Tenant,
    /// Inspects and replays jobs across tenants.
    Operator,
}

impl ApiKeyRole {
    fn as_str(self) -> &'static str {
        match self {
            Self::Tenant => "tenant",
            Self::Operator => "operator",
        }
    }
}

/// Who a valid key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthedKey {
    pub key_id: String,
    pub role: ApiKeyRole,
    pub tenant_id: Option<String>,
}

fn hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Store {
    /// The tenant's id, created if it did not exist.
    pub async fn ensure_tenant(&self, name: &str, now: DateTime<Utc>) -> Result<String> {
        let id = ids::new(ids::TENANT);
        with_pool!(
            &self.pool,
            "INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
            |p, sql| {
                sqlx::query(sql)
                    .bind(&id)
                    .bind(name)
                    .bind(now)
                    .execute(p)
                    .await?;
            }
        );
        let id: String = with_pool!(
            &self.pool,
            "SELECT id FROM tenants WHERE name = $1",
            |p, sql| sqlx::query_scalar(sql).bind(name).fetch_one(p).await?
        );
        Ok(id)
    }

    /// Creates a key and returns it in full; this is the only time the secret exists in clear.
    pub async fn create_api_key(
        &self,
        role: ApiKeyRole,
        tenant_id: Option<&str>,
        label: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<String> {
        let key_id = ids::new(ids::API_KEY);
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let secret = URL_SAFE_NO_PAD.encode(secret);
        with_pool!(
            &self.pool,
            "INSERT INTO api_keys (id, tenant_id, role, secret_hash, label, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            |p, sql| {
                sqlx::query(sql)
                    .bind(&key_id)
                    .bind(tenant_id)
                    .bind(role.as_str())
                    .bind(hash(&secret))
                    .bind(label)
                    .bind(now)
                    .execute(p)
                    .await?;
            }
        );
        Ok(format!("hk_{key_id}_{secret}"))
    }

    /// Checks a presented key. `None` for anything unknown, revoked or malformed.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<AuthedKey>> {
        let Some(rest) = presented.strip_prefix("hk_") else {
            return Ok(None);
        };
        // The key id is `key_<32 hex>`; the secret follows the next underscore.
        let Some((key_id, secret)) = rest.get(..36).zip(rest.get(37..)) else {
            return Ok(None);
        };
        if !ids::is_valid(ids::API_KEY, key_id) || rest.as_bytes()[36] != b'_' {
            return Ok(None);
        }
        let row: Option<(String, Option<String>, String)> = with_pool!(
            &self.pool,
            "SELECT role, tenant_id, secret_hash FROM api_keys WHERE id = $1 AND revoked_at IS NULL",
            |p, sql| sqlx::query_as(sql).bind(key_id).fetch_optional(p).await?
        );
        let Some((role, tenant_id, stored)) = row else {
            return Ok(None);
        };
        if !constant_time_eq(&stored, &hash(secret)) {
            return Ok(None);
        }
        let role = if role == "operator" {
            ApiKeyRole::Operator
        } else {
            ApiKeyRole::Tenant
        };
        Ok(Some(AuthedKey {
            key_id: key_id.to_owned(),
            role,
            tenant_id,
        }))
    }
}
