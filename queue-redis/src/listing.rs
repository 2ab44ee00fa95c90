//! Reads for tools: apalis' `ListTasks` and `FetchById`, and the dead-job listing of
//! [`RedisQueue`](crate::RedisQueue). Nothing here runs on the job path.

use std::collections::HashMap;

use apalis_core::task::{
    Task, builder::TaskBuilder, metadata::MetadataStore, status::Status, task_id::TaskId,
};
use redis::{
    AsyncCommands,
    aio::ConnectionManager,
    streams::{
        StreamId, StreamInfoGroup, StreamInfoGroupsReply, StreamPendingCountReply, StreamRangeReply,
    },
};

use crate::{Config, Error, keys::GROUP, keys::Keys, scripts};

/// Stream entries read per round trip when skipping or searching.
const CHUNK: usize = 1000;

/// One job as a tool sees it.
#[derive(Debug)]
pub(crate) struct Listed {
    pub id: String,
    pub payload: Vec<u8>,
    pub status: Status,
    pub attempts: usize,
    /// When it became (or becomes) due, ms.
    pub run_at_ms: Option<u64>,
    /// The consumer holding it.
    pub lock_by: Option<String>,
    pub last_error: Option<String>,
    pub died_at_ms: Option<u64>,
}

impl Listed {
    pub fn into_task<A>(self, args: A, config: &Config) -> Task<A> {
        let mut metadata = MetadataStore::new();
        if let Some(error) = self.last_error {
            let _ = metadata.insert("last_error", error);
        }
        let mut task = TaskBuilder::new(args)
            .task_id(TaskId::from_string(self.id))
            .attempt(self.attempts)
            .status(self.status)
            .max_attempts(config.max_attempts)
            .queue(config.queue.as_str().into())
            .lock_by(self.lock_by)
            .done_at(self.died_at_ms.map(|ms| ms / 1000))
            .with_metadata(metadata);
        if let Some(ms) = self.run_at_ms {
            task = task.run_at_timestamp(ms / 1000);
        }
        task.build()
    }
}

/// Jobs waiting to run: the ready ones in stream order, then the delayed ones by due time.
pub(crate) async fn waiting(
    conn: &mut ConnectionManager,
    keys: &Keys,
    offset: usize,
    limit: usize,
) -> Result<Vec<Listed>, Error> {
    let (ready_total, after) = ready_cursor(conn, keys).await?;
    let mut out = Vec::new();
    if offset < ready_total {
        out = ready(conn, keys, after, offset, limit).await?;
    }
    let scheduled_offset = offset.saturating_sub(ready_total);
    if out.len() < limit {
        out.extend(scheduled(conn, keys, scheduled_offset, limit - out.len()).await?);
    }
    Ok(out)
}

/// How many jobs are ready, and the stream position after which they start.
async fn ready_cursor(conn: &mut ConnectionManager, keys: &Keys) -> Result<(usize, String), Error> {
    // XLEN of a missing key is 0
    let len: usize = conn.xlen(&keys.stream).await?;
    Ok(match group(conn, keys).await? {
        Some(g) => (
            len.saturating_sub(g.pending),
            format!("({}", g.last_delivered_id),
        ),
        None => (len, "-".into()),
    })
}

/// The workers' consumer group, once a worker has created it.
async fn group(
    conn: &mut ConnectionManager,
    keys: &Keys,
) -> Result<Option<StreamInfoGroup>, Error> {
    if !conn.exists::<_, bool>(&keys.stream).await? {
        return Ok(None);
    }
    let groups: StreamInfoGroupsReply = conn.xinfo_groups(&keys.stream).await?;
    Ok(groups.groups.into_iter().find(|g| g.name == GROUP))
}

