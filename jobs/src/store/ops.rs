//! Operators' cross-tenant reads of connections (`GET /v1/ops/connections`).

use chrono::{DateTime, Utc};

use super::{ConnectionRow, Result, Store, connections::COLUMNS, with_pool};

/// Which connections an operator lists; every filter is optional.
#[derive(Debug, Clone, Default)]
pub struct OpsConnectionFilter {
    pub needs_reauth: Option<bool>,
    /// Only those with 3 or more failed token refreshes since then.
    pub refresh_failing_since: Option<DateTime<Utc>>,
    pub platform: Option<String>,
}

impl Store {
    /// Live connections of every tenant, oldest first, paged by id.
    pub async fn ops_connections(
        &self,
        filter: &OpsConnectionFilter,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ConnectionRow>> {
        let q = format!(
            "SELECT {COLUMNS} FROM connections WHERE revoked_at IS NULL \
             AND ($1 IS NULL OR needs_reauth = $1) AND ($2 IS NULL OR platform = $2) \
             AND ($3 IS NULL OR id > $3) \
             AND ($5 IS NULL OR id IN (SELECT connection_id FROM token_refreshes WHERE at >= $5 \
                 AND result IN ('invalid_grant', 'transient') GROUP BY connection_id HAVING COUNT(*) >= 3)) \
             ORDER BY id LIMIT $4"
        );
        Ok(with_pool!(&self.pool, &q, |p, sql| {
            sqlx::query_as(sql)
                .bind(filter.needs_reauth)
                .bind(filter.platform.as_deref())
                .bind(after)
                .bind(limit)
                .bind(filter.refresh_failing_since)
                .fetch_all(p)
                .await?
        }))
    }
}
