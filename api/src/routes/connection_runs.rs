//! `POST /v1/connections/{id}/refresh` and `/sync`: an app asks for a token refresh or a follower
//! sync of one of its connections now. The run is recorded as queued before its job is pushed
//! (`handlers::refresh::queue_refresh`, `handlers::follower_sync::queue_sync`); a request while
//! one is queued or running answers with that run and queues nothing.

use std::sync::Arc;

use axum::{extract::State, http::StatusCode};
use chrono::Utc;
use herald_jobs::{
    handlers::{follower_sync, refresh},
    store::{ConnectionRow, QueuedRun},
};
use herald_platforms::Platform;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiJson, ApiPath};
use crate::{
    ApiState,
    auth::Tenant,
    error::{ApiError, ApiResult},
};

/// A refresh or follower sync asked for.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueuedRunView {
    /// The run: `rfr_…` (a refresh) or `fsr_…` (a follower sync: its followers run, or the
    /// follows run once that one has finished). Operators open it at `GET /v1/jobs/{id}`; the
    /// changes a sync finds name their run in `GET /v1/connections/{id}/follower-changes`.
    #[schema(example = "rfr_0193a4c2-7d2e-7c3a-9f00-1b2c3d4e5f60")]
    pub run_id: String,
    pub connection_id: String,
    /// `queued` or `running` (a follower sync paused by a rate limit is `running`).
    #[schema(example = "queued")]
    pub state: String,
    /// False when a run already queued or running answered the request: nothing new was queued.
    pub queued_now: bool,
}

impl QueuedRunView {
    fn new(conn: &ConnectionRow, run: QueuedRun) -> Self {
        Self {
            run_id: run.id,
            connection_id: conn.id.clone(),
            state: run.state,
            queued_now: run.created,
        }
    }
}

fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, code, message)
}

/// The tenant's live connection and its platform's client, or why nothing can run for it.
async fn runnable<'a>(
    state: &'a ApiState,
    tenant: &Tenant,
    id: &str,
) -> ApiResult<(ConnectionRow, &'a Arc<dyn Platform>)> {
    let conn = state
        .ctx
        .store
        .tenant_connection(&tenant.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("connection"))?;
    if conn.needs_reauth {
        return Err(conflict(
            "needs_reauth",
            "the connection's credentials are dead: the user must reconnect the account first",
        ));
    }
    let platform = conn
        .platform_kind()
        .and_then(|k| state.ctx.platforms.get(k))
        .ok_or_else(|| {
            conflict(
                "platform_unavailable",
                format!("{} is not configured on this Herald", conn.platform),
            )
        })?;
    Ok((conn, platform))
}

/// Refresh a connection's tokens now. Deduplicated: while a refresh of the connection is queued
/// or running (the sweep's included), the answer is that run, and nothing more is queued.
#[utoipa::path(post, path = "/v1/connections/{id}/refresh", tag = "connections", params(("id" = String, Path)),
    responses(
        (status = 202, description = "Queued, or already queued or running (`queued_now` says which)", body = QueuedRunView),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "It cannot run: `needs_reauth` (the user must reconnect), `platform_unavailable`, `refresh_unsupported` (the platform has no token refresh), `no_refresh_token` (Herald holds nothing to refresh with; see `reconnect_by`)", body = crate::error::ErrorBody),
    ), security(("api_key" = [])))]
pub async fn refresh(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<(StatusCode, ApiJson<QueuedRunView>)> {
    let (conn, platform) = runnable(&state, &tenant, &id).await?;
    if !platform.capabilities().refresh {
        return Err(conflict(
            "refresh_unsupported",
            format!("{} offers no token refresh", conn.platform),
        ));
    }
    if !conn.can_refresh() {
        return Err(conflict(
            "no_refresh_token",
            "Herald holds no refresh token for this connection: the user must reconnect before the token expires",
        ));
    }
    let run = refresh::queue_refresh(&state.ctx, &conn)
        .await
        .map_err(ApiError::from_anyhow)?;
    Ok((
        StatusCode::ACCEPTED,
        ApiJson(QueuedRunView::new(&conn, run)),
    ))
}

/// Sync a connection's followers and follows now. Deduplicated: while a sync of the connection is
/// queued or running (paused by a rate limit included), the answer is that run, and nothing more
/// is queued.
#[utoipa::path(post, path = "/v1/connections/{id}/sync", tag = "connections", params(("id" = String, Path)),
    responses(
        (status = 202, description = "Queued, or already queued or running (`queued_now` says which)", body = QueuedRunView),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "It cannot run: `needs_reauth` (the user must reconnect), `platform_unavailable`, `followers_unsupported` (the platform lists no followers: LinkedIn, Facebook Pages, Instagram, Threads), `app_passwords_retired` (a Bluesky app-password connection while `HERALD_BLUESKY_APP_PASSWORDS=refuse`)", body = crate::error::ErrorBody),
    ), security(("api_key" = [])))]
pub async fn sync(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<(StatusCode, ApiJson<QueuedRunView>)> {
    let (conn, platform) = runnable(&state, &tenant, &id).await?;
    if !platform.capabilities().followers {
        return Err(conflict(
            "followers_unsupported",
            format!("{} does not list followers", conn.platform),
        ));
    }
    if state
        .ctx
        .settings
        .bluesky
        .app_passwords
        .refuses(&conn)
        .is_some()
    {
        return Err(conflict(
            "app_passwords_retired",
            "Bluesky app passwords are retired here: connect the account with OAuth (POST /v1/connect/bluesky)",
        ));
    }
    let run = follower_sync::queue_sync(&state.ctx, &conn.id, Utc::now(), None)
        .await
        .map_err(ApiError::from_anyhow)?;
    Ok((
        StatusCode::ACCEPTED,
        ApiJson(QueuedRunView::new(&conn, run)),
    ))
}
