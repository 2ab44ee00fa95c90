//! How punctually Herald starts due shares, and whether a long drain keeps its pace.
//!
//! `cargo run --release --example delivery_bench` runs, on SQLite, Postgres and Postgres + Redis
//! (the machine's Postgres and Redis, or `HERALD_BENCH_POSTGRES_URL` / `HERALD_BENCH_REDIS_URL`):
//! - **lateness**: 2,000 shares over 20 connections with `publish_at` spread over the next 5 s, and
//!   a retry for about one in sixteen (a 503 first: share ids ending in 0); reports how late each attempt started after it was due
//!   (p50, p99, max), from the store's own records;
//! - **drain**: that many shares written while no worker runs (`HERALD_BENCH_DRAIN`, default
//!   100,000, on SQLite; `HERALD_BENCH_DRAIN_PG`, default 20,000, on the other two), then one
//!   worker drains them; reports shares/s for each tenth, and on Postgres the transactions Herald
//!   committed per share (`pg_stat_database.xact_commit`).
//!
//! The platform is a local server answering `POST /api/v1/statuses` as Mastodon does, at once.
//! `HERALD_BENCH_ONLY=sqlite|postgres|redis` runs one backend.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Json, Router, http::StatusCode, routing::post};
use chrono::{DateTime, Utc};
use herald::app;
use herald_jobs::{
    Settings,
    retry::RetryPolicy,
    store::{CreateShares, NewShare, Pool},
    vault::KeyRing,
};
use herald_platforms::ssrf::SsrfGuard;
use serde_json::{Value, json};
use tokio::sync::watch;

const CONNECTIONS: usize = 20;
const LATENESS_REQUESTS: usize = 100;

/// A Mastodon-compatible status endpoint: a share whose id ends in 0 first gets a 503.
async fn fake_mastodon() -> String {
    let seen = Arc::new(std::sync::Mutex::new(
        std::collections::HashSet::<String>::new(),
    ));
    let count = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route(
            "/api/v1/statuses",
            post(move |headers: axum::http::HeaderMap| {
                let seen = seen.clone();
                let count = count.clone();
                async move {
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let first = seen.lock().unwrap().insert(key.clone());
                    if first && key.ends_with('0') && key.starts_with("shr_") {
                        return Err(StatusCode::SERVICE_UNAVAILABLE);
                    }
                    let id = count.fetch_add(1, Ordering::Relaxed);
                    Ok(Json(json!({ "id": id.to_string(), "url": format!("https://social.example/@b/{id}") })))
                }
            }),
        )
        .route(
            "/api/v1/accounts/verify_credentials",
            axum::routing::get(|| async { Json(json!({ "id": "1", "username": "b", "acct": "b" })) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

fn settings() -> Settings {
    Settings {
        retry: RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(2),
            ..RetryPolicy::default()
        },
        ssrf: SsrfGuard::allowing_private(),
        concurrency: 64,
        // Sweeps out of the way.
        refresh_sweep_cron: "0 0 0 1 1 *".into(),
        follower_sync_cron: "0 0 0 1 1 *".into(),
        ..Settings::default()
    }
}

struct Herald {
    parts: app::Parts,
    base: String,
    key: String,
    stop: watch::Sender<bool>,
    http: reqwest::Client,
}

/// One key ring for the whole run: the drain's writer and its worker must read the same tokens.
fn key_spec() -> &'static str {
    static SPEC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SPEC.get_or_init(KeyRing::generate_spec)
}

async fn start(database_url: &str, redis: Option<&str>, workers: bool) -> anyhow::Result<Herald> {
    let mut backends = app::Backends::store_only(database_url);
    if let Some(url) = redis {
        backends.redis_url = Some(url.to_owned());
        // One prefix per database, so the drain's writer and its worker share the queue.
        let db = database_url.rsplit('/').next().unwrap_or("herald");
        backends.redis_prefix = format!("herald-bench-{db}");
    }
    let ring = KeyRing::parse(key_spec())?;
    let parts = app::connect(&backends, settings(), ring).await?;
    app::migrate(&parts.ctx.store).await?;
    let key = herald::keys::create(&parts.ctx.store, Some("bench"), false).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, rx) = watch::channel(false);
    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tokio::spawn(app::serve_api(
        listener,
        app::api_state(parts.ctx.clone(), None),
        wait(rx.clone()),
    ));
    if workers {
        tokio::spawn(app::run_worker(parts.clone(), wait(rx)));
    }
    Ok(Herald {
        parts,
        base,
        key,
        stop,
        http: reqwest::Client::new(),
    })
}

impl Herald {
    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let res = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(res.status().is_success(), "{path}: {}", res.status());
        Ok(res.json().await?)
    }

    async fn connections(&self, mastodon: &str) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::new();
        for i in 0..CONNECTIONS {
            let c = self
                .post(
                    "/v1/connections",
                    json!({ "platform": "mastodon", "platform_account_id": format!("a{i}"), "handle": format!("b{i}@social.example"),
                            "access_token": "t", "extras": { "instance_url": mastodon } }),
                )
                .await?;
            ids.push(c["id"].as_str().unwrap().to_owned());
        }
        Ok(ids)
    }

    async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        Ok(match self.parts.ctx.store.pool() {
            Pool::Sqlite(p) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_one(p)
                    .await?
            }
            Pool::Postgres(p) => {
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_one(p)
                    .await?
            }
        })
    }
}