/// Ready jobs from `after`, skipping `offset` of them a chunk at a time (a deep page costs
/// its offset in reads, as an SQL `OFFSET` does).
async fn ready(
    conn: &mut ConnectionManager,
    keys: &Keys,
    mut after: String,
    mut offset: usize,
    limit: usize,
) -> Result<Vec<Listed>, Error> {
    let mut out = Vec::new();
    while out.len() < limit {
        let want = if offset > 0 {
            offset.min(CHUNK)
        } else {
            limit - out.len()
        };
        let page: StreamRangeReply = conn.xrange_count(&keys.stream, &after, "+", want).await?;
        let Some(last) = page.ids.last() else { break };
        after = format!("({}", last.id);
        if offset > 0 {
            offset -= page.ids.len();
            continue;
        }
        out.extend(page.ids.iter().map(|e| entry(e, Status::Pending)));
    }
    Ok(out)
}

async fn scheduled(
    conn: &mut ConnectionManager,
    keys: &Keys,
    offset: usize,
    limit: usize,
) -> Result<Vec<Listed>, Error> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let due: Vec<(String, f64)> = conn
        .zrange_withscores(
            &keys.scheduled,
            offset as isize,
            (offset + limit - 1) as isize,
        )
        .await?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = due.iter().map(|(id, _)| id.as_str()).collect();
    let encoded: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
        .arg(&keys.scheduled_jobs)
        .arg(&ids)
        .query_async(conn)
        .await?;
    Ok(due
        .into_iter()
        .zip(encoded)
        .filter_map(|((id, at), enc)| scheduled_job(id, at as u64, &enc?))
        .collect())
}

/// A `scheduled:jobs` value is `attempts:payload`, or `attempts/n:` followed by the job's
/// n-byte idempotency key and the payload.
fn scheduled_job(id: String, due_ms: u64, encoded: &[u8]) -> Option<Listed> {
    let sep = encoded.iter().position(|&b| b == b':' || b == b'/')?;
    let attempts = std::str::from_utf8(&encoded[..sep]).ok()?.parse().ok()?;
    let payload = if encoded[sep] == b':' {
        &encoded[sep + 1..]
    } else {
        let rest = &encoded[sep + 1..];
        let colon = rest.iter().position(|&b| b == b':')?;
        let key_len: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
        rest.get(colon + 1 + key_len..)?
    };
    Some(Listed {
        id,
        payload: payload.to_vec(),
        status: Status::Pending,
        attempts,
        run_at_ms: Some(due_ms),
        lock_by: None,
        last_error: None,
        died_at_ms: None,
    })
}

/// Jobs leased by a worker (started or prefetched), oldest delivery first.
pub(crate) async fn running(
    conn: &mut ConnectionManager,
    keys: &Keys,
    offset: usize,
    limit: usize,
) -> Result<Vec<Listed>, Error> {
    if group(conn, keys).await?.is_none() {
        return Ok(Vec::new());
    }
    let pending: StreamPendingCountReply = conn
        .xpending_count(&keys.stream, GROUP, "-", "+", offset + limit)
        .await?;
    let page: Vec<_> = pending.ids.into_iter().skip(offset).collect();
    if page.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for p in &page {
        pipe.xrange(&keys.stream, &p.id, &p.id);
    }
    let entries: Vec<StreamRangeReply> = pipe.query_async(conn).await?;
    Ok(page
        .into_iter()
        .zip(entries)
        // an entry settled since XPENDING is gone
        .filter_map(|(p, e)| Some(leased(e.ids.first()?, p.consumer)))
        .collect())
}

/// Dead jobs, most recent first: id and the fields of its hash.
pub(crate) async fn dead_rows(
    conn: &mut ConnectionManager,
    keys: &Keys,
    offset: usize,
    limit: usize,
) -> Result<Vec<(String, HashMap<String, Vec<u8>>)>, Error> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = conn
        .zrevrange(&keys.dead, offset as isize, (offset + limit - 1) as isize)
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for id in &ids {
        pipe.hgetall(keys.dead_job(id));
    }
    let rows: Vec<HashMap<String, Vec<u8>>> = pipe.query_async(conn).await?;
    Ok(ids
        .into_iter()
        .zip(rows)
        // expired since the index was last trimmed
        .filter(|(_, row)| !row.is_empty())
        .collect())
}

pub(crate) async fn dead(
    conn: &mut ConnectionManager,
    keys: &Keys,
    offset: usize,
    limit: usize,
) -> Result<Vec<Listed>, Error> {
    Ok(dead_rows(conn, keys, offset, limit)
        .await?
        .into_iter()
        .map(|(id, row)| dead_job(id, row))
        .collect())
}

