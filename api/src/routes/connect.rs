//! `/v1/connect/{platform}`: connect an account through the platform's authorization page.
//! The flow itself lives in `herald_jobs::connect`; these handlers map it to HTTP.

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use herald_jobs::connect::{self, Callback, CallbackParams, StartError, StartRequest};
use herald_platforms::PlatformKind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiJson, ApiPath, ApiQuery};
use crate::{
    ApiState,
    auth::Tenant,
    error::{ApiError, ApiResult},
};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartConnectRequest {
    /// The app's own id of the user connecting an account; stored with the connection.
    #[schema(min_length = 1, pattern = "\\S")]
    pub user_id: String,
    /// Where the browser is sent back, with `connection_id=…` (comma-separated for Facebook Pages:
    /// one connection per page) or `error=denied|invalid_state|exchange_failed|verify_failed`
    /// (Bluesky also `issuer_mismatch|account_mismatch|insufficient_scope`).
    #[schema(min_length = 1, pattern = "\\S")]
    pub return_url: String,
    /// Mastodon only: the user's instance, e.g. `https://mastodon.social`.
    pub instance_url: Option<String>,
    /// Bluesky only: the user's handle (`alice.bsky.social`) or DID; sent to the sign-in page as
    /// a hint. Herald resolves it to the account's PDS and authorization server.
    pub handle: Option<String>,
    /// Bluesky only, instead of `handle`: a PDS or entryway URL (`https://bsky.social`), for a
    /// user who names the account on the sign-in page.
    pub server_url: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StartConnectResponse {
    /// Send the user's browser here.
    pub authorization_url: String,
    /// The flow must come back before this time.
    pub state_expires_at: DateTime<Utc>,
}

fn platform(raw: &str) -> ApiResult<PlatformKind> {
    PlatformKind::parse(raw).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_platform",
            format!("unknown platform `{raw}`"),
        )
    })
}

/// Start connecting an account: answers the URL to send the user's browser to.
#[utoipa::path(post, path = "/v1/connect/{platform}", tag = "connections",
    params(("platform" = herald_platforms::PlatformKind, Path)), request_body = StartConnectRequest,
    responses(
        (status = 200, body = StartConnectResponse),
        (status = 404, description = "`unknown_platform`", body = crate::error::ErrorBody),
        (status = 422, description = "`platform_unavailable`, or a field is invalid; `field` names it", body = crate::error::ErrorBody),
        (status = 502, description = "The Mastodon instance did not register Herald's app, or Bluesky's authorization server refused the pushed request", body = crate::error::ErrorBody),
    ), security(("api_key" = [])))]
pub async fn start(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiPath(raw): ApiPath<String>,
    ApiJson(req): ApiJson<StartConnectRequest>,
) -> ApiResult<ApiJson<StartConnectResponse>> {
    let platform = platform(&raw)?;
    let started = connect::start(
        &state.ctx,
        &StartRequest {
            tenant_id: &tenant.id,
            user_id: &req.user_id,
            platform,
            return_url: &req.return_url,
            instance_url: req.instance_url.as_deref(),
            handle: req.handle.as_deref(),
            server_url: req.server_url.as_deref(),
        },
    )
    .await
    .map_err(|e| match e {
        StartError::PlatformUnavailable(_) => {
            ApiError::invalid("platform", "platform_unavailable", e.to_string())
        }
        StartError::Invalid {
            field,
            code,
            message,
        } => ApiError::invalid(field, code, message),
        StartError::Registration(inner) => {
            tracing::warn!(platform = "mastodon", error.message = %inner, "app registration failed");
            ApiError {
                status: StatusCode::BAD_GATEWAY,
                code: "instance_registration_failed",
                message: "the Mastodon instance did not register Herald's app; try again later"
                    .into(),
                field: Some("instance_url".into()),
                share_id: None,
                platform: None,
            }
        }
        StartError::Upstream {
            field,
            code,
            message,
        } => {
            tracing::warn!(platform = %platform, error.message = %message, "an authorization server failed the start");
            ApiError {
                status: StatusCode::BAD_GATEWAY,
                code,
                message,
                field: Some(field.into()),
                share_id: None,
                platform: None,
            }
        }
        StartError::Internal(e) => ApiError::from_anyhow(e),
    })?;
    Ok(ApiJson(StartConnectResponse {
        authorization_url: started.authorization_url,
        state_expires_at: started.state_expires_at,
    }))
}

/// Where the platform sends the browser back. No API key: the state is the credential. Answers
/// `303` to the flow's return URL, or `400 invalid_state` when the state is unknown (there is no
/// return URL to trust then).
#[utoipa::path(get, path = "/v1/connect/{platform}/callback", tag = "connections",
    params(("platform" = herald_platforms::PlatformKind, Path), ("code" = Option<String>, Query), ("state" = Option<String>, Query), ("error" = Option<String>, Query), ("iss" = Option<String>, Query)),
    responses(
        (status = 303, description = "Back to the return URL with `connection_id` or `error`"),
        (status = 400, description = "Unknown state", body = crate::error::ErrorBody),
        (status = 404, description = "`unknown_platform`", body = crate::error::ErrorBody),
    ))]
pub async fn callback(
    State(state): State<ApiState>,
    ApiPath(raw): ApiPath<String>,
    ApiQuery(params): ApiQuery<CallbackParams>,
) -> ApiResult<Response> {
    let platform = platform(&raw)?;
    match connect::finish(&state.ctx, platform, &params)
        .await
        .map_err(ApiError::from_anyhow)?
    {
        Callback::Redirect(url) => Ok((
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, url.to_string()),
                // The URL carried a code and a state: keep it out of caches and referrers.
                (header::CACHE_CONTROL, "no-store".to_owned()),
                (header::REFERRER_POLICY, "no-referrer".to_owned()),
            ],
        )
            .into_response()),
        Callback::UnknownState => Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_state",
            message: "this sign-in link is unknown or was already used; start connecting again"
                .into(),
            field: Some("state".into()),
            share_id: None,
            platform: None,
        }),
    }
}
