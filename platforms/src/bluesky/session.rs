//! How a connection authenticates ([`auth_mode`]: an app password or an OAuth session, never
//! mixed) and the app-password sessions: logged in with `com.atproto.server.createSession`, kept
//! in a bounded in-memory cache keyed by PDS and DID, renewed with `refreshSession` (or a new
//! login). Logging in and renewing are single-flight per account in the process: concurrent
//! calls wait for the one login or renewal under way and use its session. Sessions are never
//! stored: they live at most as long as the process.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, Weak},
    time::Instant,
};

use reqwest::{Client, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{
    jwt,
    xrpc::{self, answer},
};
use crate::{
    error::PlatformError,
    http,
    kind::PlatformKind,
    types::{Account, Credentials},
};

/// The app-password sessions of one client, and the logins and renewals that make them.
#[derive(Debug)]
pub(super) struct Sessions {
    http: Client,
    cache: SessionCache,
}

impl Sessions {
    pub(super) fn new(http: Client, capacity: usize) -> Self {
        Self {
            http,
            cache: SessionCache::new(capacity),
        }
    }

    fn key(pds: &str, account: &Account) -> String {
        format!("{pds} {}", account.platform_account_id)
    }

    /// Drops the account's session: a brand-new session was refused.
    pub(super) fn forget(&self, pds: &str, account: &Account) {
        self.cache.remove(&Self::key(pds, account));
    }

    /// Logs in with the app password. A refused password is `Unauthorized`.
    pub(super) async fn create(
        &self,
        pds: &str,
        account: &Account,
        password: &SecretString,
    ) -> Result<Session, PlatformError> {
        let identifier = if account.platform_account_id.is_empty() {
            &account.handle
        } else {
            &account.platform_account_id
        };
        let req = self
            .http
            .post(xrpc::url(pds, "com.atproto.server.createSession"))
            .json(&json!({ "identifier": identifier, "password": password.expose_secret() }));
        let a = answer(
            http::send(PlatformKind::Bluesky, "create_session", false, req).await?,
            false,
        )
        .await?;
        if !a.ok() {
            return Err(match a.classify() {
                // `AuthenticationRequired` / 400 `InvalidRequest` for a wrong identifier or password.
                PlatformError::Rejected {
                    status: 400,
                    reason,
                } => PlatformError::Unauthorized {
                    reason: format!("app password refused: {reason}"),
                },
                PlatformError::Unauthorized { reason } => PlatformError::Unauthorized {
                    reason: format!("app password refused: {reason}"),
                },
                e => e,
            });
        }
        let body: SessionBody = a.json(false)?;
        if !account.platform_account_id.is_empty() && body.did != account.platform_account_id {
            return Err(PlatformError::Unauthorized {
                reason: "the app password belongs to another account".into(),
            });
        }
        let session = Session {
            access: body.access_jwt.into(),
            refresh: body.refresh_jwt.into(),
            password_fingerprint: fingerprint(password),
            created: Instant::now(),
        };
        self.cache.put(Self::key(pds, account), session.clone());
        Ok(session)
    }

    /// The cached session, else a new login. Single-flight: concurrent calls for an account
    /// with no session wait for one login and share it, rather than each spending one of
    /// Bluesky's 30 logins per 5 minutes.
    pub(super) async fn get(
        &self,
        pds: &str,
        account: &Account,
        password: &SecretString,
    ) -> Result<Session, PlatformError> {
        let key = Self::key(pds, account);
        let fingerprint = fingerprint(password);
        if let Some(s) = self.cache.get(&key, &fingerprint) {
            return Ok(s);
        }
        let gate = self.cache.gate(&key);
        let _turn = gate.lock().await;
        if let Some(s) = self.cache.get(&key, &fingerprint) {
            return Ok(s);
        }
        self.create(pds, account, password).await
    }

    /// A new access token from the refresh token; a refused refresh token falls back to a login.
    /// Single-flight like [`Self::get`]: a call that waited finds the session renewed.
    pub(super) async fn renew(
        &self,
        pds: &str,
        account: &Account,
        password: &SecretString,
        old: &Session,
    ) -> Result<Session, PlatformError> {
        let key = Self::key(pds, account);
        let gate = self.cache.gate(&key);
        let _turn = gate.lock().await;
        if let Some(s) = self.cache.get(&key, &old.password_fingerprint)
            && s.created > old.created
        {
            return Ok(s);
        }
        let req = self
            .http
            .post(xrpc::url(pds, "com.atproto.server.refreshSession"))
            .bearer_auth(old.refresh.expose_secret());
        let a = answer(
            http::send(PlatformKind::Bluesky, "refresh_session", false, req).await?,
            false,
        )
        .await?;
        if a.ok() {
            let body: SessionBody = a.json(false)?;
            let session = Session {
                access: body.access_jwt.into(),
                refresh: body.refresh_jwt.into(),
                password_fingerprint: old.password_fingerprint,
                created: Instant::now(),
            };
            self.cache.put(Self::key(pds, account), session.clone());
            return Ok(session);
        }
        self.cache.remove(&Self::key(pds, account));
        // A refused refresh token (`ExpiredToken`, `InvalidToken`, 401) means logging in again; a
        // taken-down account, a rate limit or a server error is reported as it is.
        let refused = matches!(a.status, StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED)
            && !a.error_name().starts_with("Account");
        if refused {
            self.create(pds, account, password).await
        } else {
            Err(a.classify())
        }
    }
}

#[derive(Clone)]
pub(super) struct Session {
    pub(super) access: SecretString,
    refresh: SecretString,
    /// Which app password the session came from: a changed password is a cache miss.
    password_fingerprint: [u8; 32],
    created: Instant,
}

/// Sessions by PDS and DID. Bounded; `Debug` shows only how many are held.
struct SessionCache {
    capacity: usize,
    entries: Mutex<HashMap<String, Session>>,
    /// One login or renewal at a time per key. Weak, so a gate lives only while someone holds
    /// or waits on it, and the map holds no more than the logins under way.
    gates: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self.entries.lock().map(|e| e.len()).unwrap_or(0);
        f.debug_struct("SessionCache")
            .field("capacity", &self.capacity)
            .field("held", &held)
            .finish()
    }
}

