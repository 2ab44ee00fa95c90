//! What OAuth 2.0 looks like from every platform that uses it plainly: Herald's app there
//! ([`OAuthApp`]: endpoints, scopes, PKCE), the authorization URL and the code exchange (built by
//! the `oauth2` crate over the guarded client), the refresh-token grant, the bearer header, and
//! RFC 7009 revocation. Each platform's file says what its app is; Bluesky's AT Protocol OAuth is
//! its own (`bluesky::oauth`).
//!
//! The refresh grant is a form POST rather than `oauth2`'s `exchange_refresh_token`: X's public
//! clients put `client_id` in the form while confidential ones use Basic auth, and the answers
//! need the platform's own error mapping (X answers a dead refresh token with `invalid_request`,
//! which must become `InvalidGrant`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, Scope,
    StandardRevocableToken, TokenResponse as _, TokenUrl,
    basic::{BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse},
};
use reqwest::{Client, Response, StatusCode, header::HeaderMap};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::{
    error::PlatformError,
    http,
    kind::PlatformKind,
    types::{Account, Credentials, TokenSet},
};

/// An OAuth client registered with a platform: what a refresh grant needs besides the user's token.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    pub client_id: String,
    /// `None` for a public client (X's Native App / SPA types), which sends `client_id` in the form.
    pub client_secret: Option<SecretString>,
    pub token_url: String,
}

/// Herald's app on one platform: its client, the platform's endpoints and what Herald asks for.
#[derive(Debug, Clone)]
pub struct OAuthApp {
    pub client: OAuthClient,
    pub authorize_url: String,
    /// The RFC 7009 endpoint, where the platform documents one (or the operator configured one).
    pub revoke_url: Option<String>,
    pub scopes: &'static str,
    /// Whether the platform takes PKCE from a web app (platforms.md §1.1, §3.1: Mastodon ≥ 4.3 and
    /// X do; LinkedIn enables it for native apps only; Meta's flows take the app secret instead).
    pub pkce: bool,
    /// How the client authenticates at the token endpoint and the revocation endpoint.
    pub auth: AuthType,
}

/// Why a code could not be exchanged.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    /// The app's endpoints are not URLs: Herald's configuration is at fault, not the platform.
    #[error("the app's endpoints are not valid URLs: {0}")]
    Config(#[from] url::ParseError),
    /// The platform refused the code, or failed. The reason names the provider's error code,
    /// never a token or the secret.
    #[error("{0}")]
    Refused(String),
}

type CodeClient = oauth2::Client<
    BasicErrorResponse,
    CodeToken,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

impl OAuthApp {
    fn code_client(&self, redirect_uri: &str) -> Result<CodeClient, url::ParseError> {
        let mut c = oauth2::Client::new(ClientId::new(self.client.client_id.clone()))
            .set_auth_uri(AuthUrl::new(self.authorize_url.clone())?)
            .set_token_uri(TokenUrl::new(self.client.token_url.clone())?)
            .set_redirect_uri(RedirectUrl::new(redirect_uri.to_owned())?)
            .set_auth_type(self.auth.clone());
        if let Some(secret) = &self.client.client_secret {
            c = c.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
        }
        Ok(c)
    }

    /// The platform's authorization URL for this `state`, and the PKCE verifier to keep with the
    /// state where the platform takes PKCE (S256).
    pub fn authorization_url(
        &self,
        redirect_uri: &str,
        state: &str,
    ) -> Result<(Url, Option<SecretString>), url::ParseError> {
        let client = self.code_client(redirect_uri)?;
        let mut auth = client
            .authorize_url(|| CsrfToken::new(state.to_owned()))
            .add_scope(Scope::new(self.scopes.to_owned()));
        let mut verifier = None;
        if self.pkce {
            let (challenge, v) = PkceCodeChallenge::new_random_sha256();
            auth = auth.set_pkce_challenge(challenge);
            verifier = Some(SecretString::from(v.secret().to_owned()));
        }
        let (url, _) = auth.url();
        Ok((url, verifier))
    }

    /// Exchanges the authorization code (with the PKCE verifier the flow kept).
    pub async fn exchange_code(
        &self,
        http: &Client,
        redirect_uri: &str,
        code: &str,
        verifier: Option<&SecretString>,
    ) -> Result<CodeToken, CodeError> {
        let client = self.code_client(redirect_uri)?;
        let mut exchange = client.exchange_code(AuthorizationCode::new(code.to_owned()));
        if let Some(v) = verifier {
            exchange =
                exchange.set_pkce_verifier(PkceCodeVerifier::new(v.expose_secret().to_owned()));
        }
        exchange
            .request_async(http)
            .await
            .map_err(|e| CodeError::Refused(e.to_string()))
    }

    /// The scopes a token grants: what the answer says, else what Herald asked for.
    pub fn granted_scopes(&self, token: &CodeToken) -> Vec<String> {
        token.scopes().map_or_else(
            || self.scopes.split([' ', ',']).map(str::to_owned).collect(),
            |s| s.iter().map(|s| s.to_string()).collect(),
        )
    }
}

