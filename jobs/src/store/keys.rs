//! Tenants and API keys. A key is shown once (`hk_<key id>_<secret>`); only a SHA-256 of the
//! secret is stored. The secret has 256 bits of entropy, so a fast hash is enough.
//!
//! A key has a role (tenant or operator), scopes (what it may do, [`Scope`]), an optional expiry,
//! and can be revoked. Looking a key up is on every request's path, so this process keeps each
//! key's row in memory for [`KEY_CACHE_TTL`] ([`KeyCache`]): a revoked or expired key stops
//! working within that long in every process (at once in the process that revoked it), and
//! the presented secret is still hashed and compared in constant time on every request.

use std::{
    collections::HashMap,
    fmt,
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{Result, Store, with_pool};
use crate::ids;

/// How long a key's stored row (hash, role, tenant, scopes, expiry, revocation) is used from
/// memory before it is read again: the longest a key revoked by another process keeps working.
/// Five seconds makes the lookup one indexed read per key and process every five seconds rather
/// than one per request (`POST /v1/shares` at 5,000 requests a second is one transaction each).
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);

/// `last_used_at` is written at most this often per key and process, off the request's path.
pub(crate) const LAST_USED_EVERY: Duration = Duration::from_secs(60);

/// Rows kept in memory at most (unknown key ids are remembered too, so a flood of made-up ids
/// costs one read each per [`KEY_CACHE_TTL`]); past it, expired entries go first, then all.
const KEY_CACHE_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyRole {
    /// Acts for one tenant, sees only that tenant's data.
    Tenant,
    /// Inspects and replays jobs across tenants.
    Operator,
}

impl ApiKeyRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tenant => "tenant",
            Self::Operator => "operator",
        }
    }

    fn from_db(s: &str) -> Self {
        if s == "operator" {
            Self::Operator
        } else {
            Self::Tenant
        }
    }
}

/// What a key may do. A tenant key takes `read`, `share` and `connect`; an operator key `read`
/// and `admin`. `api/src/auth.rs` says which scope each route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Read shares, connections, platforms; operators: jobs and the cross-tenant views.
    Read,
    /// Enqueue and cancel shares.
    Share,
    /// Connect, import and remove accounts.
    Connect,
    /// Operators: replay jobs, manage API keys.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Self::Read, Self::Share, Self::Connect, Self::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Share => "share",
            Self::Connect => "connect",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of [`Scope`]s.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    pub fn of(scopes: &[Scope]) -> Self {
        Self(scopes.iter().fold(0, |acc, s| acc | s.bit()))
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every scope of `self` is in `other`.
    pub fn is_subset(self, other: Scopes) -> bool {
        self.0 & !other.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// What a key of this role could do before keys had scopes, and gets unless told otherwise.
    pub(crate) fn default_for(role: ApiKeyRole) -> Self {
        match role {
            ApiKeyRole::Tenant => Self::of(&[Scope::Read, Scope::Share, Scope::Connect]),
            ApiKeyRole::Operator => Self::of(&[Scope::Read, Scope::Admin]),
        }
    }

    /// The scopes a key of this role may hold (the same as the defaults).
    pub(crate) fn allowed_for(role: ApiKeyRole) -> Self {
        Self::default_for(role)
    }

    /// Scopes separated by commas or spaces (`read,share`). The unknown word is the error.
    #[cfg(test)]
    pub(crate) fn parse_list(list: &str) -> Result<Self, String> {
        let mut out = Self::default();
        for word in list
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|w| !w.is_empty())
        {
            let s = Scope::parse(word).ok_or_else(|| word.to_owned())?;
            out.0 |= s.bit();
        }
        Ok(out)
    }

    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Scope::as_str).collect()
    }

    /// As stored: space-separated. NULL (a key from before scopes) reads as the role's defaults.
    fn from_db(stored: Option<&str>, role: ApiKeyRole) -> Self {
        match stored {
            None => Self::default_for(role),
            // Unknown words (from a newer binary) are dropped: a key never gains a scope here.
            Some(s) => Self(
                s.split_whitespace()
                    .filter_map(Scope::parse)
                    .fold(0, |acc, s| acc | s.bit()),
            ),
        }
    }

    fn to_db(self) -> String {
        self.names().join(" ")
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

/// Who a valid key belongs to, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthedKey {
    pub key_id: String,
    pub role: ApiKeyRole,
    pub tenant_id: Option<String>,
    pub scopes: Scopes,
}

