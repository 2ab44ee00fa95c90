//! Herald as an AT Protocol OAuth client (https://atproto.com/specs/oauth): its client metadata
//! and keys, the pushed authorization request, and the token endpoint (code and refresh grants),
//! every request with a DPoP proof and, for the confidential client, a `private_key_jwt`
//! assertion signed fresh each time.
//!
//! Two kinds of client, chosen by configuration:
//! - **confidential** (`HERALD_BLUESKY_CLIENT_KEYS` set): `client_id` is
//!   `{HERALD_PUBLIC_URL}/oauth/bluesky/client-metadata.json`, served by the API, whose
//!   `jwks_uri` is the API's `/oauth/bluesky/jwks.json`; sessions may live for years.
//! - **loopback development client** (no keys, a loopback `HERALD_PUBLIC_URL`):
//!   `http://localhost?redirect_uri=…&scope=…`, public (`token_endpoint_auth_method: none`);
//!   the authorization server builds its metadata from the id itself; sessions last two weeks.
//!
//! A session remembers the `client_id` it was granted to (and the key id that signed for it), so a
//! later change of configuration never makes a refresh claim to be another client.

use chrono::{DateTime, Utc};
use reqwest::Client;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use super::{
    dpop,
    jwt::{EsKey, random_token},
    xrpc::Answer,
};
use crate::{
    error::{LimitScope, PlatformError},
    types::TokenSet,
};

/// Every scope Herald asks for: `atproto` (required) and the App-Password-level
/// `transition:generic` (write records, upload blobs, proxy to the AppView).
pub const SCOPE: &str = "atproto transition:generic";
/// The part of [`SCOPE`] that posting needs (records, blobs, the AppView proxy). A grant
/// without it is an AT Protocol session that cannot post: refused at connect, and a refresh
/// that loses it ends the connection's use (`needs_reauth`) rather than failing every share.
pub const POSTING_SCOPE: &str = "transition:generic";
pub const CLIENT_METADATA_PATH: &str = "/oauth/bluesky/client-metadata.json";
pub const JWKS_PATH: &str = "/oauth/bluesky/jwks.json";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Herald's client, as configured.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `HERALD_PUBLIC_URL`, without a trailing slash.
    pub public_url: String,
    /// Signing keys; the first signs new sessions, all are published.
    pub keys: Vec<EsKey>,
}

impl ClientConfig {
    pub fn confidential(&self) -> bool {
        !self.keys.is_empty()
    }

    pub fn redirect_uri(&self) -> String {
        format!("{}/v1/connect/bluesky/callback", self.public_url)
    }

    /// Whether this configuration can run a flow at all: a public client must use a loopback
    /// redirect URI (the AT Protocol accepts `127.0.0.1` and `[::1]`, not `localhost`).
    pub fn usable(&self) -> Result<(), String> {
        if self.confidential() {
            return Ok(());
        }
        let host = Url::parse(&self.public_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned));
        match host.as_deref() {
            Some("127.0.0.1" | "[::1]") => Ok(()),
            _ => Err(
                "Bluesky needs HERALD_BLUESKY_CLIENT_KEYS unless HERALD_PUBLIC_URL is a loopback \
                 address (http://127.0.0.1:PORT) for the development client"
                    .into(),
            ),
        }
    }

    pub fn client_id(&self) -> String {
        if self.confidential() {
            return format!("{}{CLIENT_METADATA_PATH}", self.public_url);
        }
        let mut id = Url::parse("http://localhost").expect("a valid URL");
        id.query_pairs_mut()
            .append_pair("redirect_uri", &self.redirect_uri())
            .append_pair("scope", SCOPE);
        // `http://localhost/?…` and `http://localhost?…` name the same client; the spec writes
        // the second.
        id.as_str().replacen("localhost/?", "localhost?", 1)
    }

    /// The client metadata document (`None` for the loopback client, which has none).
    pub fn metadata(&self) -> Option<Value> {
        self.confidential().then(|| {
            json!({
                "client_id": self.client_id(),
                "client_name": "Herald",
                "client_uri": self.public_url,
                "application_type": "web",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "scope": SCOPE,
                "redirect_uris": [self.redirect_uri()],
                "dpop_bound_access_tokens": true,
                "token_endpoint_auth_method": "private_key_jwt",
                "token_endpoint_auth_signing_alg": "ES256",
                "jwks_uri": format!("{}{JWKS_PATH}", self.public_url),
            })
        })
    }

    pub fn jwks(&self) -> Value {
        json!({ "keys": self.keys.iter().map(EsKey::published_jwk).collect::<Vec<_>>() })
    }

    /// The key a session's requests are signed with: the one that started it while it is still
    /// configured, else the current first key.
    fn signing_key(&self, kid: Option<&str>) -> Option<&EsKey> {
        kid.and_then(|k| self.keys.iter().find(|key| key.kid() == k))
            .or_else(|| self.keys.first())
    }

    /// `client_id` and, for a confidential client, a fresh assertion for `issuer` (RFC 7523).
    /// `client_id` is the one the session was granted to.
    pub fn authentication(
        &self,
        client_id: &str,
        issuer: &str,
        kid: Option<&str>,
    ) -> Vec<(&'static str, String)> {
        let mut form = vec![("client_id", client_id.to_owned())];
        let confidential = self.confidential() && client_id == self.client_id();
        if let (true, Some(key)) = (confidential, self.signing_key(kid)) {
            let now = Utc::now().timestamp();
            let assertion = key.sign(
                json!({ "kid": key.kid(), "typ": "JWT" }),
                &json!({
                    "iss": client_id,
                    "sub": client_id,
                    "aud": issuer,
                    "jti": random_token(16),
                    "iat": now,
                    "exp": now + 60,
                }),
            );
            form.push(("client_assertion_type", ASSERTION_TYPE.to_owned()));
            form.push(("client_assertion", assertion));
        }
        form
    }

    /// The key id a new session is signed with (stored with it), if confidential.
    pub fn current_kid(&self) -> Option<String> {
        self.keys.first().map(|k| k.kid().to_owned())
    }
}

