//! The end-to-end harness: Herald's API and workers spawned in-process on port 0 against a fresh
//! store, and local servers that answer as each platform documents (the platforms crate's fakes,
//! `herald_platforms::testing`, which its client tests use too).

pub mod db;
pub mod receiver;

use std::{future::Future, time::Duration};

use chrono::Utc;
use herald::app;
use herald_jobs::{Settings, retry::RetryPolicy, vault::KeyRing};
use herald_platforms::ssrf::SsrfGuard;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::watch;

pub use db::{Engine, TestDb, redis_prefix, redis_url};
pub use herald_platforms::testing::{
    FakeLinkedin, FakeMeta, FakeX, MetaApi,
    mastodon::{Chaos, FakeMastodon, ListReply, Reply},
};

/// Generates one `#[tokio::test]` per store engine from `async fn name(engine: Engine)`.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        pub mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name($crate::support::Engine::Sqlite).await } )*
        }
        pub mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name($crate::support::Engine::Postgres).await } )*
        }
        pub mod redis {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name($crate::support::Engine::PostgresRedis).await } )*
        }
    };
}

/// Settings that make retries and leases quick enough for tests.
pub fn fast_settings() -> Settings {
    Settings {
        retry: RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
            default_rate_limit_wait: Duration::from_secs(1),
            max_rate_limit_wait: Duration::from_secs(5),
        },
        platform_timeout: Duration::from_millis(1500),
        lease: Duration::from_secs(3),
        share_lateness: Duration::from_secs(3600),
        // Most tests post the same link again and again; the guard's own tests
        // (tests/e2e/share_edits.rs) turn it on.
        duplicate_window: Duration::ZERO,
        redelivery_grace: Duration::from_secs(2),
        reconcile_every: Duration::from_millis(500),
        concurrency: 4,
        ssrf: SsrfGuard::allowing_private(),
        refresh_skew: Duration::from_secs(300),
        refresh_window: Duration::from_secs(2 * 3600),
        long_lived_refresh_window: Duration::from_secs(7 * 86_400),
        // Sweeps stay out of the way unless a test sets a schedule.
        refresh_sweep_cron: "0 0 0 1 1 *".into(),
        follower_sync_cron: "0 0 0 1 1 *".into(),
        apps: Default::default(),
        public_url: herald_jobs::settings::DEFAULT_PUBLIC_URL.into(),
        oauth_state_ttl: Duration::from_secs(600),
        bluesky: Default::default(),
        fair_share_recheck: Duration::from_millis(500),
        webhooks: herald_jobs::settings::WebhookSettings {
            timeout: Duration::from_secs(2),
            // Quick, but with room for a receiver slowed by a busy machine to answer late a few
            // times before a delivery gives up.
            retry_schedule: herald_jobs::webhooks::schedule::parse_schedule(
                "100ms,200ms,400ms,800ms,1600ms,3s",
            )
            .unwrap(),
            per_endpoint: 1,
            ..Default::default()
        },
        media_max_bytes: herald_jobs::settings::DEFAULT_MEDIA_MAX_BYTES,
        media_fetch_timeout: Duration::from_secs(5),
    }
}

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    /// A tenant key for tenant "acme".
    pub key: String,
    pub parts: app::Parts,
    pub db: TestDb,
    pub backends: app::Backends,
    pub mastodon: FakeMastodon,
    /// The encryption key ring, for child processes on the same store.
    pub key_spec: String,
    stop: watch::Sender<bool>,
}

impl TestApp {
    pub async fn spawn(engine: Engine) -> Self {
        Self::spawn_with(engine, true, fast_settings()).await
    }

