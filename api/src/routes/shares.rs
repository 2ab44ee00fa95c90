//! `/v1/shares`: enqueue, inspect, list by URL, cancel.

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
};
use chrono::{DateTime, Utc};
use herald_jobs::{
    payloads::ShareV1,
    share_request::{ShareRequest, ShareRequestBody},
    store::{AttemptRow, Cancel, CreateOutcome, CreateShares, NewShare, ShareRow, ShareState},
};
use herald_platforms::PostRequest;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::{ApiJson, ApiPath, ApiQuery, page_limit};
use crate::{
    ApiState,
    auth::Tenant,
    error::{ApiError, ApiResult},
};

const MAX_IDEMPOTENCY_KEY: usize = 255;

/// A share request: one link, posted to each target connection.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateShareRequest {
    /// The link to share (http or https).
    #[schema(min_length = 1, pattern = "\\S", max_length = 2048)]
    pub url: String,
    #[schema(max_length = 300)]
    pub title: Option<String>,
    /// The post's text; each platform's length limit applies.
    #[schema(max_length = 10000)]
    pub text: Option<String>,
    /// An image for platforms that take one (fetched through the SSRF guard).
    pub image_url: Option<String>,
    /// When to publish (RFC 3339, before 9999-01-01); now if absent.
    #[schema(format = DateTime)]
    pub publish_at: Option<String>,
    /// The latest time the post may still go out (RFC 3339, before 9999-01-01); after it the
    /// share expires.
    #[schema(format = DateTime)]
    pub not_after: Option<String>,
    /// The connections to post to (1 to 50, no repeats).
    #[schema(min_items = 1, max_items = 50)]
    pub connection_ids: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ShareError {
    /// `transient`, `rate_limited`, `rejected`, `needs_reauth`, `outcome_unknown`, ...
    pub class: String,
    pub message: Option<String>,
    /// The platform's HTTP status, when it answered.
    pub platform_status: Option<i32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PostView {
    pub id: String,
    pub url: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AttemptView {
    pub number: i32,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub error_class: Option<String>,
    pub error_message: Option<String>,
    pub platform_status: Option<i32>,
}

/// One share: one post to one connection.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ShareView {
    pub id: String,
    pub connection_id: String,
    pub platform: String,
    pub url: String,
    pub title: Option<String>,
    pub text: Option<String>,
    pub image_url: Option<String>,
    pub state: ShareState,
    pub attempts: i32,
    /// When it runs next (or ran last).
    pub run_at: DateTime<Utc>,
    pub not_after: Option<DateTime<Utc>>,
    pub last_error: Option<ShareError>,
    /// Set once the platform accepted the post.
    pub post: Option<PostView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Each attempt, oldest first (only on `GET /v1/shares/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt_history: Option<Vec<AttemptView>>,
}

impl ShareView {
    pub(crate) fn from_row(r: ShareRow) -> ApiResult<Self> {
        let state = r.state()?;
        Ok(Self {
            last_error: r.last_error_class.map(|class| ShareError {
                class,
                message: r.last_error,
                platform_status: r.last_status,
            }),
            post: r.post_id.map(|id| PostView {
                id,
                url: r.post_url,
            }),
            id: r.id,
            connection_id: r.connection_id,
            platform: r.platform,
            url: r.url,
            title: r.title,
            text: r.body,
            image_url: r.image_url,
            state,
            attempts: r.attempts,
            run_at: r.run_at,
            not_after: r.not_after,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
            attempt_history: None,
        })
    }
}

impl From<AttemptRow> for AttemptView {
    fn from(a: AttemptRow) -> Self {
        Self {
            number: a.number,
            started_at: a.started_at,
            finished_at: a.finished_at,
            outcome: a.outcome,
            error_class: a.error_class,
            error_message: a.error_message,
            platform_status: a.platform_status,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ShareList {
    pub shares: Vec<ShareView>,
    /// Pass as `before` for the next page; absent on the last page.
    pub next_before: Option<String>,
}

/// Enqueue a share to one or more connections.
///
/// Answers 202 with one share per target. With an `Idempotency-Key` header the request is safe to
/// repeat: the same key and body return the same shares and enqueue nothing new; the same key with
/// another body is refused (422 `idempotency_key_reused`).
#[utoipa::path(post, path = "/v1/shares", tag = "shares", request_body = CreateShareRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the request safe to repeat")),
    responses(
        (status = 202, description = "Accepted; one share per target", body = ShareList),
        (status = 400, description = "Malformed JSON", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = crate::error::ErrorBody),
        (status = 413, description = "Body too large", body = crate::error::ErrorBody),
        (status = 422, description = "A field is invalid; `field` names it", body = crate::error::ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn create(
    State(state): State<ApiState>,
    tenant: Tenant,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateShareRequest>,
) -> ApiResult<(StatusCode, ApiJson<ShareList>)> {
    let now = Utc::now();
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY);
            Some(k.ok_or_else(|| ApiError::invalid("Idempotency-Key", "invalid_idempotency_key", format!("the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY} visible characters")))?.to_owned())
        }
    };

    let parsed = ShareRequest::parse(
        ShareRequestBody {
            url: &req.url,
            title: req.title.as_deref(),
            text: req.text.as_deref(),
            image_url: req.image_url.as_deref(),
            publish_at: req.publish_at.as_deref(),
            not_after: req.not_after.as_deref(),
            connection_ids: &req.connection_ids,
        },
        &state.ctx.settings.ssrf,
        state.ctx.settings.share_lateness,
        now,
    )?;
    let ShareRequest {
        url,
        title,
        text,
        image_url,
        run_at,
        not_after,
        connection_ids,
    } = parsed;
    let not_after = Some(not_after);
    let mut shares = Vec::with_capacity(connection_ids.len());
    for (i, id) in connection_ids.iter().enumerate() {
        let field = format!("connection_ids[{i}]");
        // Another tenant's connection is indistinguishable from one that does not exist.
        let conn = state
            .ctx
            .store
            .recent_tenant_connection(&tenant.id, id)
            .await?
            .ok_or_else(|| {
                ApiError::invalid(
                    &field,
                    "unknown_connection",
                    format!("no connection `{id}`"),
                )
            })?;
        let kind = conn
            .platform_kind()
            .ok_or_else(|| ApiError::internal(format!("stored platform `{}`", conn.platform)))?;
        let platform = state.ctx.platforms.get(kind).ok_or_else(|| {
            ApiError::invalid(
                &field,
                "platform_unavailable",
                format!("{kind} is not configured on this Herald"),
            )
        })?;
        let probe = PostRequest {
            share_id: String::new(),
            url: url.clone(),
            title: title.clone(),
            text: text.clone(),
            image_url: image_url.clone(),
            idempotency_key: String::new(),
            checkpoint: Default::default(),
        };
        platform.validate(&conn.account(), &probe).map_err(|inv| {
            let field = if inv.field == "text" {
                "text".to_owned()
            } else {
                format!("{field}.{}", inv.field)
            };
            ApiError::invalid(field, inv.code, inv.message)
        })?;
        shares.push(NewShare {
            connection_id: conn.id,
            platform: kind.as_str().to_owned(),
            url: url.clone(),
            title: title.clone(),
            body: text.clone(),
            image_url: image_url.clone(),
            run_at,
            not_after,
        });
    }

    let canonical = serde_json::to_vec(&serde_json::to_value(&req).map_err(ApiError::internal)?)
        .map_err(ApiError::internal)?;
    let request_hash = Sha256::digest(&canonical)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let create = CreateShares {
        tenant_id: tenant.id.clone(),
        idempotency_key,
        request_hash,
        shares,
    };
    // The write and the pushes after it run on a task of their own: a client that hangs up
    // drops this handler, and that must not cut the enqueue between the commit and the push.
    let ctx = state.ctx.clone();
    let created = tokio::spawn(async move {
        let outcome = ctx.store.create_shares(&create, now).await?;
        if let CreateOutcome::Created(rows) = &outcome {
            enqueue(&ctx, rows);
        }
        Ok::<_, herald_jobs::store::StoreError>(outcome)
    })
    .await
    .map_err(ApiError::internal)??;
    let rows = match created {
        CreateOutcome::Created(rows) => rows,
        CreateOutcome::Replayed(rows) => rows,
        CreateOutcome::ConnectionGone(id) => {
            let i = req
                .connection_ids
                .iter()
                .position(|c| *c == id)
                .unwrap_or(0);
            return Err(ApiError::invalid(
                format!("connection_ids[{i}]"),
                "unknown_connection",
                format!("no connection `{id}`"),
            ));
        }
        CreateOutcome::KeyReused => {
            return Err(ApiError::invalid(
                "Idempotency-Key",
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different request",
            ));
        }
    };
    let shares = rows
        .into_iter()
        .map(ShareView::from_row)
        .collect::<ApiResult<Vec<_>>>()?;
    Ok((
        StatusCode::ACCEPTED,
        ApiJson(ShareList {
            shares,
            next_before: None,
        }),
    ))
}

/// One share with its attempts.
#[utoipa::path(get, path = "/v1/shares/{id}", tag = "shares", params(("id" = String, Path)),
    responses((status = 200, body = ShareView), (status = 404, body = crate::error::ErrorBody)),
    security(("api_key" = [])))]
pub async fn get(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ApiJson<ShareView>> {
    let row = state
        .ctx
        .store
        .tenant_share(&tenant.id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("share"))?;
    let attempts = state.ctx.store.share_attempts(&row.id).await?;
    let mut view = ShareView::from_row(row)?;
    view.attempt_history = Some(attempts.into_iter().map(AttemptView::from).collect());
    Ok(ApiJson(view))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only shares of this URL (the "already shared" indicator).
    pub url: Option<String>,
    /// Page: shares older than this share id.
    pub before: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// The tenant's shares, newest first, optionally of one URL.
#[utoipa::path(get, path = "/v1/shares", tag = "shares", params(ListQuery),
    responses((status = 200, body = ShareList)), security(("api_key" = [])))]
pub async fn list(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<ApiJson<ShareList>> {
    let limit = page_limit(q.limit)?;
    let rows = state
        .ctx
        .store
        .list_shares(&tenant.id, q.url.as_deref(), q.before.as_deref(), limit)
        .await?;
    let next_before = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id.clone()))
        .flatten();
    let shares = rows
        .into_iter()
        .map(ShareView::from_row)
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(ApiJson(ShareList {
        shares,
        next_before,
    }))
}

/// Cancel a share that has not run (queued or parked).
#[utoipa::path(delete, path = "/v1/shares/{id}", tag = "shares", params(("id" = String, Path)),
    responses(
        (status = 200, description = "Cancelled", body = ShareView),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "Already running or finished (`share_not_cancellable`)", body = crate::error::ErrorBody),
    ), security(("api_key" = [])))]
pub async fn cancel(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ApiJson<ShareView>> {
    match state
        .ctx
        .store
        .cancel_share(&tenant.id, &id, Utc::now())
        .await?
    {
        Cancel::Cancelled(row) => Ok(ApiJson(ShareView::from_row(row)?)),
        Cancel::TooLate(row) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "share_not_cancellable",
            format!("the share is {} and can no longer be cancelled", row.state),
        )),
        Cancel::NotFound => Err(ApiError::not_found("share")),
    }
}

/// Pushes committed shares to the queue on a task of its own, so a slow or unreachable queue does
/// not hold the answer: the shares are accepted once committed, and a failed push is recovered by
/// the reconciler (on the store's engines the row is the job and the push only wakes a worker).
fn enqueue(ctx: &herald_jobs::Ctx, rows: &[herald_jobs::store::ShareRow]) {
    let pushes: Vec<(String, DateTime<Utc>, String)> = rows
        .iter()
        .map(|r| (r.id.clone(), r.run_at, r.delivery_key()))
        .collect();
    let queue = ctx.queue.clone();
    tokio::spawn(async move {
        for (id, run_at, key) in pushes {
            let job = ShareV1 {
                share_id: id.clone(),
            };
            if let Err(e) = queue.enqueue(&job, run_at, &key).await {
                tracing::warn!(share.id = %id, error = %e, "enqueue failed; the reconciler will deliver it");
            }
        }
    });
}
