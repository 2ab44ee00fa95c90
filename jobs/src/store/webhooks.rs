//! Webhook endpoints, the outbox of events, and the delivery rows that are the delivery queue.
//!
//! An event is written by [`record`] inside the transaction of the state change that causes it,
//! with one delivery row per endpoint of the tenant that wants its type; a tenant without
//! endpoints costs that transaction one indexed read and nothing else. A delivery row is `pending`
//! (due at `next_attempt_at`), `sending` (claimed under a lease), `delivered` or `failed`.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use super::{Engine, Pool, Result, Store, sql_for, with_engine, with_pool};
use crate::{
    ids,
    webhooks::{EventType, NewEvent},
};

pub(super) const ENDPOINT_COLUMNS: &str = "id, tenant_id, url, description, event_types, enabled, \
    disabled_reason, disabled_at, secret_enc, previous_secret_enc, previous_secret_until, \
    failing_since, created_at, updated_at";

pub(super) const DELIVERY_COLUMNS: &str = "id, endpoint_id, event_id, event_seq, subject, state, \
    attempts, next_attempt_at, lease_until, last_attempt_at, last_status, last_response, \
    last_error, delivered_at, created_at, updated_at";

/// A tenant's webhook endpoint; the secrets are vault envelopes.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EndpointRow {
    pub id: String,
    pub tenant_id: String,
    pub url: String,
    pub description: Option<String>,
    /// A JSON array of event types; `None` is every type.
    pub event_types: Option<String>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub secret_enc: String,
    pub previous_secret_enc: Option<String>,
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl EndpointRow {
    /// The types it subscribed to, `None` for every type.
    pub fn event_types(&self) -> Option<Vec<EventType>> {
        let raw = self.event_types.as_deref()?;
        let names: Vec<String> = serde_json::from_str(raw).unwrap_or_default();
        Some(names.iter().filter_map(|n| EventType::parse(n)).collect())
    }

    /// Whether the fan-out of an event of type `kind` reaches it (`webhook.test` is only ever
    /// sent to the endpoint it was asked for).
    fn wants(types: Option<&str>, kind: EventType) -> bool {
        kind != EventType::WebhookTest
            && types.is_none_or(|t| t.contains(&format!("\"{}\"", kind.as_str())))
    }
}

/// One event's delivery to one endpoint.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: String,
    pub endpoint_id: String,
    pub event_id: String,
    pub event_seq: i64,
    pub subject: String,
    pub state: String,
    /// Attempts made, the one under way included.
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub lease_until: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    /// The start of the last response's body (at most [`RESPONSE_SNIPPET`] bytes).
    pub last_response: Option<String>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A delivery as the tenant lists it, with its event's type.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryListRow {
    #[sqlx(flatten)]
    pub delivery: DeliveryRow,
    pub event_type: String,
}

/// How much of a response body is kept on the delivery row.
pub(crate) const RESPONSE_SNIPPET: usize = 1024;

/// A claimed delivery with what sending it needs.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub delivery: DeliveryRow,
    pub event_type: String,
    pub body: String,
    pub endpoint: EndpointRow,
}

/// A new endpoint, its secret already sealed for its row.
#[derive(Debug, Clone)]
pub(crate) struct NewEndpoint {
    pub id: String,
    pub tenant_id: String,
    pub url: String,
    pub description: Option<String>,
    pub event_types: Option<Vec<EventType>>,
    pub secret_enc: String,
}

/// What a `PATCH` changes (`None`: unchanged; `event_types: Some(None)`: every type).
#[derive(Debug, Clone, Default)]
pub(crate) struct EndpointPatch {
    pub url: Option<String>,
    pub description: Option<Option<String>>,
    pub event_types: Option<Option<Vec<EventType>>>,
    pub enabled: Option<bool>,
}

/// How one attempt ended.
#[derive(Debug, Clone)]
pub(crate) struct AttemptResult {
    pub status: Option<u16>,
    pub response: Option<String>,
    pub error: Option<String>,
    /// The receiver took it (2xx).
    pub delivered: bool,
    /// When to try again; `None` with `delivered` false: the delivery has failed for good.
    pub retry_at: Option<DateTime<Utc>>,
    /// Disable the endpoint, saying why (a 410, or failing for too long).
    pub disable: Option<String>,
}

