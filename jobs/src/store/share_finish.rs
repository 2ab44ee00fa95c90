//! Writing attempts' outcomes: each share's new state (a compare-and-set on its state and
//! attempt), the attempt's row, and the webhook events the change announces, for a batch of
//! outcomes recorded together (`group_commit.rs`) in one transaction.
//!
//! On Postgres the batch's updates are one statement ([`finish_set_pg`]): a statement is a round
//! trip, and one per outcome was most of the worker's Postgres cost (`benches/README.md`).
//! SQLite, whose statements are function calls, writes outcome by outcome ([`finish_each`]).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::PgPool;

use super::{
    Pool, Result,
    group_commit::together_or_alone,
    shares::{COLUMNS, Finished, ShareRow, ShareUpdate},
    with_engine, with_pool,
};
use crate::{error_class::ErrorClass, ids};

/// One attempt's outcome, waiting to be written with others ([`Store::finish_attempt`]).
#[derive(Debug)]
pub(crate) struct FinishRequest {
    pub(super) id: String,
    pub(super) attempt: i32,
    pub(super) started_at: DateTime<Utc>,
    pub(super) update: ShareUpdate,
    pub(super) now: DateTime<Utc>,
}

/// Writes a batch of outcomes in one transaction; if that fails, each in its own.
pub(crate) fn finish_batch(
    pool: Pool,
    requests: Vec<FinishRequest>,
) -> BoxFuture<'static, Vec<Result<Option<Finished>>>> {
    Box::pin(async move {
        together_or_alone(
            &pool,
            &requests,
            |p, r| Box::pin(finish_together(p, r)),
            "outcomes",
        )
        .await
    })
}

/// A batch in one transaction: set at a time on Postgres when each outcome is another share's.
async fn finish_together(pool: &Pool, requests: &[FinishRequest]) -> Result<Vec<Option<Finished>>> {
    let mut ids = HashSet::new();
    match pool {
        Pool::Postgres(p) if requests.iter().all(|r| ids.insert(r.id.as_str())) => {
            finish_set_pg(p, requests).await
        }
        _ => finish_each(pool, requests).await,
    }
}

/// Each outcome in order, in one transaction.
async fn finish_each(pool: &Pool, requests: &[FinishRequest]) -> Result<Vec<Option<Finished>>> {
    // The update also says whether a share resumed after this one waits for it (rarely), so the
    // common case is one statement per outcome plus one insert of every attempt in the batch.
    let q = format!(
        "UPDATE shares SET state = $3, last_error_class = $4, last_error = $5, last_status = $6, \
         post_id = COALESCE($7, post_id), post_url = COALESCE($8, post_url), \
         run_at = COALESCE($9, run_at), lease_until = NULL, updated_at = $10, \
         finished_at = CASE WHEN $11 THEN $10 ELSE NULL END, attempts = attempts - $12 \
         WHERE id = $1 AND state = 'running' AND attempts = $2 RETURNING {COLUMNS}, \
         (SELECT n.id FROM shares n WHERE n.after_share_id = shares.id AND n.state = 'queued' LIMIT 1) AS next_id"
    );
    let next_q = format!("SELECT {COLUMNS} FROM shares WHERE id = $1 AND state = 'queued'");
    Ok(with_pool!(pool, &q, |p, _sql| {
        use sqlx::{FromRow, Row};
        let mut tx = crate::store::Engine::begin_write(p).await?;
        let mut rows = Vec::with_capacity(requests.len());
        let mut attempts = Vec::new();
        let mut events = Vec::new();
        for r in requests {
            let o = Outcome::of(&r.update);
            let found = sqlx::query(with_engine(p, &q))
                .bind(&r.id)
                .bind(r.attempt)
                .bind(r.update.state().as_str())
                .bind(o.class)
                .bind(o.message)
                .bind(o.status)
                .bind(o.post_id)
                .bind(o.post_url)
                .bind(o.run_at)
                .bind(r.now)
                .bind(o.finished)
                .bind(i32::from(o.deferred))
                .fetch_optional(&mut *tx)
                .await?;
            let Some(found) = found else {
                rows.push(None);
                continue;
            };
            let row = ShareRow::from_row(&found)?;
            events.extend(crate::webhooks::NewEvent::share(&row, r.now));
            let next_id: Option<String> = found.try_get("next_id")?;
            // A share resumed after this one may start now that this one is settled.
            let next: Option<ShareRow> = match next_id {
                Some(id) if o.frees_next(&r.update) => {
                    sqlx::query_as(with_engine(p, &next_q))
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?
                }
                _ => None,
            };
            if !o.deferred {
                attempts.push((r, o));
            }
            rows.push(Some(Finished { row, next }));
        }
        if !attempts.is_empty() {
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO share_attempts (id, share_id, number, started_at, finished_at, \
                 outcome, error_class, error_message, platform_status) ",
            );
            insert.push_values(&attempts, |mut b, (r, o)| {
                b.push_bind(ids::new(ids::ATTEMPT))
                    .push_bind(&r.id)
                    .push_bind(r.attempt)
                    .push_bind(r.started_at)
                    .push_bind(r.now)
                    .push_bind(r.update.outcome())
                    .push_bind(o.class)
                    .push_bind(o.message)
                    .push_bind(o.status);
            });
            insert.build().execute(&mut *tx).await?;
        }
        // The batch's outcomes tell the tenants' webhooks, in this transaction (one read of
        // their endpoints for the whole batch).
        super::webhooks::record(p, &mut tx, &events).await?;
        tx.commit().await?;
        crate::webhooks::wake();
        rows
    }))
}

