//! Connecting an account through the platform's own authorization page (OAuth 2.0 authorization
//! code, with PKCE S256 where the platform supports it), and revoking it when it is removed.
//!
//! [`start`] stores a single-use state (only its SHA-256; the PKCE verifier encrypted) bound to the
//! tenant, the app's user, the platform and the return URL, and answers the authorization URL.
//! [`finish`] runs when the browser comes back: it takes the state, exchanges the code, turns
//! Meta's short-lived tokens into long-lived ones, verifies the tokens with a real call, stores the
//! connection, and says where to send the browser. The `oauth2` crate builds the URLs, the PKCE
//! pair, the code exchange and the revocation request, over the SSRF-guarded reqwest client.

mod bluesky;

use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, Scope,
    StandardRevocableToken, TokenResponse, TokenUrl,
    basic::{BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse},
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};
use url::Url;

use crate::{
    Ctx, metrics as m,
    platform::{
        Account, Credentials, PlatformError, PlatformKind, Profile, facebook, http, instagram,
        linkedin, meta, threads, x,
    },
    settings::PlatformApp,
    store::{ConnectionRow, NewConnection, NewOAuthState, OAuthState, StoredTokens, TakenState},
};

/// Mastodon scopes: posting, and `read:accounts` for `verify_credentials` (understood by every
/// version; `profile` only from 4.4).
const MASTODON_SCOPES: &str = "write:statuses read:accounts";
const MAX_USER_ID: usize = 255;
const MAX_URL: usize = 2048;

/// Why a flow could not start. The API maps each to a 4xx with the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0} is not available: its app is not configured on this Herald")]
    PlatformUnavailable(PlatformKind),
    #[error("{message}")]
    Invalid {
        field: &'static str,
        code: &'static str,
        message: String,
    },
    /// The Mastodon instance refused or failed the app registration.
    #[error("the instance did not register Herald's app: {0}")]
    Registration(PlatformError),
    /// A server the flow depends on (Bluesky's authorization server) failed or refused.
    #[error("{message}")]
    Upstream {
        field: &'static str,
        code: &'static str,
        message: String,
    },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<crate::store::StoreError> for StartError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Internal(e.into())
    }
}

fn invalid(field: &'static str, code: &'static str, message: impl Into<String>) -> StartError {
    StartError::Invalid {
        field,
        code,
        message: message.into(),
    }
}

/// What an app asks for when it starts a flow.
#[derive(Debug, Clone)]
pub struct StartRequest<'a> {
    pub tenant_id: &'a str,
    pub user_id: &'a str,
    pub platform: PlatformKind,
    pub return_url: &'a str,
    /// Mastodon only: the user's instance.
    pub instance_url: Option<&'a str>,
    /// Bluesky only: the user's handle or DID.
    pub handle: Option<&'a str>,
    /// Bluesky only: a PDS or entryway URL, for a user who signs in without naming an account.
    pub server_url: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct Started {
    pub authorization_url: String,
    pub state_expires_at: DateTime<Utc>,
}

/// One platform's OAuth endpoints and Herald's client there.
#[derive(Clone)]
struct Provider {
    client_id: String,
    client_secret: Option<SecretString>,
    authorize_url: String,
    token_url: String,
    revoke_url: Option<String>,
    scopes: &'static str,
    /// Whether the platform takes PKCE from a web app (platforms.md §1.1, §3.1: Mastodon ≥ 4.3 and
    /// X do; LinkedIn enables it for native apps only; Meta's flows take the app secret instead).
    pkce: bool,
    auth: AuthType,
}