fn types_json(types: &Option<Vec<EventType>>) -> Option<String> {
    types.as_ref().map(|t| {
        serde_json::to_string(&t.iter().map(|t| t.as_str()).collect::<Vec<_>>())
            .expect("a list of names serialises")
    })
}

/// The delivery columns of `d` (a query that joins the events).
fn prefixed_delivery_columns() -> String {
    DELIVERY_COLUMNS
        .split(',')
        .map(|c| format!("d.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The outbox's writes, on either engine's transaction.
pub(crate) trait Outbox: Engine {
    /// Writes `events`, and a delivery of each to every endpoint of its tenant that wants it, in
    /// `tx`, in order. `only` limits the deliveries to one endpoint (a test event). The tenants'
    /// endpoints are read in one statement (a batch of outcomes costs one read), and nothing is
    /// written for a tenant without endpoints. Returns the number of deliveries written.
    fn record<'a>(
        tx: &'a mut sqlx::Transaction<'static, Self::Db>,
        events: &'a [NewEvent],
        only: Option<&'a str>,
    ) -> BoxFuture<'a, Result<usize>>;
}

/// The endpoints of the tenants in a JSON array (`$1`), on each engine. On Postgres the list is
/// made an array first: `= ANY` of it reads `webhook_endpoints_by_tenant`, where `IN` of the JSON
/// elements was planned as a hash join against a scan of every endpoint, once per outcome batch.
const ENDPOINTS_OF_SQLITE: &str = "SELECT id, tenant_id, event_types, enabled FROM webhook_endpoints \
    WHERE tenant_id IN (SELECT value FROM json_each($1))";
const ENDPOINTS_OF_POSTGRES: &str = "SELECT id, tenant_id, event_types, enabled FROM webhook_endpoints \
    WHERE tenant_id = ANY (ARRAY(SELECT jsonb_array_elements_text($1::jsonb)))";

macro_rules! outbox_for {
    ($pool:ty) => {
        impl Outbox for $pool {
            fn record<'a>(
                tx: &'a mut sqlx::Transaction<'static, Self::Db>,
                events: &'a [NewEvent],
                only: Option<&'a str>,
            ) -> BoxFuture<'a, Result<usize>> {
                Box::pin(async move {
                    if events.is_empty() {
                        return Ok(0);
                    }
                    let mut tenants: Vec<&str> =
                        events.iter().map(|e| e.tenant_id.as_str()).collect();
                    tenants.sort_unstable();
                    tenants.dedup();
                    let endpoints_of = if <$pool as Engine>::SQLITE {
                        ENDPOINTS_OF_SQLITE
                    } else {
                        ENDPOINTS_OF_POSTGRES
                    };
                    let endpoints: Vec<(String, String, Option<String>, bool)> =
                        sqlx::query_as(sql_for::<$pool>(endpoints_of))
                            .bind(serde_json::Value::from(tenants).to_string())
                            .fetch_all(&mut **tx)
                            .await?;
                    let mut written = 0;
                    for event in events {
                        let mine = || endpoints.iter().filter(|e| e.1 == event.tenant_id);
                        if mine().next().is_none() {
                            continue;
                        }
                        let seq: i64 = sqlx::query_scalar(sql_for::<$pool>(
                            "INSERT INTO webhook_events (id, tenant_id, type, subject, payload, created_at) \
                             VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq",
                        ))
                        .bind(&event.id)
                        .bind(&event.tenant_id)
                        .bind(event.kind.as_str())
                        .bind(&event.subject)
                        .bind(&event.body)
                        .bind(event.created_at)
                        .fetch_one(&mut **tx)
                        .await?;
                        for (endpoint, _, types, enabled) in mine() {
                            let wanted = match only {
                                Some(one) => one == endpoint,
                                None => {
                                    *enabled && EndpointRow::wants(types.as_deref(), event.kind)
                                }
                            };
                            if !wanted {
                                continue;
                            }
                            sqlx::query(sql_for::<$pool>(
                                "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_seq, \
                                 subject, state, next_attempt_at, created_at, updated_at) \
                                 VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6, $6)",
                            ))
                            .bind(ids::new(ids::DELIVERY))
                            .bind(endpoint)
                            .bind(&event.id)
                            .bind(seq)
                            .bind(&event.subject)
                            .bind(event.created_at)
                            .execute(&mut **tx)
                            .await?;
                            written += 1;
                        }
                    }
                    Ok(written)
                })
            }
        }
    };
}
outbox_for!(sqlx::SqlitePool);
outbox_for!(sqlx::PgPool);

