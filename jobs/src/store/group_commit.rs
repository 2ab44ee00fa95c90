//! Group commit: writes of one kind that many workers make at once go to the database together.
//!
//! A worker running 1,000 shares at once finishes (and, on Redis, claims) shares one by one, and
//! each of those writes used to be a transaction of its own: most of what Postgres spent per share
//! was the commit, not the statement. Here the first caller starts a task that takes every request
//! waiting at that moment (up to [`MAX_BATCH`]) and runs them together; requests that arrive
//! meanwhile wait for the next round. No timer: an idle store writes a lone request at once, a
//! busy one batches exactly as much as piled up during the previous round.
//!
//! On Postgres a few rounds may run at once (`lanes`): a round is a series of round trips, and
//! one round at a time would cap a process at what one connection can do in sequence. A further
//! round starts only once half a round's worth is waiting ([`LANE_BACKLOG`]), so that moderate
//! load still makes full rounds.
//!
//! Each request keeps its own answer (a compare-and-set stays per share). If a batch fails as a
//! whole, its requests run again one by one, so one request's failure is never another's.
//! The task is spawned, so a caller that stops waiting (a cancelled job) cannot cut a batch
//! short for the others.

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::sync::oneshot;

use super::{Pool, Result, StoreError};

/// The most requests one round takes: bounds how long a round holds its transaction.
pub(crate) const MAX_BATCH: usize = 128;

/// How many requests must be waiting, with a round already running, before another round starts
/// beside it. A round that starts for every newcomer splits the load into rounds of one or two,
/// each a transaction: at 512 shares in flight that cost Postgres 0.42 ms per share against 0.28
/// with this threshold (benches/README.md). Below it the waiting requests go with the next round.
pub(crate) const LANE_BACKLOG: usize = MAX_BATCH / 2;

/// Writes a batch in one transaction; one answer per request, in order.
pub(crate) type Together<Req, Resp> =
    for<'a> fn(&'a Pool, &'a [Req]) -> BoxFuture<'a, Result<Vec<Resp>>>;

/// Runs `together` on the whole batch; if that fails, on each request alone, so one request's
/// failure is never another's. `what` names the requests in the log.
pub(crate) async fn together_or_alone<Req, Resp>(
    pool: &Pool,
    requests: &[Req],
    together: Together<Req, Resp>,
    what: &str,
) -> Vec<Result<Resp>> {
    if requests.len() > 1 {
        match together(pool, requests).await {
            Ok(answers) => return answers.into_iter().map(Ok).collect(),
            Err(e) => {
                tracing::warn!(error = %e, n = requests.len(), "writing {what} together failed; writing each alone")
            }
        }
    }
    let mut answers = Vec::with_capacity(requests.len());
    for r in requests {
        let one = together(pool, std::slice::from_ref(r)).await;
        answers.push(one.and_then(|mut a| {
            a.pop()
                .ok_or_else(|| StoreError::Corrupt(format!("no answer for one of the {what}")))
        }));
    }
    answers
}

/// Runs a batch; one answer per request, in order.
pub(crate) type RunBatch<Req, Resp> = fn(Pool, Vec<Req>) -> BoxFuture<'static, Vec<Result<Resp>>>;

pub(crate) struct GroupCommit<Req, Resp> {
    run: RunBatch<Req, Resp>,
    /// Rounds that may run at once: one on SQLite (one writer at a time), a few on Postgres,
    /// where a round's statements are round trips that another round can overlap.
    lanes: usize,
    state: Mutex<Waiting<Req, Resp>>,
}

type Reply<Resp> = oneshot::Sender<Result<Resp>>;

struct Waiting<Req, Resp> {
    requests: Vec<(Req, Reply<Resp>)>,
    /// Rounds running now.
    draining: usize,
}

impl<Req, Resp> std::fmt::Debug for GroupCommit<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> GroupCommit<Req, Resp> {
    pub(crate) fn new(run: RunBatch<Req, Resp>, lanes: usize) -> Arc<Self> {
        Arc::new(Self {
            run,
            lanes: lanes.max(1),
            state: Mutex::new(Waiting {
                requests: Vec::new(),
                draining: 0,
            }),
        })
    }