/// A token endpoint's answer, read leniently: Meta's answers carry no `token_type`, Instagram's
/// and Threads' add the `user_id`, and Instagram Login wraps it all in `data[0]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "RawCodeToken")]
struct CodeToken {
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

impl TokenResponse for CodeToken {
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

type OAuthClient = oauth2::Client<
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

impl Provider {
    fn client(&self, redirect_uri: &str) -> anyhow::Result<OAuthClient> {
        let mut c = oauth2::Client::new(ClientId::new(self.client_id.clone()))
            .set_auth_uri(AuthUrl::new(self.authorize_url.clone())?)
            .set_token_uri(TokenUrl::new(self.token_url.clone())?)
            .set_redirect_uri(RedirectUrl::new(redirect_uri.to_owned())?)
            .set_auth_type(self.auth.clone());
        if let Some(secret) = &self.client_secret {
            c = c.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
        }
        Ok(c)
    }
}

/// A platform app's revocation endpoint: `HERALD_<P>_REVOKE_URL` where configured, else X's
/// documented `POST /2/oauth2/revoke` while the app uses X's own token endpoint. Never guessed
/// from another token URL: an RFC 7009 server may put revocation anywhere, and a token must not
/// be sent to a server that did not issue it.
fn revoke_url(kind: PlatformKind, app: &PlatformApp) -> Option<String> {
    if let Some(url) = &app.revoke_url {
        return Some(url.clone());
    }
    let own_token_url = app
        .token_url
        .as_deref()
        .is_none_or(|t| t == x::DEFAULT_TOKEN_URL);
    (kind == PlatformKind::X && own_token_url).then(|| x::DEFAULT_REVOKE_URL.to_owned())
}

/// The configured app of a platform with one global app, with the platform's endpoints unless
/// the configuration overrides them.
fn app_provider(kind: PlatformKind, app: &PlatformApp) -> Option<Provider> {
    let (authorize, token, scopes, pkce, auth) = match kind {
        PlatformKind::X => (
            "https://x.com/i/oauth2/authorize".to_owned(),
            x::DEFAULT_TOKEN_URL,
            "tweet.read tweet.write users.read follows.read offline.access",
            true,
            AuthType::BasicAuth,
        ),
        PlatformKind::Linkedin => (
            "https://www.linkedin.com/oauth/v2/authorization".to_owned(),
            linkedin::DEFAULT_TOKEN_URL,
            "openid profile w_member_social",
            false,
            AuthType::RequestBody,
        ),
        PlatformKind::FacebookPages => (
            format!(
                "https://www.facebook.com/{}/dialog/oauth",
                facebook::API_VERSION
            ),
            facebook::DEFAULT_TOKEN_URL,
            // Meta takes a comma-separated list.
            "pages_show_list,pages_manage_posts,pages_read_engagement",
            false,
            AuthType::RequestBody,
        ),
        PlatformKind::Instagram => (
            "https://www.instagram.com/oauth/authorize".to_owned(),
            "https://api.instagram.com/oauth/access_token",
            "instagram_business_basic,instagram_business_content_publish",
            false,
            AuthType::RequestBody,
        ),
        PlatformKind::Threads => (
            "https://threads.net/oauth/authorize".to_owned(),
            "https://graph.threads.net/oauth/access_token",
            "threads_basic,threads_content_publish",
            false,
            AuthType::RequestBody,
        ),
        PlatformKind::Mastodon | PlatformKind::Bluesky => return None,
    };
    let token_url = app.token_url.clone().unwrap_or_else(|| token.to_owned());
    Some(Provider {
        client_id: app.client_id.clone(),
        client_secret: app.client_secret.clone(),
        authorize_url: app.authorize_url.clone().unwrap_or(authorize),
        // Only X documents a revocation endpoint among these (platforms.md §3.1); LinkedIn's,
        // Instagram's and Threads' are not documented, and Meta's `DELETE /{user}/permissions`
        // would end the user's grant for every page, not the one connection removed. An
        // operator may configure one (`HERALD_<P>_REVOKE_URL`).
        revoke_url: revoke_url(kind, app),
        token_url,
        scopes,
        pkce,
        auth,
    })
}

fn mastodon_provider(instance: &str, client_id: String, secret: SecretString) -> Provider {
    Provider {
        client_id,
        client_secret: Some(secret),
        authorize_url: format!("{instance}/oauth/authorize"),
        token_url: format!("{instance}/oauth/token"),
        revoke_url: Some(format!("{instance}/oauth/revoke")),
        scopes: MASTODON_SCOPES,
        pkce: true,
        auth: AuthType::RequestBody,
    }
}

fn http_client(ctx: &Ctx) -> reqwest::Client {
    http::client(&ctx.settings.ssrf, ctx.settings.platform_timeout)
}

fn hash_state(state: &str) -> String {
    Sha256::digest(state.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The instance's origin, checked by the SSRF guard, its name resolved: an instance whose name
/// points at a private address is refused here rather than failing at the app registration.
async fn instance_origin(ctx: &Ctx, raw: Option<&str>) -> Result<String, StartError> {
    let raw = raw
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            invalid(
                "instance_url",
                "missing_field",
                "Mastodon needs `instance_url`, the user's instance",
            )
        })?;
    if raw.len() > MAX_URL {
        return Err(invalid(
            "instance_url",
            "field_too_long",
            "`instance_url` is too long",
        ));
    }
    let url = ctx
        .settings
        .ssrf
        .check_url_resolved(raw)
        .await
        .map_err(|e| {
            invalid(
                "instance_url",
                "invalid_url",
                format!("`instance_url`: {e}"),
            )
        })?;
    Ok(url.origin().ascii_serialization())
}

/// The cached app of this tenant on this instance, registered first if there is none (or if the
/// cached one was registered for another redirect URI).
async fn mastodon_app(
    ctx: &Ctx,
    tenant_id: &str,
    instance: &str,
) -> Result<crate::store::MastodonApp, StartError> {
    let redirect = ctx.settings.redirect_uri(PlatformKind::Mastodon);
    if let Some(app) = ctx.store.mastodon_app(instance, tenant_id).await? {
        if app.redirect_uri == redirect && app.scopes == MASTODON_SCOPES {
            return Ok(app);
        }
        ctx.store.delete_mastodon_app(&app.id).await?;
    }
    #[derive(Deserialize)]
    struct Registered {
        client_id: String,
        client_secret: String,
    }
    let req = http_client(ctx)
        .post(format!("{instance}/api/v1/apps"))
        .form(&[
            ("client_name", "Herald"),
            ("redirect_uris", redirect.as_str()),
            ("scopes", MASTODON_SCOPES),
        ]);
    let res = http::send(PlatformKind::Mastodon, "register_app", false, req)
        .await
        .map_err(StartError::Registration)?;
    if !res.status().is_success() {
        return Err(StartError::Registration(PlatformError::Rejected {
            status: res.status().as_u16(),
            reason: "POST /api/v1/apps was refused".into(),
        }));
    }
    let reg: Registered = res.json().await.map_err(|_| {
        StartError::Registration(PlatformError::Rejected {
            status: 200,
            reason: "unreadable app registration".into(),
        })
    })?;
    let app = ctx
        .store
        .save_mastodon_app(
            tenant_id,
            instance,
            &reg.client_id,
            &SecretString::from(reg.client_secret),
            &redirect,
            MASTODON_SCOPES,
            &ctx.vault,
            Utc::now(),
        )
        .await?;
    info!(platform = "mastodon", instance = %instance, "registered Herald's app on the instance");
    Ok(app)
}

/// Starts a connect flow: stores the state and answers the authorization URL.
pub async fn start(ctx: &Ctx, req: &StartRequest<'_>) -> Result<Started, StartError> {
    let user_id = req.user_id.trim();
    if user_id.is_empty() {
        return Err(invalid("user_id", "missing_field", "`user_id` is required"));
    }
    if user_id.len() > MAX_USER_ID {
        return Err(invalid(
            "user_id",
            "field_too_long",
            format!("`user_id` is longer than {MAX_USER_ID} bytes"),
        ));
    }
    if req.return_url.len() > MAX_URL {
        return Err(invalid(
            "return_url",
            "field_too_long",
            "`return_url` is too long",
        ));
    }
    let return_url = ctx
        .settings
        .ssrf
        .check_url(req.return_url.trim())
        .map_err(|e| invalid("return_url", "invalid_url", format!("`return_url`: {e}")))?;
    if req.platform != PlatformKind::Mastodon && req.instance_url.is_some() {
        return Err(invalid(
            "instance_url",
            "unknown_field",
            "`instance_url` is for Mastodon only",
        ));
    }
    if req.platform != PlatformKind::Bluesky {
        for (field, given) in [("handle", req.handle), ("server_url", req.server_url)] {
            if given.is_some() {
                return Err(invalid(
                    field,
                    "unknown_field",
                    format!("`{field}` is for Bluesky only"),
                ));
            }
        }
    } else {
        return bluesky::start(ctx, req, user_id, &return_url).await;
    }
    let (provider, instance) = if req.platform == PlatformKind::Mastodon {
        if ctx.platforms.get(PlatformKind::Mastodon).is_none() {
            return Err(StartError::PlatformUnavailable(req.platform));
        }
        let instance = instance_origin(ctx, req.instance_url).await?;
        let app = mastodon_app(ctx, req.tenant_id, &instance).await?;
        let secret = app.client_secret(&ctx.vault)?;
        (
            mastodon_provider(&instance, app.client_id, secret),
            Some(instance),
        )
    } else {
        let provider = ctx
            .settings
            .apps
            .get(req.platform)
            .filter(|_| ctx.platforms.get(req.platform).is_some())
            .and_then(|app| app_provider(req.platform, app))
            .ok_or(StartError::PlatformUnavailable(req.platform))?;
        (provider, None)
    };

    let state = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let state_hash = hash_state(&state);
    let client = provider.client(&ctx.settings.redirect_uri(req.platform))?;
    let mut auth = client
        .authorize_url(|| CsrfToken::new(state.clone()))
        .add_scope(Scope::new(provider.scopes.to_owned()));
    let mut verifier = None;
    if provider.pkce {
        let (challenge, v) = PkceCodeChallenge::new_random_sha256();
        auth = auth.set_pkce_challenge(challenge);
        verifier = Some(SecretString::from(v.secret().to_owned()));
    }
    let (url, _) = auth.url();
    let now = Utc::now();
    let ttl = chrono::Duration::from_std(ctx.settings.oauth_state_ttl)
        .map_err(|e| StartError::Internal(e.into()))?;
    let expires_at = now + ttl;
    ctx.store
        .insert_oauth_state(
            &NewOAuthState {
                state_hash: &state_hash,
                tenant_id: req.tenant_id,
                user_id,
                platform: req.platform.as_str(),
                return_url: return_url.as_str(),
                instance_url: instance.as_deref(),
                pkce_verifier: verifier.as_ref(),
                expires_at,
                atproto: Default::default(),
            },
            &ctx.vault,
            now,
        )
        .await?;
    metrics::counter!(m::OAUTH_STARTS_TOTAL, "platform" => req.platform.as_str()).increment(1);
    Ok(Started {
        authorization_url: url.to_string(),
        state_expires_at: expires_at,
    })
}

/// What the browser brought back to the callback.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CallbackParams {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    /// The authorization server's issuer (RFC 9207); Bluesky's must match the flow's.
    pub iss: Option<String>,
}

/// Where the callback sends the browser.
#[derive(Debug)]
pub enum Callback {
    /// 303 to the flow's return URL, with `connection_id=…` or `error=…`.
    Redirect(Url),
    /// No state Herald knows: there is no return URL to trust, so the callback answers itself.
    UnknownState,
}

/// How a callback ended, as counted and as told to the app (`error=<code>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Denied,
    InvalidState,
    ExchangeFailed,
    VerifyFailed,
    /// The callback's `iss` is not the authorization server the flow started with.
    IssuerMismatch,
    /// The tokens are for another account than the one the flow started for.
    AccountMismatch,
    /// The grant lacks a scope Herald needs to post (Bluesky's `transition:generic`).
    InsufficientScope,
}

