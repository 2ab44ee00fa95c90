//! apalis' read traits for tools such as apalis-board: `ListTasks` and `FetchById`.
//!
//! What each status lists (Redis keeps no other states):
//! - `Pending` (or no status): ready jobs in stream order, then delayed jobs and retries by
//!   due time;
//! - `Running`: jobs leased by a worker, started or prefetched, with the consumer in `lock_by`;
//! - `Killed`: dead jobs, most recent first, with the last error in the `last_error` metadata;
//! - `Queued`, `Done`, `Failed`: nothing. A prefetched job is listed as running, a finished one
//!   keeps only its completion time (`RedisQueue::finished_at`), and a failed one is either
//!   waiting for its retry (pending, with its attempts) or dead.

use apalis_codec::json::JsonCodec;
use apalis_core::{
    backend::{FetchById, Filter, ListTasks, WireFormatBackend},
    task::{Task, status::Status, task_id::TaskId},
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Error, RedisStorage, listing};

impl<T> WireFormatBackend for RedisStorage<T> {
    type Codec = JsonCodec<Value>;
    /// The JSON of the job as pushed, so tools show it as JSON.
    type Compact = Value;

    fn codec(&self) -> &Self::Codec {
        &self.codec
    }
}

impl<T: DeserializeOwned + Send + 'static> ListTasks for RedisStorage<T> {
    fn list_tasks(
        &self,
        filter: &Filter,
    ) -> impl Future<Output = Result<Vec<Task<Value>>, Error>> + Send {
        let (offset, limit) = (filter.offset() as usize, filter.limit() as usize);
        let status = filter.status.clone().unwrap_or(Status::Pending);
        // owned copies: the storage itself is not `Sync`
        let mut conn = self.conn.shared();
        let (keys, config) = (self.keys.clone(), self.config.clone());
        async move {
            let jobs = match status {
                Status::Pending => listing::waiting(&mut conn, &keys, offset, limit).await?,
                Status::Running => listing::running(&mut conn, &keys, offset, limit).await?,
                Status::Killed => listing::dead(&mut conn, &keys, offset, limit).await?,
                _ => Vec::new(),
            };
            Ok(jobs
                .into_iter()
                .map(|job| {
                    let args = serde_json::from_slice(&job.payload).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&job.payload).into_owned())
                    });
                    job.into_task(args, &config)
                })
                .collect())
        }
    }
}

impl<T: DeserializeOwned + Send + 'static> FetchById for RedisStorage<T> {
    /// Looks in the dead and delayed jobs by key, then scans the stream a chunk of 1,000
    /// entries per call inside Redis (it is not indexed by job id): O(backlog), for tools.
    /// A finished job is `None`: only its completion time is kept.
    async fn fetch_by_id(&mut self, task_id: &TaskId) -> Result<Option<Task<T>>, Error> {
        let id = task_id.to_string();
        let Some(job) = listing::find(&mut self.conn.shared(), &self.keys, &id).await? else {
            return Ok(None);
        };
        let args = serde_json::from_slice(&job.payload)?;
        Ok(Some(job.into_task(args, &self.config)))
    }
}
