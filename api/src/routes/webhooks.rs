//! `/v1/webhooks`: a tenant's signed lifecycle webhooks (endpoints, their deliveries, resend,
//! replay, test events and secret rotation). Reading needs the `read` scope, changing `connect`.

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use herald_jobs::{
    replay,
    store::{DeliveryListRow, EndpointRow},
    webhooks::{
        EventType, NewEvent,
        endpoints::{self, Change, EndpointError},
    },
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiJson, ApiPath, ApiQuery, page_limit};
use crate::{
    ApiState,
    auth::Tenant,
    error::{ApiError, ApiResult, ErrorBody},
};

/// The most events one replay sends again.
const MAX_REPLAY: i64 = 10_000;

/// A webhook endpoint; never its secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub description: Option<String>,
    /// The event types sent to it; `null` is every type.
    pub event_types: Option<Vec<EventType>>,
    pub enabled: bool,
    /// Why it was disabled: a 410 from the receiver, failing for 5 days, or its tenant.
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    /// Since when every delivery attempt has failed (`null` while they succeed).
    pub failing_since: Option<DateTime<Utc>>,
    /// Until when the secret before the last rotation also signs.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<EndpointRow> for WebhookView {
    fn from(r: EndpointRow) -> Self {
        Self {
            event_types: r.event_types(),
            previous_secret_expires_at: r.previous_secret_until.filter(|t| *t > Utc::now()),
            id: r.id,
            url: r.url,
            description: r.description,
            enabled: r.enabled,
            disabled_reason: r.disabled_reason,
            disabled_at: r.disabled_at,
            failing_since: r.failing_since,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// An endpoint with its signing secret: shown once, when it is created or rotated.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookWithSecret {
    /// `whsec_...`: verify each delivery's `webhook-signature` with it (Standard Webhooks).
    /// Herald shows it only now.
    pub secret: String,
    #[serde(flatten)]
    pub webhook: WebhookView,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// Where events are POSTed: https (http and private addresses only where the deployment
    /// allows them, `HERALD_SSRF_ALLOW_PRIVATE`).
    #[schema(
        min_length = 1,
        max_length = 2000,
        example = "https://hooks.example.com/herald"
    )]
    pub url: String,
    /// The event types to send; leave out for every type.
    #[schema(value_type = Option<Vec<EventType>>, min_items = 1)]
    pub event_types: Option<Vec<String>>,
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

/// A field sent as `null` is `Some(None)`; one left out is `None`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// What to change; fields left out stay as they are.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookRequest {
    #[schema(min_length = 1, max_length = 2000)]
    pub url: Option<String>,
    /// `null` for every type.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<EventType>>, min_items = 1)]
    pub event_types: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 500)]
    pub description: Option<Option<String>>,
    /// `false` stops deliveries (pending ones fail; a replay sends them again); `true` starts
    /// them again and clears the reason it was disabled.
    pub enabled: Option<bool>,
}

/// One event's delivery to the endpoint.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    pub id: String,
    /// The `webhook-id` the receiver sees; the same on every attempt, resend and replay.
    pub event_id: String,
    pub event_type: String,
    /// `pending` (waiting for `next_attempt_at`), `sending`, `delivered` or `failed`.
    #[schema(example = "delivered")]
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// The receiver's last HTTP status.
    pub last_status: Option<i32>,
    /// The start of the receiver's last response body (at most 1 KiB).
    pub last_response: Option<String>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl From<DeliveryListRow> for DeliveryView {
    fn from(r: DeliveryListRow) -> Self {
        let d = r.delivery;
        Self {
            id: d.id,
            event_id: d.event_id,
            event_type: r.event_type,
            state: d.state,
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at,
            last_attempt_at: d.last_attempt_at,
            last_status: d.last_status,
            last_response: d.last_response,
            last_error: d.last_error,
            delivered_at: d.delivered_at,
            created_at: d.created_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryView>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next_before: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    pub after: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// Deliveries older than this delivery id.
    pub before: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReplayQuery {
    /// Events from this time on: RFC 3339, or a span back from now (`90s`, `15m`, `2h`, `7d`).
    pub since: String,
}

/// A test event on its way.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TestSent {
    pub event_id: String,
    pub delivery_id: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReplayStarted {
    /// Deliveries now due: events the endpoint never had, and finished ones sent again.
    pub deliveries: u64,
}

fn refused(e: EndpointError) -> ApiError {
    match e {
        EndpointError::Invalid(i) => i.into(),
        EndpointError::Store(e) => e.into(),
        EndpointError::Vault(e) => ApiError::internal(e),
    }
}

fn disabled(row: &EndpointRow) -> Result<(), ApiError> {
    if row.enabled {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "endpoint_disabled",
        format!(
            "the endpoint is disabled ({}); enable it with PATCH first",
            row.disabled_reason.as_deref().unwrap_or("no reason given")
        ),
    ))
}

async fn endpoint(state: &ApiState, tenant: &Tenant, id: &str) -> ApiResult<EndpointRow> {
    state
        .ctx
        .store
        .webhook_endpoint(&tenant.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))
}

/// Create a webhook endpoint. The answer shows its signing secret, once.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = CreateWebhookRequest,
    responses((status = 201, body = WebhookWithSecret)), security(("api_key" = [])))]
pub async fn create(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiJson(req): ApiJson<CreateWebhookRequest>,
) -> ApiResult<(StatusCode, ApiJson<WebhookWithSecret>)> {
    let created = endpoints::create(
        &state.ctx,
        &tenant.id,
        &req.url,
        req.event_types,
        req.description,
        Utc::now(),
    )
    .await
    .map_err(refused)?;
    Ok((
        StatusCode::CREATED,
        ApiJson(WebhookWithSecret {
            secret: created.secret.expose_secret().to_owned(),
            webhook: created.row.into(),
        }),
    ))
}