impl Outcome {
    fn code(self) -> &'static str {
        match self {
            Self::Denied => "denied",
            Self::InvalidState => "invalid_state",
            Self::ExchangeFailed => "exchange_failed",
            Self::VerifyFailed => "verify_failed",
            Self::IssuerMismatch => "issuer_mismatch",
            Self::AccountMismatch => "account_mismatch",
            Self::InsufficientScope => "insufficient_scope",
        }
    }

    /// The `herald_oauth_callbacks_total{result}` label: the two AT Protocol checks count with
    /// the step they belong to, so dashboards and alert rules keep their five results.
    fn result(self) -> &'static str {
        match self {
            Self::IssuerMismatch => Self::ExchangeFailed.code(),
            Self::AccountMismatch | Self::InsufficientScope => Self::VerifyFailed.code(),
            other => other.code(),
        }
    }
}

fn count(platform: PlatformKind, result: &'static str) {
    metrics::counter!(m::OAUTH_CALLBACKS_TOTAL, "platform" => platform.as_str(), "result" => result)
        .increment(1);
}

fn back_to(return_url: &str, pairs: &[(&str, &str)]) -> Callback {
    match Url::parse(return_url) {
        Ok(mut u) => {
            {
                let mut q = u.query_pairs_mut();
                for (k, v) in pairs {
                    q.append_pair(k, v);
                }
            }
            Callback::Redirect(u)
        }
        // Checked when stored; a row that no longer parses is as good as unknown.
        Err(_) => Callback::UnknownState,
    }
}

