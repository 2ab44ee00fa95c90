//! Writing share requests: each request's checks (its targets still connected, the duplicate
//! guard, its idempotency key) and its rows, all or nothing, for a batch of requests that arrived
//! together (`group_commit.rs`) in one transaction.
//!
//! Two ways to write a batch, with the same answers:
//! - **request by request** ([`create_each`]): a few statements per request. SQLite (where a
//!   statement is a function call, not a round trip) and any batch whose requests depend on each
//!   other: the same idempotency key twice, the same post to the same connection twice, images.
//! - **set at a time** on Postgres ([`create_set_pg`]): each check and each write is one
//!   statement for the whole batch, so a batch costs five round trips however many requests it
//!   holds. Round trips were the API's cost (`benches/README.md`).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::PgPool;

use super::{
    Pool, Result, StoreError,
    group_commit::together_or_alone,
    is_sqlite,
    shares::{COLUMNS, CreateOutcome, CreateShares, ShareRow, ShareState},
    with_engine, with_pool,
};
use crate::ids;

/// A share request waiting to be written with others ([`Store::create_shares`]).
#[derive(Debug)]
pub(crate) struct CreateRequest {
    pub(super) req: CreateShares,
    pub(super) now: DateTime<Utc>,
}

/// Writes a batch of share requests in one transaction; if that fails, each in its own.
pub(crate) fn create_batch(
    pool: Pool,
    requests: Vec<CreateRequest>,
) -> BoxFuture<'static, Vec<Result<CreateOutcome>>> {
    Box::pin(async move {
        together_or_alone(
            &pool,
            &requests,
            |p, r| Box::pin(create_together(p, r)),
            "share requests",
        )
        .await
    })
}

fn new_rows(req: &CreateShares, now: DateTime<Utc>) -> Vec<ShareRow> {
    req.shares
        .iter()
        .map(|s| ShareRow {
            id: ids::new(ids::SHARE),
            tenant_id: req.tenant_id.clone(),
            connection_id: s.connection_id.clone(),
            platform: s.platform.clone(),
            url: s.url.clone(),
            title: s.title.clone(),
            body: s.body.clone(),
            image_url: s.image_url.clone(),
            state: ShareState::Queued.as_str().to_owned(),
            attempts: 0,
            run_at: s.run_at,
            not_after: s.not_after,
            lease_until: None,
            first_sent_at: None,
            last_error_class: None,
            last_error: None,
            last_status: None,
            post_id: None,
            post_url: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
            budget_from: 0,
            checkpoint: None,
            after_share_id: None,
            edits: 0,
            media_count: s.media.len() as i32,
        })
        .collect()
}

/// What a repeated idempotency key answers: the shares it made (read in the same transaction),
/// or a refusal if the body differs. A macro because its body runs on either engine's transaction.
macro_rules! replay {
    ($tx:expr, $p:expr, $req:expr, $seen:expr, $select:expr) => {{
        let (hash, stored): (String, String) = $seen;
        if hash != $req.request_hash {
            CreateOutcome::KeyReused
        } else {
            let stored: Vec<String> =
                serde_json::from_str(&stored).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let mut found = Vec::with_capacity(stored.len());
            for id in stored {
                let row: ShareRow = sqlx::query_as(with_engine($p, $select))
                    .bind(id)
                    .fetch_one(&mut *$tx)
                    .await?;
                found.push(row);
            }
            CreateOutcome::Replayed(found)
        }
    }};
}

/// What an idempotency key stored: the request's digest and the ids of the shares it made.
const KEY_READ: &str =
    "SELECT request_hash, share_ids FROM idempotency_keys WHERE tenant_id = $1 AND key = $2";

/// A batch in one transaction: set at a time on Postgres where its requests are independent.
async fn create_together(pool: &Pool, requests: &[CreateRequest]) -> Result<Vec<CreateOutcome>> {
    match pool {
        Pool::Postgres(p) if independent(requests) => create_set_pg(p, requests).await,
        _ => create_each(pool, requests).await,
    }
}

