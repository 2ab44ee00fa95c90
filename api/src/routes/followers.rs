//! `GET /v1/connections/{id}/followers` and `/follower-changes`: what the follower sync stored
//! (`store/followers.rs`), for the tenant that holds the connection.

use axum::extract::State;
use chrono::{DateTime, Utc};
use herald_jobs::{
    replay,
    store::{FollowerChangeRow, FollowerRow},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiJson, ApiPath, ApiQuery, page_limit};
use crate::{
    ApiState,
    auth::Tenant,
    error::{ApiError, ApiResult},
};

/// Which list of a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// The accounts that follow the connected account.
    #[default]
    Followers,
    /// The accounts the connected account follows.
    Follows,
}

impl Relation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Followers => "followers",
            Self::Follows => "follows",
        }
    }
}

/// How many accounts of each list are stored.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FollowerCounts {
    pub followers: i64,
    pub follows: i64,
}

/// One account of a list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FollowerView {
    /// The platform's id of the account (Mastodon account id, Bluesky DID, X user id).
    pub platform_account_id: String,
    pub handle: String,
    /// When a sync first saw it in this list.
    pub first_seen_at: DateTime<Utc>,
}

impl From<FollowerRow> for FollowerView {
    fn from(r: FollowerRow) -> Self {
        Self {
            platform_account_id: r.platform_account_id,
            handle: r.handle,
            first_seen_at: r.first_seen_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FollowerList {
    pub connection_id: String,
    pub relation: Relation,
    pub counts: FollowerCounts,
    /// When the last sync of this list finished; absent before the first.
    pub synced_at: Option<DateTime<Utc>>,
    /// Newest first (by when a sync first saw each).
    pub accounts: Vec<FollowerView>,
    /// Pass as `before` for the next page; absent on the last page.
    pub next_before: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FollowerQuery {
    /// `followers` (the default) or `follows`.
    pub relation: Option<Relation>,
    /// The `next_before` of the previous page.
    pub before: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

fn bad_cursor() -> ApiError {
    ApiError::invalid(
        "before",
        "invalid_cursor",
        "use the `next_before` of the previous page",
    )
}

/// The tenant's live connection's id, or 404 (another tenant's is unknown here too).
async fn connection_id(state: &ApiState, tenant: &Tenant, id: &str) -> ApiResult<String> {
    Ok(state
        .ctx
        .store
        .tenant_connection(&tenant.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("connection"))?
        .id)
}

/// A connection's followers or follows as the last sync found them, newest first, with the
/// counts of both lists. Platforms that list no followers have empty lists.
#[utoipa::path(get, path = "/v1/connections/{id}/followers", tag = "connections", operation_id = "list_followers",
    params(("id" = String, Path), FollowerQuery),
    responses((status = 200, body = FollowerList), (status = 404, body = crate::error::ErrorBody)),
    security(("api_key" = [])))]
pub async fn list(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<FollowerQuery>,
) -> ApiResult<ApiJson<FollowerList>> {
    let limit = page_limit(q.limit)?;
    let relation = q.relation.unwrap_or_default();
    let before = match q.before.as_deref() {
        None => None,
        Some(b) => {
            let (at, account) = b.split_once('~').ok_or_else(bad_cursor)?;
            let at = DateTime::parse_from_rfc3339(at).map_err(|_| bad_cursor())?;
            Some((at.with_timezone(&Utc), account.to_owned()))
        }
    };
    let id = connection_id(&state, &tenant, &id).await?;
    let store = &state.ctx.store;
    let rows = store
        .followers_page(&id, relation.as_str(), before.as_ref(), limit)
        .await?;
    let next_before = (rows.len() as i64 == limit)
        .then(|| {
            rows.last()
                .map(|r| format!("{}~{}", r.first_seen_at.to_rfc3339(), r.platform_account_id))
        })
        .flatten();
    let mut counts = FollowerCounts {
        followers: 0,
        follows: 0,
    };
    for (rel, n) in store.follower_counts(&id).await? {
        match rel.as_str() {
            "followers" => counts.followers = n,
            "follows" => counts.follows = n,
            _ => {}
        }
    }
    let synced_at = store.last_synced_at(&id, relation.as_str()).await?;
    Ok(ApiJson(FollowerList {
        connection_id: id,
        relation,
        counts,
        synced_at,
        accounts: rows.into_iter().map(Into::into).collect(),
        next_before,
    }))
}

/// An account a finished sync run gained or lost.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FollowerChangeView {
    /// The run (`fsr_…`) that found the change.
    pub run_id: String,
    pub relation: Relation,
    /// `gained` or `lost`.
    #[schema(example = "gained")]
    pub change: String,
    pub platform_account_id: String,
    pub handle: String,
    /// When the run finished.
    pub at: DateTime<Utc>,
}

impl From<FollowerChangeRow> for FollowerChangeView {
    fn from(r: FollowerChangeRow) -> Self {
        Self {
            run_id: r.run_id,
            relation: if r.relation == "follows" {
                Relation::Follows
            } else {
                Relation::Followers
            },
            change: r.change,
            platform_account_id: r.platform_account_id,
            handle: r.handle,
            at: r.at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FollowerChangeList {
    /// Newest run first; a run's changes are together.
    pub changes: Vec<FollowerChangeView>,
    /// Pass as `before` for the next page; absent on the last page.
    pub next_before: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FollowerChangeQuery {
    /// Only runs finished at or after this: an RFC 3339 time, or a span back from now (`90s`,
    /// `15m`, `2h`, `7d`).
    pub since: Option<String>,
    /// The `next_before` of the previous page.
    pub before: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// The accounts each finished follower-sync run gained and lost, newest run first. A
/// connection's first run gains every account it finds.
#[utoipa::path(get, path = "/v1/connections/{id}/follower-changes", tag = "connections", operation_id = "list_follower_changes",
    params(("id" = String, Path), FollowerChangeQuery),
    responses((status = 200, body = FollowerChangeList), (status = 404, body = crate::error::ErrorBody)),
    security(("api_key" = [])))]
pub async fn changes(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<FollowerChangeQuery>,
) -> ApiResult<ApiJson<FollowerChangeList>> {
    let limit = page_limit(q.limit)?;
    let since = match q.since.as_deref() {
        None => None,
        Some(s) => Some(replay::since(s, Utc::now(), true).map_err(|e| match e {
            replay::SinceError::Malformed => ApiError::invalid(
                "since",
                "invalid_time",
                "`since` must be RFC 3339 or a span like 2h",
            ),
            replay::SinceError::OutOfRange => ApiError::invalid(
                "since",
                "time_out_of_range",
                "`since` reaches too far back (before the year 1)",
            ),
        })?),
    };
    let before = match q.before.as_deref() {
        None => None,
        Some(b) => Some(
            b.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(bad_cursor)?,
        ),
    };
    let id = connection_id(&state, &tenant, &id).await?;
    let rows = state
        .ctx
        .store
        .follower_changes(&id, since, before, limit)
        .await?;
    let next_before = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.seq.to_string()))
        .flatten();
    Ok(ApiJson(FollowerChangeList {
        changes: rows.into_iter().map(Into::into).collect(),
        next_before,
    }))
}
