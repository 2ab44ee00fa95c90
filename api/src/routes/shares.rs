//! `/v1/shares`: enqueue, inspect, list, edit, retry, cancel.

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
};
use chrono::{DateTime, Utc};
use herald_jobs::{
    media,
    payloads::ShareV1,
    replay,
    share_request::{self, ShareContent, ShareRequest, ShareRequestBody},
    store::{
        AttemptRow, Cancel, ConnectionRow, CreateOutcome, CreateShares, Edit, NewShare, Replay,
        Replayer, ShareEdit, ShareFilter, ShareRow, ShareState,
    },
};
use herald_platforms::{Platform, PostRequest};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::{ApiJson, ApiPath, ApiQuery, page_limit, parse_time};
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
    /// One image without alt text (kept for older clients; `media` is the way to send images).
    /// Fetched at enqueue like `media`; Bluesky shows it as the link card's thumbnail.
    #[schema(max_length = 2048)]
    pub image_url: Option<String>,
    /// Images to attach, in order, each with its alt text. Fetched once at enqueue (through the
    /// SSRF guard) and kept until the share finishes, so a later change of the URL cannot alter
    /// the post. Each target's platform limits apply (count, types, size, alt text length); a
    /// target that cannot take them refuses the request (422 naming the field and `platform`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 20)]
    pub media: Vec<MediaRequest>,
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
    /// Post even if the same link and text went to a target within the duplicate window
    /// (`HERALD_DUPLICATE_WINDOW_SECS`, 48 h by default); otherwise such a request is refused
    /// with 409 `already_shared`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_duplicate: bool,
}

/// One image of a share request.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MediaRequest {
    /// Where to fetch it (http or https; JPEG, PNG, GIF or WebP as each target takes).
    #[schema(min_length = 1, max_length = 2048)]
    pub url: String,
    /// Its description for people who cannot see it. Each platform's limit applies.
    #[schema(max_length = 5000)]
    pub alt: Option<String>,
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
    /// Its images as requested, in order, each captured when the share was accepted (only on
    /// `GET /v1/shares/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<Vec<MediaView>>,
}

