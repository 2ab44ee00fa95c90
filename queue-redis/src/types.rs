use std::{
    fmt,
    time::{Duration, SystemTime},
};

/// The id of a job: a ULID unless the producer chose one. It survives retries and replays.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    pub(crate) fn generate() -> Self {
        Self(ulid::Ulid::generate().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for JobId {
    fn from(id: String) -> Self {
        Self(id)
    }
}

impl From<&str> for JobId {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}

/// The result of a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The new job, or for a duplicate the job that first used the idempotency key.
    pub id: JobId,
    /// True when the idempotency key names a job that is still pending and nothing was enqueued.
    pub duplicate: bool,
}

/// Depth of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Jobs waiting for a worker.
    pub ready: u64,
    /// Delayed jobs (including retries waiting for their delay).
    pub scheduled: u64,
    /// Jobs leased by a worker (started or prefetched).
    pub running: u64,
    /// Jobs in the dead set.
    pub dead: u64,
    /// Time since the oldest ready job became ready.
    pub oldest_ready_age: Option<Duration>,
}

/// A job that exhausted its attempts or was aborted.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadJob {
    /// The job id.
    pub id: JobId,
    /// The job arguments as pushed.
    pub payload: serde_json::Value,
    /// The error of the last attempt.
    pub last_error: String,
    /// Attempts made.
    pub attempts: u32,
    /// When the job died.
    pub died_at: SystemTime,
}
