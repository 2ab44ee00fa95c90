//! The token lifecycle in the store: the single-flight refresh lease, token writes checked against
//! the generation read, refresh outcomes, reauth and resuming parked work, and sweep ticks.

use chrono::{DateTime, Utc};

use super::{
    ConnectionRow, Result, ShareRow, Store, StoreError, StoredTokens, with_engine, with_pool,
};
use crate::{ids, vault::KeyRing};

/// How a token write went.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenWrite {
    Stored {
        generation: i64,
    },
    /// The connection's tokens changed since they were read (a reconnect, another refresh): the
    /// write was dropped so newer tokens are never overwritten.
    Stale,
}

impl Store {
    /// Takes the refresh lease on a connection if nobody holds a live one. Returns the token
    /// generation read under the lease.
    pub(crate) async fn acquire_refresh_lock(
        &self,
        id: &str,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<i64>> {
        Ok(with_pool!(
            &self.pool,
            "UPDATE connections SET refresh_lock_until = $3, refresh_lock_owner = $4 \
            WHERE id = $1 AND (refresh_lock_until IS NULL OR refresh_lock_until < $2) RETURNING token_generation",
            |p, sql| {
                sqlx::query_scalar(sql)
                    .bind(id)
                    .bind(now)
                    .bind(until)
                    .bind(owner)
                    .fetch_optional(p)
                    .await?
            }
        ))
    }

    pub(crate) async fn release_refresh_lock(&self, id: &str, owner: &str) -> Result<()> {
        with_pool!(
            &self.pool,
            "UPDATE connections SET refresh_lock_until = NULL, refresh_lock_owner = NULL WHERE id = $1 AND refresh_lock_owner = $2",
            |p, sql| {
                sqlx::query(sql).bind(id).bind(owner).execute(p).await?;
            }
        );
        Ok(())
    }

    /// Stores refreshed tokens if the generation is still the one read; an absent refresh token
    /// keeps the stored one. Clears `last_error` and releases the lease.
    pub async fn store_refreshed_tokens(
        &self,
        id: &str,
        read_generation: i64,
        tokens: &StoredTokens,
        vault: &KeyRing,
        now: DateTime<Utc>,
    ) -> Result<TokenWrite> {
        let seal = |column: &str, v: &Option<secrecy::SecretString>| {
            v.as_ref()
                .map(|s| {
                    vault.encrypt(
                        crate::vault::Slot {
                            table: "connections",
                            row: id,
                            column,
                        },
                        s,
                    )
                })
                .transpose()
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        };
        let access = seal("access_token", &tokens.access_token)?;
        let refresh = seal("refresh_token", &tokens.refresh_token)?;
        let dpop = seal("dpop_key", &tokens.dpop_key)?;
        let generation: Option<i64> = with_pool!(
            &self.pool,
            "UPDATE connections SET access_token_enc = COALESCE($3, access_token_enc), \
            refresh_token_enc = COALESCE($4, refresh_token_enc), dpop_key_enc = COALESCE($5, dpop_key_enc), \
            token_expires_at = $6, token_generation = token_generation + 1, last_error = NULL, \
            refresh_lock_until = NULL, refresh_lock_owner = NULL, updated_at = $7 \
            WHERE id = $1 AND token_generation = $2 RETURNING token_generation",
            |p, sql| {
                sqlx::query_scalar(sql)
                    .bind(id)
                    .bind(read_generation)
                    .bind(access)
                    .bind(refresh)
                    .bind(dpop)
                    .bind(tokens.expires_at)
                    .bind(now)
                    .fetch_optional(p)
                    .await?
            }
        );
        Ok(
            generation.map_or(TokenWrite::Stale, |generation| TokenWrite::Stored {
                generation,
            }),
        )
    }

    /// Records one refresh outcome (`succeeded`, `invalid_grant`, `transient`, `skipped`): as the
    /// outcome of `run` (the queued run a job executes), else as a run of its own (a share's
    /// just-in-time refresh).
    pub(crate) async fn record_refresh(
        &self,
        conn: &ConnectionRow,
        run: Option<&str>,
        result: &str,
        message: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        if let Some(run) = run {
            let settled = with_pool!(
                &self.pool,
                "UPDATE token_refreshes SET result = $2, message = $3, at = $4 WHERE id = $1",
                |p, sql| {
                    sqlx::query(sql)
                        .bind(run)
                        .bind(result)
                        .bind(message)
                        .bind(now)
                        .execute(p)
                        .await?
                        .rows_affected()
                }
            );
            if settled == 1 {
                return Ok(());
            }
        }
        with_pool!(
            &self.pool,
            "INSERT INTO token_refreshes (id, connection_id, platform, result, message, at) VALUES ($1, $2, $3, $4, $5, $6)",
            |p, sql| {
                sqlx::query(sql)
                    .bind(ids::new("rfr"))
                    .bind(&conn.id)
                    .bind(&conn.platform)
                    .bind(result)
                    .bind(message)
                    .bind(now)
                    .execute(p)
                    .await?;
            }
        );
        Ok(())
    }

    /// Connections with at least `threshold` failed refreshes since `since`, by platform. Reads
    /// only the failures in the window (a partial index), not all connections.
    pub(crate) async fn refresh_failing_counts(
        &self,
        since: DateTime<Utc>,
        threshold: i64,
    ) -> Result<Vec<(String, i64)>> {
        Ok(with_pool!(
            &self.pool,
            "SELECT platform, COUNT(*) FROM (SELECT connection_id, MIN(platform) AS platform FROM token_refreshes \
            WHERE at >= $1 AND result IN ('invalid_grant', 'transient') GROUP BY connection_id HAVING COUNT(*) >= $2) failing GROUP BY platform",
            |p, sql| {
                sqlx::query_as(sql)
                    .bind(since)
                    .bind(threshold)
                    .fetch_all(p)
                    .await?
            }
        ))
    }

    /// Clears `needs_reauth` after a successful verify, if the tokens are still the ones verified.
    pub(crate) async fn clear_needs_reauth(
        &self,
        id: &str,
        verified_generation: i64,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        Ok(with_pool!(
            &self.pool,
            "UPDATE connections SET needs_reauth = FALSE, needs_reauth_since = NULL, last_error = NULL, updated_at = $3 \
             WHERE id = $1 AND token_generation = $2",
            |p, sql| {
                sqlx::query(sql)
                    .bind(id)
                    .bind(verified_generation)
                    .bind(now)
                    .execute(p)
                    .await?
                    .rows_affected()
                    == 1
            }
        ))
    }

    /// Puts a connection's parked shares back in the queue in their original order; those past
    /// their lateness limit become `expired`. Returns the resumed rows (oldest first) and how many
    /// expired.
    pub(crate) async fn resume_parked(
        &self,
        connection_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(Vec<ShareRow>, u64)> {
        let cols = super::shares::COLUMNS;
        let select = format!(
            "SELECT {cols} FROM shares WHERE connection_id = $1 AND state = 'parked' \
             ORDER BY created_at, id"
        );
        // Each resumed share is due a moment after the one before it and starts only once that
        // one has finished (`after_share_id`), so the account's posts keep their original order
        // whatever the number of workers.
        let resume = format!(
            "UPDATE shares SET state = 'queued', run_at = $2, after_share_id = $3, updated_at = $4 \
             WHERE id = $1 AND state = 'parked' RETURNING {cols}"
        );
        let (rows, expired) = with_pool!(&self.pool, &select, |p, sql| {
            let mut tx = crate::store::Engine::begin_write(p).await?;
            let expired = sqlx::query(with_engine(
                p,
                "UPDATE shares SET state = 'expired', last_error_class = 'expired', \
                last_error = 'parked past its lateness limit', updated_at = $2, finished_at = $2 \
                WHERE connection_id = $1 AND state = 'parked' AND not_after <= $2",
            ))
            .bind(connection_id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let parked: Vec<ShareRow> = sqlx::query_as(sql)
                .bind(connection_id)
                .fetch_all(&mut *tx)
                .await?;
            let mut rows = Vec::with_capacity(parked.len());
            let mut before: Option<String> = None;
            for (i, row) in parked.iter().enumerate() {
                let run_at = now + chrono::Duration::milliseconds(i as i64);
                let resumed: ShareRow = sqlx::query_as(with_engine(p, &resume))
                    .bind(&row.id)
                    .bind(run_at)
                    .bind(before.as_deref())
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                before = Some(resumed.id.clone());
                rows.push(resumed);
            }
            tx.commit().await?;
            (rows, expired)
        });
        Ok((rows, expired))
    }

    /// Connections whose access token expires before `before`, that can be refreshed (a refresh
    /// token, or Instagram and Threads: `PlatformKind::refreshes_access_token`) and are not
    /// flagged, in expiry order, after the `(expiry, id)` of the previous page: each page is a
    /// range scan of the partial index on `(token_expires_at, id)`, so the cost is the due set.
    /// `DueFor::LongLived` takes only Instagram's and Threads' self-renewing tokens, through their
    /// own partial index, so the sweep can renew them days ahead without reading every X token.
    pub async fn connections_due_for_refresh(
        &self,
        due: DueFor,
        before: DateTime<Utc>,
        after: Option<&(DateTime<Utc>, String)>,
        limit: i64,
    ) -> Result<Vec<(String, String, DateTime<Utc>)>> {
        let (after_at, after_id) =
            after.map_or((None, None), |(a, i)| (Some(*a), Some(i.as_str())));
        // Each predicate is written as its partial index's, so both engines use the index.
        let which = match due {
            DueFor::Refreshable => {
                "(refresh_token_enc IS NOT NULL OR platform IN ('instagram', 'threads'))"
            }
            DueFor::LongLived => "platform IN ('instagram', 'threads')",
        };
        let text = format!(
            "SELECT id, platform, token_expires_at FROM connections WHERE token_expires_at < $1 \
            AND revoked_at IS NULL AND NOT needs_reauth AND {which} \
            AND ($2 IS NULL OR (token_expires_at, id) > ($2, $3)) ORDER BY token_expires_at, id LIMIT $4"
        );
        Ok(with_pool!(&self.pool, text.as_str(), |p, sql| {
            sqlx::query_as(sql)
                .bind(before)
                .bind(after_at)
                .bind(after_id)
                .bind(limit)
                .fetch_all(p)
                .await?
        }))
    }

    /// Live, unflagged connections of one platform, paged by id (the follower-sync sweep).
    pub(crate) async fn connections_of_platform(
        &self,
        platform: &str,
        after_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<String>> {
        Ok(with_pool!(
            &self.pool,
            "SELECT id FROM connections WHERE platform = $1 AND revoked_at IS NULL AND NOT needs_reauth \
            AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3",
            |p, sql| {
                sqlx::query_scalar(sql)
                    .bind(platform)
                    .bind(after_id)
                    .bind(limit)
                    .fetch_all(p)
                    .await?
            }
        ))
    }

    /// Claims one tick of a sweep for this process: true for exactly one caller per tick.
    pub(crate) async fn claim_sweep_tick(
        &self,
        sweep: &str,
        tick: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        Ok(with_pool!(
            &self.pool,
            "INSERT INTO sweep_ticks (sweep, tick, ran_at) VALUES ($1, $2, $3) ON CONFLICT (sweep, tick) DO NOTHING",
            |p, sql| {
                sqlx::query(sql)
                    .bind(sweep)
                    .bind(tick)
                    .bind(now)
                    .execute(p)
                    .await?
                    .rows_affected()
                    == 1
            }
        ))
    }
}

/// Which connections a refresh sweep pass looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DueFor {
    /// Every connection Herald can renew, within the refresh window.
    Refreshable,
    /// Instagram's and Threads' 60-day tokens, renewed with themselves, within the long-lived
    /// window.
    LongLived,
}