/// The columns an outcome writes.
struct Outcome<'a> {
    class: Option<&'a str>,
    message: Option<&'a str>,
    status: Option<i32>,
    post_id: Option<&'a str>,
    post_url: Option<&'a str>,
    run_at: Option<DateTime<Utc>>,
    /// The share is done (no retry, not parked, not waiting).
    finished: bool,
    /// A deferral made no call: it gives its attempt back and records none.
    deferred: bool,
}

impl<'a> Outcome<'a> {
    /// Whether this outcome is one a share resumed after this one waits for: settled, or parked.
    fn frees_next(&self, update: &ShareUpdate) -> bool {
        self.finished || matches!(update, ShareUpdate::Parked { .. })
    }

    fn of(update: &'a ShareUpdate) -> Self {
        let (class, message, status) = match update {
            ShareUpdate::Succeeded { .. } => (None, None, None),
            ShareUpdate::Retry {
                class,
                message,
                status,
                ..
            }
            | ShareUpdate::Failed {
                class,
                message,
                status,
            } => (
                Some(class.as_str()),
                Some(message.as_str()),
                status.map(i32::from),
            ),
            ShareUpdate::Parked { class, message } => {
                (Some(class.as_str()), Some(message.as_str()), None)
            }
            ShareUpdate::OutcomeUnknown { message } => (
                Some(ErrorClass::OutcomeUnknown.as_str()),
                Some(message.as_str()),
                None,
            ),
            ShareUpdate::Deferred { reason, .. } => {
                (Some(reason.class().as_str()), Some(reason.message()), None)
            }
        };
        let (post_id, post_url) = match update {
            ShareUpdate::Succeeded { post_id, post_url } => {
                (Some(post_id.as_str()), post_url.as_deref())
            }
            _ => (None, None),
        };
        let run_at = match update {
            ShareUpdate::Retry { run_at, .. } | ShareUpdate::Deferred { run_at, .. } => {
                Some(*run_at)
            }
            _ => None,
        };
        Self {
            class,
            message,
            status,
            post_id,
            post_url,
            run_at,
            finished: !matches!(
                update,
                ShareUpdate::Retry { .. }
                    | ShareUpdate::Parked { .. }
                    | ShareUpdate::Deferred { .. }
            ),
            deferred: matches!(update, ShareUpdate::Deferred { .. }),
        }
    }
}

