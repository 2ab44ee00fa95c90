/// The consumer group every worker of a queue reads through.
pub(crate) const GROUP: &str = "workers";

/// Names of the Redis keys of one queue.
///
/// The queue name is a hash tag (`{queue}`) so a queue's keys share a cluster slot,
/// which the Lua scripts need.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub base: String,
    pub stream: String,
    pub scheduled: String,
    pub scheduled_jobs: String,
    pub workers: String,
    pub dead: String,
    /// A short stream whose entries wake a blocked reader when a delayed job becomes due
    /// before every other one (see `push.lua`).
    pub wake: String,
}

impl Keys {
    pub fn new(prefix: &str, queue: &str) -> Self {
        let base = format!("{prefix}:{{{queue}}}");
        Self {
            stream: format!("{base}:stream"),
            scheduled: format!("{base}:scheduled"),
            scheduled_jobs: format!("{base}:scheduled:jobs"),
            workers: format!("{base}:workers"),
            dead: format!("{base}:dead"),
            wake: format!("{base}:wake"),
            base,
        }
    }

    pub fn idempotency(&self, key: &str) -> String {
        format!("{}:idem:{key}", self.base)
    }

    pub fn dead_job(&self, id: &str) -> String {
        format!("{}:dead:{id}", self.base)
    }

    pub fn done(&self, id: &str) -> String {
        format!("{}:done:{id}", self.base)
    }
}

pub(crate) fn validate_queue_name(queue: &str) -> Result<(), crate::Error> {
    if queue.is_empty() || queue.contains(['{', '}']) {
        return Err(crate::Error::InvalidQueueName(queue.to_owned()));
    }
    Ok(())
}