/// Writes `events` to the outbox in `tx` (see [`Outbox::record`]); `_on` is the pool the
/// transaction came from, which picks the engine. Call [`crate::webhooks::wake`] after the commit.
pub(crate) async fn record<P: Outbox>(
    _on: &P,
    tx: &mut sqlx::Transaction<'static, P::Db>,
    events: &[NewEvent],
) -> Result<usize> {
    P::record(tx, events, None).await
}

/// Records the events of shares' new rows (none for a share queued or running).
pub(crate) async fn record_shares<P: Outbox>(
    _on: &P,
    tx: &mut sqlx::Transaction<'static, P::Db>,
    rows: &[&super::ShareRow],
    now: DateTime<Utc>,
) -> Result<()> {
    let events: Vec<NewEvent> = rows
        .iter()
        .filter_map(|r| NewEvent::share(r, now))
        .collect();
    P::record(tx, &events, None).await?;
    Ok(())
}

/// Records the event a share's new row announces (none while it is queued or running).
pub(crate) async fn record_share<P: Outbox>(
    on: &P,
    tx: &mut sqlx::Transaction<'static, P::Db>,
    row: Option<&super::ShareRow>,
    now: DateTime<Utc>,
) -> Result<()> {
    record_shares(on, tx, row.as_slice(), now).await
}

/// Records a connection's event, if the change happened (`row` is the changed row).
pub(crate) async fn record_connection<P: Outbox>(
    _on: &P,
    tx: &mut sqlx::Transaction<'static, P::Db>,
    kind: EventType,
    row: Option<&super::ConnectionRow>,
    reason: Option<&str>,
    now: DateTime<Utc>,
) -> Result<()> {
    if let Some(row) = row {
        let event = NewEvent::connection(kind, row, reason, now);
        P::record(tx, std::slice::from_ref(&event), None).await?;
    }
    Ok(())
}

/// [`record`] for the one endpoint `only`.
async fn record_only<P: Outbox>(
    _on: &P,
    tx: &mut sqlx::Transaction<'static, P::Db>,
    event: &NewEvent,
    only: &str,
) -> Result<usize> {
    P::record(tx, std::slice::from_ref(event), Some(only)).await
}

/// How the claim statement differs between the engines (see `share_queue.rs`).
fn claim_sql(pool: &Pool) -> String {
    // Due, pending, its endpoint enabled, no earlier event of its subject still open for that
    // endpoint (order), and at most `$4` in flight per endpoint (a dead endpoint holds a few
    // workers, never all of them).
    let candidates = |due: &str| {
        format!(
            "SELECT c.id FROM (SELECT d.id, d.next_attempt_at, d.event_seq, \
               ROW_NUMBER() OVER (PARTITION BY d.endpoint_id ORDER BY d.next_attempt_at, d.event_seq) AS rn, \
               (SELECT COUNT(*) FROM webhook_deliveries s WHERE s.endpoint_id = d.endpoint_id \
                AND s.state = 'sending') AS busy \
               FROM webhook_deliveries d {due} WHERE d.state = 'pending' AND d.next_attempt_at <= $1 \
               AND EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.id = d.endpoint_id AND e.enabled) \
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries b WHERE b.endpoint_id = d.endpoint_id \
                 AND b.subject = d.subject AND b.event_seq < d.event_seq \
                 AND b.state IN ('pending', 'sending'))) c \
             WHERE c.rn + c.busy <= $4 ORDER BY c.next_attempt_at, c.event_seq LIMIT $3"
        )
    };
    let chosen = match pool {
        // One writer at a time; told which index to read, as the share claim is.
        Pool::Sqlite(_) => candidates("INDEXED BY webhook_deliveries_due"),
        // Rows another process is claiming at this moment are skipped rather than waited for
        // (no deadlock between two claims), and each row is checked again once locked. A window
        // function cannot sit beside FOR UPDATE, hence the outer select.
        Pool::Postgres(_) => format!(
            "SELECT l.id FROM webhook_deliveries l WHERE l.id IN ({}) AND l.state = 'pending' \
             FOR UPDATE SKIP LOCKED",
            candidates("")
        ),
    };
    format!(
        "UPDATE webhook_deliveries SET state = 'sending', attempts = attempts + 1, lease_until = $2, \
         last_attempt_at = $1, updated_at = $1 WHERE id IN ({chosen}) RETURNING {DELIVERY_COLUMNS}"
    )
}

