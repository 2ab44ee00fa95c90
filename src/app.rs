//! Assembling a Herald process from its parts. `herald serve`, `herald api`, `herald worker` and
//! the end-to-end tests all build their processes here, so they run the same code.

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use anyhow::Context as _;
use apalis_postgres::PostgresStorage;
use apalis_sqlite::SqliteStorage;
use herald_api::ApiState;
use herald_jobs::{
    Ctx, Settings, metrics as m,
    queue::{JobQueue, PostgresQueue, RedisJobQueue, SqliteQueue, Wakeups},
    store::{Pool, Store},
    vault::KeyRing,
};
use herald_platforms::{Platforms, http};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// A connected process: the shared context and the queue its workers consume.
#[derive(Debug, Clone)]
pub struct Parts {
    pub ctx: Ctx,
    pub backend: herald_worker::Backend,
    pub wakeups: Wakeups,
}

/// The platform clients, sharing one guarded HTTP client. Mastodon needs no app; the others are
/// there when their app is configured.
pub fn platforms(settings: &Settings) -> Platforms {
    Platforms::configured(
        http::client(&settings.ssrf, settings.platform_timeout),
        &settings.ssrf,
        &settings.apps,
        settings.bluesky_client(),
    )
}

/// Applies the store's and the queue's migrations.
pub async fn migrate(store: &Store) -> anyhow::Result<()> {
    store
        .migrate()
        .await
        .context("applying Herald's migrations")?;
    // The queue's tables live in the same database; each migrator ignores the other's versions.
    match store.pool() {
        Pool::Sqlite(p) => {
            let mut m = SqliteStorage::<()>::migrations();
            m.set_ignore_missing(true);
            m.run(p)
                .await
                .context("applying the SQLite queue's migrations")?;
        }
        Pool::Postgres(p) => {
            let mut m = PostgresStorage::<()>::migrations();
            m.set_ignore_missing(true);
            m.run(p)
                .await
                .context("applying the Postgres queue's migrations")?;
        }
    }
    Ok(())
}

/// Where the store and the queue live.
#[derive(Debug, Clone)]
pub struct Backends {
    pub database_url: String,
    /// Herald's Redis queue backend; without it the queue lives in the store's database.
    pub redis_url: Option<String>,
    /// Every Redis key starts with this (one prefix per deployment, or per test).
    pub redis_prefix: String,
}

impl Backends {
    pub fn store_only(database_url: &str) -> Self {
        Self {
            database_url: database_url.to_owned(),
            redis_url: None,
            redis_prefix: "herald".into(),
        }
    }
}

/// Connects the store and the queue.
pub async fn connect(
    backends: &Backends,
    settings: Settings,
    vault: KeyRing,
) -> anyhow::Result<Parts> {
    let database_url = backends.database_url.as_str();
    let store = Store::connect(database_url)
        .await
        .with_context(|| format!("connecting to {}", redact_url(database_url)))?;
    let wakeups = Wakeups::new();
    let (queue, backend): (Arc<dyn JobQueue>, herald_worker::Backend) =
        match (&backends.redis_url, store.pool()) {
            (Some(url), _) => {
                let q = RedisJobQueue::connect(url, &backends.redis_prefix)
                    .await
                    .with_context(|| format!("connecting to Redis at {}", redact_url(url)))?;
                (Arc::new(q.clone()), herald_worker::Backend::Redis(q))
            }
            (None, Pool::Sqlite(p)) => {
                let q = SqliteQueue::new(p.clone(), wakeups.clone());
                (Arc::new(q.clone()), herald_worker::Backend::Sqlite(q))
            }
            (None, Pool::Postgres(p)) => {
                let q = PostgresQueue::new(p.clone(), wakeups.clone());
                (Arc::new(q.clone()), herald_worker::Backend::Postgres(q))
            }
        };
    let ctx = Ctx {
        platforms: platforms(&settings),
        http: http::client(&settings.ssrf, settings.media_fetch_timeout),
        store,
        queue,
        vault: Arc::new(vault),
        settings: Arc::new(settings),
    };
    Ok(Parts {
        ctx,
        backend,
        wakeups,
    })
}

/// The process-wide Prometheus recorder (installed once; tests share it).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), m::DURATION_BUCKETS)
                .expect("buckets are not empty")
                // A full name is matched before a suffix.
                .set_buckets_for_metric(
                    Matcher::Full(m::REAUTH_CLEARED_SECONDS.into()),
                    m::REAUTH_CLEARED_BUCKETS,
                )
                .expect("buckets are not empty")
                .set_buckets_for_metric(
                    Matcher::Full(m::WEBHOOK_DELIVERY_LATENCY_SECONDS.into()),
                    m::WEBHOOK_LATENCY_BUCKETS,
                )
                .expect("buckets are not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            // Histogram samples wait in the recorder until drained; a scrape drains them, and
            // so does this, so a process nobody scrapes does not grow with every job it runs.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .expect("a thread for the metrics upkeep");
            m::describe();
            m::zero_known_series();
            metrics::gauge!(m::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

pub fn api_state(ctx: Ctx, metrics_token: Option<String>) -> ApiState {
    ApiState {
        ctx,
        prometheus: prometheus(),
        metrics_token,
    }
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve_api(
    listener: TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, herald_api::router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// Serves /metrics, /healthz and /readyz (for a worker process) until `shutdown` resolves.
pub async fn serve_ops(
    listener: TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, herald_api::ops_router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// Runs the workers until `shutdown` resolves.
pub async fn run_worker(
    parts: Parts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    herald_worker::run(parts.ctx, parts.backend, parts.wakeups, shutdown).await
}

/// The key ring: from configuration, or for the embedded default a key file beside the SQLite
/// database, created on first start.
pub fn key_ring(
    configured: Option<&str>,
    database_url: &str,
    create_if_missing: bool,
) -> anyhow::Result<KeyRing> {
    if let Some(spec) = configured {
        return Ok(KeyRing::parse(spec)?);
    }
    let Some(path) = sqlite_key_file(database_url) else {
        anyhow::bail!(
            "HERALD_ENCRYPTION_KEYS is not set: generate one with `herald keys generate`"
        );
    };
    if !path.exists() {
        anyhow::ensure!(
            create_if_missing,
            "HERALD_ENCRYPTION_KEYS is not set and {} does not exist",
            path.display()
        );
        write_private(&path, &KeyRing::generate_spec())?;
        tracing::warn!(path = %path.display(), "generated an encryption key for tokens at rest; back it up with the database");
    }
    let spec =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(KeyRing::parse(spec.trim())?)
}

fn sqlite_key_file(database_url: &str) -> Option<PathBuf> {
    let rest = database_url.strip_prefix("sqlite:")?;
    let path = rest.trim_start_matches("//").split('?').next()?;
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(format!("{path}.key")))
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// The URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}
