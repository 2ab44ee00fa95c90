//! How jobs reach a queue backend.
//!
//! The API and the jobs push through [`JobQueue`]; the worker crate builds the apalis workers that
//! consume. The store is the durable record and the queue only delivers. On the store's own
//! engines the share queue *is* the `shares` table ([`crate::share_feed`]), so a share push only
//! wakes the fetcher; the other queues use apalis's SQLite and Postgres backends. On Redis every
//! push carries an idempotency key (the share's delivery key), held while the job is pending, so a
//! push repeated by the reconciler is dropped by the backend, and a duplicate delivery finds the
//! share already claimed.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use apalis_core::{backend::TaskSink, task::builder::TaskBuilder};
use apalis_postgres::PostgresStorage;
use apalis_sqlite::SqliteStorage;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::channel::mpsc;
use serde_json::Value;
use tokio::sync::Notify;

use crate::payloads::{Job, QueueName};

#[derive(Debug, thiserror::Error)]
#[error("queue backend error: {0}")]
pub struct QueueError(pub String);

impl QueueError {
    fn from<E: fmt::Display>(e: E) -> Self {
        Self(e.to_string())
    }
}

/// Enqueues jobs. Cheap to share behind an `Arc`.
#[async_trait]
pub trait JobQueue: Send + Sync + fmt::Debug + 'static {
    /// Pushes `payload` to `queue`, to run at `run_at` (now or later). A second push with the same
    /// `key` while the first is pending is a no-op. Returns whether a job was enqueued (false for
    /// such a duplicate).
    async fn push(
        &self,
        queue: QueueName,
        payload: Value,
        run_at: DateTime<Utc>,
        key: &str,
    ) -> Result<bool, QueueError>;

    /// A cheap round trip, for readiness.
    async fn ping(&self) -> Result<(), QueueError>;

    /// The backend's name, for logs and `/readyz`.
    fn backend(&self) -> &'static str;
}

impl dyn JobQueue {
    /// Enqueues `job` on its type's queue, to run at `run_at`, deduplicated by `key` as
    /// [`JobQueue::push`] is.
    pub async fn enqueue<J: Job>(
        &self,
        job: &J,
        run_at: DateTime<Utc>,
        key: &str,
    ) -> Result<bool, QueueError> {
        let payload = serde_json::to_value(job).map_err(QueueError::from)?;
        self.push(J::QUEUE, payload, run_at, key).await
    }
}

fn delay_until(run_at: DateTime<Utc>) -> Duration {
    (run_at - Utc::now()).to_std().unwrap_or(Duration::ZERO)
}

/// In-process wake-ups: a push through this process's queue wakes this process's workers at once,
/// without waiting for the next poll.
#[derive(Debug, Default, Clone)]
pub struct Wakeups {
    listeners: Arc<Mutex<HashMap<QueueName, Vec<mpsc::Sender<()>>>>>,
    share: Arc<Notify>,
}

impl Wakeups {
    pub fn new() -> Self {
        Self::default()
    }

    /// What the share feed waits on (one fetcher per process; a wake-up with nobody waiting is
    /// kept for the next wait, so none is lost between a claim and the sleep after it).
    pub fn share(&self) -> Arc<Notify> {
        self.share.clone()
    }

    pub fn wake(&self, queue: QueueName) {
        if queue == QueueName::Share {
            self.share.notify_one();
            return;
        }
        let mut all = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = all.get_mut(&queue) {
            // A full channel already holds a wake-up that has not been seen: nothing is lost by
            // dropping this one, and a burst of pushes costs the worker one fetch, not one each.
            list.retain_mut(|tx| match tx.try_send(()) {
                Ok(()) => true,
                Err(e) => e.is_full(),
            });
        }
    }

    /// A stream that yields once per wake-up of `queue`, for apalis's poll strategy.
    pub fn stream(&self, queue: QueueName) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel(0);
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(queue)
            .or_default()
            .push(tx);
        rx
    }
}

/// The embedded queue: apalis's SQLite backend, in the same file as the store.
#[derive(Clone)]
pub struct SqliteQueue {
    pool: apalis_sqlite::SqlitePool,
    wakeups: Wakeups,
}

impl fmt::Debug for SqliteQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SqliteQueue")
    }
}

impl SqliteQueue {
    pub fn new(pool: apalis_sqlite::SqlitePool, wakeups: Wakeups) -> Self {
        Self { pool, wakeups }
    }

    pub fn storage<T>(&self, queue: QueueName) -> SqliteStorage<T> {
        SqliteStorage::new(&self.pool)
            .with_config(apalis_sqlite::Config::default().queue(queue.as_str()))
    }