    /// Writes `request` with whatever else is waiting and returns its own answer.
    pub(crate) async fn submit(self: &Arc<Self>, pool: &Pool, request: Req) -> Result<Resp> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut waiting = self.state.lock().expect("group commit lock");
            waiting.requests.push((request, reply));
            let start = waiting.draining == 0
                || (waiting.draining < self.lanes && waiting.requests.len() >= LANE_BACKLOG);
            if start {
                waiting.draining += 1;
            }
            start
        };
        if start {
            tokio::spawn(Arc::clone(self).drain(pool.clone()));
        }
        answer.await.map_err(|_| StoreError::GroupCommitLost)?
    }

    async fn drain(self: Arc<Self>, pool: Pool) {
        let mut guard = Drain {
            owner: &self,
            armed: true,
        };
        loop {
            let batch = {
                let mut waiting = self.state.lock().expect("group commit lock");
                if waiting.requests.is_empty() {
                    waiting.draining -= 1;
                    guard.armed = false;
                    return;
                }
                let n = waiting.requests.len().min(MAX_BATCH);
                waiting.requests.drain(..n).collect::<Vec<_>>()
            };
            let (requests, replies): (Vec<Req>, Vec<Reply<Resp>>) = batch.into_iter().unzip();
            let answers = (self.run)(pool.clone(), requests).await;
            for (reply, answer) in replies.into_iter().zip(answers) {
                // The caller may have stopped waiting; its write stands all the same.
                let _ = reply.send(answer);
            }
        }
    }
}

/// Lets the next caller start a round if this one ends early (a panic, or its runtime shutting
/// down): otherwise every later request would wait for a task that no longer exists.
struct Drain<'a, Req, Resp> {
    owner: &'a GroupCommit<Req, Resp>,
    armed: bool,
}

impl<Req, Resp> Drop for Drain<'_, Req, Resp> {
    fn drop(&mut self) {
        if self.armed
            && let Ok(mut waiting) = self.owner.state.lock()
        {
            waiting.draining = waiting.draining.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails any batch that holds a zero; otherwise doubles each request.
    fn doubles<'a>(_: &'a Pool, requests: &'a [u32]) -> BoxFuture<'a, Result<Vec<u32>>> {
        Box::pin(async move {
            if requests.contains(&0) {
                return Err(StoreError::Corrupt("zero".into()));
            }
            Ok(requests.iter().map(|r| r * 2).collect())
        })
    }

    fn batch(pool: Pool, requests: Vec<u32>) -> BoxFuture<'static, Vec<Result<u32>>> {
        Box::pin(async move { together_or_alone(&pool, &requests, doubles, "numbers").await })
    }

    async fn pool() -> Pool {
        Pool::Sqlite(sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap())
    }

    #[tokio::test]
    async fn one_failing_request_fails_alone() {
        let answers = together_or_alone(&pool().await, &[1, 0, 3], doubles, "numbers").await;
        assert_eq!(answers[0].as_ref().unwrap(), &2);
        assert!(answers[1].is_err());
        assert_eq!(answers[2].as_ref().unwrap(), &6);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_caller_gets_its_own_answer() {
        let group = GroupCommit::new(batch, 2);
        let pool = pool().await;
        let calls = (1..=500u32).map(|i| {
            let (group, pool) = (group.clone(), pool.clone());
            tokio::spawn(async move { (i, group.submit(&pool, i).await.unwrap()) })
        });
        for call in futures::future::join_all(calls).await {
            let (i, answer) = call.unwrap();
            assert_eq!(answer, i * 2);
        }
        // Every round ends once the queue is empty (it answers before it looks again).
        let idle = async {
            while group.state.lock().unwrap().draining > 0 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), idle)
            .await
            .expect("the rounds ended");
    }

    /// Holds every round of [`gated`] until the test lets it go.
    static GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

    fn gated(pool: Pool, requests: Vec<u32>) -> BoxFuture<'static, Vec<Result<u32>>> {
        Box::pin(async move {
            GATE.acquire().await.expect("the gate stays open").forget();
            batch(pool, requests).await
        })
    }

    /// Polls the group's state until `done` holds of it.
    async fn until(group: &GroupCommit<u32, u32>, done: impl Fn(&Waiting<u32, u32>) -> bool) {
        let seen = async {
            while !done(&group.state.lock().unwrap()) {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), seen)
            .await
            .expect("the group reached the state");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_further_round_starts_only_for_half_a_round_waiting() {
        let group = GroupCommit::new(gated, 4);
        let pool = pool().await;
        let submit = |i: u32| {
            let (group, pool) = (group.clone(), pool.clone());
            tokio::spawn(async move { (i, group.submit(&pool, i).await.unwrap()) })
        };
        let mut calls = vec![submit(1)];
        // The first round took the lone request and waits at the gate.
        until(&group, |w| w.draining == 1 && w.requests.is_empty()).await;
        let below = LANE_BACKLOG as u32 - 1;
        calls.extend((2..2 + below).map(submit));
        until(&group, |w| w.requests.len() == below as usize).await;
        assert_eq!(
            group.state.lock().unwrap().draining,
            1,
            "a backlog below the threshold waits"
        );
        calls.push(submit(2 + below));
        until(&group, |w| w.draining == 2).await;
        GATE.add_permits(1_000);
        for call in futures::future::join_all(calls).await {
            let (i, answer) = call.unwrap();
            assert_eq!(answer, i * 2);
        }
    }
}
