//! One delivery attempt: checks, signs, posts, and records what happened.
//!
//! The URL passes the SSRF guard again (the client's resolver also drops private addresses at
//! connect time, and redirects are not followed), the whole attempt (connect, request, and the
//! start of the response's body) is bounded by the timeout, and only the first
//! [`RESPONSE_SNIPPET`] bytes of the body are read: a slow or huge answer holds a worker for the
//! timeout at most.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use tracing::{info, warn};

use super::{schedule, signing};
use crate::{
    Ctx, metrics as m,
    store::{AttemptResult, DeliveryRow, EndpointRow, Outgoing, RESPONSE_SNIPPET},
    vault::Slot,
};

/// The column slots of an endpoint's secrets (the vault binds each ciphertext to its slot).
pub(crate) fn secret_slot(endpoint_id: &str) -> Slot<'_> {
    Slot {
        table: "webhook_endpoints",
        row: endpoint_id,
        column: "secret",
    }
}

pub(crate) fn previous_secret_slot(endpoint_id: &str) -> Slot<'_> {
    Slot {
        table: "webhook_endpoints",
        row: endpoint_id,
        column: "previous_secret",
    }
}

/// The HTTP client of deliveries: Herald's guarded client (its resolver drops private
/// addresses, redirects are not followed) with the webhook timeout. One per worker.
#[derive(Debug, Clone)]
pub struct DeliveryClient(reqwest::Client);

impl DeliveryClient {
    pub fn new(ctx: &Ctx) -> Self {
        Self(herald_platforms::http::client(
            &ctx.settings.ssrf,
            ctx.settings.webhooks.timeout,
        ))
    }
}

