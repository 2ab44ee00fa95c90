//! Connecting an account through the platform's own authorization page (OAuth 2.0 authorization
//! code, with PKCE S256 where the platform supports it), and revoking it when it is removed.
//!
//! [`start`] stores a single-use state (only its SHA-256; the PKCE verifier encrypted) bound to the
//! tenant, the app's user, the platform and the return URL, and answers the authorization URL.
//! [`finish`] runs when the browser comes back: it takes the state, exchanges the code, has the
//! platform turn the tokens into the accounts they grant (`Platform::exchange`: Meta's short-lived
//! tokens become long-lived ones), verifies the tokens with a real call, stores the connection,
//! and says where to send the browser. What differs between platforms (the app's endpoints and
//! scopes, the exchange, the revocation) is in each platform's file of `herald_platforms`; this
//! module keeps what every flow shares: the state, the callback, storing, and the metrics.

mod bluesky;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use herald_platforms::{
    PlatformError, PlatformKind, Profile, http, mastodon,
    oauth::{CodeError, Granted, OAuthApp, Revoked},
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tracing::{info, warn};
use url::Url;

use crate::{
    Ctx, metrics as m,
    store::{ConnectionRow, NewConnection, NewOAuthState, OAuthState, StoredTokens, TakenState},
};

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
/// cached one was registered for another redirect URI). Mastodon has no global app; the store
/// keeps the one registered per instance and tenant, client secret encrypted.
async fn mastodon_app(
    ctx: &Ctx,
    tenant_id: &str,
    instance: &str,
) -> Result<crate::store::MastodonApp, StartError> {
    let redirect = ctx.settings.redirect_uri(PlatformKind::Mastodon);
    if let Some(app) = ctx.store.mastodon_app(instance, tenant_id).await? {
        if app.redirect_uri == redirect && app.scopes == mastodon::SCOPES {
            return Ok(app);
        }
        ctx.store.delete_mastodon_app(&app.id).await?;
    }
    let reg = mastodon::register_app(&http_client(ctx), instance, &redirect)
        .await
        .map_err(StartError::Registration)?;
    let app = ctx
        .store
        .save_mastodon_app(
            tenant_id,
            instance,
            &reg.client_id,
            &reg.client_secret,
            &redirect,
            mastodon::SCOPES,
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
    let (app, instance) = if req.platform == PlatformKind::Mastodon {
        if ctx.platforms.get(PlatformKind::Mastodon).is_none() {
            return Err(StartError::PlatformUnavailable(req.platform));
        }
        let instance = instance_origin(ctx, req.instance_url).await?;
        let app = mastodon_app(ctx, req.tenant_id, &instance).await?;
        let secret = app.client_secret(&ctx.vault)?;
        (
            mastodon::oauth_app(&instance, app.client_id, secret),
            Some(instance),
        )
    } else {
        let app = ctx
            .platforms
            .get(req.platform)
            .and_then(|p| p.oauth_app())
            .cloned()
            .ok_or(StartError::PlatformUnavailable(req.platform))?;
        (app, None)
    };

    let state = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let state_hash = hash_state(&state);
    let (url, verifier) = app
        .authorization_url(&ctx.settings.redirect_uri(req.platform), &state)
        .map_err(|e| StartError::Internal(e.into()))?;
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

/// The OAuth app a flow being finished runs with: the instance's registered app on Mastodon,
/// else the platform's configured one.
async fn oauth_app_for(ctx: &Ctx, platform: PlatformKind, row: &OAuthState) -> Option<OAuthApp> {
    if platform == PlatformKind::Mastodon {
        let instance = row.instance_url.as_deref()?;
        let app = ctx
            .store
            .mastodon_app(instance, &row.tenant_id)
            .await
            .ok()??;
        let secret = app.client_secret(&ctx.vault).ok()?;
        return Some(mastodon::oauth_app(instance, app.client_id, secret));
    }
    ctx.platforms.get(platform)?.oauth_app().cloned()
}

/// Exchanges the code and stores every account it grants. `Ok(Err(_))` is a refused flow;
/// `Err(_)` is Herald's own failure (the store).
async fn connect(
    ctx: &Ctx,
    platform: PlatformKind,
    row: &OAuthState,
    code: &str,
) -> anyhow::Result<Result<Vec<String>, Outcome>> {
    let (Some(app), Some(client)) = (
        oauth_app_for(ctx, platform, row).await,
        ctx.platforms.get(platform),
    ) else {
        warn!(platform = %platform, outcome = "exchange_failed", "the platform's app is no longer configured");
        return Ok(Err(Outcome::ExchangeFailed));
    };
    let verifier = row.verifier(&ctx.vault)?;
    let redirect_uri = ctx.settings.redirect_uri(platform);
    let token = match app
        .exchange_code(&http_client(ctx), &redirect_uri, code, verifier.as_ref())
        .await
    {
        Ok(t) => t,
        Err(CodeError::Refused(e)) => {
            // The error names the provider's error code, never a token or the secret.
            warn!(platform = %platform, outcome = "exchange_failed", error.message = %e, "code exchange refused");
            return Ok(Err(Outcome::ExchangeFailed));
        }
        Err(e @ CodeError::Config(_)) => return Err(e.into()),
    };
    let scopes = app.granted_scopes(&token);
    let instance = row.instance_url.as_deref();
    let granted = match client.exchange(&app, &token, instance).await {
        Ok(g) => g,
        Err(e) => {
            warn!(platform = %platform, outcome = "exchange_failed", error.message = %e, "long-lived token exchange failed");
            return Ok(Err(Outcome::ExchangeFailed));
        }
    };
    let mut verified = Vec::with_capacity(granted.len());
    for g in granted {
        let profile: Result<Profile, PlatformError> = match tokio::time::timeout(
            ctx.settings.platform_timeout,
            client.verify(&g.account, &g.creds),
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
            Ok(p) => verified.push((g, p)),
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
    for (g, profile) in verified {
        let conn = store(ctx, platform, row, g, profile, &scopes).await?;
        ids.push(conn.id);
    }
    Ok(Ok(ids))
}

/// Stores one verified account: its connection (the same platform account keeps its id), the
/// app's user, and the reconnect check of a connection that was flagged.
async fn store(
    ctx: &Ctx,
    platform: PlatformKind,
    row: &OAuthState,
    granted: Granted,
    profile: Profile,
    scopes: &[String],
) -> anyhow::Result<ConnectionRow> {
    let Granted { account, creds } = granted;
    let new = NewConnection {
        platform,
        platform_account_id: profile.platform_account_id,
        handle: profile.handle,
        display_name: profile.display_name,
        extras: account.extras,
        scopes: scopes.to_vec(),
        tokens: StoredTokens {
            access_token: creds.access_token,
            refresh_token: creds.refresh_token,
            dpop_key: creds.dpop_key,
            expires_at: creds.expires_at,
        },
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

/// Revokes a connection's grant at the platform, before its tokens are erased (each platform's
/// `Platform::revoke` says how: RFC 7009 with the app's credentials where it documents an
/// endpoint, Bluesky's authorization server for an OAuth session). Mastodon revokes with the
/// instance's registered app, which the store holds.
pub async fn revoke(ctx: &Ctx, conn: &ConnectionRow) -> Revoked {
    let Some(platform) = conn.platform_kind() else {
        return Revoked::NoEndpoint;
    };
    let Some(client) = ctx.platforms.get(platform) else {
        return Revoked::NoApp;
    };
    let app = if platform == PlatformKind::Mastodon {
        let Some(instance) = conn.account().extra_str("instance_url").map(str::to_owned) else {
            return Revoked::NoApp;
        };
        match ctx.store.mastodon_app(&instance, &conn.tenant_id).await {
            Ok(Some(app)) => match app.client_secret(&ctx.vault) {
                Ok(secret) => Some(mastodon::oauth_app(&instance, app.client_id, secret)),
                Err(e) => return Revoked::Failed(e.to_string()),
            },
            Ok(None) => return Revoked::NoApp,
            Err(e) => return Revoked::Failed(e.to_string()),
        }
    } else {
        client.oauth_app().cloned()
    };
    let creds = match conn.credentials(&ctx.vault) {
        Ok(c) => c,
        Err(e) => return Revoked::Failed(e.to_string()),
    };
    client
        .revoke(&http_client(ctx), &conn.account(), &creds, app.as_ref())
        .await
}