/// An API key as listed: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRow {
    pub id: String,
    pub role: ApiKeyRole,
    pub tenant_id: Option<String>,
    pub tenant_name: Option<String>,
    pub scopes: Scopes,
    pub label: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Within about a minute ([`LAST_USED_EVERY`]).
    pub last_used_at: Option<DateTime<Utc>>,
}

impl ApiKeyRow {
    /// `active`, `expired` or `revoked`.
    pub fn status(&self, now: DateTime<Utc>) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|t| t <= now) {
            "expired"
        } else {
            "active"
        }
    }
}

#[derive(sqlx::FromRow)]
struct RawKeyRow {
    id: String,
    role: String,
    tenant_id: Option<String>,
    tenant_name: Option<String>,
    scopes: Option<String>,
    label: Option<String>,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
}

impl From<RawKeyRow> for ApiKeyRow {
    fn from(r: RawKeyRow) -> Self {
        let role = ApiKeyRole::from_db(&r.role);
        Self {
            id: r.id,
            role,
            tenant_id: r.tenant_id,
            tenant_name: r.tenant_name,
            scopes: Scopes::from_db(r.scopes.as_deref(), role),
            label: r.label,
            created_at: r.created_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            last_used_at: r.last_used_at,
        }
    }
}

const KEY_COLUMNS: &str = "k.id, k.role, k.tenant_id, t.name AS tenant_name, k.scopes, k.label, \
    k.created_at, k.expires_at, k.revoked_at, k.last_used_at";

/// A key to create.
#[derive(Debug, Clone)]
pub(crate) struct NewApiKey {
    pub role: ApiKeyRole,
    /// Required for a tenant key, absent for an operator key.
    pub tenant_id: Option<String>,
    pub label: Option<String>,
    pub scopes: Scopes,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A key just created: the whole key (shown once) and its row.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    pub key: String,
    pub row: ApiKeyRow,
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

/// What authenticating a key needs from its row.
#[derive(Clone)]
struct KeyAuth {
    role: ApiKeyRole,
    tenant_id: Option<String>,
    secret_hash: String,
    scopes: Scopes,
    expires_at: Option<DateTime<Utc>>,
    revoked: bool,
}

struct Cached {
    /// `None`: no key has this id.
    row: Option<KeyAuth>,
    read_at: Instant,
    /// When this process last wrote the key's `last_used_at`.
    touched_at: Option<Instant>,
}

/// Each key's row in memory, by key id, for [`KEY_CACHE_TTL`]. A small map behind a mutex
/// rather than a caching crate: the entries are few (one per key in use, plus unknown ids for
/// the same few seconds), the lock is held for a lookup or an insert and never across an await,
/// and none of the maintained caches (moka, quick_cache) is in the build already.
#[derive(Default)]
pub(crate) struct KeyCache {
    entries: Mutex<HashMap<String, Cached>>,
}

impl fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.entries.lock().map(|e| e.len()).unwrap_or(0);
        f.debug_struct("KeyCache").field("entries", &n).finish()
    }
}

impl KeyCache {
    fn fresh(&self, key_id: &str) -> Option<Option<KeyAuth>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key_id)
            .filter(|c| c.read_at.elapsed() < KEY_CACHE_TTL)
            .map(|c| c.row.clone())
    }

    fn put(&self, key_id: &str, row: Option<KeyAuth>, read_at: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= KEY_CACHE_MAX && !entries.contains_key(key_id) {
            entries.retain(|_, c| c.read_at.elapsed() < KEY_CACHE_TTL);
            if entries.len() >= KEY_CACHE_MAX {
                entries.clear();
            }
        }
        let touched_at = entries.get(key_id).and_then(|c| c.touched_at);
        entries.insert(
            key_id.to_owned(),
            Cached {
                row,
                read_at,
                touched_at,
            },
        );
    }

    /// Whether this use should be written as `last_used_at` (at most once a
    /// [`LAST_USED_EVERY`]); if so, marks it written.
    fn touch_due(&self, key_id: &str) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = entries.get_mut(key_id) else {
            return false;
        };
        if c.touched_at.is_some_and(|t| t.elapsed() < LAST_USED_EVERY) {
            return false;
        }
        c.touched_at = Some(Instant::now());
        true
    }

    fn forget(&self, key_id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(key_id);
    }
}