pub(crate) fn dead_job(id: String, mut row: HashMap<String, Vec<u8>>) -> Listed {
    let mut text =
        |k: &str| String::from_utf8_lossy(&row.remove(k).unwrap_or_default()).into_owned();
    let error = text("error");
    let attempts = text("attempts").parse().unwrap_or_default();
    let died_at = text("died_at").parse().ok();
    Listed {
        id,
        payload: row.remove("payload").unwrap_or_default(),
        status: Status::Killed,
        attempts,
        run_at_ms: None,
        lock_by: None,
        last_error: Some(error),
        died_at_ms: died_at,
    }
}

/// Job `id` wherever it waits, runs or lies dead; `None` once it finished (only its
/// completion time is kept) or if it never existed.
pub(crate) async fn find(
    conn: &mut ConnectionManager,
    keys: &Keys,
    id: &str,
) -> Result<Option<Listed>, Error> {
    let row: HashMap<String, Vec<u8>> = conn.hgetall(keys.dead_job(id)).await?;
    if !row.is_empty() {
        return Ok(Some(dead_job(id.to_owned(), row)));
    }
    let (due, encoded): (Option<f64>, Option<Vec<u8>>) = redis::pipe()
        .zscore(&keys.scheduled, id)
        .hget(&keys.scheduled_jobs, id)
        .query_async(conn)
        .await?;
    if let (Some(due), Some(encoded)) = (due, encoded) {
        return Ok(scheduled_job(id.to_owned(), due as u64, &encoded));
    }
    // The stream is not indexed by job id (an index would cost every job a write), so
    // this scans it, a chunk per call, inside Redis.
    let mut after = "-".to_owned();
    loop {
        let (state, entry_id): (u8, Option<String>) = scripts::FIND
            .key(&keys.stream)
            .arg(&after)
            .arg(id)
            .arg(CHUNK)
            .invoke_async(conn)
            .await?;
        match (state, entry_id) {
            (1, Some(entry_id)) => return leased_or_ready(conn, keys, &entry_id).await,
            (2, Some(last)) => after = format!("({last}"),
            _ => return Ok(None),
        }
    }
}

/// The job at stream entry `entry_id`: running if a consumer holds it, else ready.
async fn leased_or_ready(
    conn: &mut ConnectionManager,
    keys: &Keys,
    entry_id: &str,
) -> Result<Option<Listed>, Error> {
    let found: StreamRangeReply = conn.xrange(&keys.stream, entry_id, entry_id).await?;
    let lease: Option<StreamPendingCountReply> = match conn
        .xpending_count(&keys.stream, GROUP, entry_id, entry_id, 1)
        .await
    {
        Ok(lease) => Some(lease),
        // no worker has created the group yet, so nobody holds it
        Err(e) if e.code() == Some("NOGROUP") => None,
        Err(e) => return Err(e.into()),
    };
    let Some(e) = found.ids.first() else {
        // settled meanwhile
        return Ok(None);
    };
    Ok(Some(match lease.and_then(|l| l.ids.into_iter().next()) {
        Some(p) => leased(e, p.consumer),
        None => entry(e, Status::Pending),
    }))
}

/// A stream entry that `consumer` holds; its current run counts as an attempt.
fn leased(e: &StreamId, consumer: String) -> Listed {
    let mut job = entry(e, Status::Running);
    job.lock_by = Some(consumer);
    job.attempts += 1;
    job
}

/// A stream entry: fields `id`, `d` (payload) and `a` (attempts made); its id starts with
/// the ms at which it became ready.
fn entry(e: &StreamId, status: Status) -> Listed {
    let ready_ms = e.id.split('-').next().and_then(|ms| ms.parse().ok());
    Listed {
        id: e.get("id").unwrap_or_else(|| e.id.clone()),
        payload: e.get("d").unwrap_or_default(),
        status,
        attempts: e.get::<usize>("a").unwrap_or(0),
        run_at_ms: ready_ms,
        lock_by: None,
        last_error: None,
        died_at_ms: None,
    }
}
