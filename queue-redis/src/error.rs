/// Errors of the queue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis refused a command or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A payload could not be encoded as JSON.
    #[error("payload is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The queue name is empty or contains a brace (braces delimit the key hash tag).
    #[error("invalid queue name {0:?}: it must be non-empty and without '{{' or '}}'")]
    InvalidQueueName(String),
    /// Redis answered something the scripts never return.
    #[error("unexpected reply from redis: {0}")]
    UnexpectedReply(String),
}

/// Errors worth retrying: the connection, not the command, failed.
pub(crate) fn is_transient(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.code(),
            Some("LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN")
        )
}