    /// `workers: false` runs the API alone (a test then starts workers itself).
    pub async fn spawn_with(engine: Engine, workers: bool, settings: Settings) -> Self {
        // RUST_LOG=info shows the system's own log lines in a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "off".into()),
            )
            .with_test_writer()
            .try_init();
        let db = TestDb::new(engine).await;
        let key_spec = KeyRing::generate_spec();
        let ring = KeyRing::parse(&key_spec).unwrap();
        let mut backends = app::Backends::store_only(&db.url);
        if engine == Engine::PostgresRedis {
            backends.redis_url = Some(redis_url());
            backends.redis_prefix = redis_prefix().await;
        }
        // Bound first: OAuth redirect URIs are built from the public URL, which is this address.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mut settings = settings;
        if settings.public_url == herald_jobs::settings::DEFAULT_PUBLIC_URL {
            settings.public_url = base.clone();
        }
        let parts = app::connect(&backends, settings, ring).await.unwrap();
        app::migrate(&parts.ctx.store).await.unwrap();
        let key = herald::keys::create(&parts.ctx.store, Some("acme"), false)
            .await
            .unwrap();
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
        let mastodon = FakeMastodon::start().await;
        Self {
            base,
            http: reqwest::Client::new(),
            key,
            parts,
            db,
            backends,
            mastodon,
            key_spec,
            stop,
        }
    }

    /// Spawns `herald worker` as a child process on this test's store and queue, with short
    /// leases and timeouts; `env` adds or overrides settings.
    pub fn worker_process(&self, env: &[(&str, &str)]) -> tokio::process::Child {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"));
        if let Some(url) = &self.backends.redis_url {
            cmd.env("REDIS_URL", url)
                .env("HERALD_REDIS_PREFIX", &self.backends.redis_prefix);
        }
        cmd.arg("worker")
            .env("DATABASE_URL", &self.db.url)
            .env("HERALD_ENCRYPTION_KEYS", &self.key_spec)
            .env("HERALD_WORKER_LISTEN", "127.0.0.1:0")
            .env("HERALD_SSRF_ALLOW_PRIVATE", "true")
            .env("HERALD_PLATFORM_TIMEOUT_SECS", "2")
            .env("HERALD_LEASE_SECS", "3")
            .env("HERALD_RECONCILE_SECS", "1")
            .env("HERALD_REDELIVERY_GRACE_SECS", "1")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .spawn()
            .expect("the herald binary runs")
    }

    pub async fn operator_key(&self) -> String {
        herald::keys::create(&self.parts.ctx.store, None, true)
            .await
            .unwrap()
    }

    /// Pushes a job as a sweep would.
    pub async fn enqueue<J: herald_jobs::payloads::Job>(&self, job: &J, key: &str) {
        self.parts
            .ctx
            .queue
            .enqueue(job, Utc::now(), key)
            .await
            .unwrap();
    }

    pub async fn key_for(&self, tenant: &str) -> String {
        herald::keys::create(&self.parts.ctx.store, Some(tenant), false)
            .await
            .unwrap()
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, Some(&self.key), None)
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(&self.key), Some(body))
            .await
    }

    /// Imports a Mastodon connection pointing at the fake server.
    pub async fn mastodon_connection(&self) -> String {
        self.mastodon_connection_with(&self.key, "109", &self.mastodon.token.clone())
            .await
    }

    pub async fn mastodon_connection_with(&self, key: &str, account: &str, token: &str) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/v1/connections",
                Some(key),
                Some(json!({
                    "platform": "mastodon",
                    "platform_account_id": account,
                    "handle": "alice@social.example",
                    "access_token": token,
                    "scopes": ["write:statuses", "profile"],
                    "extras": { "instance_url": self.mastodon.base },
                })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// Enqueues one share to one connection and returns its id.
    pub async fn share(&self, connection: &str, text: &str) -> String {
        let (status, body) = self
            .post("/v1/shares", json!({ "url": "https://blog.example/post/1", "title": "A post", "text": text, "connection_ids": [connection] }))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["shares"][0]["id"].as_str().unwrap().to_owned()
    }

    /// Polls the share until `done` holds, failing after `within`.
    pub async fn share_until(
        &self,
        id: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let path = format!("/v1/shares/{id}");
        eventually(within, || async {
            let (status, body) = self.get(&path).await;
            (status == StatusCode::OK && done(&body)).then_some(body)
        })
        .await
        .unwrap_or_else(|| panic!("share {id} did not reach the expected state in {within:?}"))
    }

    /// Polls until the share reaches a state other than queued or running.
    pub async fn settled(&self, id: &str) -> Value {
        self.share_until(id, Duration::from_secs(20), |s| {
            !matches!(s["state"].as_str(), Some("queued" | "running"))
        })
        .await
    }

    pub fn now() -> chrono::DateTime<Utc> {
        Utc::now()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Polls `probe` every 25 ms until it yields a value or `within` passes.
pub async fn eventually<T, F, Fut>(within: Duration, probe: F) -> Option<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