/// One image of a share: where it was fetched from, and its alt text.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MediaView {
    pub url: String,
    pub alt: Option<String>,
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
            media: None,
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

    let media_refs: Vec<(&str, Option<&str>)> = req
        .media
        .iter()
        .map(|m| (m.url.as_str(), m.alt.as_deref()))
        .collect();
    let parsed = ShareRequest::parse(
        ShareRequestBody {
            url: &req.url,
            title: req.title.as_deref(),
            text: req.text.as_deref(),
            image_url: req.image_url.as_deref(),
            media: &media_refs,
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
        media,
        run_at,
        not_after,
        connection_ids,
    } = parsed;
    let content = ShareContent {
        url,
        title,
        text,
        image_url,
    };
    let duplicate_key = content.duplicate_key();
    let not_after = Some(not_after);
    let first_image = media.first().map(|m| m.url.as_str());
    let mut shares = Vec::with_capacity(connection_ids.len());
    let mut targets = Vec::with_capacity(connection_ids.len());
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
        validate_for(platform.as_ref(), &conn, &content, first_image, &field)?;
        // Before anything is fetched: a target that takes no images, or not this many, or not
        // this much alt text, refuses the request.
        media::check_declared(platform.as_ref(), &media, &field)?;
        targets.push((platform.clone(), field));
        shares.push(NewShare {
            connection_id: conn.id,
            platform: kind.as_str().to_owned(),
            url: content.url.clone(),
            title: content.title.clone(),
            body: content.text.clone(),
            image_url: content.image_url.clone(),
            run_at,
            not_after,
            duplicate_key: Some(duplicate_key.clone()),
            media: Vec::new(),
        });
    }
    let mut blobs = Vec::new();
    if !media.is_empty() {
        // Fetched once for every target, then checked against each target's rules.
        let fetched = media::capture(&state.ctx, &media).await?;
        for (platform, field) in &targets {
            media::check_fetched(platform.as_ref(), &media, &fetched, field)?;
        }
        let (list, stored) = media::to_store(&media, &fetched);
        for s in &mut shares {
            s.media = list.clone();
        }
        blobs = stored;
    }
    let window = state.ctx.settings.duplicate_window;
    // A window reaching before any share could exist is the same as one reaching back to 1970.
    let duplicates_since = (!req.allow_duplicate && !window.is_zero()).then(|| {
        chrono::Duration::from_std(window)
            .ok()
            .and_then(|w| now.checked_sub_signed(w))
            .map_or(DateTime::UNIX_EPOCH, |t| t.max(DateTime::UNIX_EPOCH))
    });

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
        duplicates_since,
        blobs,
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
        CreateOutcome::AlreadyShared {
            connection_id,
            share_id,
        } => {
            let i = req
                .connection_ids
                .iter()
                .position(|c| *c == connection_id)
                .unwrap_or(0);
            return Err(ApiError {
                field: Some(format!("connection_ids[{i}]")),
                share_id: Some(share_id),
                ..ApiError::new(
                    StatusCode::CONFLICT,
                    "already_shared",
                    format!(
                        "this link and text went to `{connection_id}` within the duplicate window; \
                         see `share_id`, or send `allow_duplicate: true` to post it again"
                    ),
                )
            });
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
    let media = if row.media_count > 0 {
        state.ctx.store.share_media_list(&row.id).await?
    } else {
        Vec::new()
    };
    let mut view = ShareView::from_row(row)?;
    view.attempt_history = Some(attempts.into_iter().map(AttemptView::from).collect());
    view.media = Some(
        media
            .into_iter()
            .map(|(url, alt)| MediaView { url, alt })
            .collect(),
    );
    Ok(ApiJson(view))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only shares of this URL (the "already shared" indicator).
    pub url: Option<String>,
    /// Only shares in this state.
    #[param(value_type = Option<ShareState>)]
    pub state: Option<String>,
    /// Only shares to this connection.
    pub connection_id: Option<String>,
    /// Only shares to the connections of this user of your app.
    pub user_id: Option<String>,
    /// Only shares to this platform.
    #[param(value_type = Option<herald_platforms::PlatformKind>)]
    pub platform: Option<String>,
    /// Only shares created at or after this time (RFC 3339).
    #[param(format = DateTime)]
    pub created_since: Option<String>,
    /// Only shares created before this time (RFC 3339).
    #[param(format = DateTime)]
    pub created_before: Option<String>,
    /// Page: shares older than this share id.
    pub before: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

impl ListQuery {
    fn filter(&self) -> ApiResult<ShareFilter> {
        let state = match self.state.as_deref() {
            None => None,
            Some(s) => Some(ShareState::parse(s).ok_or_else(|| {
                ApiError::invalid("state", "invalid_state", format!("unknown state `{s}`"))
            })?),
        };
        if let Some(p) = self.platform.as_deref()
            && herald_platforms::PlatformKind::parse(p).is_none()
        {
            return Err(ApiError::invalid(
                "platform",
                "unknown_platform",
                format!("unknown platform `{p}`"),
            ));
        }
        Ok(ShareFilter {
            url: self.url.clone(),
            state,
            connection_id: self.connection_id.clone(),
            user_id: self.user_id.clone(),
            platform: self.platform.clone(),
            created_since: parse_time("created_since", self.created_since.as_deref())?,
            created_before: parse_time("created_before", self.created_before.as_deref())?,
        })
    }
}

/// The tenant's shares, newest first. Every filter given narrows the list.
#[utoipa::path(get, path = "/v1/shares", tag = "shares", params(ListQuery),
    responses(
        (status = 200, body = ShareList),
        (status = 422, description = "A filter is invalid; `field` names it", body = crate::error::ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn list(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<ApiJson<ShareList>> {
    let limit = page_limit(q.limit)?;
    let filter = q.filter()?;
    let rows = state
        .ctx
        .store
        .list_shares(&tenant.id, &filter, q.before.as_deref(), limit)
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

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// Required to retry a share in `outcome_unknown`: it may already be posted.
    #[serde(default)]
    pub force: bool,
    /// Why (up to 500 characters); required with `force`, kept with the share's history.
    pub reason: Option<String>,
}

/// Retry a `failed` or `expired` share: queued again now, with a fresh attempt budget and a
/// fresh lateness window. An `outcome_unknown` share may already be posted: it is retried only
/// with `force` and a `reason`.
#[utoipa::path(post, path = "/v1/shares/{id}/retry", tag = "shares", params(("id" = String, Path)),
    request_body(content = RetryRequest, description = "Optional; an empty body is a plain retry"),
    responses(
        (status = 202, description = "Queued again", body = ShareView),
        (status = 400, description = "Malformed JSON", body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "`needs_force` (outcome unknown) or `share_not_retryable` (queued, running, succeeded, parked or cancelled)", body = crate::error::ErrorBody),
        (status = 413, description = "Body too large", body = crate::error::ErrorBody),
        (status = 422, description = "A field is invalid; `field` names it", body = crate::error::ErrorBody),
    ), security(("api_key" = [])))]
pub async fn retry(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, ApiJson<ShareView>)> {
    let req: RetryRequest = super::optional_json(&body)?;
    let force = super::force_reason(req.force, req.reason.as_deref())?;
    let out = replay::requeue(
        &state.ctx,
        &id,
        Replayer::Tenant(&tenant.id),
        &tenant.key_id,
        force.as_deref(),
    )
    .await
    .map_err(ApiError::from_anyhow)?;
    match out {
        Replay::Replayed(row) => Ok((StatusCode::ACCEPTED, ApiJson(ShareView::from_row(row)?))),
        Replay::NotFound => Err(ApiError::not_found("share")),
        Replay::NeedsForce(_) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "needs_force",
            "this share's outcome is unknown and it may already be posted: retry with `force` and a `reason`",
        )),
        Replay::NotReplayable(row) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "share_not_retryable",
            format!(
                "the share is {}; only failed or expired shares are retried",
                row.state
            ),
        )),
    }
}