impl SessionCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::new(HashMap::new()),
            gates: Mutex::new(HashMap::new()),
        }
    }

    /// The gate a login or renewal for `key` takes, shared by every caller while it is alive.
    fn gate(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(gate) = gates.get(key).and_then(Weak::upgrade) {
            return gate;
        }
        gates.retain(|_, g| g.strong_count() > 0);
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        gates.insert(key.to_owned(), Arc::downgrade(&gate));
        gate
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock leaves a plain map behind: still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &str, fingerprint: &[u8; 32]) -> Option<Session> {
        self.lock()
            .get(key)
            .filter(|s| &s.password_fingerprint == fingerprint)
            .cloned()
    }

    fn put(&self, key: String, session: Session) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            let oldest = entries
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                entries.remove(&k);
            }
        }
        entries.insert(key, session);
    }

    fn remove(&self, key: &str) {
        self.lock().remove(key);
    }
}

fn fingerprint(password: &SecretString) -> [u8; 32] {
    Sha256::digest(password.expose_secret().as_bytes()).into()
}

#[derive(Deserialize)]
struct SessionBody {
    #[serde(rename = "accessJwt")]
    access_jwt: String,
    #[serde(rename = "refreshJwt")]
    refresh_jwt: String,
    did: String,
}

/// How a connection authenticates.
pub(super) enum Auth<'a> {
    AppPassword(&'a SecretString),
    OAuth,
}

pub(super) fn auth_mode<'a>(
    account: &Account,
    creds: &'a Credentials,
) -> Result<Auth<'a>, PlatformError> {
    let app_password = || {
        creds
            .access_token
            .as_ref()
            .map(Auth::AppPassword)
            .ok_or_else(|| PlatformError::Unauthorized {
                reason: "no app password stored".into(),
            })
    };
    match account.extra_str("auth") {
        Some("oauth") => Ok(Auth::OAuth),
        Some("app_password") => app_password(),
        None if creds.dpop_key.is_some() || creds.refresh_token.is_some() => Ok(Auth::OAuth),
        None => app_password(),
        Some(other) => Err(PlatformError::Rejected {
            status: 0,
            reason: format!("unknown auth kind {other:?}"),
        }),
    }
}

/// The DPoP key and access token of an OAuth connection.
pub(super) fn oauth_session(
    creds: &Credentials,
) -> Result<(jwt::EsKey, &SecretString), PlatformError> {
    let dead = |reason: &str| PlatformError::Unauthorized {
        reason: reason.to_owned(),
    };
    let key = creds
        .dpop_key
        .as_ref()
        .ok_or_else(|| dead("the OAuth session has no DPoP key; connect it again"))?;
    let key = jwt::read_key(key).map_err(|_| dead("the stored DPoP key is unreadable"))?;
    let token = creds
        .access_token
        .as_ref()
        .ok_or_else(|| dead("no access token stored"))?;
    Ok((key, token))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn auth_mode_prefers_oauth_tokens_and_never_mixes() {
        let acct = |auth: Option<&str>| Account {
            platform_account_id: "did:plc:x".into(),
            handle: "x.test".into(),
            extras: auth
                .map(|a| [("auth".to_owned(), Value::from(a))].into_iter().collect())
                .unwrap_or_default(),
        };
        let pw = Credentials {
            access_token: Some("app-pass".into()),
            ..Default::default()
        };
        let oauth = Credentials {
            access_token: Some("t".into()),
            dpop_key: Some("k".into()),
            ..Default::default()
        };
        assert!(matches!(
            auth_mode(&acct(None), &pw),
            Ok(Auth::AppPassword(_))
        ));
        assert!(matches!(auth_mode(&acct(None), &oauth), Ok(Auth::OAuth)));
        assert!(matches!(
            auth_mode(&acct(Some("oauth")), &pw),
            Ok(Auth::OAuth)
        ));
        assert!(matches!(
            auth_mode(&acct(Some("app_password")), &oauth),
            Ok(Auth::AppPassword(_))
        ));
        assert!(matches!(
            auth_mode(&acct(Some("app_password")), &Credentials::default()),
            Err(PlatformError::Unauthorized { .. })
        ));
    }

    #[test]
    fn the_session_cache_is_bounded_and_shows_no_tokens() {
        let cache = SessionCache::new(2);
        let s = |t: &str| Session {
            access: t.to_owned().into(),
            refresh: t.to_owned().into(),
            password_fingerprint: [0; 32],
            created: Instant::now(),
        };
        cache.put("a".into(), s("secret-a"));
        cache.put("b".into(), s("secret-b"));
        cache.put("c".into(), s("secret-c"));
        assert!(cache.get("a", &[0; 32]).is_none());
        assert!(cache.get("c", &[0; 32]).is_some());
        assert!(
            cache.get("c", &[1; 32]).is_none(),
            "another password misses"
        );
        let shown = format!("{cache:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