impl Herald {
    /// Committed transactions in this database so far (Postgres only).
    async fn xacts(&self) -> anyhow::Result<Option<i64>> {
        Ok(match self.parts.ctx.store.pool() {
            Pool::Postgres(p) => Some(
                sqlx::query_scalar(
                    "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
                )
                .fetch_one(p)
                .await?,
            ),
            Pool::Sqlite(_) => None,
        })
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Every attempt's lateness in ms: started_at minus when it was due. A first attempt was due at
/// the share's `publish_at` (its `created_at`-time run_at is kept in `shares_bench_due`); a retry
/// was due when the attempt before it ended plus the backoff, which the share's final `run_at`
/// records for its last retry.
async fn lateness(h: &Herald, mastodon: &str) -> anyhow::Result<()> {
    let conns = h.connections(mastodon).await?;
    let mut due: std::collections::HashMap<String, DateTime<Utc>> = Default::default();
    for r in 0..LATENESS_REQUESTS {
        let at = Utc::now() + chrono::Duration::milliseconds(((r * 7919) % 5000) as i64);
        let body = h
            .post(
                "/v1/shares",
                json!({ "url": format!("https://blog.example/{r}"), "text": "bench", "publish_at": at.to_rfc3339(), "connection_ids": conns }),
            )
            .await?;
        for s in body["shares"].as_array().unwrap() {
            due.insert(s["id"].as_str().unwrap().to_owned(), at);
        }
    }
    let total = (CONNECTIONS * LATENESS_REQUESTS) as i64;
    let started = Instant::now();
    while h
        .count("SELECT COUNT(*) FROM shares WHERE state IN ('succeeded', 'failed')")
        .await?
        < total
    {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "not finished in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut late = Vec::new();
    for id in due.keys() {
        let share = h.parts.ctx.store.share(id).await?.unwrap();
        let attempts = h.parts.ctx.store.share_attempts(id).await?;
        // The first attempt was due at publish_at; the last retry at the share's final run_at.
        if let Some(first) = attempts.first() {
            late.push((first.started_at - due[id]).num_microseconds().unwrap() as f64 / 1000.0);
        }
        if attempts.len() > 1 {
            let last = attempts.last().unwrap();
            late.push((last.started_at - share.run_at).num_microseconds().unwrap() as f64 / 1000.0);
        }
    }
    late.sort_by(f64::total_cmp);
    println!(
        "  lateness over {} attempts ({} shares, {} of them retried): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        late.len(),
        total,
        late.len() as i64 - total,
        percentile(&late, 0.5),
        percentile(&late, 0.99),
        late.last().copied().unwrap_or(0.0)
    );
    Ok(())
}

async fn drain(
    database_url: &str,
    redis: Option<&str>,
    mastodon: &str,
    n: usize,
) -> anyhow::Result<()> {
    let writer = start(database_url, redis, false).await?;
    let conns = writer.connections(mastodon).await?;
    let tenant = writer
        .parts
        .ctx
        .store
        .connection(&conns[0])
        .await?
        .unwrap()
        .tenant_id;
    let now = Utc::now();
    for chunk in 0..n.div_ceil(1000) {
        let shares = (0..1000.min(n - chunk * 1000))
            .map(|i| NewShare {
                connection_id: conns[i % CONNECTIONS].clone(),
                platform: "mastodon".into(),
                url: format!("https://blog.example/drain/{chunk}/{i}"),
                title: None,
                body: Some("drain".into()),
                image_url: None,
                run_at: now,
                not_after: None,
                duplicate_key: None,
                media: Vec::new(),
            })
            .collect();
        let created = writer
            .parts
            .ctx
            .store
            .create_shares(
                &CreateShares {
                    tenant_id: tenant.clone(),
                    idempotency_key: None,
                    request_hash: String::new(),
                    shares,
                    duplicates_since: None,
                    blobs: Vec::new(),
                },
                now,
            )
            .await?;
        if let herald_jobs::store::CreateOutcome::Created(rows) = created {
            // As the API does after its commit (on the store's engines this only wakes).
            for r in rows {
                let payload = json!({ "v": "1", "share_id": r.id });
                writer
                    .parts
                    .ctx
                    .queue
                    .push(
                        herald_jobs::payloads::QueueName::Share,
                        payload,
                        r.run_at,
                        &r.delivery_key(),
                    )
                    .await?;
            }
        }
    }
    drop(writer);
    let h = start(database_url, redis, true).await?;
    let xacts_before = h.xacts().await?;
    let mut probes = 0i64;
    let t0 = Instant::now();
    let mut marks = Vec::new();
    let tenth = (n / 10) as i64;
    let mut next = tenth;
    while next <= n as i64 {
        let done = h
            .count("SELECT COUNT(*) FROM shares WHERE state IN ('succeeded', 'failed')")
            .await?;
        probes += 1;
        while done >= next && next <= n as i64 {
            marks.push(t0.elapsed());
            next += tenth;
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(1800),
            "drain not finished in 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed = h
        .count("SELECT COUNT(*) FROM shares WHERE state = 'failed'")
        .await?;
    anyhow::ensure!(failed == 0, "{failed} shares failed");
    let mut prev = Duration::ZERO;
    let rates: Vec<String> = marks
        .iter()
        .map(|m| {
            let r = tenth as f64 / (*m - prev).as_secs_f64();
            prev = *m;
            format!("{r:.0}")
        })
        .collect();
    println!(
        "  drain of {n} shares: {:.0} shares/s overall; by tenth: {}",
        n as f64 / marks.last().unwrap().as_secs_f64(),
        rates.join(", ")
    );
    if let Some(before) = xacts_before {
        // Postgres publishes a backend's counts within a second of its last transaction.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = h.xacts().await?.unwrap_or(before);
        // This program's own probes (and the two reads of the count) are not Herald's.
        let herald = after - before - probes - 2;
        println!(
            "  Postgres transactions per share: {:.2} ({herald} committed during the drain)",
            herald as f64 / n as f64
        );
    }
    Ok(())
}

async fn fresh_postgres(admin: &str) -> anyhow::Result<String> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    let name = format!("herald_bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    let mut url = url::Url::parse(admin)?;
    url.set_path(&name);
    Ok(url.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pg = std::env::var("HERALD_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let redis =
        std::env::var("HERALD_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let only = std::env::var("HERALD_BENCH_ONLY").ok();
    let n: usize = std::env::var("HERALD_BENCH_DRAIN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let pg_drain: usize = std::env::var("HERALD_BENCH_DRAIN_PG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mastodon = fake_mastodon().await;
    let dir = tempfile::tempdir()?;
    let runs = ["sqlite", "postgres", "redis"];
    for backend in runs {
        if only.as_deref().is_some_and(|o| o != backend) {
            continue;
        }
        println!("{backend}:");
        let url = match backend {
            "sqlite" => format!("sqlite:{}", dir.path().join("lateness.db").display()),
            _ => fresh_postgres(&pg).await?,
        };
        let h = start(&url, (backend == "redis").then_some(redis.as_str()), true).await?;
        lateness(&h, &mastodon).await?;
        drop(h);
        if n > 0 {
            let (url, count) = match backend {
                "sqlite" => (
                    format!("sqlite:{}", dir.path().join("drain.db").display()),
                    n,
                ),
                _ => (fresh_postgres(&pg).await?, pg_drain),
            };
            drain(
                &url,
                (backend == "redis").then_some(redis.as_str()),
                &mastodon,
                count,
            )
            .await?;
        }
    }
    Ok(())
}