/// A token endpoint's answer to a code, read leniently: Meta's answers carry no `token_type`,
/// Instagram's and Threads' add the `user_id`, and Instagram Login wraps it all in `data[0]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "RawCodeToken")]
pub struct CodeToken {
    access_token: oauth2::AccessToken,
    #[serde(skip)]
    token_type: oauth2::basic::BasicTokenType,
    expires_in: Option<u64>,
    refresh_token: Option<RefreshToken>,
    #[serde(skip)]
    scopes: Option<Vec<Scope>>,
    user_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawCodeToken {
    Flat(FlatToken),
    Wrapped { data: Vec<FlatToken> },
}

#[derive(Deserialize)]
struct FlatToken {
    access_token: String,
    expires_in: Option<u64>,
    refresh_token: Option<String>,
    scope: Option<String>,
    user_id: Option<serde_json::Value>,
}

impl From<RawCodeToken> for CodeToken {
    fn from(raw: RawCodeToken) -> Self {
        let t = match raw {
            RawCodeToken::Flat(t) => t,
            RawCodeToken::Wrapped { mut data } if !data.is_empty() => data.swap_remove(0),
            // An empty `data` has no token: an empty one fails verification, never stored.
            RawCodeToken::Wrapped { .. } => FlatToken {
                access_token: String::new(),
                expires_in: None,
                refresh_token: None,
                scope: None,
                user_id: None,
            },
        };
        Self {
            access_token: oauth2::AccessToken::new(t.access_token),
            token_type: oauth2::basic::BasicTokenType::Bearer,
            expires_in: t.expires_in,
            refresh_token: t
                .refresh_token
                .filter(|r| !r.is_empty())
                .map(RefreshToken::new),
            scopes: t.scope.map(|s| {
                s.split([' ', ','])
                    .filter(|s| !s.is_empty())
                    .map(|s| Scope::new(s.to_owned()))
                    .collect()
            }),
            user_id: t.user_id.map(|v| match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            }),
        }
    }
}

impl oauth2::TokenResponse for CodeToken {
    type TokenType = oauth2::basic::BasicTokenType;

    fn access_token(&self) -> &oauth2::AccessToken {
        &self.access_token
    }
    fn token_type(&self) -> &Self::TokenType {
        &self.token_type
    }
    fn expires_in(&self) -> Option<Duration> {
        self.expires_in.map(Duration::from_secs)
    }
    fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }
    fn scopes(&self) -> Option<&Vec<Scope>> {
        self.scopes.as_ref()
    }
}

impl CodeToken {
    /// The access token the code bought (short-lived on Meta's platforms).
    pub fn access(&self) -> SecretString {
        SecretString::from(self.access_token.secret().to_owned())
    }

    pub fn refresh(&self) -> Option<SecretString> {
        self.refresh_token
            .as_ref()
            .map(|r| SecretString::from(r.secret().to_owned()))
    }

    /// When the access token expires, on Herald's clock.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_in()
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(|d| Utc::now() + d)
    }

    /// The account id the answer names (Instagram, Threads).
    pub fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }
}

/// One account a code grants: the extras its client needs and the tokens to store. The account
/// id may be empty (or a stand-in) until verification reports it.
#[derive(Debug, Clone)]
pub struct Granted {
    pub account: Account,
    pub creds: Credentials,
}

impl Granted {
    /// The account of a plain grant: the code's access token, its refresh token and expiry.
    pub fn from_code(token: &CodeToken) -> Self {
        Self {
            account: Account {
                platform_account_id: String::new(),
                handle: String::new(),
                extras: serde_json::Map::new(),
            },
            creds: Credentials {
                access_token: Some(token.access()),
                refresh_token: token.refresh(),
                dpop_key: None,
                expires_at: token.expires_at(),
            },
        }
    }
}

/// How revoking at the platform went. A failure never blocks the local delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    Revoked,
    /// The platform has no revocation endpoint Herald can call for this connection.
    NoEndpoint,
    /// Herald holds no app credentials for it (a Mastodon connection that was imported).
    NoApp,
    Failed(String),
}

/// Revokes a grant at the app's RFC 7009 endpoint. Revoking the refresh token ends the whole
/// grant where there is one (RFC 7009 §2.1). A plain form POST rather than oauth2's revocation
/// request, which refuses any endpoint that is not https (RFC 7009 §2): the end-to-end tests
/// serve providers on loopback http.
pub async fn revoke(
    http_client: &Client,
    kind: PlatformKind,
    app: &OAuthApp,
    creds: &Credentials,
) -> Revoked {
    let (token, hint) = match (&creds.refresh_token, &creds.access_token) {
        (Some(r), _) => (r, "refresh_token"),
        (None, Some(a)) => (a, "access_token"),
        (None, None) => return Revoked::Revoked,
    };
    let Some(url) = app.revoke_url.as_deref() else {
        return Revoked::NoEndpoint;
    };
    let client = &app.client;
    let mut form = vec![
        ("token", token.expose_secret().to_owned()),
        ("token_type_hint", hint.to_owned()),
    ];
    let mut req = http_client.post(url);
    match (&app.auth, &client.client_secret) {
        (AuthType::BasicAuth, Some(secret)) => {
            req = req.basic_auth(&client.client_id, Some(secret.expose_secret()));
        }
        (_, secret) => {
            form.push(("client_id", client.client_id.clone()));
            if let Some(secret) = secret {
                form.push(("client_secret", secret.expose_secret().to_owned()));
            }
        }
    }
    match http::send(kind, "revoke", false, req.form(&form)).await {
        Ok(res) if res.status().is_success() => Revoked::Revoked,
        Ok(res) => Revoked::Failed(format!("the platform answered {}", res.status())),
        Err(e) => Revoked::Failed(e.to_string()),
    }
}

