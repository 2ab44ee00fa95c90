use std::time::Duration;

/// Settings of one queue, shared by its workers and producers.
///
/// Every duration has a default that suits production; tests shorten the lease.
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) queue: String,
    pub(crate) prefix: String,
    pub(crate) lease: Duration,
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) max_attempts: usize,
    pub(crate) retry_delay: Duration,
    pub(crate) idempotency_ttl: Duration,
    pub(crate) done_retention: Duration,
    pub(crate) dead_retention: Duration,
    pub(crate) prefetch: usize,
    pub(crate) scheduler_tick: Duration,
    pub(crate) promote_batch: usize,
    pub(crate) ack_batch: usize,
}

impl Config {
    /// A queue named `queue` under the default prefix `herald`.
    pub fn new(queue: impl Into<String>) -> Self {
        Self {
            queue: queue.into(),
            prefix: "herald".to_owned(),
            lease: Duration::from_secs(30),
            heartbeat: None,
            max_attempts: 25,
            retry_delay: Duration::from_secs(5),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            // off: a record per finished job costs Redis about as much as the rest of
            // the job's commands together (README, "Bounded memory")
            done_retention: Duration::ZERO,
            dead_retention: Duration::from_secs(7 * 24 * 3600),
            prefetch: 32,
            scheduler_tick: Duration::from_secs(1),
            promote_batch: 500,
            ack_batch: 256,
        }
    }

    /// Key prefix of the deployment; every key of the queue starts with it.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a silent worker keeps its jobs before another worker takes them back.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(300));
        self
    }

    /// How often a worker renews its lease (default: a third of the lease).
    #[must_use]
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = Some(every);
        self
    }

    /// Attempts (handler runs and lapsed leases) before a failing job goes dead.
    #[must_use]
    pub fn max_attempts(mut self, attempts: usize) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Delay before a failed job runs again (zero: straight back to the ready stream).
    #[must_use]
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// Safety net for idempotency keys: a key lives at most this long after its job's due
    /// time (zero: no limit). A job releases its key when it is done or dead, so this only
    /// bounds the keys of jobs lost some other way.
    #[must_use]
    pub fn idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.idempotency_ttl = ttl;
        self
    }

    /// How long the completion record of a finished job is kept, for
    /// [`RedisQueue::finished_at`](crate::RedisQueue::finished_at) (default zero: not kept).
    #[must_use]
    pub fn done_retention(mut self, retention: Duration) -> Self {
        self.done_retention = retention;
        self
    }

    /// How long a dead job stays listable and replayable (zero: until replayed).
    #[must_use]
    pub fn dead_retention(mut self, retention: Duration) -> Self {
        self.dead_retention = retention;
        self
    }

    /// Jobs a worker may hold leased but not yet started; one read fetches up to this many.
    #[must_use]
    pub fn prefetch(mut self, jobs: usize) -> Self {
        self.prefetch = jobs.clamp(1, 1024);
        self
    }

    /// Longest time a due delayed job waits for promotion, and the longest blocking read.
    #[must_use]
    pub fn scheduler_tick(mut self, tick: Duration) -> Self {
        self.scheduler_tick = tick.max(Duration::from_millis(10));
        self
    }

    /// Most delayed jobs one promotion call moves.
    #[must_use]
    pub fn promote_batch(mut self, jobs: usize) -> Self {
        self.promote_batch = jobs.clamp(1, 5000);
        self
    }

    /// The queue name.
    pub fn queue_name(&self) -> &str {
        &self.queue
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// The lease.
    pub fn lease_duration(&self) -> Duration {
        self.lease
    }

    pub(crate) fn heartbeat_every(&self) -> Duration {
        self.heartbeat.unwrap_or(self.lease / 3).min(self.lease / 2)
    }
}
