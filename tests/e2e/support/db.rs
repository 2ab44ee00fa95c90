//! A fresh store per test: a SQLite file in a temporary folder, or a new database on a real
//! Postgres (`HERALD_TEST_POSTGRES_URL`, default the machine's `postgres://postgres@127.0.0.1:5432/postgres`).
//! An unreachable Postgres fails the test with a message saying how to get one.

use sqlx::{Connection, PgConnection};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The embedded default: store and queue in one SQLite file.
    Sqlite,
    /// Store and queue in Postgres.
    Postgres,
    /// Store in Postgres, queue on Herald's Redis backend (a key prefix per test).
    PostgresRedis,
}

pub fn redis_url() -> String {
    std::env::var("HERALD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A Redis key prefix no other test uses; fails the test if Redis cannot be reached.
pub async fn redis_prefix() -> String {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).unwrap();
    let reachable = match client.get_multiplexed_async_connection().await {
        Ok(mut c) => redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .is_ok(),
        Err(_) => false,
    };
    assert!(
        reachable,
        "cannot reach Redis at {url}: start one (`redis-server --port 6379 --save \"\"`, or run scripts/test, which does) \
         or point HERALD_TEST_REDIS_URL at one"
    );
    format!("herald-test-{}", uuid::Uuid::new_v4().simple())
}

pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_admin: Option<(String, String)>,
}

pub fn postgres_admin_url() -> String {
    std::env::var("HERALD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

impl TestDb {
    pub async fn new(engine: Engine) -> Self {
        match engine {
            Engine::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite:{}", dir.path().join("herald.db").display());
                Self {
                    url,
                    _dir: Some(dir),
                    pg_admin: None,
                }
            }
            Engine::Postgres | Engine::PostgresRedis => {
                let admin = postgres_admin_url();
                let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                    panic!(
                        "cannot reach Postgres at {admin}: {e}\n\
                         Start one (`.ci/run` does: pg_ctlcluster ... start, or apt-get install postgresql) \
                         or point HERALD_TEST_POSTGRES_URL at a server where this user may CREATE DATABASE."
                    )
                });
                let name = format!("herald_test_{}", uuid::Uuid::new_v4().simple());
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                let mut url = url::Url::parse(&admin).unwrap();
                url.set_path(&name);
                Self {
                    url: url.to_string(),
                    _dir: None,
                    pg_admin: Some((admin, name)),
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg_admin.take() {
            // Drop runs outside any runtime guarantee: use a short-lived one on its own thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(mut c) = PgConnection::connect(&admin).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut c)
                        .await;
                    }
                });
            })
            .join();
        }
    }
}
