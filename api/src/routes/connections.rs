//! `/v1/connections`: import tokens an app already holds, list and inspect connections.

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use herald_jobs::{
    settings::AppPasswords,
    store::{ConnectionFilter, ConnectionRow, NewConnection, StoredTokens},
};
use herald_platforms::{PlatformKind, Platforms};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiJson, ApiPath, ApiQuery, page_limit, parse_time};
use crate::{
    ApiState,
    auth::Tenant,
    error::{ApiError, ApiResult},
};

const MAX_ID: usize = 255;
const MAX_TOKEN: usize = 16_384;

/// Tokens for an account, imported from an app that already holds them. A second import for the
/// same platform account updates that connection; an absent refresh token keeps the stored one.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConnectionRequest {
    #[schema(value_type = herald_platforms::PlatformKind)]
    pub platform: String,
    /// The platform's id of the account (Mastodon account id, Bluesky DID, page id, ...).
    #[schema(min_length = 1, pattern = "\\S", max_length = 255)]
    pub platform_account_id: String,
    #[schema(min_length = 1, pattern = "\\S", max_length = 255)]
    pub handle: String,
    /// The account's name as the platform shows it, if the app knows it (shown as
    /// `display_name`; absent or blank keeps the one stored).
    #[schema(max_length = 255)]
    pub display_name: Option<String>,
    #[schema(min_length = 1, pattern = "\\S", max_length = 16384)]
    pub access_token: String,
    #[schema(max_length = 16384)]
    pub refresh_token: Option<String>,
    /// When the access token expires (RFC 3339, before 9999-01-01), if it does.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Platform settings: `instance_url` for Mastodon (required), `max_characters`, ...
    #[serde(default)]
    #[schema(value_type = Object)]
    pub extras: serde_json::Map<String, serde_json::Value>,
}

