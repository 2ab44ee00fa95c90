//! The one enqueue path, shared by the apalis sink and the [`RedisQueue`](crate::RedisQueue) handle,
//! so both store exactly the same entry.

use redis::aio::ConnectionLike;

use crate::{Error, JobId, Pushed, keys::Keys, scripts};

/// A job ready to be written.
#[derive(Debug, Clone)]
pub(crate) struct NewJob {
    pub id: JobId,
    pub payload: Vec<u8>,
    pub delay_ms: u64,
    pub idempotency_key: Option<String>,
    pub attempts: usize,
}

pub(crate) async fn push<C: ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
    idempotency_ttl_s: u64,
    job: &NewJob,
) -> Result<Pushed, Error> {
    if job.delay_ms == 0 && job.idempotency_key.is_none() && job.attempts == 0 {
        // the common case is one plain command, no script
        redis::cmd("XADD")
            .arg(&keys.stream)
            .arg("*")
            .arg("id")
            .arg(job.id.as_str())
            .arg("d")
            .arg(&job.payload)
            .exec_async(conn)
            .await?;
        return Ok(Pushed {
            id: job.id.clone(),
            duplicate: false,
        });
    }
    let mut call = scripts::PUSH.prepare_invoke();
    call.key(&keys.stream)
        .key(&keys.scheduled)
        .key(&keys.scheduled_jobs)
        .key(&keys.wake);
    if let Some(key) = &job.idempotency_key {
        call.key(keys.idempotency(key));
    }
    call.arg(job.id.as_str())
        .arg(&job.payload)
        .arg(job.delay_ms)
        .arg(idempotency_ttl_s)
        .arg(job.attempts);
    if let Some(key) = &job.idempotency_key {
        // the job carries its key, so the script that settles it can release it
        call.arg(key);
    }
    let (created, id): (i64, String) = call.invoke_async(conn).await?;
    Ok(Pushed {
        id: JobId::from(id),
        duplicate: created == 0,
    })
}
