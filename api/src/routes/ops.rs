//! `/v1/ops/...`: operators' cross-tenant views. `GET /v1/ops/connections` lists the accounts
//! behind an alert (`needs_reauth`, `refresh_failing`) whatever tenant holds them.

use axum::extract::State;
use chrono::Utc;
use herald_jobs::store::OpsConnectionFilter;
use herald_platforms::PlatformKind;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiJson, ApiQuery, connections::ConnectionView, page_limit};
use crate::{
    ApiState,
    auth::Operator,
    error::{ApiError, ApiResult},
};

/// A connection as operators see it: with its tenant.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OpsConnectionView {
    pub tenant_id: String,
    #[serde(flatten)]
    pub connection: ConnectionView,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OpsConnectionList {
    pub connections: Vec<OpsConnectionView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OpsConnectionQuery {
    /// Only connections that need (or do not need) reconnecting.
    pub needs_reauth: Option<bool>,
    /// Only connections with 3 or more failed token refreshes in the last 24 hours (what
    /// `herald_connections_refresh_failing` counts).
    pub refresh_failing: Option<bool>,
    #[param(value_type = Option<herald_platforms::PlatformKind>)]
    pub platform: Option<String>,
    pub after: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// Every tenant's connections, oldest first: the accounts behind the reauth and refresh alerts.
#[utoipa::path(get, path = "/v1/ops/connections", tag = "operators", params(OpsConnectionQuery),
    responses((status = 200, body = OpsConnectionList)), security(("api_key" = [])))]
pub async fn connections(
    State(state): State<ApiState>,
    _op: Operator,
    ApiQuery(q): ApiQuery<OpsConnectionQuery>,
) -> ApiResult<ApiJson<OpsConnectionList>> {
    let limit = page_limit(q.limit)?;
    if let Some(p) = q.platform.as_deref()
        && PlatformKind::parse(p).is_none()
    {
        return Err(ApiError::invalid(
            "platform",
            "unknown_platform",
            format!("unknown platform `{p}`"),
        ));
    }
    let filter = OpsConnectionFilter {
        needs_reauth: q.needs_reauth,
        refresh_failing_since: q
            .refresh_failing
            .unwrap_or(false)
            .then(|| Utc::now() - chrono::Duration::hours(24)),
        platform: q.platform,
    };
    let rows = state
        .ctx
        .store
        .ops_connections(&filter, q.after.as_deref(), limit)
        .await?;
    let next_after = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id.clone()))
        .flatten();
    Ok(ApiJson(OpsConnectionList {
        connections: rows
            .into_iter()
            .map(|r| OpsConnectionView {
                tenant_id: r.tenant_id.clone(),
                connection: ConnectionView::new(r, &state.ctx.platforms),
            })
            .collect(),
        next_after,
    }))
}
