//! How the refresh sweep's cost grows: with the connections that are due, not with all of them.
//!
//! `cargo run --example sweep_bench` (the time is the database's, so a debug build measures it) fills a fresh Postgres database (and a SQLite file)
//! with 1,000,000 connections, of which 1,000 expire within the sweep's window, and times the
//! sweep's query against a table where 0, 1,000 and 10,000 are due. Postgres:
//! `HERALD_BENCH_POSTGRES_URL` (default the machine's `postgres://postgres@127.0.0.1:5432/postgres`).

use std::time::Instant;

use chrono::{Duration, Utc};
use herald_jobs::store::{DueFor, Pool, Store};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

const TOTAL: i64 = 1_000_000;

async fn fill(store: &Store, due: i64) -> anyhow::Result<()> {
    let now = Utc::now();
    let later = now + Duration::days(30);
    let soon = now + Duration::hours(1);
    match store.pool() {
        Pool::Postgres(p) => {
            sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ('ten_bench', 'bench', now()) ON CONFLICT DO NOTHING").execute(p).await?;
            sqlx::query(
                "INSERT INTO connections (id, tenant_id, platform, platform_account_id, handle, refresh_token_enc, token_expires_at, created_at, updated_at) \
                 SELECT 'con_' || lpad(i::text, 32, '0'), 'ten_bench', 'x', i::text, 'h', 'v1.k.x', \
                 CASE WHEN i <= $1 THEN $2 ELSE $3 END, now(), now() FROM generate_series(1, $4) AS i",
            )
            .bind(due)
            .bind(soon)
            .bind(later)
            .bind(TOTAL)
            .execute(p)
            .await?;
            sqlx::query("ANALYZE connections").execute(p).await?;
        }
        Pool::Sqlite(p) => {
            sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ('ten_bench', 'bench', '2026-01-01') ON CONFLICT DO NOTHING").execute(p).await?;
            sqlx::query(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?4) \
                 INSERT INTO connections (id, tenant_id, platform, platform_account_id, handle, refresh_token_enc, token_expires_at, created_at, updated_at) \
                 SELECT printf('con_%032d', i), 'ten_bench', 'x', i, 'h', 'v1.k.x', CASE WHEN i <= ?1 THEN ?2 ELSE ?3 END, '2026-01-01', '2026-01-01' FROM n",
            )
            .bind(due)
            .bind(soon)
            .bind(later)
            .bind(TOTAL)
            .execute(p)
            .await?;
            sqlx::query("ANALYZE").execute(p).await?;
        }
    }
    Ok(())
}

/// The sweep's whole read: every due connection, paged as the sweep pages.
async fn sweep_read(store: &Store) -> anyhow::Result<(usize, f64)> {
    let before = Utc::now() + Duration::hours(2);
    let started = Instant::now();
    let mut after = None;
    let mut n = 0;
    loop {
        let page = store
            .connections_due_for_refresh(DueFor::Refreshable, before, after.as_ref(), 500)
            .await?;
        n += page.len();
        match page.last() {
            Some((id, _, at)) if page.len() == 500 => after = Some((*at, id.clone())),
            _ => break,
        }
    }
    Ok((n, started.elapsed().as_secs_f64() * 1000.0))
}

async fn run(engine: &str, url: &str) -> anyhow::Result<()> {
    let store = Store::connect(url).await?;
    store.migrate().await?;
    for due in [0, 1_000, 10_000] {
        if let Pool::Postgres(p) = store.pool() {
            sqlx::query("TRUNCATE connections CASCADE")
                .execute(p)
                .await?;
        }
        if let Pool::Sqlite(p) = store.pool() {
            sqlx::query("DELETE FROM connections").execute(p).await?;
        }
        let t = Instant::now();
        fill(&store, due).await?;
        let filled = t.elapsed().as_secs_f64();
        // Warm once, then take the best of five.
        sweep_read(&store).await?;
        let mut best = f64::MAX;
        let mut found = 0;
        for _ in 0..5 {
            let (n, ms) = sweep_read(&store).await?;
            found = n;
            best = best.min(ms);
        }
        println!(
            "{engine:8} {TOTAL} connections, {due:>6} due: sweep read {found:>6} in {best:8.2} ms (fill {filled:.1} s)"
        );
    }
    if let Pool::Postgres(p) = store.pool() {
        let plan: Vec<(String,)> = sqlx::query_as(
            "EXPLAIN SELECT id, platform, token_expires_at FROM connections WHERE token_expires_at < now() + interval '2 hours' \
             AND revoked_at IS NULL AND NOT needs_reauth \
             AND (refresh_token_enc IS NOT NULL OR platform IN ('instagram', 'threads')) ORDER BY token_expires_at, id LIMIT 500",
        )
        .fetch_all(p)
        .await?;
        println!(
            "postgres plan:\n  {}",
            plan.iter()
                .map(|r| r.0.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin = std::env::var("HERALD_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("herald_bench_{}", std::process::id());
    let mut conn = PgConnection::connect(&admin).await?;
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    let mut url = url::Url::parse(&admin)?;
    url.set_path(&name);
    let pg = run("postgres", url.as_str()).await;
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    pg?;
    let dir = std::env::temp_dir().join(format!("herald-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sqlite = run(
        "sqlite",
        &format!("sqlite:{}", dir.join("bench.db").display()),
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    sqlite
}
