use std::{
    pin::pin,
    sync::Arc,
    time::{Duration, Instant},
};

use apalis_core::task::{Task, builder::TaskBuilder, task_id::TaskId};
use redis::{Value, aio::MultiplexedConnection};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

use crate::consumer::{Shared, reconnect_backoff};
use crate::{
    ack::{AckMsg, Delivery, Outcome, Settlement},
    error::is_transient,
    keys::GROUP,
    scripts,
};

struct Reader {
    conn: MultiplexedConnection,
    client_id: i64,
}

/// Reads jobs with `XREADGROUP ... BLOCK` whenever the worker has room for more, so a
/// push wakes an idle worker at once and an idle worker sends one command per tick.
pub(super) async fn run<T: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared>,
    tx: mpsc::Sender<Task<T>>,
    acks: mpsc::UnboundedSender<AckMsg>,
    mut stop: watch::Receiver<bool>,
) {
    let tick = shared.config.scheduler_tick;
    let mut delays = reconnect_backoff();
    let mut reader: Option<Reader> = None;
    let mut next_promote = Instant::now();
    let mut reconnecting = false;
    // wake entries read but not yet acknowledged (the next promotion does it)
    let mut wakes: Vec<String> = Vec::new();
    loop {
        if *stop.borrow() {
            return;
        }
        if reader.is_none() {
            match connect(&shared).await {
                Ok(mut r) => {
                    let reread = if reconnecting {
                        redeliver_lost_reads(&shared, &mut r.conn, &tx, &acks).await
                    } else {
                        Ok(())
                    };
                    if let Err(e) = reread {
                        tracing::warn!(error = %e, queue = %shared.config.queue, "cannot reread this worker's pending jobs");
                        if pause(delays.next(), &mut stop).await {
                            return;
                        }
                        continue;
                    }
                    shared.mark_healthy(true);
                    delays = reconnect_backoff();
                    reconnecting = true;
                    reader = Some(r);
                }
                Err(e) => {
                    shared.mark_healthy(false);
                    tracing::warn!(error = %e, queue = %shared.config.queue, "cannot open the worker's read connection");
                    if pause(delays.next(), &mut stop).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let Some(r) = reader.as_mut() else { continue };

        let permit = tokio::select! {
            p = tx.reserve() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let want = (1 + tx.capacity()).min(shared.config.prefetch);

        let now = Instant::now();
        if now >= next_promote {
            let promoted = promote(&shared, &wakes).await;
            if promoted.is_ok() {
                wakes.clear();
            }
            next_promote = match promoted {
                Ok((moved, _)) if moved as usize >= shared.config.promote_batch => now,
                Ok((_, wait)) if wait >= 0 => now + tick.min(Duration::from_millis(wait as u64)),
                Ok(_) => now + tick,
                Err(e) => {
                    tracing::warn!(error = %e, "promoting delayed jobs failed");
                    now + tick
                }
            };
        }
        let block = next_promote
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), tick);

        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&shared.consumer)
            .arg("COUNT")
            .arg(want)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&shared.keys.stream)
            .arg(&shared.keys.wake)
            .arg(">")
            .arg(">");
        let client_id = r.client_id;
        let reply = {
            let mut read = pin!(cmd.query_async::<Value>(&mut r.conn));
            tokio::select! {
                reply = &mut read => reply,
                _ = stop.changed() => {
                    // Finish the read so no delivery lands after the release that follows.
                    loop {
                        unblock(&shared, client_id).await;
                        if let Ok(reply) = tokio::time::timeout(Duration::from_millis(100), &mut read).await {
                            break reply;
                        }
                    }
                }
            }
        };
        if *stop.borrow() {
            return;
        }
        match reply {
            Ok(value) => {
                let mut permit = Some(permit);
                let woken = wakes.len();
                for_each_entry(value, |stream, entry_id, fields| {
                    if stream == shared.keys.wake.as_bytes() {
                        wakes.push(String::from_utf8_lossy(entry_id).into_owned());
                        return;
                    }
                    let Some(task) = decode::<T>(&shared, &acks, entry_id, fields) else {
                        return;
                    };
                    match permit.take() {
                        Some(p) => p.send(task),
                        // room was counted before the read and only this task sends
                        None => {
                            if tx.try_send(task).is_err() {
                                tracing::error!(
                                    "prefetch buffer overflow; the job returns when the lease lapses"
                                );
                            }
                        }
                    }
                });
                if wakes.len() > woken {
                    // a delayed job became due before the time this reader slept to
                    next_promote = Instant::now();
                }
            }
            Err(e) if e.code() == Some("NOGROUP") => {
                // the stream or group vanished, e.g. a Redis restart without persistence
                if let Err(e) = ensure_group(&shared, &mut r.conn).await {
                    tracing::warn!(error = %e, "cannot recreate the consumer group");
                    reader = None;
                }
            }
            Err(e) => {
                if is_transient(&e) {
                    shared.mark_healthy(false);
                }
                tracing::warn!(error = %e, queue = %shared.config.queue, "reading jobs failed; reconnecting");
                reader = None;
                if pause(delays.next(), &mut stop).await {
                    return;
                }
            }
        }
    }
}