/// Finishes a flow: the browser came back to `/v1/connect/{platform}/callback`.
pub async fn finish(
    ctx: &Ctx,
    platform: PlatformKind,
    params: &CallbackParams,
) -> anyhow::Result<Callback> {
    let Some(state) = params.state.as_deref().filter(|s| !s.is_empty()) else {
        count(platform, Outcome::InvalidState.code());
        return Ok(Callback::UnknownState);
    };
    let now = Utc::now();
    let row = match ctx.store.take_oauth_state(&hash_state(state), now).await? {
        TakenState::Unknown => {
            count(platform, Outcome::InvalidState.code());
            return Ok(Callback::UnknownState);
        }
        TakenState::Used(row) => {
            warn!(platform = %platform, outcome = "invalid_state", "a connect state was used twice");
            count(platform, Outcome::InvalidState.code());
            return Ok(back_to(
                &row.return_url,
                &[("error", Outcome::InvalidState.code())],
            ));
        }
        TakenState::Fresh(row) => row,
    };
    if row.expires_at < now || row.platform != platform.as_str() {
        count(platform, Outcome::InvalidState.code());
        return Ok(back_to(
            &row.return_url,
            &[("error", Outcome::InvalidState.code())],
        ));
    }
    let result = match (&params.error, &params.code) {
        // The user said no (or the platform could not ask): no code was issued.
        (Some(e), _) => {
            info!(platform = %platform, outcome = "denied", provider_error = %e, "authorization not granted");
            Err(Outcome::Denied)
        }
        (None, None) => Err(Outcome::ExchangeFailed),
        (None, Some(code)) if platform == PlatformKind::Bluesky => {
            bluesky::finish(ctx, &row, code, params.iss.as_deref()).await?
        }
        (None, Some(code)) => connect(ctx, platform, &row, code).await?,
    };
    Ok(match result {
        Ok(ids) => {
            count(platform, "succeeded");
            back_to(&row.return_url, &[("connection_id", &ids.join(","))])
        }
        Err(outcome) => {
            count(platform, outcome.result());
            back_to(&row.return_url, &[("error", outcome.code())])
        }
    })
}

