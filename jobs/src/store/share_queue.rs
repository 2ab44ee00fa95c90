//! The share table as a queue, for the store's own engines (SQLite, Postgres without Redis).
//!
//! A queued share past its `run_at` is a job waiting; claiming it is one `UPDATE ... RETURNING`
//! over the `shares_due` index that takes a batch at once, sets the lease and counts the attempt.
//! Nothing else is written per job: there is no second table of jobs to insert into, acknowledge
//! or prune, so the cost of a claim does not grow with history.

use chrono::{DateTime, Utc};

use super::{
    Pool, Result, Store,
    shares::{COLUMNS, READY, ShareRow},
};

/// How the statements differ between the engines. Postgres skips rows another worker is claiming
/// at that moment instead of waiting for them, and rechecks the state of each row it locked.
/// SQLite has one writer at a time, so neither is needed; it is told which index to read
/// (`INDEXED BY`), since without statistics it would pick `(state, updated_at)` and sort every
/// queued row for each claim, a cost that grows with the backlog.
struct Dialect {
    due: &'static str,
    leased: &'static str,
    lock: &'static str,
    recheck: &'static str,
}

fn dialect(pool: &Pool) -> Dialect {
    match pool {
        Pool::Postgres(_) => Dialect {
            due: "",
            leased: "",
            lock: "FOR UPDATE SKIP LOCKED",
            recheck: "AND state = 'queued'",
        },
        Pool::Sqlite(_) => Dialect {
            due: "INDEXED BY shares_due",
            leased: "INDEXED BY shares_leased",
            lock: "",
            recheck: "",
        },
    }
}

fn claim_due_sql(pool: &Pool) -> String {
    let Dialect {
        due, lock, recheck, ..
    } = dialect(pool);
    format!(
        "UPDATE shares SET state = 'running', attempts = attempts + 1, lease_until = $2, \
         first_sent_at = COALESCE(first_sent_at, $1), updated_at = $1 \
         WHERE id IN (SELECT id FROM shares {due} WHERE state = 'queued' AND run_at <= $1 \
         AND {READY} ORDER BY run_at, id LIMIT $3 {lock}) {recheck} RETURNING {COLUMNS}"
    )
}

fn claim_lapsed_sql(pool: &Pool) -> String {
    let Dialect { leased, lock, .. } = dialect(pool);
    format!(
        "UPDATE shares SET attempts = attempts + 1, lease_until = $2, updated_at = $1 \
         WHERE id IN (SELECT id FROM shares {leased} WHERE state = 'running' AND lease_until < $1 \
         ORDER BY lease_until LIMIT $3 {lock}) AND state = 'running' AND lease_until < $1 \
         RETURNING {COLUMNS}"
    )
}

fn next_due_sql(pool: &Pool) -> String {
    let Dialect { due, .. } = dialect(pool);
    format!(
        "SELECT run_at FROM shares {due} WHERE state = 'queued' AND run_at > $1 \
         ORDER BY run_at, id LIMIT 1"
    )
}

impl Store {
    /// Claims up to `limit` queued shares that are due at `now`, oldest due first: each becomes
    /// `running` under a lease until `lease_until`, with its attempt counted, exactly as
    /// [`Store::claim_share`] does for one. A share resumed after a reconnect is skipped while
    /// the one parked before it has not finished.
    pub(crate) async fn claim_due_shares(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<ShareRow>> {
        let mut rows = self
            .claim(
                "SELECT 1 FROM shares INDEXED BY shares_due WHERE state = 'queued' AND run_at <= ?1 LIMIT 1",
                &claim_due_sql(&self.pool),
                now,
                lease_until,
                limit,
            )
            .await?;
        rows.sort_by(|a, b| a.run_at.cmp(&b.run_at).then_with(|| a.id.cmp(&b.id)));
        Ok(rows)
    }

    /// Claims up to `limit` shares whose worker's lease lapsed (the worker died mid-attempt).
    /// Each gets a new lease and a new attempt; the caller treats them as recovered.
    pub(crate) async fn claim_lapsed_shares(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<ShareRow>> {
        self.claim(
            "SELECT 1 FROM shares INDEXED BY shares_leased WHERE state = 'running' AND lease_until < ?1 LIMIT 1",
            &claim_lapsed_sql(&self.pool),
            now,
            lease_until,
            limit,
        )
        .await
    }

    /// Runs a claim statement (`$1` now, `$2` the lease's end, `$3` how many), unless `probe`
    /// finds there is nothing to claim.
    async fn claim(
        &self,
        probe: &'static str,
        claim: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<ShareRow>> {
        if !self.worth_claiming(probe, now).await? {
            return Ok(Vec::new());
        }
        Ok(super::with_pool!(&self.pool, claim, |p, sql| {
            sqlx::query_as(sql)
                .bind(now)
                .bind(lease_until)
                .bind(limit)
                .fetch_all(p)
                .await?
        }))
    }

    /// On SQLite, whether a claim can find anything: an `UPDATE` takes the database's one write
    /// lock even when it matches no row, so an idle fetcher (every worker process polls) reads
    /// first and leaves the lock to writers with work. A read never waits for a writer in WAL
    /// mode. On Postgres an `UPDATE` matching nothing locks nothing, so it claims directly.
    async fn worth_claiming(&self, probe: &'static str, now: DateTime<Utc>) -> Result<bool> {
        Ok(match &self.pool {
            Pool::Sqlite(p) => sqlx::query_scalar::<_, i64>(probe)
                .bind(now)
                .fetch_optional(p)
                .await?
                .is_some(),
            Pool::Postgres(_) => true,
        })
    }

    /// The earliest `run_at` after `now` of a queued share: when the next claim can find work
    /// without being woken.
    pub(crate) async fn next_share_due(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
        let q = next_due_sql(&self.pool);
        Ok(super::with_pool!(&self.pool, &q, |p, sql| {
            sqlx::query_scalar(sql).bind(now).fetch_optional(p).await?
        }))
    }

    /// A claimed share that turned out to be past its lateness limit: `expired`, with the
    /// attempt the claim counted given back (nothing was tried).
    pub(crate) async fn expire_claimed(
        &self,
        id: &str,
        attempt: i32,
        now: DateTime<Utc>,
    ) -> Result<Option<ShareRow>> {
        let q = format!(
            "UPDATE shares SET state = 'expired', attempts = attempts - 1, lease_until = NULL, \
             last_error_class = 'expired', last_error = 'not run before its lateness limit', \
             updated_at = $3, finished_at = $3 \
             WHERE id = $1 AND state = 'running' AND attempts = $2 RETURNING {COLUMNS}"
        );
        Ok(super::with_pool!(&self.pool, &q, |p, sql| {
            sqlx::query_as(sql)
                .bind(id)
                .bind(attempt)
                .bind(now)
                .fetch_optional(p)
                .await?
        }))
    }
}