/// A connected account. Tokens are never shown.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConnectionView {
    pub id: String,
    pub platform: String,
    pub platform_account_id: String,
    pub handle: String,
    /// What the platform calls the account (a person's or page's name), where it gives one:
    /// taken from the platform when the account is connected through `/v1/connect`, or from
    /// the import. Absent where neither gave one.
    pub display_name: Option<String>,
    #[schema(value_type = Object)]
    pub extras: serde_json::Value,
    pub scopes: Vec<String>,
    pub token_expires_at: Option<DateTime<Utc>>,
    pub has_refresh_token: bool,
    /// The user must connect again before this time: the token expires then and Herald cannot
    /// renew it (LinkedIn without partner refresh tokens, an X grant without `offline.access`).
    /// Absent when the token does not expire or Herald refreshes it before it does.
    pub reconnect_by: Option<DateTime<Utc>>,
    /// The credentials are dead: the user must reconnect; work for it is parked meanwhile.
    pub needs_reauth: bool,
    /// When the connection was flagged `needs_reauth`; absent while it is not.
    pub needs_reauth_since: Option<DateTime<Utc>>,
    /// `app_password` for a Bluesky connection that logs in with an app password, `oauth` for
    /// every other.
    #[schema(example = "oauth")]
    pub auth: String,
    pub last_error: Option<String>,
    /// The app's id of the user who connected the account through `/v1/connect`.
    pub user_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ConnectionView {
    /// `platforms`: this process's clients, which say whether the platform refreshes at all.
    pub fn new(r: ConnectionRow, platforms: &Platforms) -> Self {
        let refreshes = r
            .platform_kind()
            .and_then(|k| platforms.get(k))
            .is_some_and(|p| p.capabilities().refresh);
        Self {
            extras: serde_json::from_str(&r.extras).unwrap_or_default(),
            scopes: r.scopes.split_whitespace().map(str::to_owned).collect(),
            has_refresh_token: r.has_refresh_token(),
            reconnect_by: r.reconnect_by(refreshes),
            id: r.id,
            platform: r.platform,
            platform_account_id: r.platform_account_id,
            handle: r.handle,
            display_name: r.display_name,
            token_expires_at: r.token_expires_at,
            needs_reauth: r.needs_reauth,
            needs_reauth_since: r.needs_reauth_since,
            auth: r.auth,
            last_error: r.last_error,
            user_id: r.user_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConnectionList {
    pub connections: Vec<ConnectionView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

fn required(field: &str, v: &str, max: usize) -> ApiResult<String> {
    let v = v.trim();
    if v.is_empty() {
        return Err(ApiError::invalid(
            field,
            "missing_field",
            format!("`{field}` is required"),
        ));
    }
    if v.chars().count() > max {
        return Err(ApiError::invalid(
            field,
            "field_too_long",
            format!("`{field}` is longer than {max} characters"),
        ));
    }
    Ok(v.to_owned())
}

/// Store a connection from tokens the app holds.
#[utoipa::path(post, path = "/v1/connections", tag = "connections", request_body = CreateConnectionRequest,
    responses(
        (status = 201, body = ConnectionView),
        (status = 422, description = "A field is invalid; `field` names it. `app_passwords_retired` (field `access_token`): a new Bluesky app-password connection while `HERALD_BLUESKY_APP_PASSWORDS` is `refuse_new` or `refuse`; connect with OAuth instead", body = crate::error::ErrorBody),
    ), security(("api_key" = [])))]
pub async fn create(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiJson(req): ApiJson<CreateConnectionRequest>,
) -> ApiResult<(StatusCode, ApiJson<ConnectionView>)> {
    let platform = PlatformKind::parse(req.platform.trim()).ok_or_else(|| {
        ApiError::invalid(
            "platform",
            "unknown_platform",
            format!("unknown platform `{}`", req.platform),
        )
    })?;
    let platform_account_id = required("platform_account_id", &req.platform_account_id, MAX_ID)?;
    let handle = required("handle", &req.handle, MAX_ID)?;
    // The limit counts what was sent, as the document's `maxLength` does.
    if req
        .display_name
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_ID)
    {
        return Err(ApiError::invalid(
            "display_name",
            "field_too_long",
            format!("`display_name` is longer than {MAX_ID} characters"),
        ));
    }
    let display_name = req
        .display_name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    let access_token = required("access_token", &req.access_token, MAX_TOKEN)?;
    let refresh_token = match req
        .refresh_token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        Some(t) => Some(required("refresh_token", t, MAX_TOKEN)?),
        None => None,
    };
    let expires_at = parse_time("expires_at", req.expires_at.as_deref())?;
    let mut extras = req.extras;
    if platform == PlatformKind::Mastodon {
        let raw = extras
            .get("instance_url")
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                ApiError::invalid(
                    "extras.instance_url",
                    "missing_field",
                    "Mastodon connections need `extras.instance_url`",
                )
            })?;
        let url = state
            .ctx
            .settings
            .ssrf
            .check_url_resolved(raw)
            .await
            .map_err(|e| {
                ApiError::invalid(
                    "extras.instance_url",
                    "invalid_url",
                    format!("`extras.instance_url`: {e}"),
                )
            })?;
        extras.insert(
            "instance_url".into(),
            url.origin().ascii_serialization().into(),
        );
    }
    if let Some(v) = extras.get("max_characters")
        && !v.as_u64().is_some_and(|n| (1..=1_000_000).contains(&n))
    {
        return Err(ApiError::invalid(
            "extras.max_characters",
            "invalid_field",
            "`extras.max_characters` must be a positive whole number",
        ));
    }
    let new = NewConnection {
        platform,
        platform_account_id,
        handle,
        display_name,
        extras,
        scopes: req
            .scopes
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        tokens: StoredTokens {
            access_token: Some(SecretString::from(access_token)),
            refresh_token: refresh_token.map(SecretString::from),
            dpop_key: None,
            expires_at,
        },
    };
    let app_passwords = state.ctx.settings.bluesky.app_passwords;
    if platform == PlatformKind::Bluesky && app_passwords != AppPasswords::Allow {
        let existing = state
            .ctx
            .store
            .tenant_connection_of_account(&tenant.id, platform.as_str(), &new.platform_account_id)
            .await?;
        if !app_passwords.admits(&new, existing.as_ref()) {
            return Err(ApiError::invalid(
                "access_token",
                "app_passwords_retired",
                "Bluesky app passwords are retired here: connect the account with OAuth (POST /v1/connect/bluesky)",
            ));
        }
    }
    let row = state
        .ctx
        .store
        .upsert_connection(&tenant.id, &new, &state.ctx.vault, Utc::now())
        .await?;
    if row.needs_reauth {
        // Fresh tokens for a flagged connection: a worker verifies them, then clears the flag and
        // resumes the parked shares. Until then the connection stays flagged.
        herald_jobs::handlers::refresh::enqueue_reconnect_check(&state.ctx, &row)
            .await
            .map_err(ApiError::from_anyhow)?;
    }
    Ok((
        StatusCode::CREATED,
        ApiJson(ConnectionView::new(row, &state.ctx.platforms)),
    ))
}

#[utoipa::path(get, path = "/v1/connections/{id}", tag = "connections", params(("id" = String, Path)),
    responses((status = 200, body = ConnectionView), (status = 404, body = crate::error::ErrorBody)),
    security(("api_key" = [])))]