/// The provider of a flow being finished.
async fn provider_for(ctx: &Ctx, platform: PlatformKind, row: &OAuthState) -> Option<Provider> {
    if platform == PlatformKind::Mastodon {
        let instance = row.instance_url.as_deref()?;
        let app = ctx
            .store
            .mastodon_app(instance, &row.tenant_id)
            .await
            .ok()??;
        let secret = app.client_secret(&ctx.vault).ok()?;
        return Some(mastodon_provider(instance, app.client_id, secret));
    }
    ctx.settings
        .apps
        .get(platform)
        .and_then(|app| app_provider(platform, app))
}

/// One account to store after the exchange: its tokens and the extras its client needs.
struct Candidate {
    account: Account,
    tokens: StoredTokens,
}

/// Exchanges the code and stores every account it grants. `Ok(Err(_))` is a refused flow;
/// `Err(_)` is Herald's own failure (the store).
async fn connect(
    ctx: &Ctx,
    platform: PlatformKind,
    row: &OAuthState,
    code: &str,
) -> anyhow::Result<Result<Vec<String>, Outcome>> {
    let (Some(provider), Some(client)) = (
        provider_for(ctx, platform, row).await,
        ctx.platforms.get(platform),
    ) else {
        warn!(platform = %platform, outcome = "exchange_failed", "the platform's app is no longer configured");
        return Ok(Err(Outcome::ExchangeFailed));
    };
    let oauth = provider.client(&ctx.settings.redirect_uri(platform))?;
    let mut exchange = oauth.exchange_code(AuthorizationCode::new(code.to_owned()));
    if let Some(v) = row.verifier(&ctx.vault)? {
        exchange = exchange.set_pkce_verifier(PkceCodeVerifier::new(v.expose_secret().to_owned()));
    }
    let http = http_client(ctx);
    let token = match exchange.request_async(&http).await {
        Ok(t) => t,
        Err(e) => {
            // The error names the provider's error code, never a token or the secret.
            warn!(platform = %platform, outcome = "exchange_failed", error.message = %e, "code exchange refused");
            return Ok(Err(Outcome::ExchangeFailed));
        }
    };
    let scopes: Vec<String> = token.scopes().map_or_else(
        || {
            provider
                .scopes
                .split([' ', ','])
                .map(str::to_owned)
                .collect()
        },
        |s| s.iter().map(|s| s.to_string()).collect(),
    );
    let instance = row.instance_url.as_deref();
    let candidates = match long_lived(ctx, platform, &provider, &http, &token, instance).await {
        Ok(c) => c,
        Err(e) => {
            warn!(platform = %platform, outcome = "exchange_failed", error.message = %e, "long-lived token exchange failed");
            return Ok(Err(Outcome::ExchangeFailed));
        }
    };
    let mut verified = Vec::with_capacity(candidates.len());
    for c in candidates {
        let creds = Credentials {
            access_token: c.tokens.access_token.clone(),
            refresh_token: c.tokens.refresh_token.clone(),
            dpop_key: None,
            expires_at: c.tokens.expires_at,
        };
        let profile: Result<Profile, PlatformError> = match tokio::time::timeout(
            ctx.settings.platform_timeout,
            client.verify(&c.account, &creds),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(PlatformError::Transient {
                status: None,
                reason: "verify timed out".into(),
            }),
        };
        match profile {
            Ok(p) => verified.push((c, p)),
            Err(e) => {
                warn!(platform = %platform, outcome = "verify_failed", error.class = e.class(), error.message = %e, "new tokens did not verify");
                return Ok(Err(Outcome::VerifyFailed));
            }
        }
    }
    if verified.is_empty() {
        // Facebook: the user granted no page.
        return Ok(Err(Outcome::VerifyFailed));
    }
    let mut ids = Vec::with_capacity(verified.len());
    for (c, profile) in verified {
        let conn = store(ctx, platform, row, c, profile, &scopes).await?;
        ids.push(conn.id);
    }
    Ok(Ok(ids))
}