/// Delivers again the entries Redis counts as read by this consumer but this process never
/// received: an `XREADGROUP` that ran on the server while its connection dropped (a Redis
/// restart with AOF keeps them). This worker's heartbeat keeps their lease alive, so no
/// other worker would ever take them back.
async fn redeliver_lost_reads<T: DeserializeOwned>(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
    tx: &mpsc::Sender<Task<T>>,
    acks: &mpsc::UnboundedSender<AckMsg>,
) -> Result<(), redis::RedisError> {
    let mut after = "0".to_owned();
    let mut lost = 0usize;
    loop {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&shared.consumer)
            .arg("COUNT")
            .arg(256)
            .arg("STREAMS")
            .arg(&shared.keys.stream)
            .arg(&after)
            .query_async(conn)
            .await?;
        let mut page = Vec::new();
        for_each_entry(reply, |_, id, fields| {
            page.push((String::from_utf8_lossy(id).into_owned(), fields))
        });
        let Some((last, _)) = page.last() else {
            break;
        };
        after = last.clone();
        for (id, fields) in page {
            if shared.holds(&id) {
                continue;
            }
            if fields.is_empty() {
                // deleted while pending: nothing to run, only the pending entry to clear
                let entry_id: Arc<str> = id.into();
                let _ = acks.send(AckMsg::Settle(Settlement {
                    delivery: Delivery {
                        job_id: entry_id.clone(),
                        entry_id,
                        idem_key: None,
                    },
                    outcome: Outcome::Done,
                }));
                continue;
            }
            if let Some(task) = decode::<T>(shared, acks, id.as_bytes(), fields) {
                lost += 1;
                if tx.send(task).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    if lost > 0 {
        tracing::info!(queue = %shared.config.queue, lost, "redelivered jobs whose read was lost with the connection");
    }
    Ok(())
}

/// Sleeps for `delay`; true if the worker is stopping.
async fn pause(delay: Option<Duration>, stop: &mut watch::Receiver<bool>) -> bool {
    let delay = delay.unwrap_or(Duration::from_secs(5));
    tokio::select! {
        _ = tokio::time::sleep(delay) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

async fn connect(shared: &Shared) -> Result<Reader, crate::Error> {
    let mut conn = shared.conn.dedicated().await?;
    // named so `CLIENT LIST` tells which worker a blocked reader belongs to
    let name: String = format!("herald-reader:{}", shared.consumer)
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(&name)
        .exec_async(&mut conn)
        .await?;
    let client_id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut conn)
        .await?;
    ensure_group(shared, &mut conn).await?;
    Ok(Reader { conn, client_id })
}

async fn ensure_group(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
) -> Result<(), redis::RedisError> {
    // jobs from id 0, so those pushed before the first worker started are delivered too;
    // wake-ups from now, as every worker promotes when it starts
    for (stream, from) in [(&shared.keys.stream, "0"), (&shared.keys.wake, "$")] {
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(GROUP)
            .arg(from)
            .arg("MKSTREAM")
            .exec_async(&mut *conn)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

async fn unblock(shared: &Shared, client_id: i64) {
    let _ = redis::cmd("CLIENT")
        .arg("UNBLOCK")
        .arg(client_id)
        .exec_async(&mut shared.conn.shared())
        .await;
}

async fn promote(shared: &Shared, wakes: &[String]) -> Result<(i64, i64), redis::RedisError> {
    let keys = &shared.keys;
    let mut call = scripts::PROMOTE.prepare_invoke();
    call.key(&keys.stream)
        .key(&keys.scheduled)
        .key(&keys.scheduled_jobs)
        .key(&keys.wake)
        .arg(shared.config.promote_batch)
        .arg(GROUP)
        .arg(wakes);
    call.invoke_async(&mut shared.conn.shared()).await
}

/// Turns one stream entry into a task; an entry that cannot be decoded goes dead at once
/// instead of failing the worker.
fn decode<T: DeserializeOwned>(
    shared: &Shared,
    acks: &mpsc::UnboundedSender<AckMsg>,
    entry_id: &[u8],
    fields: Vec<Value>,
) -> Option<Task<T>> {
    let mut job_id = None;
    let mut payload = None;
    let mut idem_key = None;
    let mut attempts = 0usize;
    let mut it = fields.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let (Value::BulkString(k), Value::BulkString(v)) = (k, v) else {
            continue;
        };
        match k.as_slice() {
            b"id" => job_id = Some(String::from_utf8_lossy(&v).into_owned()),
            b"d" => payload = Some(v),
            b"k" => idem_key = Some(String::from_utf8_lossy(&v).into()),
            b"a" => {
                attempts = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0)
            }
            _ => {}
        }
    }
    let entry_id: Arc<str> = String::from_utf8_lossy(entry_id).into();
    let job_id: Arc<str> = job_id.unwrap_or_else(|| entry_id.to_string()).into();
    let delivery = Delivery {
        entry_id,
        job_id,
        idem_key,
    };
    match serde_json::from_slice::<T>(payload.as_deref().unwrap_or_default()) {
        Ok(args) => Some({
            shared.hold(&delivery.entry_id);
            TaskBuilder::new(args)
                .task_id(TaskId::from_string(&*delivery.job_id))
                .attempt(attempts)
                .max_attempts(shared.config.max_attempts)
                .data(delivery)
                .build()
        }),
        Err(e) => {
            tracing::error!(job = %delivery.job_id, error = %e, "undecodable job payload; moving it to dead");
            let _ = acks.send(AckMsg::Settle(Settlement {
                delivery,
                outcome: Outcome::Dead {
                    attempts,
                    error: format!("undecodable payload: {e}"),
                },
            }));
            None
        }
    }
}

/// Walks an `XREADGROUP` reply (RESP2 arrays or RESP3 maps) without building a `HashMap`
/// per entry; `f` gets the stream's key, the entry id and the fields.
fn for_each_entry(reply: Value, mut f: impl FnMut(&[u8], &[u8], Vec<Value>)) {
    let streams = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(kv) if kv.len() == 2 => {
                    let mut kv = kv.into_iter();
                    Some((kv.next()?, kv.next()?))
                }
                _ => None,
            })
            .collect::<Vec<_>>(),
        Value::Map(kv) => kv,
        _ => return,
    };
    for (stream, entries) in streams {
        let (Value::BulkString(stream), Value::Array(entries)) = (stream, entries) else {
            continue;
        };
        for entry in entries {
            let Value::Array(mut parts) = entry else {
                continue;
            };
            if parts.len() != 2 {
                continue;
            }
            let fields = parts.pop();
            let id = parts.pop();
            match (id, fields) {
                (Some(Value::BulkString(id)), Some(Value::Array(fields))) => {
                    f(&stream, &id, fields)
                }
                // an entry deleted while still pending (only an explicit-id read shows one)
                (Some(Value::BulkString(id)), Some(Value::Nil)) => f(&stream, &id, Vec::new()),
                _ => {}
            }
        }
    }
}