pub async fn get(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ApiJson<ConnectionView>> {
    let row = state
        .ctx
        .store
        .tenant_connection(&tenant.id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("connection"))?;
    Ok(ApiJson(ConnectionView::new(row, &state.ctx.platforms)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only connections that need (or do not need) reconnecting.
    pub needs_reauth: Option<bool>,
    /// Only connections with 3 or more failed token refreshes in the last 24 hours.
    pub refresh_failing: Option<bool>,
    /// Only the accounts one user of the app connected (the `user_id` given to the connect flow).
    #[param(min_length = 1, max_length = 255)]
    pub user_id: Option<String>,
    /// Only this platform's connections.
    pub platform: Option<PlatformKind>,
    pub after: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// The tenant's connections, oldest first.
#[utoipa::path(get, path = "/v1/connections", tag = "connections", params(ListQuery),
    responses((status = 200, body = ConnectionList)), security(("api_key" = [])))]
pub async fn list(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<ApiJson<ConnectionList>> {
    let limit = page_limit(q.limit)?;
    if q.user_id
        .as_ref()
        .is_some_and(|u| u.is_empty() || u.chars().count() > 255)
    {
        return Err(ApiError::invalid(
            "user_id",
            "invalid_user_id",
            "`user_id` must be 1 to 255 characters",
        ));
    }
    let failing_since = q
        .refresh_failing
        .unwrap_or(false)
        .then(|| Utc::now() - chrono::Duration::hours(24));
    let rows = state
        .ctx
        .store
        .list_connections(
            &tenant.id,
            &ConnectionFilter {
                needs_reauth: q.needs_reauth,
                refresh_failing_since: failing_since,
                user_id: q.user_id.as_deref(),
                platform: q.platform.map(PlatformKind::as_str),
            },
            q.after.as_deref(),
            limit,
        )
        .await?;
    let next_after = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id.clone()))
        .flatten();
    Ok(ApiJson(ConnectionList {
        connections: rows
            .into_iter()
            .map(|r| ConnectionView::new(r, &state.ctx.platforms))
            .collect(),
        next_after,
    }))
}

/// What removing a connection did at the platform.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RemovedConnection {
    pub id: String,
    /// Whether the platform confirmed the revocation of the grant (a 2xx from its revocation
    /// endpoint). `false` when it refused or could not be reached, when it has no endpoint
    /// Herald calls, or when Herald holds no app credentials for the connection: the grant may
    /// then still be alive at the platform, and the user can end it there.
    pub revoked_at_platform: bool,
    /// `revoked`, `failed` (the platform refused or did not answer), `no_endpoint` (none known
    /// or configured: `HERALD_<P>_REVOKE_URL`), or `no_app` (an imported Mastodon connection, or
    /// a platform whose app is not configured).
    #[schema(example = "revoked")]
    pub revocation: String,
}

/// Remove a connection: its grant is revoked at the platform where the platform has an endpoint
/// for it (Mastodon, X, Bluesky OAuth, or one configured as `HERALD_<P>_REVOKE_URL`), then the
/// connection is soft-deleted and its tokens erased. A failed revocation is logged and does not
/// keep the connection; the answer says whether the platform confirmed it. Queued shares of it
/// then fail with `connection_removed`.
#[utoipa::path(delete, path = "/v1/connections/{id}", tag = "connections", params(("id" = String, Path)),
    responses((status = 200, body = RemovedConnection), (status = 404, body = crate::error::ErrorBody)),
    security(("api_key" = [])))]
pub async fn remove(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ApiJson<RemovedConnection>> {
    let row = state
        .ctx
        .store
        .tenant_connection(&tenant.id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("connection"))?;
    // Revoke first: the tokens are needed for it, and are gone after the delete.
    let revoked = herald_jobs::connect::revoke(&state.ctx, &row).await;
    match &revoked {
        herald_platforms::oauth::Revoked::Failed(reason) => {
            tracing::warn!(connection.id = %row.id, platform = %row.platform, error.message = %reason, "revoking at the platform failed; removing the connection anyway");
        }
        other => {
            tracing::info!(connection.id = %row.id, platform = %row.platform, revoke = ?other, "connection removed");
        }
    }
    if !state
        .ctx
        .store
        .remove_connection(&tenant.id, &row.id, Utc::now())
        .await?
    {
        // Removed by a concurrent request meanwhile.
        return Err(ApiError::not_found("connection"));
    }
    use herald_platforms::oauth::Revoked;
    let revocation = match revoked {
        Revoked::Revoked => "revoked",
        Revoked::NoEndpoint => "no_endpoint",
        Revoked::NoApp => "no_app",
        Revoked::Failed(_) => "failed",
    };
    Ok(ApiJson(RemovedConnection {
        id: row.id,
        revoked_at_platform: revoked == Revoked::Revoked,
        revocation: revocation.into(),
    }))
}