/// A token endpoint's answer.
#[derive(Deserialize)]
pub struct Tokens {
    pub access_token: String,
    #[serde(default)]
    pub token_type: String,
    pub expires_in: Option<i64>,
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub sub: String,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("sub", &self.sub)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_in
            .filter(|s| *s > 0)
            .map(|s| Utc::now() + chrono::Duration::seconds(s))
    }

    pub fn grants(&self, scope: &str) -> bool {
        self.scope.split_whitespace().any(|s| s == scope)
    }

    pub fn scopes(&self) -> Vec<String> {
        self.scope.split_whitespace().map(str::to_owned).collect()
    }

    pub fn into_token_set(self) -> TokenSet {
        let expires_at = self.expires_at();
        TokenSet {
            access_token: SecretString::from(self.access_token),
            refresh_token: self
                .refresh_token
                .filter(|r| !r.is_empty())
                .map(SecretString::from),
            expires_at,
        }
    }

    /// What the profile requires of every token answer: DPoP-bound, `atproto` granted, a DID.
    fn check(self) -> Result<Self, PlatformError> {
        let problem = if !self.token_type.eq_ignore_ascii_case("DPoP") {
            Some("the token is not DPoP-bound")
        } else if !self.grants("atproto") {
            Some("the `atproto` scope was not granted")
        } else if !self.sub.starts_with("did:") {
            Some("the answer names no account (`sub`)")
        } else {
            None
        };
        match problem {
            Some(p) => Err(PlatformError::Rejected {
                status: 200,
                reason: p.into(),
            }),
            None => Ok(self),
        }
    }
}

/// Maps a token endpoint's refusal (RFC 6749 §5.2).
fn token_error(a: &Answer) -> PlatformError {
    let error = a.oauth_error();
    let reason = if error.is_empty() {
        format!("the token endpoint answered HTTP {}", a.status.as_u16())
    } else {
        format!("the token endpoint answered {error}")
    };
    match error.as_str() {
        // invalid_client: the key the session was bound to is gone; only a new grant helps.
        "invalid_grant" | "invalid_client" | "unauthorized_client" => {
            PlatformError::InvalidGrant { reason }
        }
        _ if a.status.as_u16() == 429 => PlatformError::RateLimited {
            retry_after: None,
            scope: LimitScope::Account,
        },
        _ if a.status.is_server_error() => PlatformError::Transient {
            status: Some(a.status.as_u16()),
            reason,
        },
        _ => PlatformError::Rejected {
            status: a.status.as_u16(),
            reason,
        },
    }
}

/// What a pushed authorization request needs.
pub struct Push<'a> {
    pub par_endpoint: &'a str,
    pub issuer: &'a str,
    pub state: &'a str,
    pub code_challenge: &'a str,
    pub login_hint: Option<&'a str>,
}

/// Pushes the authorization request; answers its `request_uri`.
pub async fn push(
    http: &Client,
    client: &ClientConfig,
    dpop_key: &EsKey,
    p: &Push<'_>,
) -> Result<String, PlatformError> {
    let client_id = client.client_id();
    let redirect_uri = client.redirect_uri();
    let a = dpop::send(http, dpop_key, None, "par", false, |c| {
        let mut form = client.authentication(&client_id, p.issuer, None);
        form.extend([
            ("response_type", "code".to_owned()),
            ("code_challenge", p.code_challenge.to_owned()),
            ("code_challenge_method", "S256".to_owned()),
            ("state", p.state.to_owned()),
            ("redirect_uri", redirect_uri.clone()),
            ("scope", SCOPE.to_owned()),
        ]);
        if let Some(hint) = p.login_hint {
            form.push(("login_hint", hint.to_owned()));
        }
        c.post(p.par_endpoint).form(&form)
    })
    .await?;
    if !a.ok() {
        return Err(token_error(&a));
    }
    #[derive(Deserialize)]
    struct Pushed {
        request_uri: String,
    }
    Ok(a.json::<Pushed>(false)?.request_uri)
}