/// Each request in order, in one transaction. A request that writes nothing (a connection gone,
/// a replayed or reused key) decides so before its first write, so no request's answer needs a
/// rollback of its own. As before, a connection removed since refuses even a repeated key.
async fn create_each(pool: &Pool, requests: &[CreateRequest]) -> Result<Vec<CreateOutcome>> {
    let key_insert = "INSERT INTO idempotency_keys (tenant_id, key, request_hash, share_ids, created_at) \
                      VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, key) DO NOTHING";
    let select = format!("SELECT {COLUMNS} FROM shares WHERE id = $1");
    // The caller validated against a connection it may have read seconds ago: it must still be
    // the tenant's and not removed as of this write.
    let live = "SELECT 1 FROM connections WHERE id = $1 AND tenant_id = $2 AND revoked_at IS NULL";
    let duplicate_lock = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";
    let duplicate_find = "SELECT id FROM shares WHERE connection_id = $1 AND duplicate_key = $2 \
                          AND created_at >= $3 AND state NOT IN ('failed', 'cancelled', 'expired') \
                          ORDER BY created_at DESC LIMIT 1";
    let insert = "INSERT INTO shares (id, tenant_id, connection_id, platform, url, title, body, image_url, state, attempts, run_at, not_after, created_at, updated_at, duplicate_key, media_count) \
                  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10, $11, $12, $12, $13, $14)";
    Ok(with_pool!(pool, insert, |p, _sql| {
        let mut tx = crate::store::Engine::begin_write(p).await?;
        let mut outcomes = Vec::with_capacity(requests.len());
        for CreateRequest { req, now } in requests {
            let rows = new_rows(req, *now);
            let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            let ids_json = serde_json::to_string(&ids).expect("ids serialize");
            let targets: Vec<&str> = rows.iter().map(|r| r.connection_id.as_str()).collect();
            // One primary-key read per target (a request has one or a few).
            let mut found = Vec::with_capacity(targets.len());
            for t in &targets {
                let live: Option<i32> = sqlx::query_scalar(with_engine(p, live))
                    .bind(*t)
                    .bind(&req.tenant_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if live.is_some() {
                    found.push(*t);
                }
            }
            if let Some(gone) = targets.iter().find(|t| !found.iter().any(|f| f == *t)) {
                outcomes.push(CreateOutcome::ConnectionGone((*gone).to_owned()));
                continue;
            }
            if let Some(since) = req.duplicates_since {
                let mut earlier = None;
                for r in req.shares.iter() {
                    let Some(dup) = &r.duplicate_key else {
                        continue;
                    };
                    if !is_sqlite(p) {
                        // Two transactions checking the same post at once would both find
                        // nothing; SQLite's one writer rules that out, Postgres needs the lock.
                        sqlx::query(with_engine(p, duplicate_lock))
                            .bind(format!("{}:{dup}", r.connection_id))
                            .execute(&mut *tx)
                            .await?;
                    }
                    let found: Option<String> = sqlx::query_scalar(with_engine(p, duplicate_find))
                        .bind(&r.connection_id)
                        .bind(dup)
                        .bind(since)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if let Some(share_id) = found {
                        earlier = Some((r.connection_id.clone(), share_id));
                        break;
                    }
                }
                if let Some((connection_id, share_id)) = earlier {
                    // A repeated request finds its own shares: it is answered from its key (read
                    // only now, so a request that is no duplicate pays nothing for it).
                    if let Some(key) = &req.idempotency_key {
                        let seen: Option<(String, String)> =
                            sqlx::query_as(with_engine(p, KEY_READ))
                                .bind(&req.tenant_id)
                                .bind(key)
                                .fetch_optional(&mut *tx)
                                .await?;
                        if let Some(seen) = seen {
                            outcomes.push(replay!(tx, p, req, seen, &select));
                            continue;
                        }
                    }
                    outcomes.push(CreateOutcome::AlreadyShared {
                        connection_id,
                        share_id,
                    });
                    continue;
                }
            }
            if let Some(key) = &req.idempotency_key {
                let fresh = sqlx::query(with_engine(p, key_insert))
                    .bind(&req.tenant_id)
                    .bind(key)
                    .bind(&req.request_hash)
                    .bind(&ids_json)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                if !fresh {
                    let seen: (String, String) = sqlx::query_as(with_engine(p, KEY_READ))
                        .bind(&req.tenant_id)
                        .bind(key)
                        .fetch_one(&mut *tx)
                        .await?;
                    outcomes.push(replay!(tx, p, req, seen, &select));
                    continue;
                }
            }
            for (r, new) in rows.iter().zip(&req.shares) {
                sqlx::query(with_engine(p, insert))
                    .bind(&r.id)
                    .bind(&r.tenant_id)
                    .bind(&r.connection_id)
                    .bind(&r.platform)
                    .bind(&r.url)
                    .bind(&r.title)
                    .bind(&r.body)
                    .bind(&r.image_url)
                    .bind(&r.state)
                    .bind(r.run_at)
                    .bind(r.not_after)
                    .bind(now)
                    .bind(&new.duplicate_key)
                    .bind(r.media_count)
                    .execute(&mut *tx)
                    .await?;
            }
            // Each blob's row is written (or its use bumped) before the lists that use it, so
            // the media sweep, which spares blobs used lately, cannot take it meanwhile.
            for b in &req.blobs {
                sqlx::query(with_engine(p, super::media::UPSERT_BLOB))
                    .bind(&b.sha256)
                    .bind(&b.content_type)
                    .bind(b.bytes.as_ref())
                    .bind(b.bytes.len() as i64)
                    .bind(b.width as i32)
                    .bind(b.height as i32)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            for (r, new) in rows.iter().zip(&req.shares) {
                for (i, m) in new.media.iter().enumerate() {
                    sqlx::query(with_engine(p, super::media::INSERT_SHARE_MEDIA))
                        .bind(&r.id)
                        .bind(i as i32)
                        .bind(&m.sha256)
                        .bind(&m.alt)
                        .bind(&m.source_url)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            outcomes.push(CreateOutcome::Created(rows));
        }
        tx.commit().await?;
        outcomes
    }))
}

/// Whether a batch's requests can be checked and written as sets: none of them depends on what
/// another writes. Two requests with the same idempotency key, or the same post to the same
/// connection under the duplicate guard, must see each other's rows, and images are written
/// request by request.
fn independent(requests: &[CreateRequest]) -> bool {
    let mut keys = HashSet::new();
    let mut posts = HashSet::new();
    requests.iter().all(|CreateRequest { req, .. }| {
        req.blobs.is_empty()
            && req.shares.iter().all(|s| s.media.is_empty())
            && req
                .idempotency_key
                .as_ref()
                .is_none_or(|k| keys.insert((req.tenant_id.as_str(), k.as_str())))
            // Whether or not this request checks for duplicates, a later one may find its share.
            && req.shares.iter().all(|s| {
                s.duplicate_key
                    .as_ref()
                    .is_none_or(|d| posts.insert((s.connection_id.as_str(), d.as_str())))
            })
    })
}

/// A batch of independent requests, set at a time: the same checks in the same order as
/// [`create_each`] (targets still connected, then the duplicate guard, then the idempotency
/// key), each one statement for the batch. The rarely taken answers (a repeated key, a
/// duplicate that may be the request's own earlier write) read their rows one by one.
async fn create_set_pg(p: &PgPool, requests: &[CreateRequest]) -> Result<Vec<CreateOutcome>> {
    let select = format!("SELECT {COLUMNS} FROM shares WHERE id = $1");
    let mut tx = p.begin().await?;
    let rows: Vec<Vec<ShareRow>> = requests.iter().map(|r| new_rows(&r.req, r.now)).collect();
    let mut outcomes: Vec<Option<CreateOutcome>> = requests.iter().map(|_| None).collect();

    // Targets: still the tenant's and not removed as of this write.
    let (ids, tenants): (Vec<&str>, Vec<&str>) = requests
        .iter()
        .flat_map(|r| {
            r.req
                .shares
                .iter()
                .map(|s| (s.connection_id.as_str(), r.req.tenant_id.as_str()))
        })
        .unzip();
    let live: HashSet<(String, String)> = sqlx::query_as(
        "SELECT c.id, c.tenant_id FROM unnest($1::text[], $2::text[]) AS t(id, tenant_id) \
         JOIN connections c ON c.id = t.id AND c.tenant_id = t.tenant_id \
         WHERE c.revoked_at IS NULL",
    )
    .bind(&ids)
    .bind(&tenants)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    for (i, CreateRequest { req, .. }) in requests.iter().enumerate() {
        let gone = req
            .shares
            .iter()
            .find(|s| !live.contains(&(s.connection_id.clone(), req.tenant_id.clone())));
        if let Some(gone) = gone {
            outcomes[i] = Some(CreateOutcome::ConnectionGone(gone.connection_id.clone()));
        }
    }

    // The duplicate guard: lock every (connection, post) the batch checks, then look for each
    // in a statement of its own, whose snapshot sees whatever the lock's last holder committed.
    let mut checks: Vec<(usize, &str, &str, DateTime<Utc>)> = Vec::new();
    for (i, CreateRequest { req, .. }) in requests.iter().enumerate() {
        let Some(since) = req.duplicates_since else {
            continue;
        };
        if outcomes[i].is_some() {
            continue;
        }
        for s in &req.shares {
            if let Some(d) = &s.duplicate_key {
                checks.push((i, s.connection_id.as_str(), d.as_str(), since));
            }
        }
    }
    let mut earlier: HashMap<usize, (String, String)> = HashMap::new();
    if !checks.is_empty() {
        // In one order for every transaction, so two batches cannot deadlock on each other.
        let mut locks: Vec<String> = checks
            .iter()
            .map(|(_, c, d, _)| format!("{c}:{d}"))
            .collect();
        locks.sort_unstable();
        locks.dedup();
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest($1::text[]) AS k",
        )
        .bind(&locks)
        .execute(&mut *tx)
        .await?;
        let n: Vec<i32> = (0..checks.len() as i32).collect();
        let connections: Vec<&str> = checks.iter().map(|c| c.1).collect();
        let posts: Vec<&str> = checks.iter().map(|c| c.2).collect();
        let since: Vec<DateTime<Utc>> = checks.iter().map(|c| c.3).collect();
        let found: Vec<(i32, String)> = sqlx::query_as(
            "SELECT t.n, f.id FROM unnest($1::int4[], $2::text[], $3::text[], $4::timestamptz[]) \
             AS t(n, connection_id, duplicate_key, since) \
             CROSS JOIN LATERAL (SELECT s.id FROM shares s WHERE s.connection_id = t.connection_id \
             AND s.duplicate_key = t.duplicate_key AND s.created_at >= t.since \
             AND s.state NOT IN ('failed', 'cancelled', 'expired') \
             ORDER BY s.created_at DESC LIMIT 1) AS f",
        )
        .bind(&n)
        .bind(&connections)
        .bind(&posts)
        .bind(&since)
        .fetch_all(&mut *tx)
        .await?;
        // A request's first target (in its order) with an earlier share answers for it.
        let mut found: Vec<(usize, String)> =
            found.into_iter().map(|(n, id)| (n as usize, id)).collect();
        found.sort_unstable_by_key(|(n, _)| *n);
        for (n, share_id) in found {
            let (i, connection_id, ..) = checks[n];
            earlier
                .entry(i)
                .or_insert_with(|| (connection_id.to_owned(), share_id));
        }
    }
    for (i, (connection_id, share_id)) in earlier {
        let req = &requests[i].req;
        // A repeated request finds its own shares: it is answered from its key.
        if let Some(key) = &req.idempotency_key {
            let seen: Option<(String, String)> = sqlx::query_as(KEY_READ)
                .bind(&req.tenant_id)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(seen) = seen {
                outcomes[i] = Some(replay!(tx, p, req, seen, &select));
                continue;
            }
        }
        outcomes[i] = Some(CreateOutcome::AlreadyShared {
            connection_id,
            share_id,
        });
    }

    // Idempotency keys: a key already stored answers with what it made, or refuses.
    let keyed: Vec<usize> = (0..requests.len())
        .filter(|&i| outcomes[i].is_none() && requests[i].req.idempotency_key.is_some())
        .collect();
    if !keyed.is_empty() {
        let tenants: Vec<&str> = keyed
            .iter()
            .map(|&i| requests[i].req.tenant_id.as_str())
            .collect();
        let keys: Vec<&str> = keyed
            .iter()
            .filter_map(|&i| requests[i].req.idempotency_key.as_deref())
            .collect();
        let hashes: Vec<&str> = keyed
            .iter()
            .map(|&i| requests[i].req.request_hash.as_str())
            .collect();
        let share_ids: Vec<String> = keyed
            .iter()
            .map(|&i| {
                let ids: Vec<&str> = rows[i].iter().map(|r| r.id.as_str()).collect();
                serde_json::to_string(&ids).expect("ids serialize")
            })
            .collect();
        let at: Vec<DateTime<Utc>> = keyed.iter().map(|&i| requests[i].now).collect();
        let fresh: HashSet<(String, String)> = sqlx::query_as(
            "INSERT INTO idempotency_keys (tenant_id, key, request_hash, share_ids, created_at) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) \
             ON CONFLICT (tenant_id, key) DO NOTHING RETURNING tenant_id, key",
        )
        .bind(&tenants)
        .bind(&keys)
        .bind(&hashes)
        .bind(&share_ids)
        .bind(&at)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        for i in keyed {
            let req = &requests[i].req;
            let key = req.idempotency_key.clone().unwrap_or_default();
            if fresh.contains(&(req.tenant_id.clone(), key.clone())) {
                continue;
            }
            let seen: (String, String) = sqlx::query_as(KEY_READ)
                .bind(&req.tenant_id)
                .bind(&key)
                .fetch_one(&mut *tx)
                .await?;
            outcomes[i] = Some(replay!(tx, p, req, seen, &select));
        }
    }

    // Every share of every request still to write, in one insert.
    let writes: Vec<(&ShareRow, &super::shares::NewShare)> = (0..requests.len())
        .filter(|&i| outcomes[i].is_none())
        .flat_map(|i| rows[i].iter().zip(&requests[i].req.shares))
        .collect();
    if !writes.is_empty() {
        macro_rules! column {
            ($f:expr) => {
                writes.iter().map($f).collect::<Vec<_>>()
            };
        }
        sqlx::query(
            "INSERT INTO shares (id, tenant_id, connection_id, platform, url, title, body, \
             image_url, state, attempts, run_at, not_after, created_at, updated_at, duplicate_key, \
             media_count) \
             SELECT id, tenant_id, connection_id, platform, url, title, body, image_url, 'queued', \
             0, run_at, not_after, created_at, created_at, duplicate_key, 0 \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
             $7::text[], $8::text[], $9::timestamptz[], $10::timestamptz[], $11::timestamptz[], \
             $12::text[]) AS t(id, tenant_id, connection_id, platform, url, title, body, \
             image_url, run_at, not_after, created_at, duplicate_key)",
        )
        .bind(column!(|(r, _)| r.id.as_str()))
        .bind(column!(|(r, _)| r.tenant_id.as_str()))
        .bind(column!(|(r, _)| r.connection_id.as_str()))
        .bind(column!(|(r, _)| r.platform.as_str()))
        .bind(column!(|(r, _)| r.url.as_str()))
        .bind(column!(|(r, _)| r.title.as_deref()))
        .bind(column!(|(r, _)| r.body.as_deref()))
        .bind(column!(|(r, _)| r.image_url.as_deref()))
        .bind(column!(|(r, _)| r.run_at))
        .bind(column!(|(r, _)| r.not_after))
        .bind(column!(|(r, _)| r.created_at))
        .bind(column!(|(_, new)| new.duplicate_key.as_deref()))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(outcomes
        .into_iter()
        .zip(rows)
        .map(|(o, rows)| o.unwrap_or(CreateOutcome::Created(rows)))
        .collect())
}
