//! Test support: a real Redis (never mocked), unique key prefixes, and a test job type.

#![allow(dead_code)]

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use apalis::prelude::*;
use apalis_core::error::AbortError;
use herald_queue_redis::{Config, RedisQueue};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub fn redis_url() -> String {
    std::env::var("HERALD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn unique_prefix(test: &str) -> String {
    format!("t-{test}-{}", ulid::Ulid::generate())
}

/// Connects to the test Redis, failing with instructions when it is not running.
pub async fn queue(test: &str) -> RedisQueue {
    queue_at(&redis_url(), &unique_prefix(test)).await
}

pub async fn queue_at(url: &str, prefix: &str) -> RedisQueue {
    match tokio::time::timeout(Duration::from_secs(5), RedisQueue::connect(url, prefix)).await {
        Ok(Ok(q)) => q,
        Ok(Err(e)) => panic!("{}", unreachable(url, &e.to_string())),
        Err(_) => panic!("{}", unreachable(url, "timed out")),
    }
}

fn unreachable(url: &str, why: &str) -> String {
    format!(
        "cannot reach Redis at {url} ({why}). These tests need a real Redis 7: start one with \
         `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no` \
         or point HERALD_TEST_REDIS_URL at one"
    )
}

/// Deletes every key of the test's prefix.
pub async fn cleanup(q: &RedisQueue) {
    let mut conn = q.conn().shared();
    let keys: Vec<String> = conn
        .keys(format!("{}:*", q.prefix()))
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: () = conn.del(keys).await.unwrap();
    }
}

pub async fn keys_of(q: &RedisQueue) -> Vec<String> {
    let mut keys: Vec<String> = q
        .conn()
        .shared()
        .keys(format!("{}:*", q.prefix()))
        .await
        .unwrap();
    keys.sort();
    keys
}

/// Polls `cond` every 10 ms until it holds, or panics after `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    Ok,
    Fail,
    Abort,
    SleepMs(u64),
    /// Fails after this many ms until healed.
    SlowFail(u64),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub n: u64,
    pub mode: Mode,
}

impl Job {
    pub fn ok(n: u64) -> Self {
        Self { n, mode: Mode::Ok }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Started {
    pub n: u64,
    pub at: Instant,
    pub attempt: usize,
}

/// What the test handler reports to, and how it behaves.
pub struct Ctx {
    pub started: mpsc::UnboundedSender<Started>,
    /// Failing jobs succeed once healed (to test replay).
    pub healed: AtomicBool,
    /// Every job hangs (the worker that will be killed).
    pub hang: bool,
    /// Records job starts in a Redis list, for a parent process to watch.
    pub log: Option<(redis::aio::ConnectionManager, String)>,
}

impl Ctx {
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<Started>) {
        let (started, rx) = mpsc::unbounded_channel();
        let ctx = Self {
            started,
            healed: AtomicBool::new(false),
            hang: false,
            log: None,
        };
        (Arc::new(ctx), rx)
    }
}

pub async fn handle(job: Job, attempt: Attempt, ctx: Data<Arc<Ctx>>) -> Result<(), BoxDynError> {
    let _ = ctx.started.send(Started {
        n: job.n,
        at: Instant::now(),
        attempt: attempt.current(),
    });
    if let Some((conn, key)) = &ctx.log {
        let _: () = conn.clone().rpush(key, job.n).await?;
    }
    if ctx.hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    match job.mode {
        Mode::Ok => Ok(()),
        Mode::Fail if ctx.healed.load(Ordering::SeqCst) => Ok(()),
        Mode::Fail => Err(format!("job {} failed", job.n).into()),
        Mode::Abort => Err(AbortError::new(std::io::Error::other("needs reauth")).into()),
        Mode::SleepMs(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(())
        }
        Mode::SlowFail(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if ctx.healed.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(format!("job {} failed", job.n).into())
            }
        }
    }
}

/// A running worker; `stop` shuts it down gracefully.
pub struct RunningWorker {
    stop: Option<oneshot::Sender<()>>,
    pub handle: tokio::task::JoinHandle<Result<(), WorkerError>>,
}

impl RunningWorker {
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let res = tokio::time::timeout(Duration::from_secs(20), &mut self.handle)
            .await
            .expect("worker did not shut down");
        res.expect("worker panicked").expect("worker failed");
    }
}

pub fn start_worker(
    q: &RedisQueue,
    config: Config,
    name: &str,
    concurrency: usize,
    ctx: Arc<Ctx>,
) -> RunningWorker {
    let worker = WorkerBuilder::new(format!("{name}-{}", std::process::id()))
        .backend(q.storage::<Job>(config))
        .data(ctx)
        .concurrency(concurrency)
        .build(handle);
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
        Ok::<(), std::io::Error>(())
    }));
    RunningWorker {
        stop: Some(stop),
        handle,
    }
}

/// Waits until `n` workers have registered their lease.
pub async fn wait_workers(q: &RedisQueue, queue: &str, n: usize) {
    let key = format!("{}:{{{queue}}}:workers", q.prefix());
    let mut conn = q.conn().shared();
    wait_for("workers to register", Duration::from_secs(10), || {
        let key = key.clone();
        let mut conn = conn.clone();
        async move { conn.zcard::<_, usize>(&key).await.unwrap_or(0) >= n }
    })
    .await;
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
}

/// A throwaway redis-server on a free port, with a fsynced append-only file, so a
/// restart keeps every acknowledged write.
pub struct TempRedis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl TempRedis {
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("herald-redis-{port}-{}", ulid::Ulid::generate()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Self {
            port,
            dir,
            child: None,
        };
        r.spawn();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Ok(c) = redis::Client::open(self.url())
                && let Ok(mut conn) = c.get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "temp redis did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, then start again on the same port and data directory.
    pub fn crash_and_restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for TempRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