/// What a token request needs to know about the session.
pub struct Grant<'a> {
    pub token_endpoint: &'a str,
    pub issuer: &'a str,
    /// The client the session belongs to.
    pub client_id: &'a str,
    pub kid: Option<&'a str>,
}

/// Exchanges an authorization code (with the PKCE verifier).
pub async fn exchange_code(
    http: &Client,
    client: &ClientConfig,
    dpop_key: &EsKey,
    g: &Grant<'_>,
    code: &str,
    verifier: &SecretString,
) -> Result<Tokens, PlatformError> {
    let redirect_uri = client.redirect_uri();
    token_request(http, client, dpop_key, g, "exchange_code", |form| {
        form.extend([
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.to_owned()),
            ("redirect_uri", redirect_uri.clone()),
            ("code_verifier", verifier.expose_secret().to_owned()),
        ]);
    })
    .await
}

/// Spends a refresh token. A refusal is `InvalidGrant`: the session is gone.
pub async fn refresh(
    http: &Client,
    client: &ClientConfig,
    dpop_key: &EsKey,
    g: &Grant<'_>,
    refresh_token: &SecretString,
) -> Result<Tokens, PlatformError> {
    token_request(http, client, dpop_key, g, "refresh", |form| {
        form.extend([
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", refresh_token.expose_secret().to_owned()),
        ]);
    })
    .await
}

/// Revokes a session's refresh token (RFC 7009), which ends the session at the reference server.
pub async fn revoke(
    http: &Client,
    client: &ClientConfig,
    dpop_key: &EsKey,
    revocation_endpoint: &str,
    g: &Grant<'_>,
    refresh_token: &SecretString,
) -> Result<(), PlatformError> {
    let a = dpop::send(http, dpop_key, None, "revoke", false, |c| {
        let mut form = client.authentication(g.client_id, g.issuer, g.kid);
        form.extend([
            ("token", refresh_token.expose_secret().to_owned()),
            ("token_type_hint", "refresh_token".to_owned()),
        ]);
        c.post(revocation_endpoint).form(&form)
    })
    .await?;
    if a.ok() { Ok(()) } else { Err(token_error(&a)) }
}

async fn token_request(
    http: &Client,
    client: &ClientConfig,
    dpop_key: &EsKey,
    g: &Grant<'_>,
    operation: &'static str,
    grant: impl Fn(&mut Vec<(&'static str, String)>),
) -> Result<Tokens, PlatformError> {
    let a = dpop::send(http, dpop_key, None, operation, false, |c| {
        let mut form = client.authentication(g.client_id, g.issuer, g.kid);
        grant(&mut form);
        c.post(g.token_endpoint).form(&form)
    })
    .await?;
    if !a.ok() {
        return Err(token_error(&a));
    }
    a.json::<Tokens>(false)?.check()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loopback_client_id_carries_the_redirect_and_scope() {
        let c = ClientConfig {
            public_url: "http://127.0.0.1:8080".into(),
            keys: vec![],
        };
        assert!(c.usable().is_ok());
        assert_eq!(
            c.client_id(),
            "http://localhost?redirect_uri=http%3A%2F%2F127.0.0.1%3A8080%2Fv1%2Fconnect%2Fbluesky%2Fcallback&scope=atproto+transition%3Ageneric"
        );
        assert!(c.metadata().is_none());
        let form = c.authentication(&c.client_id(), "https://as.example", None);
        assert_eq!(form.len(), 1, "a public client sends no assertion");
        let public = ClientConfig {
            public_url: "https://herald.example".into(),
            keys: vec![],
        };
        assert!(public.usable().is_err());
    }

    #[test]
    fn the_confidential_client_publishes_its_keys_and_signs_assertions() {
        let key = EsKey::generate();
        let c = ClientConfig {
            public_url: "https://herald.example".into(),
            keys: vec![key.clone()],
        };
        let m = c.metadata().unwrap();
        assert_eq!(
            m["client_id"],
            "https://herald.example/oauth/bluesky/client-metadata.json"
        );
        assert_eq!(m["token_endpoint_auth_method"], "private_key_jwt");
        assert_eq!(m["dpop_bound_access_tokens"], true);
        assert_eq!(c.jwks()["keys"][0]["kid"], key.kid());
        assert!(c.jwks()["keys"][0].get("d").is_none());
        let form = c.authentication(&c.client_id(), "https://as.example", None);
        assert_eq!(
            form[1],
            ("client_assertion_type", ASSERTION_TYPE.to_owned())
        );
        // A session granted to the loopback client refreshes as that client.
        let loopback = "http://localhost?redirect_uri=x";
        assert_eq!(
            c.authentication(loopback, "https://as.example", None).len(),
            1
        );
    }
}