/// An edit of a share that has not started. Absent fields keep their value; `""` removes a
/// title or text.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditShareRequest {
    #[schema(min_length = 1, pattern = "\\S", max_length = 2048)]
    pub url: Option<String>,
    #[schema(max_length = 300)]
    pub title: Option<String>,
    #[schema(max_length = 10000)]
    pub text: Option<String>,
    /// A new publish time (RFC 3339). Without `not_after`, the share's latest time moves with it.
    #[schema(format = DateTime)]
    pub publish_at: Option<String>,
    #[schema(format = DateTime)]
    pub not_after: Option<String>,
}

/// Reschedule a share or edit its text, title or URL before it starts.
///
/// Only a share that is `queued` and was never picked up by a worker can be edited; the edit is
/// checked like a new share (including the target platform's length rules) and is a
/// compare-and-set, so a worker claiming the share at the same moment either runs the edited
/// share or the edit is refused with 409 `share_not_editable`.
#[utoipa::path(patch, path = "/v1/shares/{id}", tag = "shares", params(("id" = String, Path)),
    request_body = EditShareRequest,
    responses(
        (status = 200, description = "Edited", body = ShareView),
        (status = 400, description = "Malformed JSON", body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "Already started or finished (`share_not_editable`)", body = crate::error::ErrorBody),
        (status = 413, description = "Body too large", body = crate::error::ErrorBody),
        (status = 422, description = "A field is invalid; `field` names it", body = crate::error::ErrorBody),
    ), security(("api_key" = [])))]