/// Splits `hk_<key id>_<secret>`; `None` if it is not that shape.
fn split_key(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix("hk_")?;
    // The key id is `key_<32 hex>`; the secret follows the next underscore.
    let (key_id, secret) = rest.get(..36).zip(rest.get(37..))?;
    (ids::is_valid(ids::API_KEY, key_id) && rest.as_bytes()[36] == b'_').then_some((key_id, secret))
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

    /// The id of the tenant of this name, if there is one.
    pub async fn tenant_id_by_name(&self, name: &str) -> Result<Option<String>> {
        Ok(with_pool!(
            &self.pool,
            "SELECT id FROM tenants WHERE name = $1",
            |p, sql| sqlx::query_scalar(sql).bind(name).fetch_optional(p).await?
        ))
    }

    /// Creates a key; the caller has checked the scopes against the role.
    pub(crate) async fn create_key(
        &self,
        new: &NewApiKey,
        now: DateTime<Utc>,
    ) -> Result<CreatedKey> {
        let key_id = ids::new(ids::API_KEY);
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let secret = URL_SAFE_NO_PAD.encode(secret);
        with_pool!(
            &self.pool,
            "INSERT INTO api_keys (id, tenant_id, role, secret_hash, label, created_at, scopes, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            |p, sql| {
                sqlx::query(sql)
                    .bind(&key_id)
                    .bind(new.tenant_id.as_deref())
                    .bind(new.role.as_str())
                    .bind(hash(&secret))
                    .bind(new.label.as_deref())
                    .bind(now)
                    .bind(new.scopes.to_db())
                    .bind(new.expires_at)
                    .execute(p)
                    .await?;
            }
        );
        let row = self
            .api_key(&key_id)
            .await?
            .ok_or_else(|| super::StoreError::Corrupt(format!("key {key_id} vanished")))?;
        Ok(CreatedKey {
            key: format!("hk_{key_id}_{secret}"),
            row,
        })
    }

    /// One key's row.
    pub async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRow>> {
        let q = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k LEFT JOIN tenants t ON t.id = k.tenant_id WHERE k.id = $1"
        );
        let row: Option<RawKeyRow> = with_pool!(&self.pool, &q, |p, sql| sqlx::query_as(sql)
            .bind(id)
            .fetch_optional(p)
            .await?);
        Ok(row.map(Into::into))
    }

    /// Keys by id, after `after`; one tenant's if `tenant_id` is given. Revoked and expired
    /// keys are included only with `all`.
    pub async fn list_api_keys(
        &self,
        tenant_id: Option<&str>,
        all: bool,
        after: Option<&str>,
        limit: i64,
        now: DateTime<Utc>,
    ) -> Result<Vec<ApiKeyRow>> {
        let q = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k LEFT JOIN tenants t ON t.id = k.tenant_id \
             WHERE ($1 IS NULL OR k.tenant_id = $1) AND ($2 IS NULL OR k.id > $2) \
             AND ($4 OR (k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $5))) \
             ORDER BY k.id LIMIT $3"
        );
        let rows: Vec<RawKeyRow> = with_pool!(&self.pool, &q, |p, sql| sqlx::query_as(sql)
            .bind(tenant_id)
            .bind(after)
            .bind(limit)
            .bind(all)
            .bind(now)
            .fetch_all(p)
            .await?);
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Revokes a key (a revoked one stays revoked as it was). `None` if there is no such key.
    /// This process stops accepting it at once; the others within [`KEY_CACHE_TTL`].
    pub async fn revoke_api_key(&self, id: &str, now: DateTime<Utc>) -> Result<Option<ApiKeyRow>> {
        with_pool!(
            &self.pool,
            "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            |p, sql| {
                sqlx::query(sql).bind(id).bind(now).execute(p).await?;
            }
        );
        self.key_cache.forget(id);
        self.api_key(id).await
    }

    /// Checks a presented key. `None` for anything unknown, revoked, expired or malformed.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<AuthedKey>> {
        let Some((key_id, secret)) = split_key(presented) else {
            return Ok(None);
        };
        let row = match self.key_cache.fresh(key_id) {
            Some(row) => row,
            None => {
                let read_at = Instant::now();
                let row = self.read_key_auth(key_id).await?;
                self.key_cache.put(key_id, row.clone(), read_at);
                row
            }
        };
        // The presented secret is hashed and compared whatever the row says, so a wrong secret
        // costs what a right one does.
        let presented_hash = hash(secret);
        let Some(row) = row else {
            return Ok(None);
        };
        let matches = constant_time_eq(&row.secret_hash, &presented_hash);
        let now = Utc::now();
        if !matches || row.revoked || row.expires_at.is_some_and(|t| t <= now) {
            return Ok(None);
        }
        if self.key_cache.touch_due(key_id) {
            let store = self.clone();
            let id = key_id.to_owned();
            tokio::spawn(async move {
                if let Err(e) = store.touch_api_key(&id, now).await {
                    tracing::warn!(key.id = %id, error = %e, "recording the key's last use failed");
                }
            });
        }
        Ok(Some(AuthedKey {
            key_id: key_id.to_owned(),
            role: row.role,
            tenant_id: row.tenant_id,
            scopes: row.scopes,
        }))
    }

    async fn read_key_auth(&self, key_id: &str) -> Result<Option<KeyAuth>> {
        type Row = (
            String,
            Option<String>,
            String,
            Option<String>,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
        );
        let row: Option<Row> = with_pool!(
            &self.pool,
            "SELECT role, tenant_id, secret_hash, scopes, expires_at, revoked_at FROM api_keys WHERE id = $1",
            |p, sql| sqlx::query_as(sql).bind(key_id).fetch_optional(p).await?
        );
        Ok(row.map(
            |(role, tenant_id, secret_hash, scopes, expires_at, revoked_at)| {
                let role = ApiKeyRole::from_db(&role);
                KeyAuth {
                    role,
                    tenant_id,
                    secret_hash,
                    scopes: Scopes::from_db(scopes.as_deref(), role),
                    expires_at,
                    revoked: revoked_at.is_some(),
                }
            },
        ))
    }

    /// Records a use of the key; a no-op if another process recorded one within the minute.
    async fn touch_api_key(&self, id: &str, now: DateTime<Utc>) -> Result<()> {
        let recent = now - chrono::Duration::from_std(LAST_USED_EVERY).unwrap_or_default();
        with_pool!(
            &self.pool,
            "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $3)",
            |p, sql| {
                sqlx::query(sql)
                    .bind(id)
                    .bind(now)
                    .bind(recent)
                    .execute(p)
                    .await?;
            }
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_print_and_default_by_role() {
        let s = Scopes::parse_list("read, share").unwrap();
        assert!(s.contains(Scope::Read) && s.contains(Scope::Share));
        assert!(!s.contains(Scope::Connect));
        assert_eq!(s.to_string(), "read,share");
        assert_eq!(Scopes::parse_list("read,bogus"), Err("bogus".into()));
        assert_eq!(
            Scopes::from_db(None, ApiKeyRole::Tenant),
            Scopes::parse_list("read share connect").unwrap()
        );
        assert_eq!(
            Scopes::from_db(Some("read admin future"), ApiKeyRole::Operator),
            Scopes::of(&[Scope::Read, Scope::Admin])
        );
        assert!(Scopes::of(&[Scope::Admin]).is_subset(Scopes::allowed_for(ApiKeyRole::Operator)));
        assert!(!Scopes::of(&[Scope::Admin]).is_subset(Scopes::allowed_for(ApiKeyRole::Tenant)));
    }

    #[test]
    fn a_key_splits_into_its_id_and_secret() {
        let id = ids::new(ids::API_KEY);
        let key = format!("hk_{id}_s3cret");
        assert_eq!(split_key(&key), Some((id.as_str(), "s3cret")));
        assert_eq!(split_key("hk_key_nope_x"), None);
        assert_eq!(split_key("nope"), None);
    }
}