/// The tenant's webhook endpoints, oldest first.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", params(PageQuery),
    responses((status = 200, body = WebhookList)), security(("api_key" = [])))]
pub async fn list(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<ApiJson<WebhookList>> {
    let limit = page_limit(q.limit)?;
    let rows = state
        .ctx
        .store
        .webhook_endpoints(&tenant.id, q.after.as_deref(), limit)
        .await?;
    let next_after = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id.clone()))
        .flatten();
    Ok(ApiJson(WebhookList {
        webhooks: rows.into_iter().map(Into::into).collect(),
        next_after,
    }))
}

/// One webhook endpoint.
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = WebhookView), (status = 404, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn get(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ApiJson<WebhookView>> {
    Ok(ApiJson(endpoint(&state, &tenant, &id).await?.into()))
}

/// Change an endpoint's URL, event types, description, or whether it is enabled.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    request_body = UpdateWebhookRequest,
    responses((status = 200, body = WebhookView), (status = 404, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn update(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateWebhookRequest>,
) -> ApiResult<ApiJson<WebhookView>> {
    let change = Change {
        url: req.url,
        description: req.description,
        event_types: req.event_types,
        enabled: req.enabled,
    };
    let row = endpoints::update(&state.ctx, &tenant.id, &id, change, Utc::now())
        .await
        .map_err(refused)?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    Ok(ApiJson(row.into()))
}

/// Delete an endpoint and its delivery log.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn remove(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    if state
        .ctx
        .store
        .delete_webhook_endpoint(&tenant.id, &id)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("webhook"))
    }
}

/// A new signing secret, shown once; the previous one keeps signing beside it for 24 hours.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(("id" = String, Path)),
    responses((status = 200, body = WebhookWithSecret), (status = 404, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn rotate_secret(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<ApiJson<WebhookWithSecret>> {
    let created = endpoints::rotate(&state.ctx, &tenant.id, &id, Utc::now())
        .await
        .map_err(refused)?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    Ok(ApiJson(WebhookWithSecret {
        secret: created.secret.expose_secret().to_owned(),
        webhook: created.row.into(),
    }))
}

/// Send a `webhook.test` event to this endpoint.
#[utoipa::path(post, path = "/v1/webhooks/{id}/test", tag = "webhooks",
    params(("id" = String, Path)),
    responses(
        (status = 202, body = TestSent),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`endpoint_disabled`", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn test(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<(StatusCode, ApiJson<TestSent>)> {
    let row = endpoint(&state, &tenant, &id).await?;
    disabled(&row)?;
    let event = NewEvent::test(&tenant.id, &row.id, Utc::now());
    let delivery_id = state
        .ctx
        .store
        .record_event_for(&row.id, &event)
        .await?
        // Deleted between the read and the write.
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    Ok((
        StatusCode::ACCEPTED,
        ApiJson(TestSent {
            event_id: event.id,
            delivery_id,
        }),
    ))
}

/// The endpoint's deliveries, newest first: state, attempts, the last response, the next attempt.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path), DeliveryQuery),
    responses((status = 200, body = DeliveryList), (status = 404, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn deliveries(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeliveryQuery>,
) -> ApiResult<ApiJson<DeliveryList>> {
    let limit = page_limit(q.limit)?;
    let row = endpoint(&state, &tenant, &id).await?;
    let rows = state
        .ctx
        .store
        .webhook_deliveries(&row.id, q.before.as_deref(), limit)
        .await?;
    let next_before = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.delivery.id.clone()))
        .flatten();
    Ok(ApiJson(DeliveryList {
        deliveries: rows.into_iter().map(Into::into).collect(),
        next_before,
    }))
}

/// Send a finished delivery again, now: the same event and `webhook-id`, a fresh schedule. A
/// delivery still pending or sending is left as it is.
#[utoipa::path(post, path = "/v1/webhooks/{id}/deliveries/{delivery}/resend", tag = "webhooks",
    params(("id" = String, Path), ("delivery" = String, Path)),
    responses(
        (status = 202, body = DeliveryView),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`endpoint_disabled`", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn resend(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiPath((id, delivery)): ApiPath<(String, String)>,
) -> ApiResult<(StatusCode, ApiJson<DeliveryView>)> {
    let row = endpoint(&state, &tenant, &id).await?;
    disabled(&row)?;
    let view = state
        .ctx
        .store
        .resend_delivery(&row.id, &delivery, Utc::now())
        .await?
        .ok_or_else(|| ApiError::not_found("delivery"))?;
    Ok((StatusCode::ACCEPTED, ApiJson(view.into())))
}

/// Send every event since a time again, in order (`since` is RFC 3339 or a span like `2h`): those
/// the endpoint never had, and finished ones. At most 10,000 events per call.
#[utoipa::path(post, path = "/v1/webhooks/{id}/replay", tag = "webhooks",
    params(("id" = String, Path), ReplayQuery),
    responses(
        (status = 202, body = ReplayStarted),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`endpoint_disabled`", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn replay(
    State(state): State<ApiState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ReplayQuery>,
) -> ApiResult<(StatusCode, ApiJson<ReplayStarted>)> {
    let now = Utc::now();
    let since = replay::since(&q.since, now, true).map_err(|e| match e {
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
    })?;
    let row = endpoint(&state, &tenant, &id).await?;
    disabled(&row)?;
    let deliveries = state
        .ctx
        .store
        .replay_webhook_events(&row, since, MAX_REPLAY, now)
        .await?;
    Ok((StatusCode::ACCEPTED, ApiJson(ReplayStarted { deliveries })))
}
