//! Follower sync runs: a checkpointed walk through a connection's followers (or follows), upserted
//! page by page so memory never grows with the follower count. Accounts seen in a run carry its id;
//! at the end, those not seen are the ones lost, and those it saw first the ones gained: both are
//! kept in `follower_changes`, written with the run's finish.

use chrono::{DateTime, Utc};
use herald_platforms::FollowerAccount;

use super::{Result, Store, with_engine, with_pool};
use crate::ids;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SyncRun {
    pub id: String,
    pub connection_id: String,
    pub relation: String,
    pub state: String,
    pub cursor: Option<String>,
    pub pages: i32,
    pub seen: i32,
    pub gained: i32,
    pub lost: i32,
    pub last_error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One account a connection follows or is followed by, as last synced.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FollowerRow {
    pub platform_account_id: String,
    pub handle: String,
    pub first_seen_at: DateTime<Utc>,
}

/// An account a finished run gained or lost.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FollowerChangeRow {
    pub seq: i64,
    pub run_id: String,
    pub relation: String,
    /// `gained` or `lost`.
    pub change: String,
    pub platform_account_id: String,
    pub handle: String,
    /// When the run finished.
    pub at: DateTime<Utc>,
}

const RUN_COLUMNS: &str = "id, connection_id, relation, state, cursor, pages, seen, gained, lost, last_error, started_at, updated_at, finished_at";

impl Store {
    /// The unfinished run (queued, running or paused) of this connection and relation, if any.
    pub(crate) async fn find_open_sync_run(
        &self,
        connection_id: &str,
        relation: &str,
    ) -> Result<Option<SyncRun>> {
        let q = format!(
            "SELECT {RUN_COLUMNS} FROM follower_sync_runs WHERE connection_id = $1 AND relation = $2 AND state IN ('queued', 'running') ORDER BY started_at DESC LIMIT 1"
        );
        Ok(with_pool!(&self.pool, &q, |p, sql| sqlx::query_as(sql)
            .bind(connection_id)
            .bind(relation)
            .fetch_optional(p)
            .await?))
    }

    /// The unfinished run of this connection and relation, or a new one. A run left by a crash or
    /// a rate limit resumes from its checkpoint.
    pub(crate) async fn open_sync_run(
        &self,
        connection_id: &str,
        relation: &str,
        now: DateTime<Utc>,
    ) -> Result<SyncRun> {
        if let Some(run) = self.find_open_sync_run(connection_id, relation).await? {
            return Ok(run);
        }
        let id = ids::new("fsr");
        let q = format!(
            "INSERT INTO follower_sync_runs (id, connection_id, relation, state, started_at, updated_at) VALUES ($1, $2, $3, 'running', $4, $4) RETURNING {RUN_COLUMNS}"
        );
        Ok(with_pool!(&self.pool, &q, |p, sql| sqlx::query_as(sql)
            .bind(&id)
            .bind(connection_id)
            .bind(relation)
            .bind(now)
            .fetch_one(p)
            .await?))
    }

    /// A queued run starts now (a run already running is left as it is).
    pub(crate) async fn start_sync_run(&self, run: &mut SyncRun, now: DateTime<Utc>) -> Result<()> {
        if run.state != "queued" {
            return Ok(());
        }
        with_pool!(
            &self.pool,
            "UPDATE follower_sync_runs SET state = 'running', started_at = $2, updated_at = $2 WHERE id = $1 AND state = 'queued'",
            |p, sql| {
                sqlx::query(sql).bind(&run.id).bind(now).execute(p).await?;
            }
        );
        run.state = "running".into();
        run.started_at = now;
        Ok(())
    }

