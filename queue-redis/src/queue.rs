use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redis::{AsyncCommands, IntoConnectionInfo};
use serde::Serialize;

use crate::{
    Config, DeadJob, Error, JobId, Pushed, QueueStats, RedisConn, RedisStorage,
    keys::{GROUP, Keys, validate_queue_name},
    listing,
    push::{NewJob, push},
    scripts,
};

/// The non-generic handle the API uses to enqueue and inspect any queue of a deployment.
///
/// Cheap to clone: clones share one connection.
#[derive(Debug, Clone)]
pub struct RedisQueue {
    conn: RedisConn,
    prefix: Arc<str>,
    idempotency_ttl: Duration,
}

impl RedisQueue {
    /// Connects to `url`; every key it touches starts with `prefix`.
    pub async fn connect(url: impl IntoConnectionInfo, prefix: &str) -> Result<Self, Error> {
        Ok(Self::new(RedisConn::connect(url).await?, prefix))
    }

    /// A handle over an existing connection.
    pub fn new(conn: RedisConn, prefix: &str) -> Self {
        Self {
            conn,
            prefix: prefix.into(),
            idempotency_ttl: Config::new("_").idempotency_ttl,
        }
    }

    /// The longest an idempotency key outlives its job's due time if the job is never settled
    /// (default 24 h; zero: until the job settles). A settled job releases its key at once.
    #[must_use]
    pub fn with_idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.idempotency_ttl = ttl;
        self
    }

    /// The connection, to build workers on.
    pub fn conn(&self) -> &RedisConn {
        &self.conn
    }

    /// The deployment's key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A worker configuration for `queue` under this handle's prefix and idempotency TTL.
    pub fn config(&self, queue: &str) -> Config {
        Config::new(queue)
            .prefix(&*self.prefix)
            .idempotency_ttl(self.idempotency_ttl)
    }

    /// The apalis backend of `queue`, to give to `WorkerBuilder::backend`.
    pub fn storage<T>(&self, config: Config) -> RedisStorage<T> {
        RedisStorage::new(self.conn.clone(), config)
    }

    fn keys(&self, queue: &str) -> Result<Keys, Error> {
        validate_queue_name(queue)?;
        Ok(Keys::new(&self.prefix, queue))
    }

    /// Enqueues `payload` (the JSON of the worker's job type), after `delay` if given.
    /// A push repeating the `idempotency_key` of a job that is still pending (delayed, ready,
    /// running or waiting for a retry) is a no-op that returns that job's id. Once that job
    /// is done or dead, the key is free and the push creates a new job.
    pub async fn push<P: Serialize + ?Sized>(
        &self,
        queue: &str,
        payload: &P,
        delay: Option<Duration>,
        idempotency_key: Option<&str>,
    ) -> Result<JobId, Error> {
        let payload = serde_json::to_vec(payload)?;
        Ok(self
            .push_bytes(queue, payload, delay, idempotency_key)
            .await?
            .id)
    }

    /// Like [`push`](Self::push) for an already encoded JSON payload, and tells duplicates apart.
    pub async fn push_bytes(
        &self,
        queue: &str,
        payload: Vec<u8>,
        delay: Option<Duration>,
        idempotency_key: Option<&str>,
    ) -> Result<Pushed, Error> {
        let keys = self.keys(queue)?;
        let job = NewJob {
            id: JobId::generate(),
            payload,
            delay_ms: delay.map_or(0, |d| d.as_millis() as u64),
            idempotency_key: idempotency_key.map(str::to_owned),
            attempts: 0,
        };
        push(
            &mut self.conn.shared(),
            &keys,
            self.idempotency_ttl.as_secs(),
            &job,
        )
        .await
    }

    /// Depth of `queue`, from a constant number of O(1)/O(log n) commands.
    pub async fn stats(&self, queue: &str) -> Result<QueueStats, Error> {
        let keys = self.keys(queue)?;
        let (ready, running, scheduled, dead, oldest): (i64, i64, u64, u64, i64) = scripts::STATS
            .key(&keys.stream)
            .key(&keys.scheduled)
            .key(&keys.dead)
            .arg(GROUP)
            .invoke_async(&mut self.conn.shared())
            .await?;
        Ok(QueueStats {
            ready: ready.max(0) as u64,
            running: running.max(0) as u64,
            scheduled,
            dead,
            oldest_ready_age: (oldest >= 0).then(|| Duration::from_millis(oldest as u64)),
        })
    }

    /// Dead jobs of `queue`, most recent first.
    pub async fn list_dead(
        &self,
        queue: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<DeadJob>, Error> {
        let keys = self.keys(queue)?;
        let rows = listing::dead_rows(&mut self.conn.shared(), &keys, offset, limit).await?;
        Ok(rows
            .into_iter()
            .map(|(id, row)| dead_job(id, row))
            .collect())
    }

    /// Puts dead job `id` back to ready with a fresh attempt budget; false if it is not dead.
    /// The job takes its idempotency key again unless a push has taken it since.
    pub async fn replay_dead(&self, queue: &str, id: &str) -> Result<bool, Error> {
        let keys = self.keys(queue)?;
        let replayed: i64 = scripts::REPLAY
            .key(&keys.stream)
            .key(&keys.dead)
            .key(keys.dead_job(id))
            .arg(id)
            .arg(&keys.base)
            .arg(self.idempotency_ttl.as_secs())
            .invoke_async(&mut self.conn.shared())
            .await?;
        Ok(replayed == 1)
    }

    /// When job `id` finished successfully, if that is within the done retention.
    pub async fn finished_at(&self, queue: &str, id: &str) -> Result<Option<SystemTime>, Error> {
        let keys = self.keys(queue)?;
        let at: Option<u64> = self.conn.shared().get(keys.done(id)).await?;
        Ok(at.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)))
    }

    /// Round trip to Redis, for readiness probes.
    pub async fn ping(&self) -> Result<(), Error> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn.shared())
            .await?;
        Ok(())
    }
}

fn dead_job(id: String, mut row: HashMap<String, Vec<u8>>) -> DeadJob {
    let text = |row: &mut HashMap<String, Vec<u8>>, k: &str| {
        String::from_utf8_lossy(&row.remove(k).unwrap_or_default()).into_owned()
    };
    let raw = row.remove("payload").unwrap_or_default();
    let payload = serde_json::from_slice(&raw)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&raw).into_owned()));
    let died_ms: u64 = text(&mut row, "died_at").parse().unwrap_or_default();
    DeadJob {
        id: JobId::from(id),
        payload,
        last_error: text(&mut row, "error"),
        attempts: text(&mut row, "attempts").parse().unwrap_or_default(),
        died_at: UNIX_EPOCH + Duration::from_millis(died_ms),
    }
}