/// Runs attempt `delivery.attempts` of a claimed delivery and records it.
pub async fn run(ctx: &Ctx, client: &DeliveryClient, delivery: DeliveryRow) -> anyhow::Result<()> {
    let (id, attempt) = (delivery.id.clone(), delivery.attempts);
    // The endpoint was deleted (its deliveries with it): nothing to do.
    let Some(out) = ctx.store.outgoing_delivery(delivery).await? else {
        return Ok(());
    };
    let result = if out.endpoint.enabled {
        attempt_once(ctx, &client.0, &out).await
    } else {
        AttemptResult {
            status: None,
            response: None,
            error: Some("the endpoint is disabled".into()),
            delivered: false,
            retry_at: None,
            disable: None,
        }
    };
    let now = Utc::now();
    let Some(recorded) = ctx
        .store
        .finish_delivery(&id, attempt, &result, now)
        .await?
    else {
        // The lease lapsed and another worker took the delivery over; its outcome stands.
        return Ok(());
    };
    let outcome = match recorded.state.as_str() {
        "delivered" => {
            let latency = (now - out.delivery.created_at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::histogram!(m::WEBHOOK_DELIVERY_LATENCY_SECONDS, "event_type" => out.event_type.clone())
                .record(latency);
            "delivered"
        }
        "pending" => "retried",
        _ => "failed",
    };
    metrics::counter!(m::WEBHOOK_DELIVERIES_TOTAL, "event_type" => out.event_type.clone(), "result" => outcome)
        .increment(1);
    if outcome != "delivered" {
        warn!(
            webhook.endpoint = %out.endpoint.id, webhook.delivery = %id, event.id = %out.delivery.event_id,
            event.kind = %out.event_type, attempt, status = ?result.status, outcome,
            error = result.error.as_deref().unwrap_or(""), "webhook delivery failed"
        );
    }
    if let Some(reason) = &result.disable {
        info!(webhook.endpoint = %out.endpoint.id, reason = %reason, "webhook endpoint disabled");
    }
    Ok(())
}

/// The secrets that sign now: the current one, and the previous one during its 24 hours.
fn secrets(
    ctx: &Ctx,
    endpoint: &EndpointRow,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<SecretString>> {
    let mut secrets = vec![
        ctx.vault
            .decrypt(secret_slot(&endpoint.id), &endpoint.secret_enc)?,
    ];
    if let (Some(prev), Some(until)) = (
        &endpoint.previous_secret_enc,
        endpoint.previous_secret_until,
    ) && until > now
    {
        secrets.push(
            ctx.vault
                .decrypt(previous_secret_slot(&endpoint.id), prev)?,
        );
    }
    Ok(secrets)
}

/// What a receiver answered.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

async fn attempt_once(ctx: &Ctx, client: &reqwest::Client, out: &Outgoing) -> AttemptResult {
    let settings = &ctx.settings.webhooks;
    let now = Utc::now();
    let failed_for_good = |error: String| AttemptResult {
        status: None,
        response: None,
        error: Some(error),
        delivered: false,
        retry_at: None,
        disable: None,
    };
    if let Err(e) = ctx.settings.ssrf.check_url(&out.endpoint.url) {
        return failed_for_good(format!("the endpoint's URL is refused: {e}"));
    }
    let secrets = match secrets(ctx, &out.endpoint, now) {
        Ok(s) => s,
        // A key missing from HERALD_ENCRYPTION_KEYS: worth trying again once it is back. The
        // operator's log says which; the tenant's delivery log does not name Herald's keys.
        Err(e) => {
            warn!(webhook.endpoint = %out.endpoint.id, error = %format!("{e:#}"), "a webhook signing secret cannot be decrypted");
            let error = "the signing secret cannot be read on Herald's side".to_owned();
            return retry_or_give_up(settings, out, None, None, error, None, now);
        }
    };
    let timestamp = now.timestamp();
    let event_id = &out.delivery.event_id;
    let request = client
        .post(&out.endpoint.url)
        .header("content-type", "application/json")
        .header("webhook-id", event_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            signing::signature(&secrets, event_id, timestamp, &out.body),
        )
        .body(out.body.clone());
    // One deadline for the whole attempt: the answer's status and headers, then as much of the
    // start of its body as arrives in the time left. A receiver that answered 2xx took the
    // event, however slowly its body trickles.
    let deadline = tokio::time::Instant::now() + settings.timeout;
    let mut res = match tokio::time::timeout_at(deadline, request.send()).await {
        Ok(Ok(res)) => res,
        Ok(Err(e)) => {
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "could not connect"
            } else {
                "network error"
            };
            return retry_or_give_up(settings, out, None, None, what.into(), None, now);
        }
        Err(_) => {
            let error = format!("no answer within {:?}", settings.timeout);
            return retry_or_give_up(settings, out, None, None, error, None, now);
        }
    };
    let status = res.status().as_u16();
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Only the start of the body: the rest of a huge answer is never read (the connection is
    // dropped with the response).
    let mut body = Vec::new();
    let _ = tokio::time::timeout_at(deadline, async {
        while body.len() < RESPONSE_SNIPPET {
            match res.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
    })
    .await;
    body.truncate(RESPONSE_SNIPPET);
    let answer = Answer {
        status,
        retry_after,
        body: String::from_utf8_lossy(&body).replace('\0', ""),
    };
    let response = Some(answer.body);
    match answer.status {
        200..=299 => AttemptResult {
            status: Some(answer.status),
            response,
            error: None,
            delivered: true,
            retry_at: None,
            disable: None,
        },
        410 => AttemptResult {
            status: Some(410),
            response,
            error: Some("the endpoint answered 410 Gone".into()),
            delivered: false,
            retry_at: None,
            disable: Some("the endpoint answered 410 Gone".into()),
        },
        status => {
            let wait = answer
                .retry_after
                .as_deref()
                .and_then(|v| schedule::parse_retry_after(v, now));
            retry_or_give_up(
                settings,
                out,
                Some(status),
                response,
                format!("the endpoint answered {status}"),
                wait,
                now,
            )
        }
    }
}

/// A failed attempt: due again on the schedule, or failed for good when it is spent. An endpoint
/// that has failed every attempt for `disable_after` is disabled.
fn retry_or_give_up(
    settings: &crate::settings::WebhookSettings,
    out: &Outgoing,
    status: Option<u16>,
    response: Option<String>,
    error: String,
    retry_after: Option<Duration>,
    now: DateTime<Utc>,
) -> AttemptResult {
    let retry_at = schedule::next_attempt(
        &settings.retry_schedule,
        out.delivery.attempts,
        retry_after,
        now,
    );
    let disable = out.endpoint.failing_since.and_then(|since| {
        let limit = chrono::Duration::from_std(settings.disable_after).ok()?;
        (now - since >= limit).then(|| {
            format!(
                "every delivery has failed since {} (the last: {error})",
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        })
    });
    AttemptResult {
        status,
        response,
        error: Some(match retry_at {
            Some(_) => error,
            None => format!("{error}; gave up after {} attempts", out.delivery.attempts),
        }),
        delivered: false,
        retry_at,
        disable,
    }
}
