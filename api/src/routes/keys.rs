//! `/v1/keys`: operators list, create and revoke API keys (the same as `herald keys`). Needs an
//! operator key with the `admin` scope.

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use herald_jobs::{
    api_keys::{self, KeyRequest},
    store::ApiKeyRow,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiJson, ApiPath, ApiQuery, page_limit, parse_time};
use crate::{
    ApiState,
    auth::Operator,
    error::{ApiError, ApiResult},
};

/// What a key may do.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // Documentation only: the handler reads the raw value and names it if unknown.
pub enum KeyScope {
    Read,
    Share,
    Connect,
    Admin,
}

/// An API key; never its secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    /// `tenant` or `operator`.
    #[schema(example = "tenant")]
    pub role: String,
    pub tenant_id: Option<String>,
    /// The tenant's name.
    pub tenant: Option<String>,
    /// `read`, `share` and `connect` (tenant keys); `read` and `admin` (operator keys).
    #[schema(value_type = Vec<KeyScope>)]
    pub scopes: Vec<String>,
    pub label: Option<String>,
    /// `active`, `expired` or `revoked`.
    #[schema(example = "active")]
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// When the key was last used, to within about a minute.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl KeyView {
    fn new(r: ApiKeyRow, now: DateTime<Utc>) -> Self {
        Self {
            status: r.status(now).into(),
            scopes: r.scopes.names().into_iter().map(str::to_owned).collect(),
            id: r.id,
            role: r.role.as_str().into(),
            tenant_id: r.tenant_id,
            tenant: r.tenant_name,
            label: r.label,
            created_at: r.created_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            last_used_at: r.last_used_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeyQuery {
    /// Only this tenant's keys (its name).
    pub tenant: Option<String>,
    /// Revoked and expired keys too.
    pub all: Option<bool>,
    pub after: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// API keys, oldest first: active ones, or all with `all=true`.
#[utoipa::path(get, path = "/v1/keys", tag = "operators", params(KeyQuery),
    responses((status = 200, body = KeyList)), security(("api_key" = [])))]
pub async fn list(
    State(state): State<ApiState>,
    _op: Operator,
    ApiQuery(q): ApiQuery<KeyQuery>,
) -> ApiResult<ApiJson<KeyList>> {
    let limit = page_limit(q.limit)?;
    let store = &state.ctx.store;
    let tenant_id = match q.tenant.as_deref() {
        None => None,
        // An unknown tenant has no keys.
        Some(name) => match store.tenant_id_by_name(name).await? {
            Some(id) => Some(id),
            None => {
                return Ok(ApiJson(KeyList {
                    keys: Vec::new(),
                    next_after: None,
                }));
            }
        },
    };
    let now = Utc::now();
    let rows = store
        .list_api_keys(
            tenant_id.as_deref(),
            q.all.unwrap_or(false),
            q.after.as_deref(),
            limit,
            now,
        )
        .await?;
    let next_after = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id.clone()))
        .flatten();
    Ok(ApiJson(KeyList {
        keys: rows.into_iter().map(|r| KeyView::new(r, now)).collect(),
        next_after,
    }))
}

/// A key to create: a tenant's (`tenant`, created if new) or an operator's (`operator: true`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// The tenant's name (1 to 100 characters), for a tenant key.
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    pub tenant: Option<String>,
    /// An operator key instead of a tenant key.
    #[serde(default)]
    pub operator: bool,
    /// Default: every scope of the role (`read`, `share`, `connect` for a tenant key; `read`,
    /// `admin` for an operator key).
    #[schema(value_type = Option<Vec<KeyScope>>, min_items = 1)]
    pub scopes: Option<Vec<String>>,
    /// The key stops working after this span: `90s`, `15m`, `12h`, `30d`.
    #[schema(pattern = "^[0-9]+[smhd]$", example = "30d")]
    pub expires_in: Option<String>,
    /// The key stops working at this time (RFC 3339, in the future); or `expires_in`.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    #[schema(max_length = 200)]
    pub label: Option<String>,
}

/// A key just created: the only time `key` is shown.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedKeyView {
    /// The whole key, `hk_...`: send it as `Authorization: Bearer <key>`. Herald keeps only a hash.
    pub key: String,
    #[serde(flatten)]
    pub view: KeyView,
}

fn refused(e: api_keys::CreateError) -> ApiError {
    match e {
        api_keys::CreateError::Invalid(i) => ApiError::invalid(i.field, i.code, i.message),
        api_keys::CreateError::Store(e) => e.into(),
    }
}

/// Create an API key.
#[utoipa::path(post, path = "/v1/keys", tag = "operators", request_body = CreateKeyRequest,
    responses((status = 201, body = CreatedKeyView)), security(("api_key" = [])))]
pub async fn create(
    State(state): State<ApiState>,
    _op: Operator,
    ApiJson(req): ApiJson<CreateKeyRequest>,
) -> ApiResult<(StatusCode, ApiJson<CreatedKeyView>)> {
    let now = Utc::now();
    let req = KeyRequest {
        tenant: req.tenant,
        operator: req.operator,
        scopes: req.scopes,
        expires_in: req.expires_in,
        expires_at: parse_time("expires_at", req.expires_at.as_deref())?,
        label: req.label,
    };
    let created = api_keys::create(&state.ctx.store, &req, now)
        .await
        .map_err(refused)?;
    Ok((
        StatusCode::CREATED,
        ApiJson(CreatedKeyView {
            key: created.key,
            view: KeyView::new(created.row, now),
        }),
    ))
}

/// Revoke an API key. This process refuses it at once, every other API process within 5
/// seconds. Revoking a revoked key changes nothing and answers the same. A key cannot revoke
/// itself here (`409 own_key`): use another operator key, or `herald keys revoke`.
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "operators", params(("id" = String, Path)),
    responses(
        (status = 200, body = KeyView),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "`own_key`: the key making the request", body = crate::error::ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn revoke(
    State(state): State<ApiState>,
    op: Operator,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ApiJson<KeyView>> {
    if id == op.key_id {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "own_key",
            "a key cannot revoke itself: use another operator key, or `herald keys revoke`",
        ));
    }
    let now = Utc::now();
    let row = state
        .ctx
        .store
        .revoke_api_key(&id, now)
        .await?
        .ok_or_else(|| ApiError::not_found("API key"))?;
    Ok(ApiJson(KeyView::new(row, now)))
}
