//! The durable record, on SQLite (embedded default) or Postgres.
//!
//! One interface for both engines: each query is written once, in Postgres's `$n` placeholder form,
//! and [`with_pool!`] runs it on whichever pool is configured (SQLite gets `?n`, which binds by the
//! same number). Times are always bound from Rust, never taken from the database clock, so both
//! engines compare them the same way.

mod app_limits;
mod app_passwords;
mod connect;
mod connections;
mod followers;
mod group_commit;
mod keys;
mod lifecycle;
mod media;
mod ops;
mod recent;
mod replay;
mod runs;
mod share_create;
mod share_finish;
mod share_queue;
mod shares;
pub(crate) mod webhooks;

pub use app_limits::{AppKey, AppLimitRow};
pub use app_passwords::APP_PASSWORD_ERASED;
pub use connections::{
    ConnectionCount, ConnectionFilter, ConnectionRow, NewConnection, StoredTokens,
};
pub use followers::{FollowerChangeRow, FollowerRow, SyncRun};
pub use keys::{ApiKeyRole, ApiKeyRow, AuthedKey, CreatedKey, KEY_CACHE_TTL, Scope, Scopes};
pub use lifecycle::{DueFor, TokenWrite};
pub use media::{NewBlob, NewShareMedia};
pub use ops::OpsConnectionFilter;
pub use replay::{JobFilter, Replay, ReplayRow, Replayer, RunRow};
pub use runs::QueuedRun;
pub use shares::{
    AttemptRow, Cancel, CreateOutcome, CreateShares, Edit, Finished, NewShare, ShareEdit,
    ShareFilter, ShareRow, ShareState,
};
pub use webhooks::{DeliveryListRow, DeliveryRow, EndpointRow};

// The store's own vocabulary for the handlers and connect flows of this crate.
pub(crate) use app_limits::Admission;
pub(crate) use connect::{AtprotoFlow, MastodonApp, NewOAuthState, OAuthState, TakenState};
pub(crate) use keys::NewApiKey;
pub(crate) use media::ShareMediaRow;
pub(crate) use runs::SyncRunState;
pub(crate) use shares::{Claim, Deferral, ShareUpdate};
pub(crate) use webhooks::{AttemptResult, EndpointPatch, NewEndpoint, Outgoing, RESPONSE_SNIPPET};

use std::{str::FromStr, time::Duration};

use sqlx::{
    PgPool, SqlitePool,
    migrate::Migrator,
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported DATABASE_URL `{0}`: use sqlite:PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A grouped write's task ended before it answered (its runtime shut down).
    #[error("the grouped write was cut short")]
    GroupCommitLost,
}

impl StoreError {
    /// The database could not be reached (no connection within the pool's acquire timeout, a
    /// refused or broken connection): a 503 to callers, not a bug.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Db(
                sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::WorkerCrashed
            )
        )
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A connection pool for one of the two engines.
#[derive(Debug, Clone)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs one query text on whichever engine the pool is.
///
/// `with_pool!(pool, "SELECT ... $1", |p, sql| body)` expands `body` once per engine with `p` bound
/// to that engine's pool and `sql` to the query in its placeholder form (each query is a fixed text
/// of this crate, never built from input, hence `AssertSqlSafe`).
macro_rules! with_pool {
    ($pool:expr, $text:expr, |$p:ident, $sql:ident| $body:expr) => {
        match $pool {
            $crate::store::Pool::Sqlite($p) => {
                let $sql = sqlx::AssertSqlSafe($crate::store::sqlite_sql($text));
                // rustfmt may wrap a long body in braces; they are harmless.
                #[allow(unused_braces)]
                let out = $body;
                out
            }
            $crate::store::Pool::Postgres($p) => {
                let $sql = sqlx::AssertSqlSafe(String::from($text));
                #[allow(unused_braces)]
                let out = $body;
                out
            }
        }
    };
}
pub(crate) use with_pool;

/// `$1` → `?1`: SQLite binds `?NNN` by number, so a query keeps its meaning on both engines.
pub(crate) fn sqlite_sql(text: &str) -> String {
    text.replace('$', "?")
}

/// How long a query waits for a Postgres connection before the store counts as unavailable.
pub(crate) const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the API trusts a connection it read for validating a share (see `recent.rs`).
pub(crate) const RECENT_CONNECTION_TTL: Duration = Duration::from_secs(5);

/// Grouped writes of one kind that may run at once on Postgres (`group_commit.rs`).
const GROUP_COMMIT_LANES_PG: usize = 4;

/// Herald's store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    /// API keys' rows in memory for a few seconds (`keys::KEY_CACHE_TTL`), shared by clones.
    key_cache: std::sync::Arc<keys::KeyCache>,
    /// Attempt outcomes, written together (`group_commit.rs`).
    outcomes:
        std::sync::Arc<group_commit::GroupCommit<share_finish::FinishRequest, Option<Finished>>>,
    /// The Redis path's claims, taken together.
    claims: std::sync::Arc<
        group_commit::GroupCommit<shares::ClaimRequest, Option<shares::ClaimedWith>>,
    >,
    /// Share requests, written together.
    creates: std::sync::Arc<group_commit::GroupCommit<share_create::CreateRequest, CreateOutcome>>,
    /// Connections the API read in the last few seconds, by (tenant, id) (`recent.rs`).
    recent_connections: std::sync::Arc<recent::Recent<(String, String), ConnectionRow>>,
}