    /// Upserts one page and moves the checkpoint past it, in one transaction: a crash repeats at
    /// most this page. Returns how many accounts were new.
    pub(crate) async fn record_sync_page(
        &self,
        run: &SyncRun,
        accounts: &[FollowerAccount],
        next_cursor: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<i64> {
        let gained = with_pool!(
            &self.pool,
            "INSERT INTO followers (connection_id, relation, platform_account_id, handle, first_seen_at, last_seen_run, first_seen_run) \
            VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (connection_id, relation, platform_account_id) \
            DO UPDATE SET handle = excluded.handle, last_seen_run = excluded.last_seen_run",
            |p, sql| {
                let mut tx = crate::store::Engine::begin_write(p).await?;
                let mut gained = 0i64;
                for a in accounts {
                    let existed: Option<String> = sqlx::query_scalar(with_engine(p, "SELECT last_seen_run FROM followers WHERE connection_id = $1 AND relation = $2 AND platform_account_id = $3"))
                    .bind(&run.connection_id)
                    .bind(&run.relation)
                    .bind(&a.platform_account_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if existed.is_none() {
                        gained += 1;
                    }
                    sqlx::query(sqlx::AssertSqlSafe(sql.0.as_str()))
                        .bind(&run.connection_id)
                        .bind(&run.relation)
                        .bind(&a.platform_account_id)
                        .bind(&a.handle)
                        .bind(now)
                        .bind(&run.id)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(with_engine(p, "UPDATE follower_sync_runs SET cursor = $2, pages = pages + 1, seen = seen + $3, gained = gained + $4, updated_at = $5 WHERE id = $1"))
                .bind(&run.id)
                .bind(next_cursor)
                .bind(accounts.len() as i32)
                .bind(gained as i32)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                gained
            }
        );
        Ok(gained)
    }

    /// Ends a run: accounts not seen in it are lost (deleted and counted); what it gained and lost
    /// is kept in `follower_changes`.
    pub(crate) async fn finish_sync_run(
        &self,
        run: &SyncRun,
        now: DateTime<Utc>,
    ) -> Result<SyncRun> {
        let q = format!(
            "UPDATE follower_sync_runs SET state = 'finished', lost = $2, cursor = NULL, updated_at = $3, finished_at = $3 WHERE id = $1 RETURNING {RUN_COLUMNS}"
        );
        Ok(with_pool!(&self.pool, &q, |p, sql| {
            let mut tx = crate::store::Engine::begin_write(p).await?;
            for (change, which) in [
                ("gained", "first_seen_run = $3"),
                ("lost", "last_seen_run <> $3"),
            ] {
                let record = format!(
                    "INSERT INTO follower_changes (connection_id, run_id, relation, change, platform_account_id, handle, at) \
                     SELECT connection_id, $3, relation, $4, platform_account_id, handle, $5 FROM followers \
                     WHERE connection_id = $1 AND relation = $2 AND {which} ORDER BY platform_account_id"
                );
                sqlx::query(with_engine(p, &record))
                    .bind(&run.connection_id)
                    .bind(&run.relation)
                    .bind(&run.id)
                    .bind(change)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            let lost = sqlx::query(with_engine(p, "DELETE FROM followers WHERE connection_id = $1 AND relation = $2 AND last_seen_run <> $3"))
                .bind(&run.connection_id)
                .bind(&run.relation)
                .bind(&run.id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let row: SyncRun = sqlx::query_as(sql)
                .bind(&run.id)
                .bind(lost as i32)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            row
        }))
    }

    /// Notes why a run paused (a rate limit, dead credentials); it resumes from its checkpoint.
    pub(crate) async fn pause_sync_run(
        &self,
        run: &SyncRun,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        with_pool!(
            &self.pool,
            "UPDATE follower_sync_runs SET last_error = $2, updated_at = $3 WHERE id = $1",
            |p, sql| {
                sqlx::query(sql)
                    .bind(&run.id)
                    .bind(reason)
                    .bind(now)
                    .execute(p)
                    .await?;
            }
        );
        Ok(())
    }

    /// Runs of one connection, newest first.
    pub async fn sync_runs(&self, connection_id: &str, limit: i64) -> Result<Vec<SyncRun>> {
        let q = format!(
            "SELECT {RUN_COLUMNS} FROM follower_sync_runs WHERE connection_id = $1 ORDER BY started_at DESC, id DESC LIMIT $2"
        );
        Ok(with_pool!(&self.pool, &q, |p, sql| sqlx::query_as(sql)
            .bind(connection_id)
            .bind(limit)
            .fetch_all(p)
            .await?))
    }

    /// How many followers (or follows) are stored for a connection.
    pub async fn follower_count(&self, connection_id: &str, relation: &str) -> Result<i64> {
        Ok(with_pool!(
            &self.pool,
            "SELECT COUNT(*) FROM followers WHERE connection_id = $1 AND relation = $2",
            |p, sql| {
                sqlx::query_scalar(sql)
                    .bind(connection_id)
                    .bind(relation)
                    .fetch_one(p)
                    .await?
            }
        ))
    }

    /// How many accounts of each relation are stored for a connection.
    pub async fn follower_counts(&self, connection_id: &str) -> Result<Vec<(String, i64)>> {
        Ok(with_pool!(
            &self.pool,
            "SELECT relation, COUNT(*) FROM followers WHERE connection_id = $1 GROUP BY relation",
            |p, sql| sqlx::query_as(sql).bind(connection_id).fetch_all(p).await?
        ))
    }

    /// One page of a connection's followers (or follows), newest first, after the
    /// `(first_seen_at, platform_account_id)` of the previous page's last.
    pub async fn followers_page(
        &self,
        connection_id: &str,
        relation: &str,
        before: Option<&(DateTime<Utc>, String)>,
        limit: i64,
    ) -> Result<Vec<FollowerRow>> {
        let (at, id) = before.map_or((None, None), |(a, i)| (Some(*a), Some(i.as_str())));
        Ok(with_pool!(
            &self.pool,
            "SELECT platform_account_id, handle, first_seen_at FROM followers \
             WHERE connection_id = $1 AND relation = $2 \
             AND ($3 IS NULL OR (first_seen_at, platform_account_id) < ($3, $4)) \
             ORDER BY first_seen_at DESC, platform_account_id DESC LIMIT $5",
            |p, sql| sqlx::query_as(sql)
                .bind(connection_id)
                .bind(relation)
                .bind(at)
                .bind(id)
                .bind(limit)
                .fetch_all(p)
                .await?
        ))
    }

    /// What finished runs gained and lost, newest first, from runs finished at or after `since`,
    /// before the `seq` of the previous page's last.
    pub async fn follower_changes(
        &self,
        connection_id: &str,
        since: Option<DateTime<Utc>>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<FollowerChangeRow>> {
        Ok(with_pool!(
            &self.pool,
            "SELECT seq, run_id, relation, change, platform_account_id, handle, at FROM follower_changes \
             WHERE connection_id = $1 AND ($2 IS NULL OR at >= $2) AND ($3 IS NULL OR seq < $3) \
             ORDER BY seq DESC LIMIT $4",
            |p, sql| sqlx::query_as(sql)
                .bind(connection_id)
                .bind(since)
                .bind(before)
                .bind(limit)
                .fetch_all(p)
                .await?
        ))
    }

    /// When the last finished run of this relation finished (what a followers page is as of).
    pub async fn last_synced_at(
        &self,
        connection_id: &str,
        relation: &str,
    ) -> Result<Option<DateTime<Utc>>> {
        let q = format!(
            "SELECT {RUN_COLUMNS} FROM follower_sync_runs WHERE connection_id = $1 AND relation = $2 \
             AND state = 'finished' ORDER BY finished_at DESC LIMIT 1"
        );
        let last: Option<SyncRun> = with_pool!(&self.pool, &q, |p, sql| sqlx::query_as(sql)
            .bind(connection_id)
            .bind(relation)
            .fetch_optional(p)
            .await?);
        Ok(last.and_then(|r| r.finished_at))
    }
}