impl Store {
    // --- Endpoints --------------------------------------------------------------------------

    pub(crate) async fn create_webhook_endpoint(
        &self,
        new: &NewEndpoint,
        now: DateTime<Utc>,
    ) -> Result<EndpointRow> {
        let q = format!(
            "INSERT INTO webhook_endpoints (id, tenant_id, url, description, event_types, enabled, \
             secret_enc, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, TRUE, $6, $7, $7) \
             RETURNING {ENDPOINT_COLUMNS}"
        );
        Ok(with_pool!(&self.pool, &q, |p, sql| sqlx::query_as(sql)
            .bind(&new.id)
            .bind(&new.tenant_id)
            .bind(&new.url)
            .bind(&new.description)
            .bind(types_json(&new.event_types))
            .bind(&new.secret_enc)
            .bind(now)
            .fetch_one(p)
            .await?))
    }

    /// One tenant's endpoint; another tenant's id is simply not found.
    pub async fn webhook_endpoint(&self, tenant_id: &str, id: &str) -> Result<Option<EndpointRow>> {
        let q = format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2"
        );
        Ok(with_pool!(&self.pool, &q, |p, sql| sqlx::query_as(sql)
            .bind(id)
            .bind(tenant_id)
            .fetch_optional(p)
            .await?))
    }

    /// A tenant's endpoints, oldest first, paged by id.
    pub async fn webhook_endpoints(
        &self,
        tenant_id: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<EndpointRow>> {
        let q = format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 \
             AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3"
        );
        Ok(with_pool!(&self.pool, &q, |p, sql| sqlx::query_as(sql)
            .bind(tenant_id)
            .bind(after)
            .bind(limit)
            .fetch_all(p)
            .await?))
    }

    /// Applies a `PATCH`. Enabling clears the reason it was disabled and the failing streak;
    /// disabling fails its pending deliveries (a replay sends them again).
    pub(crate) async fn update_webhook_endpoint(
        &self,
        tenant_id: &str,
        id: &str,
        patch: &EndpointPatch,
        now: DateTime<Utc>,
    ) -> Result<Option<EndpointRow>> {
        let q = format!(
            "UPDATE webhook_endpoints SET url = COALESCE($3, url), \
             description = CASE WHEN $4 THEN $5 ELSE description END, \
             event_types = CASE WHEN $6 THEN $7 ELSE event_types END, \
             enabled = COALESCE($8, enabled), \
             disabled_reason = CASE WHEN $8 IS NULL THEN disabled_reason WHEN $8 THEN NULL ELSE 'disabled by the tenant' END, \
             disabled_at = CASE WHEN $8 IS NULL THEN disabled_at WHEN $8 THEN NULL ELSE $9 END, \
             failing_since = CASE WHEN $8 THEN NULL ELSE failing_since END, \
             updated_at = $9 WHERE id = $1 AND tenant_id = $2 RETURNING {ENDPOINT_COLUMNS}"
        );
        let row: Option<EndpointRow> = with_pool!(&self.pool, &q, |p, sql| {
            let mut tx = Engine::begin_write(p).await?;
            let row: Option<EndpointRow> = sqlx::query_as(sql)
                .bind(id)
                .bind(tenant_id)
                .bind(&patch.url)
                .bind(patch.description.is_some())
                .bind(patch.description.clone().flatten())
                .bind(patch.event_types.is_some())
                .bind(patch.event_types.as_ref().and_then(types_json))
                .bind(patch.enabled)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
            if patch.enabled == Some(false) && row.is_some() {
                fail_pending(&mut tx, p, id, "the endpoint was disabled", now).await?;
            }
            tx.commit().await?;
            row
        });
        if patch.enabled == Some(true) {
            crate::webhooks::wake();
        }
        Ok(row)
    }

    /// Deletes an endpoint and its deliveries (the events stay, for the tenant's other endpoints).
    pub async fn delete_webhook_endpoint(&self, tenant_id: &str, id: &str) -> Result<bool> {
        Ok(with_pool!(
            &self.pool,
            "DELETE FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2",
            |p, sql| sqlx::query(sql)
                .bind(id)
                .bind(tenant_id)
                .execute(p)
                .await?
                .rows_affected()
                > 0
        ))
    }

    /// Stores a rotated secret: `secret_enc` the new one, `previous_enc` the old one (sealed for
    /// its own column), which keeps signing until `until`.
    pub(crate) async fn rotate_webhook_secret(
        &self,
        tenant_id: &str,
        id: &str,
        secret_enc: &str,
        previous_enc: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<EndpointRow>> {
        let q = format!(
            "UPDATE webhook_endpoints SET secret_enc = $3, previous_secret_enc = $4, \
             previous_secret_until = $5, updated_at = $6 WHERE id = $1 AND tenant_id = $2 \
             RETURNING {ENDPOINT_COLUMNS}"
        );
        Ok(with_pool!(&self.pool, &q, |p, sql| sqlx::query_as(sql)
            .bind(id)
            .bind(tenant_id)
            .bind(secret_enc)
            .bind(previous_enc)
            .bind(until)
            .bind(now)
            .fetch_optional(p)
            .await?))
    }

    // --- Events -----------------------------------------------------------------------------

    /// Writes `event` for the one endpoint `endpoint_id` (a `webhook.test`). Returns the
    /// delivery's id.
    pub async fn record_event_for(
        &self,
        endpoint_id: &str,
        event: &NewEvent,
    ) -> Result<Option<String>> {
        let id: Option<String> = with_pool!(
            &self.pool,
            "SELECT id FROM webhook_deliveries WHERE event_id = $1",
            |p, sql| {
                let mut tx = Engine::begin_write(p).await?;
                record_only(p, &mut tx, event, endpoint_id).await?;
                let id = sqlx::query_scalar(sql)
                    .bind(&event.id)
                    .fetch_optional(&mut *tx)
                    .await?;
                tx.commit().await?;
                id
            }
        );
        crate::webhooks::wake();
        Ok(id)
    }

    // --- The delivery queue -----------------------------------------------------------------

    /// Claims up to `limit` due deliveries (see `claim_sql`), each under a lease until
    /// `lease_until`, with its attempt counted.
    pub(crate) async fn claim_due_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
        per_endpoint: i64,
    ) -> Result<Vec<DeliveryRow>> {
        if let Pool::Sqlite(p) = &self.pool {
            // An UPDATE takes SQLite's write lock even when it matches nothing: look first.
            let any: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM webhook_deliveries INDEXED BY webhook_deliveries_due \
                 WHERE state = 'pending' AND next_attempt_at <= ?1 LIMIT 1",
            )
            .bind(now)
            .fetch_optional(p)
            .await?;
            if any.is_none() {
                return Ok(Vec::new());
            }
        }
        let q = claim_sql(&self.pool);
        let mut rows: Vec<DeliveryRow> = with_pool!(&self.pool, &q, |p, sql| sqlx::query_as(sql)
            .bind(now)
            .bind(lease_until)
            .bind(limit)
            .bind(per_endpoint)
            .fetch_all(p)
            .await?);
        rows.sort_by_key(|r| r.event_seq);
        Ok(rows)
    }

    /// Gives back the deliveries whose worker died mid-attempt (lease lapsed): pending again,
    /// due now. Returns how many.
    pub(crate) async fn release_lapsed_deliveries(&self, now: DateTime<Utc>) -> Result<u64> {
        if let Pool::Sqlite(p) = &self.pool {
            let any: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM webhook_deliveries INDEXED BY webhook_deliveries_leased \
                 WHERE state = 'sending' AND lease_until < ?1 LIMIT 1",
            )
            .bind(now)
            .fetch_optional(p)
            .await?;
            if any.is_none() {
                return Ok(0);
            }
        }
        Ok(with_pool!(
            &self.pool,
            "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = $1, lease_until = NULL, \
             last_error = 'the worker sending it stopped', updated_at = $1 \
             WHERE state = 'sending' AND lease_until < $1",
            |p, sql| sqlx::query(sql).bind(now).execute(p).await?.rows_affected()
        ))
    }

    /// The earliest `next_attempt_at` after `now` of a pending delivery.
    pub(crate) async fn next_delivery_due(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>> {
        Ok(with_pool!(
            &self.pool,
            "SELECT next_attempt_at FROM webhook_deliveries WHERE state = 'pending' \
             AND next_attempt_at > $1 ORDER BY next_attempt_at LIMIT 1",
            |p, sql| sqlx::query_scalar(sql).bind(now).fetch_optional(p).await?
        ))
    }

    /// A claimed delivery with its event and endpoint; `None` if the endpoint was deleted.
    pub(crate) async fn outgoing_delivery(
        &self,
        delivery: DeliveryRow,
    ) -> Result<Option<Outgoing>> {
        let event: Option<(String, String)> = with_pool!(
            &self.pool,
            "SELECT type, payload FROM webhook_events WHERE id = $1",
            |p, sql| sqlx::query_as(sql)
                .bind(&delivery.event_id)
                .fetch_optional(p)
                .await?
        );
        let q = format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1");
        let endpoint: Option<EndpointRow> =
            with_pool!(&self.pool, &q, |p, sql| sqlx::query_as(sql)
                .bind(&delivery.endpoint_id)
                .fetch_optional(p)
                .await?);
        let (Some((event_type, body)), Some(endpoint)) = (event, endpoint) else {
            return Ok(None);
        };
        Ok(Some(Outgoing {
            delivery,
            event_type,
            body,
            endpoint,
        }))
    }

    /// Records attempt `attempt` of a delivery, if this worker still holds it, and what it says
    /// about the endpoint: a success ends its failing streak; a failure starts one (or continues
    /// it); `disable` turns it off, failing its other pending deliveries. Returns the row, or
    /// `None` when the lease was lost.
    pub(crate) async fn finish_delivery(
        &self,
        id: &str,
        attempt: i32,
        result: &AttemptResult,
        now: DateTime<Utc>,
    ) -> Result<Option<DeliveryRow>> {
        let state = match (result.delivered, result.retry_at) {
            (true, _) => "delivered",
            (false, Some(_)) if result.disable.is_none() => "pending",
            _ => "failed",
        };
        let retry_at = result.retry_at.filter(|_| state == "pending");
        let q = format!(
            "UPDATE webhook_deliveries SET state = $3, next_attempt_at = $4, lease_until = NULL, \
             last_status = $5, last_response = $6, last_error = $7, \
             delivered_at = CASE WHEN $3 = 'delivered' THEN $8 ELSE delivered_at END, updated_at = $8 \
             WHERE id = $1 AND state = 'sending' AND attempts = $2 RETURNING {DELIVERY_COLUMNS}"
        );
        let row: Option<DeliveryRow> = with_pool!(&self.pool, &q, |p, sql| {
            let mut tx = Engine::begin_write(p).await?;
            let row: Option<DeliveryRow> = sqlx::query_as(sql)
                .bind(id)
                .bind(attempt)
                .bind(state)
                .bind(retry_at)
                .bind(result.status.map(i32::from))
                .bind(&result.response)
                .bind(&result.error)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = &row {
                let streak = if result.delivered {
                    "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL"
                } else {
                    "UPDATE webhook_endpoints SET failing_since = $2 WHERE id = $1 AND failing_since IS NULL"
                };
                sqlx::query(with_engine(p, streak))
                    .bind(&row.endpoint_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                if let Some(reason) = &result.disable {
                    sqlx::query(with_engine(
                        p,
                        "UPDATE webhook_endpoints SET enabled = FALSE, disabled_reason = $2, \
                         disabled_at = $3, updated_at = $3 WHERE id = $1 AND enabled",
                    ))
                    .bind(&row.endpoint_id)
                    .bind(reason)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    fail_pending(&mut tx, p, &row.endpoint_id, reason, now).await?;
                }
            }
            tx.commit().await?;
            row
        });
        if row.is_some() {
            // The next event of the same subject may be free to go now.
            crate::webhooks::wake();
        }
        Ok(row)
    }

    /// An endpoint's deliveries, newest first, paged by the previous page's last id.
    pub async fn webhook_deliveries(
        &self,
        endpoint_id: &str,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeliveryListRow>> {
        let cols = prefixed_delivery_columns();
        let q = format!(
            "SELECT {cols}, v.type AS event_type FROM webhook_deliveries d \
             JOIN webhook_events v ON v.id = d.event_id WHERE d.endpoint_id = $1 \
             AND ($2 IS NULL OR d.event_seq < (SELECT b.event_seq FROM webhook_deliveries b WHERE b.id = $2)) \
             ORDER BY d.event_seq DESC LIMIT $3"
        );
        Ok(with_pool!(&self.pool, &q, |p, sql| sqlx::query_as(sql)
            .bind(endpoint_id)
            .bind(before)
            .bind(limit)
            .fetch_all(p)
            .await?))
    }

    /// Sends a finished delivery again (same event, same `webhook-id`), due now, with a fresh
    /// attempt schedule; a pending or sending one is left as it is. `None` if it is not the
    /// endpoint's.
    pub async fn resend_delivery(
        &self,
        endpoint_id: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<DeliveryListRow>> {
        let resent = with_pool!(
            &self.pool,
            "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = $3, \
             updated_at = $3 WHERE id = $1 AND endpoint_id = $2 AND state IN ('delivered', 'failed')",
            |p, sql| sqlx::query(sql)
                .bind(id)
                .bind(endpoint_id)
                .bind(now)
                .execute(p)
                .await?
                .rows_affected()
        );
        if resent > 0 {
            crate::webhooks::wake();
        }
        self.webhook_delivery(endpoint_id, id).await
    }

    /// One of an endpoint's deliveries, with its event's type.
    pub async fn webhook_delivery(
        &self,
        endpoint_id: &str,
        id: &str,
    ) -> Result<Option<DeliveryListRow>> {
        let q = format!(
            "SELECT {}, v.type AS event_type FROM webhook_deliveries d \
             JOIN webhook_events v ON v.id = d.event_id WHERE d.id = $1 AND d.endpoint_id = $2",
            prefixed_delivery_columns()
        );
        Ok(with_pool!(&self.pool, &q, |p, sql| sqlx::query_as(sql)
            .bind(id)
            .bind(endpoint_id)
            .fetch_optional(p)
            .await?))
    }

    /// Sends every event of the tenant since `since` that the endpoint subscribes to again, in
    /// their order: deliveries it never had are created, finished ones are due again, open ones
    /// are left as they are. At most `limit` events. Returns how many deliveries are due.
    pub async fn replay_webhook_events(
        &self,
        endpoint: &EndpointRow,
        since: DateTime<Utc>,
        limit: i64,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let types = endpoint.event_types.clone();
        let n = with_pool!(
            &self.pool,
            "SELECT id, seq, subject, type FROM webhook_events WHERE tenant_id = $1 \
             AND created_at >= $2 ORDER BY seq LIMIT $3",
            |p, sql| {
                let mut tx = Engine::begin_write(p).await?;
                let events: Vec<(String, i64, String, String)> = sqlx::query_as(sql)
                    .bind(&endpoint.tenant_id)
                    .bind(since)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut due = 0u64;
                for (event_id, seq, subject, kind) in events {
                    let Some(kind) = EventType::parse(&kind) else {
                        continue;
                    };
                    if !EndpointRow::wants(types.as_deref(), kind) {
                        continue;
                    }
                    let inserted = sqlx::query(with_engine(
                        p,
                        "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_seq, \
                         subject, state, next_attempt_at, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6, $6) \
                         ON CONFLICT (endpoint_id, event_id) DO NOTHING",
                    ))
                    .bind(ids::new(ids::DELIVERY))
                    .bind(&endpoint.id)
                    .bind(&event_id)
                    .bind(seq)
                    .bind(&subject)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    let reset = sqlx::query(with_engine(
                        p,
                        "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, \
                         next_attempt_at = $3, updated_at = $3 WHERE endpoint_id = $1 \
                         AND event_id = $2 AND state IN ('delivered', 'failed')",
                    ))
                    .bind(&endpoint.id)
                    .bind(&event_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    due += inserted + reset;
                }
                tx.commit().await?;
                due
            }
        );
        crate::webhooks::wake();
        Ok(n)
    }

    /// Deletes up to `limit` finished deliveries created before `before`, then up to `limit`
    /// events from before then that no delivery is left of. Returns how many rows went.
    pub(crate) async fn prune_webhook_history(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<u64> {
        let deliveries = with_pool!(
            &self.pool,
            "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries \
             WHERE state IN ('delivered', 'failed') AND created_at < $1 LIMIT $2)",
            |p, sql| sqlx::query(sql)
                .bind(before)
                .bind(limit)
                .execute(p)
                .await?
                .rows_affected()
        );
        let events = with_pool!(
            &self.pool,
            "DELETE FROM webhook_events WHERE seq IN (SELECT e.seq FROM webhook_events e \
             WHERE e.created_at < $1 AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d \
             WHERE d.event_id = e.id) LIMIT $2)",
            |p, sql| sqlx::query(sql)
                .bind(before)
                .bind(limit)
                .execute(p)
                .await?
                .rows_affected()
        );
        Ok(deliveries + events)
    }

    /// Endpoints disabled, and endpoints enabled but failing since before `failing_before`, for
    /// the gauges.
    pub(crate) async fn webhook_endpoint_counts(
        &self,
        failing_before: DateTime<Utc>,
    ) -> Result<(i64, i64)> {
        Ok(with_pool!(
            &self.pool,
            "SELECT COALESCE(SUM(CASE WHEN enabled THEN 0 ELSE 1 END), 0), \
             COALESCE(SUM(CASE WHEN enabled AND failing_since < $1 THEN 1 ELSE 0 END), 0) \
             FROM webhook_endpoints",
            |p, sql| sqlx::query_as(sql)
                .bind(failing_before)
                .fetch_one(p)
                .await?
        ))
    }
}

/// Fails an endpoint's pending deliveries, saying why.
async fn fail_pending<P: FailPending>(
    tx: &mut sqlx::Transaction<'static, P::Db>,
    _on: &P,
    endpoint_id: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    P::fail_pending(tx, endpoint_id, reason, now).await
}

/// [`fail_pending`] on either engine.
trait FailPending: Engine {
    fn fail_pending<'a>(
        tx: &'a mut sqlx::Transaction<'static, Self::Db>,
        endpoint_id: &'a str,
        reason: &'a str,
        now: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<()>>;
}

macro_rules! fail_pending_for {
    ($pool:ty) => {
        impl FailPending for $pool {
            fn fail_pending<'a>(
                tx: &'a mut sqlx::Transaction<'static, Self::Db>,
                endpoint_id: &'a str,
                reason: &'a str,
                now: DateTime<Utc>,
            ) -> BoxFuture<'a, Result<()>> {
                Box::pin(async move {
                    sqlx::query(sql_for::<$pool>(
                        "UPDATE webhook_deliveries SET state = 'failed', next_attempt_at = NULL, \
                         last_error = $2, updated_at = $3 WHERE endpoint_id = $1 AND state = 'pending'",
                    ))
                    .bind(endpoint_id)
                    .bind(reason)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                    Ok(())
                })
            }
        }
    };
}
fail_pending_for!(sqlx::SqlitePool);
fail_pending_for!(sqlx::PgPool);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    async fn store() -> (Store, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("{}.db", ids::new("herald-webhooks-test")));
        let store = Store::connect(&format!("sqlite:{}", path.display()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        (store, path)
    }

    #[tokio::test]
    async fn history_past_the_retention_is_pruned_and_recent_history_stays() {
        let (store, path) = store().await;
        let now = Utc::now();
        let tenant = store.ensure_tenant("acme", now).await.unwrap();
        let endpoint = store
            .create_webhook_endpoint(
                &NewEndpoint {
                    id: ids::new(ids::WEBHOOK_ENDPOINT),
                    tenant_id: tenant.clone(),
                    url: "https://hooks.example.com/x".into(),
                    description: None,
                    event_types: None,
                    secret_enc: "sealed".into(),
                },
                now,
            )
            .await
            .unwrap();
        let old = NewEvent::test(&tenant, &endpoint.id, now - chrono::Duration::days(31));
        let recent = NewEvent::test(&tenant, &endpoint.id, now);
        for event in [&old, &recent] {
            store.record_event_for(&endpoint.id, event).await.unwrap();
        }
        let Pool::Sqlite(p) = store.pool() else {
            unreachable!()
        };
        // Both delivered; the old one's delivery still pending would be kept.
        sqlx::query("UPDATE webhook_deliveries SET state = 'delivered'")
            .execute(p)
            .await
            .unwrap();
        let pruned = store
            .prune_webhook_history(now - chrono::Duration::days(30), 1000)
            .await
            .unwrap();
        assert_eq!(pruned, 2, "the old event and its delivery");
        let left: Vec<String> = sqlx::query_scalar("SELECT id FROM webhook_events")
            .fetch_all(p)
            .await
            .unwrap();
        assert_eq!(left, vec![recent.id.clone()]);
        let log = store
            .webhook_deliveries(&endpoint.id, None, 10)
            .await
            .unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].delivery.event_id, recent.id);
        let _ = std::fs::remove_file(path);
    }
}