impl Store {
    /// Connects to `sqlite:PATH` (created if missing) or `postgres://...`.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                // A writer waits for the write lock rather than fail: on a starved 2-core machine
                // running the whole test suite, 10 s was once not enough for a plain INSERT.
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true);
            Pool::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(8)
                    .connect_with(opts)
                    .await?,
            )
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(16)
                    // With the database down, a request answers 503 after this long rather
                    // than holding the caller (and a worker) for the old 10 s.
                    .acquire_timeout(PG_ACQUIRE_TIMEOUT)
                    .connect(url)
                    .await?,
            )
        } else {
            return Err(StoreError::UnsupportedUrl(
                url.split(':').next().unwrap_or("").to_owned(),
            ));
        };
        // SQLite has one writer at a time; Postgres overlaps a few rounds of round trips.
        let lanes = match pool {
            Pool::Sqlite(_) => 1,
            Pool::Postgres(_) => GROUP_COMMIT_LANES_PG,
        };
        Ok(Self {
            pool,
            key_cache: Default::default(),
            outcomes: group_commit::GroupCommit::new(share_finish::finish_batch, lanes),
            claims: group_commit::GroupCommit::new(shares::claim_batch, lanes),
            creates: group_commit::GroupCommit::new(share_create::create_batch, lanes),
            recent_connections: std::sync::Arc::new(recent::Recent::new(RECENT_CONNECTION_TTL)),
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn engine(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// Applies Herald's migrations. The queue backend keeps its own tables (and migration rows)
    /// in the same database, so each migrator ignores the other's applied versions.
    pub async fn migrate(&self) -> Result<()> {
        match &self.pool {
            Pool::Sqlite(p) => {
                let mut m: Migrator = sqlx::migrate!("../migrations/sqlite");
                m.set_ignore_missing(true);
                m.run(p).await?;
            }
            Pool::Postgres(p) => {
                let mut m: Migrator = sqlx::migrate!("../migrations/postgres");
                m.set_ignore_missing(true);
                m.run(p).await?;
            }
        }
        Ok(())
    }

    /// Herald's migrations not yet applied to this database (all of them on an empty one).
    pub async fn pending_migrations(&self) -> Result<Vec<i64>> {
        let (migrator, applied): (Migrator, Result<Vec<i64>, sqlx::Error>) = match &self.pool {
            Pool::Sqlite(p) => (
                sqlx::migrate!("../migrations/sqlite"),
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                    .fetch_all(p)
                    .await,
            ),
            Pool::Postgres(p) => (
                sqlx::migrate!("../migrations/postgres"),
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                    .fetch_all(p)
                    .await,
            ),
        };
        let applied = match applied {
            Ok(v) => v,
            // No migrations table: nothing was ever applied.
            Err(sqlx::Error::Database(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        Ok(migrator
            .iter()
            .filter(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version))
            .map(|m| m.version)
            .collect())
    }

    /// A cheap round trip, for readiness.
    pub async fn ping(&self) -> Result<()> {
        with_pool!(&self.pool, "SELECT 1", |p, sql| {
            sqlx::query(sql).execute(p).await?;
        });
        Ok(())
    }
}

/// The query text in the placeholder form of the engine a connection or transaction belongs to.
pub(crate) fn with_engine<P: Engine + ?Sized>(_on: &P, text: &str) -> sqlx::AssertSqlSafe<String> {
    sql_for::<P>(text)
}

/// The query text in the placeholder form of engine `P`.
pub(crate) fn sql_for<P: Engine + ?Sized>(text: &str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(if P::SQLITE {
        sqlite_sql(text)
    } else {
        text.to_owned()
    })
}

/// Whether a pool or transaction of this engine is SQLite's (one writer at a time, so no row
/// locks are needed where Postgres takes them).
pub(crate) fn is_sqlite<P: Engine + ?Sized>(_on: &P) -> bool {
    P::SQLITE
}

/// What differs between the engines' pools: the placeholder form, and how a write transaction
/// starts.
pub(crate) trait Engine {
    const SQLITE: bool;
    type Db: sqlx::Database;

    /// A transaction that will write. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`): a transaction that reads first and writes later cannot wait for the
    /// lock and fails with "database is locked" when another writer got there first.
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
    + Send;
}

impl Engine for SqlitePool {
    const SQLITE: bool = true;
    type Db = sqlx::Sqlite;

    fn begin_write(
        &self,
    ) -> impl std::future::Future<
        Output = Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error>,
    > + Send {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

impl Engine for PgPool {
    const SQLITE: bool = false;
    type Db = sqlx::Postgres;

    fn begin_write(
        &self,
    ) -> impl std::future::Future<
        Output = Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error>,
    > + Send {
        self.begin()
    }
}