async fn store(
    ctx: &Ctx,
    platform: PlatformKind,
    row: &OAuthState,
    c: Candidate,
    profile: Profile,
    scopes: &[String],
) -> anyhow::Result<ConnectionRow> {
    let new = NewConnection {
        platform,
        platform_account_id: profile.platform_account_id,
        handle: profile.handle,
        extras: c.account.extras,
        scopes: scopes.to_vec(),
        tokens: c.tokens,
    };
    let conn = ctx
        .store
        .upsert_connection(&row.tenant_id, &new, &ctx.vault, Utc::now())
        .await?;
    ctx.store
        .set_connection_user(&conn.id, &row.user_id)
        .await?;
    if conn.needs_reauth {
        // As for an import: the worker verifies again under the refresh lease's rules, clears the
        // flag and resumes the parked shares in order.
        crate::handlers::refresh::enqueue_reconnect_check(ctx, &conn).await?;
    }
    info!(connection.id = %conn.id, platform = %platform, outcome = "succeeded", "account connected");
    Ok(conn)
}

fn expires(secs: Option<Duration>) -> Option<DateTime<Utc>> {
    secs.and_then(|d| chrono::Duration::from_std(d).ok())
        .map(|d| Utc::now() + d)
}

fn api_base(ctx: &Ctx, platform: PlatformKind, default: &str) -> String {
    ctx.settings
        .apps
        .get(platform)
        .and_then(|a| a.api_base.clone())
        .unwrap_or_else(|| default.to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// The accounts a code grants, with their long-lived tokens. Meta's code answers are short-lived
/// (hours); each platform has its own exchange, and Facebook grants one token per page.
async fn long_lived(
    ctx: &Ctx,
    platform: PlatformKind,
    provider: &Provider,
    http_client: &reqwest::Client,
    token: &CodeToken,
    instance: Option<&str>,
) -> Result<Vec<Candidate>, PlatformError> {
    let short = SecretString::from(token.access_token().secret().to_owned());
    let mut extras = serde_json::Map::new();
    let secret = || {
        provider
            .client_secret
            .as_ref()
            .map(|s| s.expose_secret().to_owned())
            .ok_or_else(|| PlatformError::Rejected {
                status: 0,
                reason: "the app secret is not configured".into(),
            })
    };
    let one = |account: Account, tokens: StoredTokens| vec![Candidate { account, tokens }];
    let account = |extras: serde_json::Map<String, serde_json::Value>, id: &str| Account {
        platform_account_id: id.to_owned(),
        handle: String::new(),
        extras,
    };
    match platform {
        PlatformKind::Mastodon => {
            // Stored with the connection: the client calls this instance.
            extras.insert("instance_url".into(), instance.unwrap_or_default().into());
            Ok(one(
                account(extras, ""),
                StoredTokens {
                    access_token: Some(short),
                    refresh_token: None,
                    dpop_key: None,
                    expires_at: None,
                },
            ))
        }
        PlatformKind::X | PlatformKind::Linkedin | PlatformKind::Bluesky => Ok(one(
            account(extras, ""),
            StoredTokens {
                access_token: Some(short),
                refresh_token: token
                    .refresh_token()
                    .map(|r| SecretString::from(r.secret().to_owned())),
                dpop_key: None,
                expires_at: expires(token.expires_in()),
            },
        )),
        PlatformKind::FacebookPages => {
            let base = api_base(ctx, platform, facebook::DEFAULT_BASE);
            let fb = facebook::Facebook::new(http_client.clone(), &base);
            let app = x::OAuthClient {
                client_id: provider.client_id.clone(),
                client_secret: provider.client_secret.clone(),
                token_url: provider.token_url.clone(),
            };
            let user = fb.exchange_long_lived(&app, &short).await?;
            #[derive(Deserialize)]
            struct Pages {
                #[serde(default)]
                data: Vec<PageToken>,
            }
            #[derive(Deserialize)]
            struct PageToken {
                id: String,
                access_token: Option<String>,
            }
            let req = http_client
                .get(format!("{base}/{}/me/accounts", facebook::API_VERSION))
                .query(&[
                    ("fields", "id,name,access_token"),
                    ("access_token", user.access_token.expose_secret()),
                ]);
            let pages: Pages = meta::graph_call(platform, "pages", false, req).await?;
            Ok(pages
                .data
                .into_iter()
                .filter_map(|p| {
                    let token = p.access_token?;
                    let mut extras = serde_json::Map::new();
                    extras.insert("page_id".into(), p.id.clone().into());
                    Some(Candidate {
                        account: account(extras, &p.id),
                        // Page tokens read with a long-lived user token do not expire.
                        tokens: StoredTokens {
                            access_token: Some(SecretString::from(token)),
                            refresh_token: None,
                            dpop_key: None,
                            expires_at: None,
                        },
                    })
                })
                .collect())
        }
        PlatformKind::Instagram | PlatformKind::Threads => {
            let (base, version, grant) = if platform == PlatformKind::Instagram {
                (
                    api_base(ctx, platform, instagram::DEFAULT_BASE),
                    instagram::API_VERSION,
                    "ig_exchange_token",
                )
            } else {
                (
                    api_base(ctx, platform, threads::DEFAULT_BASE),
                    threads::API_VERSION,
                    "th_exchange_token",
                )
            };
            let secret = secret()?;
            let long = meta::Graph::new(platform, http_client.clone(), base, version)
                .exchange_short_lived(grant, &secret, &short)
                .await?;
            // Instagram's client reads the account from the id; `me` stands in until verify
            // reports it.
            let id = token.user_id.clone().unwrap_or_else(|| "me".to_owned());
            Ok(one(
                account(extras, &id),
                StoredTokens {
                    access_token: Some(long.access_token),
                    refresh_token: None,
                    dpop_key: None,
                    expires_at: long.expires_at,
                },
            ))
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

/// Revokes a connection's grant at the platform, before its tokens are erased: Mastodon
/// (`POST /oauth/revoke` with the cached app), X (`POST /2/oauth2/revoke`) and Bluesky OAuth
/// sessions (the authorization server's `revocation_endpoint`, with DPoP). LinkedIn, Instagram
/// and Threads document no revocation endpoint; Facebook's `DELETE /{user-id}/permissions` would
/// end the user's grant for all of their pages, not just the one connection removed.
pub async fn revoke(ctx: &Ctx, conn: &ConnectionRow) -> Revoked {
    let Some(platform) = conn.platform_kind() else {
        return Revoked::NoEndpoint;
    };
    if platform == PlatformKind::Bluesky {
        return bluesky::revoke(ctx, conn).await;
    }
    let provider = match platform {
        PlatformKind::Mastodon => {
            let Some(instance) = conn.account().extra_str("instance_url").map(str::to_owned) else {
                return Revoked::NoApp;
            };
            match ctx.store.mastodon_app(&instance, &conn.tenant_id).await {
                Ok(Some(app)) => match app.client_secret(&ctx.vault) {
                    Ok(secret) => mastodon_provider(&instance, app.client_id, secret),
                    Err(e) => return Revoked::Failed(e.to_string()),
                },
                Ok(None) => return Revoked::NoApp,
                Err(e) => return Revoked::Failed(e.to_string()),
            }
        }
        _ => match ctx
            .settings
            .apps
            .get(platform)
            .and_then(|a| app_provider(platform, a))
        {
            Some(p) => p,
            None => return Revoked::NoApp,
        },
    };
    let creds = match conn.credentials(&ctx.vault) {
        Ok(c) => c,
        Err(e) => return Revoked::Failed(e.to_string()),
    };
    // Revoking the refresh token ends the whole grant where there is one (RFC 7009 §2.1).
    let (token, hint) = match (&creds.refresh_token, &creds.access_token) {
        (Some(r), _) => (r, "refresh_token"),
        (None, Some(a)) => (a, "access_token"),
        (None, None) => return Revoked::Revoked,
    };
    let Some(url) = provider.revoke_url.as_deref() else {
        return Revoked::NoEndpoint;
    };
    // A plain form POST rather than oauth2's revocation request, which refuses any endpoint that
    // is not https (RFC 7009 §2): the end-to-end tests serve providers on loopback http.
    let mut form = vec![
        ("token", token.expose_secret().to_owned()),
        ("token_type_hint", hint.to_owned()),
    ];
    let mut req = http_client(ctx).post(url);
    match (&provider.auth, &provider.client_secret) {
        (AuthType::BasicAuth, Some(secret)) => {
            req = req.basic_auth(&provider.client_id, Some(secret.expose_secret()));
        }
        (_, secret) => {
            form.push(("client_id", provider.client_id.clone()));
            if let Some(secret) = secret {
                form.push(("client_secret", secret.expose_secret().to_owned()));
            }
        }
    }
    let result = match http::send(platform, "revoke", false, req.form(&form)).await {
        Ok(res) if res.status().is_success() => Ok(()),
        Ok(res) => Err(format!("the platform answered {}", res.status())),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(()) => Revoked::Revoked,
        Err(e) => Revoked::Failed(e),
    }
}
