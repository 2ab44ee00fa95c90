//! End-to-end tests against a real Redis (127.0.0.1:6379 or HERALD_TEST_REDIS_URL).

mod support;

use std::{
    collections::{HashMap, HashSet},
    process::{Command, Stdio},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use std::time::{SystemTime, UNIX_EPOCH};

use apalis::prelude::*;
use apalis_core::{
    backend::{FetchById, Filter, ListTasks},
    task::{status::Status, task_id::TaskId},
};
use futures::StreamExt;
use herald_queue_redis::Config;
use redis::AsyncCommands;
use support::*;

const QUEUE: &str = "share";
const CHILD_ENV: &str = "HERALD_QR_CHILD_PREFIX";

fn config(q: &herald_queue_redis::RedisQueue) -> Config {
    q.config(QUEUE)
}

async fn push_ok(q: &herald_queue_redis::RedisQueue, n: u64) {
    q.push(QUEUE, &Job::ok(n), None, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_wakes_an_idle_worker_at_once() {
    let q = queue("wake").await;
    let (ctx, mut started) = Ctx::new();
    let w = start_worker(&q, config(&q), "wake", 4, ctx);
    wait_workers(&q, QUEUE, 1).await;
    let mut pickups = Vec::new();
    for n in 0..20 {
        let t0 = Instant::now();
        push_ok(&q, n).await;
        let s = tokio::time::timeout(Duration::from_secs(5), started.recv())
            .await
            .expect("an idle worker did not pick up a push")
            .unwrap();
        assert_eq!(s.n, n);
        pickups.push(s.at - t0);
        tokio::time::sleep(Duration::from_millis(20)).await; // let the worker go idle again
    }
    pickups.sort();
    // a poller with the reference's 100 ms interval would show a median near 50 ms
    assert!(
        pickups[10] < Duration::from_millis(20),
        "median pickup {:?}",
        pickups[10]
    );
    w.stop().await;
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_in_push_order() {
    let q = queue("order").await;
    for n in 0..200 {
        push_ok(&q, n).await;
    }
    let (ctx, mut started) = Ctx::new();
    let w = start_worker(&q, config(&q), "order", 1, ctx);
    for n in 0..200 {
        assert_eq!(started.recv().await.unwrap().n, n);
    }
    w.stop().await;
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_jobs_become_due() {
    let q = queue("delay").await;
    let cfg = config(&q)
        .scheduler_tick(Duration::from_millis(100))
        .promote_batch(100);
    let (ctx, mut started) = Ctx::new();
    let w = start_worker(&q, cfg.clone(), "delay", 16, ctx);
    wait_workers(&q, QUEUE, 1).await;

    let t0 = Instant::now();
    q.push(QUEUE, &Job::ok(1), Some(Duration::from_millis(800)), None)
        .await
        .unwrap();
    assert_eq!(q.stats(QUEUE).await.unwrap().scheduled, 1);
    let s = started.recv().await.unwrap();
    let waited = s.at - t0;
    assert!(waited >= Duration::from_millis(790), "ran after {waited:?}");
    assert!(waited < Duration::from_millis(2000), "ran after {waited:?}");

    // through apalis' TaskSink, with run_after
    let mut sink = q.storage::<Job>(cfg);
    sink.push_task(
        TaskBuilder::new(Job::ok(2))
            .run_after(Duration::from_secs(1))
            .build(),
    )
    .await
    .unwrap();
    assert_eq!(started.recv().await.unwrap().n, 2);

    // thousands due at once are promoted in bounded batches
    let pushes = (100..3100).map(|n| {
        let q = q.clone();
        async move {
            q.push(QUEUE, &Job::ok(n), Some(Duration::from_millis(300)), None)
                .await
                .unwrap()
        }
    });
    futures::stream::iter(pushes)
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let mut seen = HashSet::new();
    while seen.len() < 3000 {
        let s = tokio::time::timeout(Duration::from_secs(20), started.recv())
            .await
            .expect("delayed jobs not promoted")
            .unwrap();
        assert!(seen.insert(s.n), "job {} ran twice", s.n);
    }
    w.stop().await;
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_job_due_before_all_others_wakes_a_blocked_reader() {
    let q = queue("wake-delay").await;
    // a reader blocks up to one tick; a long one shows whether a push cuts it short
    let tick = Duration::from_secs(10);
    let cfg = config(&q)
        .scheduler_tick(tick)
        .retry_delay(Duration::from_millis(300))
        .max_attempts(2);
    let (ctx, mut started) = Ctx::new();
    let w = start_worker(&q, cfg, "wake-delay", 4, ctx);
    // once a job has run, the reader has made its first promotion and sleeps a whole tick
    push_ok(&q, 0).await;
    assert_eq!(started.recv().await.unwrap().n, 0);

    // one job due much later, then one due before it
    q.push(QUEUE, &Job::ok(1), Some(Duration::from_secs(30)), None)
        .await
        .unwrap();
    let t0 = Instant::now();
    q.push(QUEUE, &Job::ok(2), Some(Duration::from_millis(300)), None)
        .await
        .unwrap();
    let s = tokio::time::timeout(tick, started.recv())
        .await
        .expect("the earlier job waited for the reader's tick")
        .unwrap();
    let waited = s.at - t0;
    assert_eq!(s.n, 2);
    assert!(waited >= Duration::from_millis(290), "ran after {waited:?}");
    assert!(waited < tick / 4, "ran after {waited:?}");

    // a retry due before the job that is still scheduled wakes the reader the same way
    let failing = Job {
        n: 3,
        mode: Mode::Fail,
    };
    q.push(QUEUE, &failing, None, None).await.unwrap();
    let first = started.recv().await.unwrap();
    let again = tokio::time::timeout(tick, started.recv())
        .await
        .expect("the retry waited for the reader's tick")
        .unwrap();
    assert_eq!((first.n, again.n, again.attempt), (3, 3, 2));
    let waited = again.at - first.at;
    assert!(
        waited >= Duration::from_millis(290),
        "retried after {waited:?}"
    );
    assert!(waited < tick / 4, "retried after {waited:?}");
    assert_eq!(
        q.stats(QUEUE).await.unwrap().scheduled,
        1,
        "job 1 still waits"
    );

    // the wake-ups leave nothing behind: acknowledged by the reader, its consumer gone on close
    let wake = format!("{}:{{{QUEUE}}}:wake", q.prefix());
    let mut conn = q.conn().shared();
    let (pending, ..): (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(&wake)
        .arg("workers")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending, 0, "wake-ups left unacknowledged");
    w.stop().await;
    let consumers: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&wake)
        .arg("workers")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(consumers.is_empty(), "a stopped worker left {consumers:?}");
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_makes_a_second_push_a_no_op() {
    let q = queue("idem")
        .await
        .with_idempotency_ttl(Duration::from_secs(1));
    let a = q
        .push(QUEUE, &Job::ok(1), None, Some("share-1"))
        .await
        .unwrap();
    let b = q
        .push(QUEUE, &Job::ok(1), None, Some("share-1"))
        .await
        .unwrap();
    assert_eq!(a, b, "a duplicate returns the first job's id");
    assert_eq!(q.stats(QUEUE).await.unwrap().ready, 1);

    // apalis' TaskBuilder::idempotency_key goes through the same check
    let mut sink = q.storage::<Job>(config(&q).idempotency_ttl(Duration::from_secs(1)));
    for _ in 0..2 {
        sink.push_task(
            TaskBuilder::new(Job::ok(2))
                .idempotency_key("share-2")
                .build(),
        )
        .await
        .unwrap();
    }
    assert_eq!(q.stats(QUEUE).await.unwrap().ready, 2);

    // once the TTL lapses the key is free again
    let key = format!("{}:{{{QUEUE}}}:idem:share-1", q.prefix());
    wait_for(
        "the idempotency key to expire",
        Duration::from_secs(5),
        || {
            let mut conn = q.conn().shared();
            let key = key.clone();
            async move { !conn.exists::<_, bool>(&key).await.unwrap() }
        },
    )
    .await;
    let c = q
        .push(QUEUE, &Job::ok(1), None, Some("share-1"))
        .await
        .unwrap();
    assert_ne!(a, c);
    assert_eq!(q.stats(QUEUE).await.unwrap().ready, 3);
    cleanup(&q).await;
}

fn idem_key(q: &herald_queue_redis::RedisQueue, key: &str) -> String {
    format!("{}:{{{QUEUE}}}:idem:{key}", q.prefix())
}

/// The idempotency keys under the test's prefix.
async fn idem_keys(q: &herald_queue_redis::RedisQueue) -> Vec<String> {
    keys_of(q)
        .await
        .into_iter()
        .filter(|k| k.contains(":idem:"))
        .collect()
}

async fn push_keyed(
    q: &herald_queue_redis::RedisQueue,
    job: &Job,
    delay: Option<Duration>,
    key: &str,
) -> herald_queue_redis::Pushed {
    q.push_bytes(QUEUE, serde_json::to_vec(job).unwrap(), delay, Some(key))
        .await
        .unwrap()
}

async fn wait_key_released(q: &herald_queue_redis::RedisQueue, key: &str) {
    let key = idem_key(q, key);
    wait_for(
        &format!("{key} to be released"),
        Duration::from_secs(10),
        || {
            let mut conn = q.conn().shared();
            let key = key.clone();
            async move { !conn.exists::<_, bool>(&key).await.unwrap() }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_job_dedupes_while_pending_and_leaves_no_key_when_done() {
    let q = queue("idem-done").await;
    let mut conn = q.conn().shared();
    let day_ms = 24 * 3600 * 1000;

    // scheduled: deduplicated, and the key outlives the due time by the whole TTL
    let late = push_keyed(&q, &Job::ok(1), Some(Duration::from_millis(1500)), "late").await;
    assert!(!late.duplicate);
    let again = push_keyed(&q, &Job::ok(1), None, "late").await;
    assert_eq!((again.id.clone(), again.duplicate), (late.id.clone(), true));
    let pttl: i64 = conn.pttl(idem_key(&q, "late")).await.unwrap();
    assert!(pttl > day_ms, "the key expires {pttl} ms from now");

    // ready: deduplicated
    let now = push_keyed(&q, &Job::ok(2), None, "now").await;
    let again = push_keyed(&q, &Job::ok(2), None, "now").await;
    assert_eq!((again.id.clone(), again.duplicate), (now.id.clone(), true));
    let slow_job = Job {
        n: 3,
        mode: Mode::SleepMs(1500),
    };
    let slow = push_keyed(&q, &slow_job, None, "slow").await;
    push_ok(&q, 4).await;
    assert_eq!(q.stats(QUEUE).await.unwrap().ready, 3);

    let (ctx, mut started) = Ctx::new();
    let cfg = config(&q).scheduler_tick(Duration::from_millis(50));
    let w = start_worker(&q, cfg, "idem-done", 4, ctx);
    let mut runs: Vec<u64> = Vec::new();
    while runs.last() != Some(&3) {
        runs.push(started.recv().await.unwrap().n);
    }
    // in flight: deduplicated
    let again = push_keyed(&q, &slow_job, None, "slow").await;
    assert_eq!((again.id.clone(), again.duplicate), (slow.id.clone(), true));

    // done: the key is gone and the same key makes a new job
    wait_key_released(&q, "now").await;
    let next = push_keyed(&q, &Job::ok(2), None, "now").await;
    assert!(!next.duplicate && next.id != now.id, "{next:?}");
    wait_key_released(&q, "slow").await;
    let next = push_keyed(&q, &Job::ok(3), None, "slow").await;
    assert!(!next.duplicate && next.id != slow.id, "{next:?}");
    wait_key_released(&q, "late").await;
    let next = push_keyed(&q, &Job::ok(1), None, "late").await;
    assert!(!next.duplicate && next.id != late.id, "{next:?}");

    wait_for("every job to finish", Duration::from_secs(10), || async {
        let s = q.stats(QUEUE).await.unwrap();
        s.ready + s.running + s.scheduled == 0 && idem_keys(&q).await.is_empty()
    })
    .await;
    while let Ok(s) = started.try_recv() {
        runs.push(s.n);
    }
    runs.sort_unstable();
    assert_eq!(
        runs,
        [1, 1, 2, 2, 3, 3, 4],
        "each job once, and each new one"
    );
    // nothing per job remains: the streams and the live worker's lease
    let base = format!("{}:{{{QUEUE}}}", q.prefix());
    assert_eq!(
        keys_of(&q).await,
        vec![
            format!("{base}:stream"),
            format!("{base}:wake"),
            format!("{base}:workers")
        ]
    );
    w.stop().await;
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_job_keeps_its_key_until_it_succeeds() {
    // through the scheduled set, and straight back to the stream
    for (i, delay) in [Duration::from_millis(400), Duration::ZERO]
        .into_iter()
        .enumerate()
    {
        let q = queue(&format!("idem-retry-{i}")).await;
        // slow enough to be seen in flight, with 10 attempts of runway
        let fail = Job {
            n: 1,
            mode: Mode::SlowFail(300),
        };
        let first = push_keyed(&q, &fail, None, "retry").await;
        let (ctx, mut started) = Ctx::new();
        let cfg = config(&q)
            .max_attempts(10)
            .retry_delay(delay)
            .scheduler_tick(Duration::from_millis(50));
        let w = start_worker(&q, cfg.clone(), "idem-retry", 1, ctx.clone());
        assert_eq!(started.recv().await.unwrap().attempt, 1);
        if !delay.is_zero() {
            wait_for(
                "the retry to be scheduled",
                Duration::from_secs(5),
                || async { q.stats(QUEUE).await.unwrap().scheduled == 1 },
            )
            .await;
            // the scheduled copy carries its key and still lists as the job
            let mut storage = q.storage::<Job>(cfg.clone());
            let t = storage
                .fetch_by_id(&TaskId::from_string(first.id.as_str()))
                .await
                .unwrap()
                .expect("the retry is listed");
            assert_eq!((t.args.n, t.ctx().attempt()), (1, 1));
            let again = push_keyed(&q, &fail, None, "retry").await;
            assert_eq!(
                (again.id.clone(), again.duplicate),
                (first.id.clone(), true)
            );
        }
        assert_eq!(started.recv().await.unwrap().attempt, 2);
        let again = push_keyed(&q, &fail, None, "retry").await;
        assert_eq!(
            (again.id.clone(), again.duplicate),
            (first.id.clone(), true),
            "retry delay {delay:?}"
        );
        ctx.healed.store(true, Ordering::SeqCst);
        wait_key_released(&q, "retry").await;
        assert!(idem_keys(&q).await.is_empty());
        let mut attempts = vec![1, 2];
        while let Ok(s) = started.try_recv() {
            attempts.push(s.attempt);
        }
        // attempt 2, or a later one, succeeded (healed while it ran, or after)
        assert_eq!(attempts, (1..=attempts.len()).collect::<Vec<_>>());
        let next = push_keyed(&q, &Job::ok(2), None, "retry").await;
        assert!(!next.duplicate && next.id != first.id, "{next:?}");
        assert_eq!(started.recv().await.unwrap().n, 2);
        wait_key_released(&q, "retry").await;
        w.stop().await;
        cleanup(&q).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_job_releases_its_key_and_a_replay_takes_it_back_if_free() {
    let q = queue("idem-dead").await;
    let fail = Job {
        n: 1,
        mode: Mode::Fail,
    };
    let abort = Job {
        n: 2,
        mode: Mode::Abort,
    };
    let failed = push_keyed(&q, &fail, None, "fail").await;
    let aborted = push_keyed(&q, &abort, None, "abort").await;
    let (ctx, _started) = Ctx::new();
    let cfg = config(&q)
        .max_attempts(2)
        .retry_delay(Duration::from_millis(50))
        .scheduler_tick(Duration::from_millis(50));
    let w = start_worker(&q, cfg, "idem-dead", 2, ctx);
    wait_for("both jobs to die", Duration::from_secs(10), || async {
        q.stats(QUEUE).await.unwrap().dead == 2
    })
    .await;
    w.stop().await;
    assert!(idem_keys(&q).await.is_empty(), "{:?}", idem_keys(&q).await);

    // the key is free: a push makes a new job
    let next = push_keyed(&q, &Job::ok(2), None, "abort").await;
    assert!(!next.duplicate && next.id != aborted.id, "{next:?}");
    // a replay takes its key back only if nobody has taken it since
    assert!(q.replay_dead(QUEUE, failed.id.as_str()).await.unwrap());
    let again = push_keyed(&q, &fail, None, "fail").await;
    assert_eq!(
        (again.id.clone(), again.duplicate),
        (failed.id.clone(), true)
    );
    assert!(q.replay_dead(QUEUE, aborted.id.as_str()).await.unwrap());
    let holder: String = q.conn().shared().get(idem_key(&q, "abort")).await.unwrap();
    assert_eq!(holder, next.id.as_str());
    assert_eq!(q.stats(QUEUE).await.unwrap().ready, 3);
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reclaimed_job_keeps_its_key_and_a_buried_one_releases_it() {
    let q = queue("idem-reclaim").await;
    let base = format!("{}:{{{QUEUE}}}", q.prefix());
    let mut conn = q.conn().shared();
    let kept = push_keyed(&q, &Job::ok(1), None, "kept").await;
    let mut sink = q.storage::<Job>(config(&q));
    sink.push_task(
        TaskBuilder::new(Job::ok(2))
            .idempotency_key("buried")
            .attempt(2)
            .build(),
    )
    .await
    .unwrap();

    // a worker takes both, then vanishes without a heartbeat
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(format!("{base}:stream"))
        .arg("workers")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers")
        .arg("ghost~1")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(format!("{base}:stream"))
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = conn
        .zadd(format!("{base}:workers"), "ghost~1", 1)
        .await
        .unwrap();
    assert_eq!(q.stats(QUEUE).await.unwrap().running, 2);
    let again = push_keyed(&q, &Job::ok(1), None, "kept").await;
    assert_eq!((again.id.clone(), again.duplicate), (kept.id.clone(), true));

    // the heartbeat takes them back: one with an attempt left runs, the other is buried
    let (ctx, mut started) = Ctx::new();
    let cfg = config(&q).max_attempts(3).lease(Duration::from_millis(600));
    let w = start_worker(&q, cfg, "idem-reclaim", 2, ctx);
    let s = started.recv().await.unwrap();
    assert_eq!((s.n, s.attempt), (1, 2), "the lapsed lease counted");
    wait_for(
        "both keys to be released",
        Duration::from_secs(10),
        || async { idem_keys(&q).await.is_empty() && q.stats(QUEUE).await.unwrap().dead == 1 },
    )
    .await;
    assert!(started.try_recv().is_err(), "the buried job never ran");
    w.stop().await;
    let next = push_keyed(&q, &Job::ok(2), None, "buried").await;
    assert!(!next.duplicate);
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_aborted_jobs_go_dead_and_replay() {
    let q = queue("dead").await;
    let cfg = config(&q)
        .max_attempts(3)
        .retry_delay(Duration::from_millis(50))
        .scheduler_tick(Duration::from_millis(50))
        .done_retention(Duration::from_secs(60));
    let fail = q
        .push(
            QUEUE,
            &Job {
                n: 1,
                mode: Mode::Fail,
            },
            None,
            None,
        )
        .await
        .unwrap();
    let abort = q
        .push(
            QUEUE,
            &Job {
                n: 2,
                mode: Mode::Abort,
            },
            None,
            None,
        )
        .await
        .unwrap();
    let (ctx, mut started) = Ctx::new();
    let w = start_worker(&q, cfg, "dead", 4, ctx.clone());
    wait_for("both jobs to die", Duration::from_secs(10), || async {
        q.stats(QUEUE).await.unwrap().dead == 2
    })
    .await;
    let mut runs: HashMap<u64, Vec<usize>> = HashMap::new();
    while let Ok(s) = started.try_recv() {
        runs.entry(s.n).or_default().push(s.attempt);
    }
    assert_eq!(
        runs[&1],
        vec![1, 2, 3],
        "a failing job runs max_attempts times"
    );
    assert_eq!(runs[&2], vec![1], "an aborted job is not retried");

    let dead = q.list_dead(QUEUE, 0, 10).await.unwrap();
    assert_eq!(dead.len(), 2);
    let by_id: HashMap<_, _> = dead.iter().map(|d| (d.id.clone(), d)).collect();
    assert_eq!(by_id[&fail].attempts, 3);
    assert!(
        by_id[&fail].last_error.contains("job 1 failed"),
        "{:?}",
        by_id[&fail]
    );
    assert_eq!(by_id[&fail].payload["n"], 1);
    assert_eq!(by_id[&abort].attempts, 1);
    assert!(
        by_id[&abort].last_error.contains("needs reauth"),
        "{:?}",
        by_id[&abort]
    );
    // paging
    assert_eq!(q.list_dead(QUEUE, 1, 10).await.unwrap().len(), 1);
    assert_eq!(q.list_dead(QUEUE, 0, 1).await.unwrap()[0].id, dead[0].id);

    ctx.healed.store(true, Ordering::SeqCst);
    assert!(q.replay_dead(QUEUE, fail.as_str()).await.unwrap());
    assert!(
        !q.replay_dead(QUEUE, fail.as_str()).await.unwrap(),
        "replayed twice"
    );
    let s = started.recv().await.unwrap();
    assert_eq!(
        (s.n, s.attempt),
        (1, 1),
        "a replay starts a fresh attempt budget"
    );
    wait_for(
        "the replayed job to finish",
        Duration::from_secs(5),
        || async { q.finished_at(QUEUE, fail.as_str()).await.unwrap().is_some() },
    )
    .await;
    assert_eq!(q.stats(QUEUE).await.unwrap().dead, 1);
    w.stop().await;
    cleanup(&q).await;
}

fn filter(status: Option<Status>, page: u32, page_size: u32) -> Filter {
    Filter {
        status,
        page,
        page_size: Some(page_size),
    }
}

fn ns(tasks: &[Task<serde_json::Value>]) -> Vec<u64> {
    tasks
        .iter()
        .map(|t| t.args["n"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apalis_tools_list_and_fetch_jobs_in_every_state() {
    let q = queue("tools").await;
    let stream = format!("{}:{{{QUEUE}}}:stream", q.prefix());
    let mut conn = q.conn().shared();

    // dead: aborted by a worker, which then stops
    let abort = Job {
        n: 20,
        mode: Mode::Abort,
    };
    let dead = q.push(QUEUE, &abort, None, None).await.unwrap();
    let (ctx, _started) = Ctx::new();
    let w = start_worker(&q, config(&q), "tools", 1, ctx);
    wait_for("the job to die", Duration::from_secs(10), || async {
        q.stats(QUEUE).await.unwrap().dead == 1
    })
    .await;
    w.stop().await;

    // running: leased by a consumer that reads like a worker
    let running = q.push(QUEUE, &Job::ok(30), None, None).await.unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers")
        .arg("tester~1")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();

    // waiting: three ready, then two delayed (one a retry with two attempts made)
    let mut ready = Vec::new();
    for n in 1..=3 {
        ready.push(q.push(QUEUE, &Job::ok(n), None, None).await.unwrap());
    }
    q.push(QUEUE, &Job::ok(10), Some(Duration::from_secs(60)), None)
        .await
        .unwrap();
    let mut storage = q.storage::<Job>(config(&q));
    storage
        .push_task(
            TaskBuilder::new(Job::ok(11))
                .task_id(TaskId::from_string("retry-11"))
                .attempt(2)
                .run_after(Duration::from_secs(120))
                .build(),
        )
        .await
        .unwrap();

    let waiting = storage.list_tasks(&filter(None, 1, 10)).await.unwrap();
    assert_eq!(
        ns(&waiting),
        [1, 2, 3, 10, 11],
        "ready in order, then by due time"
    );
    assert!(waiting.iter().all(|t| t.ctx().status() == Status::Pending));
    assert_eq!(
        waiting[0].ctx().task_id().unwrap().to_string(),
        ready[0].as_str()
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let due = waiting[3].ctx().run_at().unwrap();
    assert!((now + 55..=now + 65).contains(&due), "due {due}, now {now}");
    assert_eq!(waiting[4].ctx().attempt(), 2);
    let pending = Some(Status::Pending);
    assert_eq!(
        ns(&storage
            .list_tasks(&filter(pending.clone(), 2, 2))
            .await
            .unwrap()),
        [3, 10],
        "a page across ready and delayed jobs"
    );
    assert_eq!(
        ns(&storage
            .list_tasks(&filter(pending.clone(), 3, 2))
            .await
            .unwrap()),
        [11]
    );
    assert!(
        storage
            .list_tasks(&filter(pending, 4, 2))
            .await
            .unwrap()
            .is_empty()
    );

    let leased = storage
        .list_tasks(&filter(Some(Status::Running), 1, 10))
        .await
        .unwrap();
    assert_eq!(ns(&leased), [30]);
    assert_eq!(leased[0].ctx().status(), Status::Running);
    assert_eq!(leased[0].ctx().lock_by(), Some("tester~1"));

    let buried = storage
        .list_tasks(&filter(Some(Status::Killed), 1, 10))
        .await
        .unwrap();
    assert_eq!(ns(&buried), [20]);
    assert_eq!(
        buried[0].ctx().task_id().unwrap().to_string(),
        dead.as_str()
    );
    let error = buried[0].ctx().metadata().get("last_error").unwrap();
    assert!(error.contains("needs reauth"), "{error}");

    for status in [Status::Queued, Status::Done, Status::Failed] {
        let none = storage
            .list_tasks(&filter(Some(status.clone()), 1, 10))
            .await
            .unwrap();
        assert!(none.is_empty(), "{status} lists {:?}", ns(&none));
    }

    // by id, wherever the job is
    let fetch = |id: String| {
        let mut storage = storage.clone();
        async move { storage.fetch_by_id(&TaskId::from_string(id)).await.unwrap() }
    };
    let t = fetch(ready[1].to_string()).await.unwrap();
    assert_eq!((t.args.n, t.ctx().status()), (2, Status::Pending));
    let t = fetch("retry-11".into()).await.unwrap();
    assert_eq!((t.args.n, t.ctx().attempt()), (11, 2));
    let t = fetch(running.to_string()).await.unwrap();
    assert_eq!((t.args.n, t.ctx().status()), (30, Status::Running));
    let t = fetch(dead.to_string()).await.unwrap();
    assert_eq!((t.args.n, t.ctx().status()), (20, Status::Killed));
    assert!(fetch("no-such-job".into()).await.is_none());

    // a job behind more than one chunk of the stream
    let pushes = (100..1600).map(|n| {
        let q = q.clone();
        async move { q.push(QUEUE, &Job::ok(n), None, None).await.unwrap() }
    });
    futures::stream::iter(pushes)
        .buffered(64)
        .collect::<Vec<_>>()
        .await;
    let last = q.push(QUEUE, &Job::ok(1600), None, None).await.unwrap();
    assert_eq!(fetch(last.to_string()).await.unwrap().args.n, 1600);
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_expire_after_retention() {
    let q = queue("retention").await;
    let cfg = config(&q)
        .done_retention(Duration::from_secs(1))
        .dead_retention(Duration::from_secs(1))
        .lease(Duration::from_millis(900));
    let done = q.push(QUEUE, &Job::ok(1), None, None).await.unwrap();
    let dead = q
        .push(
            QUEUE,
            &Job {
                n: 2,
                mode: Mode::Abort,
            },
            None,
            None,
        )
        .await
        .unwrap();
    let (ctx, _started) = Ctx::new();
    let w = start_worker(&q, cfg, "retention", 4, ctx);
    wait_for("both jobs to finish", Duration::from_secs(10), || async {
        q.finished_at(QUEUE, done.as_str()).await.unwrap().is_some()
            && q.stats(QUEUE).await.unwrap().dead == 1
    })
    .await;
    assert_eq!(q.list_dead(QUEUE, 0, 10).await.unwrap()[0].id, dead);
    wait_for(
        "finished jobs to expire",
        Duration::from_secs(10),
        || async {
            q.finished_at(QUEUE, done.as_str()).await.unwrap().is_none()
                && q.stats(QUEUE).await.unwrap().dead == 0
        },
    )
    .await;
    assert!(q.list_dead(QUEUE, 0, 10).await.unwrap().is_empty());
    // what remains is the (empty) job and wake-up streams and the live worker's lease
    let keys = keys_of(&q).await;
    let base = format!("{}:{{{QUEUE}}}", q.prefix());
    assert_eq!(
        keys,
        vec![
            format!("{base}:stream"),
            format!("{base}:wake"),
            format!("{base}:workers")
        ]
    );
    w.stop().await;
    let keys = keys_of(&q).await;
    assert_eq!(
        keys,
        vec![format!("{base}:stream"), format!("{base}:wake")],
        "a stopped worker leaves no lease"
    );
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_long_job_with_its_worker() {
    let q = queue("lease").await;
    let cfg = config(&q)
        .lease(Duration::from_millis(600))
        .done_retention(Duration::from_secs(60));
    let (ctx, mut started) = Ctx::new();
    let a = start_worker(&q, cfg.clone(), "lease-a", 2, ctx.clone());
    let b = start_worker(&q, cfg, "lease-b", 2, ctx);
    wait_workers(&q, QUEUE, 2).await;
    let id = q
        .push(
            QUEUE,
            &Job {
                n: 7,
                mode: Mode::SleepMs(2500),
            },
            None,
            None,
        )
        .await
        .unwrap();
    wait_for(
        "the long job to finish",
        Duration::from_secs(10),
        || async { q.finished_at(QUEUE, id.as_str()).await.unwrap().is_some() },
    )
    .await;
    let mut runs = 0;
    while started.try_recv().is_ok() {
        runs += 1;
    }
    assert_eq!(runs, 1, "a job ran twice while its worker was alive");
    a.stop().await;
    b.stop().await;
    cleanup(&q).await;
}

/// Not a test on its own: the worker process that `killed_workers_jobs_run_exactly_once` kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_worker_process() {
    let Ok(prefix) = std::env::var(CHILD_ENV) else {
        return;
    };
    let q = queue_at(&redis_url(), &prefix).await;
    let (started, _rx) = tokio::sync::mpsc::unbounded_channel();
    let ctx = Arc::new(Ctx {
        started,
        healed: Default::default(),
        hang: true,
        log: Some((q.conn().shared(), format!("{prefix}:child-log"))),
    });
    let cfg = config(&q).lease(Duration::from_secs(1)).prefetch(4);
    let w = start_worker(&q, cfg, "child", 4, ctx);
    let _ = w.handle.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_jobs_run_exactly_once() {
    let q = queue("sigkill").await;
    for n in 0..30 {
        push_ok(&q, n).await;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_worker_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, q.prefix())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let log = format!("{}:child-log", q.prefix());
    wait_for("the child to start 4 jobs", Duration::from_secs(30), || {
        let mut conn = q.conn().shared();
        let log = log.clone();
        async move { conn.llen::<_, usize>(&log).await.unwrap() >= 4 }
    })
    .await;
    let leased = q.stats(QUEUE).await.unwrap().running;
    assert!(leased >= 4, "child holds {leased} jobs");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let in_child: Vec<u64> = q.conn().shared().lrange(&log, 0, -1).await.unwrap();

    let (ctx, mut started) = Ctx::new();
    let w = start_worker(
        &q,
        config(&q).lease(Duration::from_secs(1)),
        "rescuer",
        8,
        ctx,
    );
    let mut runs: HashMap<u64, usize> = HashMap::new();
    while runs.len() < 30 {
        let s = tokio::time::timeout(Duration::from_secs(15), started.recv())
            .await
            .expect("the killed worker's jobs did not come back")
            .unwrap();
        *runs.entry(s.n).or_default() += 1;
    }
    wait_for("the queue to settle", Duration::from_secs(10), || async {
        let s = q.stats(QUEUE).await.unwrap();
        s.ready == 0 && s.running == 0 && s.scheduled == 0
    })
    .await;
    while let Ok(s) = started.try_recv() {
        *runs.entry(s.n).or_default() += 1;
    }
    for n in 0..30 {
        assert_eq!(
            runs.get(&n),
            Some(&1),
            "job {n} (started in child: {in_child:?})"
        );
    }
    assert_eq!(q.stats(QUEUE).await.unwrap().dead, 0);
    w.stop().await;
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100k_backlog_drains() {
    const N: u64 = 100_000;
    let q = queue("backlog").await;
    let pushes = (0..N).map(|n| {
        let q = q.clone();
        async move { q.push(QUEUE, &Job::ok(n), None, None).await.unwrap() }
    });
    futures::stream::iter(pushes)
        .buffer_unordered(128)
        .collect::<Vec<_>>()
        .await;
    assert_eq!(q.stats(QUEUE).await.unwrap().ready, N);
    let (ctx, mut started) = Ctx::new();
    let w = start_worker(&q, config(&q), "backlog", 16, ctx);
    let mut seen = vec![false; N as usize];
    for _ in 0..N {
        let s = tokio::time::timeout(Duration::from_secs(30), started.recv())
            .await
            .expect("backlog stalled")
            .unwrap();
        assert!(!seen[s.n as usize], "job {} ran twice", s.n);
        seen[s.n as usize] = true;
    }
    wait_for("the backlog to settle", Duration::from_secs(10), || async {
        let s = q.stats(QUEUE).await.unwrap();
        s.ready == 0 && s.running == 0
    })
    .await;
    // by default a finished job leaves no key behind
    let base = format!("{}:{{{QUEUE}}}", q.prefix());
    assert_eq!(
        keys_of(&q).await,
        ["stream", "wake", "workers"].map(|k| format!("{base}:{k}"))
    );
    w.stop().await;
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_lost_with_its_connection_is_delivered_again() {
    // A read that Redis executed but whose reply died with the connection (what a Redis
    // restart with AOF leaves behind): the entries are pending for a worker that is alive
    // and keeps its lease, so only the worker itself can give them back.
    let q = queue("lostread").await;
    let (ctx, mut started) = Ctx::new();
    let w = start_worker(
        &q,
        config(&q).lease(Duration::from_secs(60)),
        "lostread",
        4,
        ctx,
    );
    wait_workers(&q, QUEUE, 1).await;
    let base = format!("{}:{{{QUEUE}}}", q.prefix());
    let mut conn = q.conn().shared();
    let consumer: String = conn
        .zrange::<_, Vec<String>>(format!("{base}:workers"), 0, 0)
        .await
        .unwrap()
        .pop()
        .expect("the worker registered");
    let reader_name = format!("herald-reader:{consumer}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let reader = loop {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
            .unwrap();
        let found = list
            .lines()
            .find(|l| l.contains(&format!(" name={reader_name} ")) && l.contains("cmd=xreadgroup"))
            .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .map(str::to_owned);
        if let Some(id) = found {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "the worker's blocked read never showed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(reader)
        .exec_async(&mut conn)
        .await
        .unwrap();
    // before the worker reconnects (its first retry waits at least 50 ms): jobs pushed and
    // read in its name, the reply going nowhere
    for n in 0..5 {
        push_ok(&q, n).await;
    }
    let read: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers")
        .arg(&consumer)
        .arg("COUNT")
        .arg(100)
        .arg("STREAMS")
        .arg(format!("{base}:stream"))
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        !matches!(read, redis::Value::Nil),
        "the jobs were read in the worker's name"
    );
    let mut seen = HashSet::new();
    while seen.len() < 5 {
        let s = tokio::time::timeout(Duration::from_secs(10), started.recv())
            .await
            .unwrap_or_else(|_| panic!("lost reads never ran; ran {seen:?}"))
            .unwrap();
        assert!(seen.insert(s.n), "job {} ran twice", s.n);
    }
    wait_for(
        "the lost reads to settle",
        Duration::from_secs(10),
        || async {
            let s = q.stats(QUEUE).await.unwrap();
            s.ready == 0 && s.running == 0
        },
    )
    .await;
    assert!(started.try_recv().is_err(), "a job ran twice");
    w.stop().await;
    cleanup(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_no_acknowledged_job() {
    let mut redis = TempRedis::start();
    let q = queue_at(&redis.url(), "restart").await;
    let (ctx, mut started) = Ctx::new();
    let w = start_worker(
        &q,
        config(&q).lease(Duration::from_secs(2)),
        "restart",
        4,
        ctx,
    );
    wait_workers(&q, QUEUE, 1).await;

    let mut acknowledged = HashSet::new();
    for n in 0..3000u64 {
        if n == 1000 {
            redis.crash_and_restart();
        }
        let job = Job {
            n,
            mode: Mode::SleepMs(1),
        };
        if q.push(QUEUE, &job, None, None).await.is_ok() {
            acknowledged.insert(n);
        }
    }
    assert!(
        acknowledged.len() >= 2900,
        "only {} pushes succeeded",
        acknowledged.len()
    );
    let mut seen = HashSet::new();
    while !acknowledged.is_subset(&seen) {
        let s = tokio::time::timeout(Duration::from_secs(30), started.recv())
            .await
            .unwrap_or_else(|_| {
                let lost: Vec<_> = acknowledged.difference(&seen).take(10).collect();
                panic!("acknowledged jobs never ran, e.g. {lost:?}")
            })
            .unwrap();
        seen.insert(s.n);
    }
    assert!(!w.handle.is_finished(), "the worker died");
    // and it still takes new work
    push_ok(&q, 99_999).await;
    wait_for(
        "a job pushed after the restart",
        Duration::from_secs(10),
        || {
            let found = std::iter::from_fn(|| started.try_recv().ok()).any(|s| s.n == 99_999);
            async move { found }
        },
    )
    .await;
    assert!(q.ping().await.is_ok());
    w.stop().await;
}