    pub fn pool(&self) -> &apalis_sqlite::SqlitePool {
        &self.pool
    }
}

#[async_trait]
impl JobQueue for SqliteQueue {
    async fn push(
        &self,
        queue: QueueName,
        payload: Value,
        run_at: DateTime<Utc>,
        key: &str,
    ) -> Result<bool, QueueError> {
        if queue == QueueName::Share {
            // The committed row is the job: wake this process's fetcher.
            self.wakeups.wake(queue);
            return Ok(true);
        }
        use backon::{ExponentialBuilder, Retryable};
        let push = || async {
            let task = TaskBuilder::new(payload.clone())
                .run_after(delay_until(run_at))
                .idempotency_key(key)
                .build();
            let mut storage = self.storage::<Value>(queue);
            storage.push_task(task).await.map_err(QueueError::from)
        };
        // apalis-sqlite's push can meet SQLITE_BUSY while the workers' fetches hold the write
        // lock in a way the busy timeout does not cover; it is safe to repeat (idempotency key).
        push.retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(10))
                .with_max_delay(Duration::from_millis(500))
                .with_max_times(8)
                .with_jitter(),
        )
        .when(|e: &QueueError| e.0.contains("database is locked"))
        .await?;
        self.wakeups.wake(queue);
        Ok(true)
    }

    async fn ping(&self) -> Result<(), QueueError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(QueueError::from)?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

/// apalis's Postgres backend, in the same database as the store. A push wakes this process's
/// workers at once; workers in other processes find it at their next one-second poll.
#[derive(Clone)]
pub struct PostgresQueue {
    pool: sqlx::PgPool,
    wakeups: Wakeups,
}

impl fmt::Debug for PostgresQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PostgresQueue")
    }
}

impl PostgresQueue {
    pub fn new(pool: sqlx::PgPool, wakeups: Wakeups) -> Self {
        Self { pool, wakeups }
    }

    pub fn storage<T>(&self, queue: QueueName) -> PostgresStorage<T> {
        PostgresStorage::new(&self.pool)
            .with_config(apalis_postgres::Config::default().queue(queue.as_str()))
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        &self.pool
    }
}

#[async_trait]
impl JobQueue for PostgresQueue {
    async fn push(
        &self,
        queue: QueueName,
        payload: Value,
        run_at: DateTime<Utc>,
        key: &str,
    ) -> Result<bool, QueueError> {
        if queue == QueueName::Share {
            // The committed row is the job; other processes hear of it through the trigger's
            // NOTIFY (see `share_feed`).
            self.wakeups.wake(queue);
            return Ok(true);
        }
        let task = TaskBuilder::new(payload)
            .run_after(delay_until(run_at))
            .idempotency_key(key)
            .build();
        let mut storage = self.storage::<Value>(queue);
        storage.push_task(task).await.map_err(QueueError::from)?;
        self.wakeups.wake(queue);
        Ok(true)
    }

    async fn ping(&self) -> Result<(), QueueError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(QueueError::from)?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}

/// Herald's own Redis backend (`herald-queue-redis`): blocking reads wake workers in every process
/// at once, so no in-process wake-up is needed.
#[derive(Clone)]
pub struct RedisJobQueue {
    queue: herald_queue_redis::RedisQueue,
}

impl fmt::Debug for RedisJobQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisJobQueue")
            .field("prefix", &self.queue.prefix())
            .finish()
    }
}

impl RedisJobQueue {
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, QueueError> {
        let queue = herald_queue_redis::RedisQueue::connect(url, prefix)
            .await
            .map_err(QueueError::from)?;
        Ok(Self { queue })
    }

    pub fn inner(&self) -> &herald_queue_redis::RedisQueue {
        &self.queue
    }
}

#[async_trait]
impl JobQueue for RedisJobQueue {
    async fn push(
        &self,
        queue: QueueName,
        payload: Value,
        run_at: DateTime<Utc>,
        key: &str,
    ) -> Result<bool, QueueError> {
        let delay = Some(delay_until(run_at)).filter(|d| !d.is_zero());
        let payload = serde_json::to_vec(&payload).map_err(QueueError::from)?;
        let pushed = self
            .queue
            .push_bytes(queue.as_str(), payload, delay, Some(key))
            .await
            .map_err(QueueError::from)?;
        Ok(!pushed.duplicate)
    }

    async fn ping(&self) -> Result<(), QueueError> {
        self.queue.ping().await.map_err(QueueError::from)
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}