pub async fn edit(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<EditShareRequest>,
) -> ApiResult<ApiJson<ShareView>> {
    let publish_at = parse_time("publish_at", req.publish_at.as_deref())?;
    let not_after = parse_time("not_after", req.not_after.as_deref())?;
    // Another edit between the read and the write makes the write miss: read and check again.
    for _ in 0..3 {
        let now = Utc::now();
        let share = state
            .ctx
            .store
            .tenant_share(&tenant.id, &id)
            .await?
            .ok_or_else(|| ApiError::not_found("share"))?;
        if !share.editable() {
            return Err(not_editable(&share));
        }
        let content = ShareContent::parse(
            req.url.as_deref().unwrap_or(&share.url),
            req.title.as_deref().or(share.title.as_deref()),
            req.text.as_deref().or(share.body.as_deref()),
            share.image_url.as_deref(),
            &state.ctx.settings.ssrf,
        )?;
        // The images were checked when the share was made; only the platform's need of one
        // matters here.
        let stored_image = (share.media_count > 0).then_some("stored image");
        let (run_at, not_after) =
            share_request::reschedule(share.run_at, share.not_after, publish_at, not_after, now)?;
        let conn = state
            .ctx
            .store
            .connection(&share.connection_id)
            .await?
            .ok_or_else(|| ApiError::not_found("share"))?;
        if let Some(platform) = conn
            .platform_kind()
            .and_then(|k| state.ctx.platforms.get(k))
        {
            validate_for(
                platform.as_ref(),
                &conn,
                &content,
                stored_image,
                "connection_id",
            )?;
        }
        let edit = ShareEdit {
            duplicate_key: Some(content.duplicate_key()),
            url: content.url,
            title: content.title,
            body: content.text,
            run_at,
            not_after,
        };
        match state
            .ctx
            .store
            .edit_share(&tenant.id, &id, share.edits, &edit, now)
            .await?
        {
            Edit::Edited(row) => {
                // A new publish time needs a delivery at that time (on Redis; on the store's
                // engines the push only wakes the fetcher). The old one finds it not due.
                enqueue(&state.ctx, std::slice::from_ref(&row));
                return Ok(ApiJson(ShareView::from_row(row)?));
            }
            Edit::Started(row) => return Err(not_editable(&row)),
            Edit::NotFound => return Err(ApiError::not_found("share")),
            Edit::Changed => continue,
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "share_edit_conflict",
        "the share was edited by another request at the same time; read it and try again",
    ))
}

fn not_editable(share: &ShareRow) -> ApiError {
    let why = if share.state == "queued" {
        "has already been picked up by a worker".to_owned()
    } else {
        format!("is {}", share.state)
    };
    ApiError::new(
        StatusCode::CONFLICT,
        "share_not_editable",
        format!("the share {why}; only a share that has not started can be edited"),
    )
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

/// Checks the content against the target platform's own rules (Mastodon's 500 characters, ...),
/// naming the field under `target` (`connection_ids[0]`), except `text`, which is the body's.
fn validate_for(
    platform: &dyn Platform,
    conn: &ConnectionRow,
    content: &ShareContent,
    first_image: Option<&str>,
    target: &str,
) -> ApiResult<()> {
    // The images themselves are checked apart (`media::check_declared`, `check_fetched`); a
    // platform that needs one (Instagram) sees that there is one.
    let probe = PostRequest {
        share_id: String::new(),
        url: content.url.clone(),
        title: content.title.clone(),
        text: content.text.clone(),
        image_url: content.image_url.clone().or(first_image.map(str::to_owned)),
        media: Vec::new(),
        idempotency_key: String::new(),
        checkpoint: Default::default(),
    };
    platform.validate(&conn.account(), &probe).map_err(|inv| {
        let field = if inv.field == "text" {
            "text".to_owned()
        } else {
            format!("{target}.{}", inv.field)
        };
        ApiError::invalid(field, inv.code, inv.message)
    })
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