/// A batch of outcomes for distinct shares: one update of them all (each row still a
/// compare-and-set on its state and attempt), one insert of their attempts. Rows are locked in
/// id order first, as the claims lock them (`claim_due` in `shares.rs`): in the order of the
/// batch, an outcome round and a claim round holding a redelivered id deadlocked (seen once in
/// the e2e suite; Postgres broke it after a second and the batch went share by share). The compare-and-set
/// is wrapped in a CASE so that each row is read by primary key (see `claim_due` in `shares.rs`):
/// `state = 'running'` would let the planner scan the partial index `shares_leased` instead.
async fn finish_set_pg(p: &PgPool, requests: &[FinishRequest]) -> Result<Vec<Option<Finished>>> {
    use sqlx::{FromRow, Row};
    let outcomes: Vec<Outcome<'_>> = requests.iter().map(|r| Outcome::of(&r.update)).collect();
    let q = format!(
        "UPDATE shares SET state = u.u_state, last_error_class = u.u_class, \
         last_error = u.u_message, last_status = u.u_status, \
         post_id = COALESCE(u.u_post_id, post_id), post_url = COALESCE(u.u_post_url, post_url), \
         run_at = COALESCE(u.u_run_at, run_at), lease_until = NULL, updated_at = u.u_now, \
         finished_at = CASE WHEN u.u_finished THEN u.u_now ELSE NULL END, \
         attempts = attempts - u.u_deferred \
         FROM unnest($1::text[], $2::int4[], $3::text[], $4::text[], $5::text[], $6::int4[], \
         $7::text[], $8::text[], $9::timestamptz[], $10::timestamptz[], $11::bool[], $12::int4[]) \
         AS u(u_id, u_attempt, u_state, u_class, u_message, u_status, u_post_id, u_post_url, \
         u_run_at, u_now, u_finished, u_deferred) \
         WHERE shares.id = u.u_id \
         AND shares.id IN (SELECT id FROM shares WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE) \
         AND CASE WHEN shares.state = 'running' AND shares.attempts = u.u_attempt THEN TRUE ELSE FALSE END \
         RETURNING {COLUMNS}, \
         (SELECT n.id FROM shares n WHERE n.after_share_id = shares.id AND n.state = 'queued' LIMIT 1) AS next_id"
    );
    let next_q = format!("SELECT {COLUMNS} FROM shares WHERE id = $1 AND state = 'queued'");
    macro_rules! column {
        ($f:expr) => {
            requests.iter().zip(&outcomes).map($f).collect::<Vec<_>>()
        };
    }
    let mut tx = p.begin().await?;
    let updated = sqlx::query(sqlx::AssertSqlSafe(q))
        .bind(column!(|(r, _)| r.id.as_str()))
        .bind(column!(|(r, _)| r.attempt))
        .bind(column!(|(r, _)| r.update.state().as_str()))
        .bind(column!(|(_, o)| o.class))
        .bind(column!(|(_, o)| o.message))
        .bind(column!(|(_, o)| o.status))
        .bind(column!(|(_, o)| o.post_id))
        .bind(column!(|(_, o)| o.post_url))
        .bind(column!(|(_, o)| o.run_at))
        .bind(column!(|(r, _)| r.now))
        .bind(column!(|(_, o)| o.finished))
        .bind(column!(|(_, o)| i32::from(o.deferred)))
        .fetch_all(&mut *tx)
        .await?;
    let mut found: HashMap<String, (ShareRow, Option<String>)> = HashMap::new();
    for u in &updated {
        let row = ShareRow::from_row(u)?;
        let next_id: Option<String> = u.try_get("next_id")?;
        found.insert(row.id.clone(), (row, next_id));
    }
    let mut rows = Vec::with_capacity(requests.len());
    let mut attempts = Vec::new();
    let mut events = Vec::new();
    for (r, o) in requests.iter().zip(outcomes) {
        let Some((row, next_id)) = found.remove(&r.id) else {
            rows.push(None);
            continue;
        };
        events.extend(crate::webhooks::NewEvent::share(&row, r.now));
        // A share resumed after this one may start now that this one is settled.
        let next: Option<ShareRow> = match next_id {
            Some(id) if o.frees_next(&r.update) => {
                sqlx::query_as(sqlx::AssertSqlSafe(next_q.as_str()))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
            }
            _ => None,
        };
        if !o.deferred {
            attempts.push((r, o));
        }
        rows.push(Some(Finished { row, next }));
    }
    if !attempts.is_empty() {
        macro_rules! column {
            ($f:expr) => {
                attempts.iter().map($f).collect::<Vec<_>>()
            };
        }
        sqlx::query(
            "INSERT INTO share_attempts (id, share_id, number, started_at, finished_at, outcome, \
             error_class, error_message, platform_status) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::timestamptz[], \
             $5::timestamptz[], $6::text[], $7::text[], $8::text[], $9::int4[])",
        )
        .bind(column!(|_| ids::new(ids::ATTEMPT)))
        .bind(column!(|(r, _)| r.id.as_str()))
        .bind(column!(|(r, _)| r.attempt))
        .bind(column!(|(r, _)| r.started_at))
        .bind(column!(|(r, _)| r.now))
        .bind(column!(|(r, _)| r.update.outcome()))
        .bind(column!(|(_, o)| o.class))
        .bind(column!(|(_, o)| o.message))
        .bind(column!(|(_, o)| o.status))
        .execute(&mut *tx)
        .await?;
    }
    super::webhooks::record(p, &mut tx, &events).await?;
    tx.commit().await?;
    crate::webhooks::wake();
    Ok(rows)
}