/// `Authorization: Bearer …`, or `Unauthorized` when no access token is stored.
pub fn bearer(creds: &Credentials) -> Result<String, PlatformError> {
    creds
        .access_token
        .as_ref()
        .map(|t| format!("Bearer {}", t.expose_secret()))
        .ok_or_else(|| PlatformError::Unauthorized {
            reason: "no access token stored".into(),
        })
}

/// A token endpoint's answer (RFC 6749 §5.1).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    refresh_token: Option<String>,
    expires_in: Option<i64>,
}

#[derive(Deserialize, Default)]
struct OAuthErrorBody {
    error: Option<String>,
    error_description: Option<String>,
}

/// Where the client authenticates itself on a refresh grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic for a confidential client, `client_id` in the form for a public one (X).
    BasicOrPublic,
    /// `client_id` and `client_secret` in the form (LinkedIn).
    InBody,
}

/// Runs a refresh-token grant against `oauth.token_url`. A new refresh token in the answer
/// replaces the old one (X rotates them); none means the stored one stays. `rate_limited` reads
/// a 429's headers as the platform sends them.
pub async fn refresh_grant(
    kind: PlatformKind,
    http_client: &Client,
    oauth: &OAuthClient,
    refresh_token: &SecretString,
    auth: ClientAuth,
    rate_limited: fn(&HeaderMap) -> PlatformError,
) -> Result<TokenSet, PlatformError> {
    let mut form = vec![
        ("grant_type", "refresh_token".to_owned()),
        ("refresh_token", refresh_token.expose_secret().to_owned()),
    ];
    let mut req = http_client.post(&oauth.token_url);
    match (auth, &oauth.client_secret) {
        (ClientAuth::BasicOrPublic, Some(secret)) => {
            req = req.basic_auth(&oauth.client_id, Some(secret.expose_secret()));
        }
        (ClientAuth::BasicOrPublic, None) => form.push(("client_id", oauth.client_id.clone())),
        (ClientAuth::InBody, secret) => {
            form.push(("client_id", oauth.client_id.clone()));
            if let Some(secret) = secret {
                form.push(("client_secret", secret.expose_secret().to_owned()));
            }
        }
    }
    let res = http::send(kind, "refresh", false, req.form(&form)).await?;
    if !res.status().is_success() {
        return Err(classify_token_error(res, rate_limited).await);
    }
    let t: TokenResponse = res.json().await.map_err(|e| PlatformError::Transient {
        status: None,
        reason: format!("unreadable token answer: {e}"),
    })?;
    Ok(TokenSet {
        access_token: SecretString::from(t.access_token),
        refresh_token: t
            .refresh_token
            .filter(|r| !r.is_empty())
            .map(SecretString::from),
        expires_at: t
            .expires_in
            .map(|s| Utc::now() + chrono::Duration::seconds(s)),
    })
}

/// A refused refresh. X answers a dead or reused refresh token with 400 `invalid_request`
/// rather than `invalid_grant`, so any 400/401 that is not about Herald's own client is a dead grant.
async fn classify_token_error(
    res: Response,
    rate_limited: fn(&HeaderMap) -> PlatformError,
) -> PlatformError {
    let status = res.status();
    let headers = res.headers().clone();
    let body: OAuthErrorBody = res.json().await.unwrap_or_default();
    let code = body.error.unwrap_or_default();
    let reason = match (code.is_empty(), body.error_description) {
        (false, Some(d)) => format!("{code}: {d}"),
        (false, None) => code.clone(),
        (true, Some(d)) => d,
        (true, None) => status.canonical_reason().unwrap_or("error").to_owned(),
    };
    match status {
        StatusCode::TOO_MANY_REQUESTS => rate_limited(&headers),
        s if s.is_server_error() => PlatformError::Transient {
            status: Some(s.as_u16()),
            reason,
        },
        _ if matches!(code.as_str(), "invalid_client" | "unauthorized_client") => {
            PlatformError::Rejected {
                status: status.as_u16(),
                reason: format!("the token endpoint refused Herald's client credentials: {reason}"),
            }
        }
        StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED => {
            PlatformError::InvalidGrant { reason }
        }
        s => PlatformError::Rejected {
            status: s.as_u16(),
            reason,
        },
    }
}
