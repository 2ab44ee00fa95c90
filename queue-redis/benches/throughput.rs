//! The workload of `/work/shared/reference/queue-benchmarks.md`, for this backend and the
//! stock apalis-redis 1.0 side by side, on a throwaway redis-server.
//!
//! `cargo bench -p herald-queue-redis` (release). The worker runs as a child process (this
//! binary re-invoked), so its peak RSS is its own.

use std::{
    collections::HashMap,
    ffi::OsStr,
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use apalis::prelude::*;
use futures::StreamExt;
use herald_queue_redis::RedisQueue;
use serde::{Deserialize, Serialize};

const QUEUE: &str = "share";
const ROLE: &str = "HERALD_BENCH_ROLE";
const PROBES: u64 = 50;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Share {
    share_id: String,
    connection_id: u64,
    url: String,
    title: String,
    text: String,
}

/// A share-shaped job whose JSON is exactly 314 bytes.
fn share(i: u64) -> Share {
    let mut s = Share {
        share_id: format!("0190a5c2-7b1e-7c3d-9f2a-{i:012}"),
        connection_id: i,
        url: format!("https://example.com/post/{i}"),
        title: "A title of moderate length for a post".into(),
        text: String::new(),
    };
    let len = serde_json::to_vec(&s).unwrap().len();
    s.text = "x".repeat(314 - len);
    debug_assert_eq!(serde_json::to_vec(&s).unwrap().len(), 314);
    s
}

/// Time a process's threads spent on a core and waiting for one (ns), from
/// `/proc/<pid>/task/*/schedstat`: a cost per job that other load on the machine barely
/// changes, unlike the wall clock.
#[derive(Debug, Clone, Copy, Default)]
struct Sched {
    cpu_ns: u64,
    wait_ns: u64,
}

impl Sched {
    fn of(pid: u32) -> Self {
        let mut total = Self::default();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return total;
        };
        for task in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            let mut fields = text
                .split_whitespace()
                .map(|v| v.parse::<u64>().unwrap_or(0));
            total.cpu_ns += fields.next().unwrap_or(0);
            total.wait_ns += fields.next().unwrap_or(0);
        }
        total
    }

    fn since(self, earlier: &Self) -> Self {
        Self {
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
            wait_ns: self.wait_ns.saturating_sub(earlier.wait_ns),
        }
    }

    fn us_per(self, n: u64) -> (f64, f64) {
        (
            self.cpu_ns as f64 / 1e3 / n as f64,
            self.wait_ns as f64 / 1e3 / n as f64,
        )
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

// ---------------------------------------------------------------- worker process

struct Progress {
    n: u64,
    done: AtomicU64,
    first: OnceLock<(u128, Sched)>,
    /// When each tenth of the jobs had finished (ns), to see whether the rate drifts.
    tenths: [AtomicU64; 10],
}

async fn handler(job: Share, p: Data<Arc<Progress>>) -> Result<(), BoxDynError> {
    if job.connection_id >= p.n {
        // an idle-pickup probe: report the handler's first line
        let mut out = std::io::stdout().lock();
        writeln!(out, "S {} {}", job.connection_id, now_ns())?;
        out.flush()?;
        return Ok(());
    }
    p.first
        .get_or_init(|| (now_ns(), Sched::of(std::process::id())));
    let done = p.done.fetch_add(1, Ordering::SeqCst) + 1;
    if done.is_multiple_of(p.n.div_ceil(10)) || done == p.n {
        let tenth = ((done * 10).div_ceil(p.n) - 1).min(9) as usize;
        p.tenths[tenth].store(now_ns() as u64, Ordering::SeqCst);
    }
    if done == p.n {
        let (first, sched) = p.first.get().unwrap();
        let used = Sched::of(std::process::id()).since(sched);
        let tenths: Vec<String> = p
            .tenths
            .iter()
            .map(|t| t.load(Ordering::SeqCst).to_string())
            .collect();
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "DRAINED {first} {} {} {} {}",
            now_ns(),
            used.cpu_ns,
            used.wait_ns,
            tenths.join(" ")
        )?;
        out.flush()?;
    }
    Ok(())
}

fn worker_main() {
    let system = std::env::var("BENCH_SYSTEM").unwrap();
    let url = std::env::var("BENCH_URL").unwrap();
    let n: u64 = std::env::var("BENCH_N").unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let progress = Arc::new(Progress {
            n,
            done: AtomicU64::new(0),
            first: OnceLock::new(),
            tenths: Default::default(),
        });
        let name = format!("bench-{}", std::process::id());
        if system == "herald" {
            let q = RedisQueue::connect(url.as_str(), "bench").await.unwrap();
            let worker = WorkerBuilder::new(name)
                .backend(q.storage::<Share>(q.config(QUEUE)))
                .data(progress)
                .concurrency(16)
                .build(handler);
            worker.run().await.unwrap();
        } else {
            let conn = apalis_redis::connect(url.as_str()).await.unwrap();
            let storage = apalis_redis::RedisStorage::<Share>::new(conn)
                .with_config(apalis_config())
                .poll_with_interval(Duration::from_millis(100));
            let worker = WorkerBuilder::new(name)
                .backend(storage)
                .data(progress)
                .concurrency(16)
                .build(handler);
            worker.run().await.unwrap();
        }
    });
}

fn apalis_config() -> apalis_redis::Config {
    apalis_redis::Config::default().queue(QUEUE).batch_size(16)
}

// ---------------------------------------------------------------- orchestration

struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // e.g. `valgrind --tool=callgrind`: counts Redis' instructions per phase, whatever
        // else runs on the machine (each phase is dumped, see `Redis::dump`)
        let wrap = std::env::var("HERALD_BENCH_REDIS_WRAP").unwrap_or_default();
        let mut argv = wrap.split_whitespace().chain(["redis-server"]);
        let child = Command::new(argv.next().unwrap())
            .args(argv)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        let r = Self { port, child };
        for _ in 0..3000 {
            if let Ok(c) = redis::Client::open(r.url())
                && let Ok(mut conn) = c.get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("throwaway redis-server did not start");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn dump(&self, phase: &str) {
        callgrind_dump("HERALD_BENCH_REDIS_WRAP", self.child.id(), phase);
    }
}

/// Under callgrind (named in `wrap_var`), writes `pid`'s counts since its last dump,
/// labelled `phase`.
fn callgrind_dump(wrap_var: &str, pid: u32, phase: &str) {
    if std::env::var(wrap_var).is_ok_and(|w| w.contains("callgrind")) {
        let _ = Command::new("callgrind_control")
            .arg(format!("--dump={phase}"))
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .status();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Per-command calls and microseconds spent in them (commands run inside scripts included).
async fn command_stats(
    conn: &mut redis::aio::MultiplexedConnection,
) -> HashMap<String, (u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let mut fields = rest.split(',').filter_map(|f| f.split_once('='));
            let calls = fields.next()?.1.parse().ok()?;
            let usec = fields.next()?.1.parse().ok()?;
            Some((name.to_owned(), (calls, usec)))
        })
        .collect()
}

struct WorkerProc {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl WorkerProc {
    fn spawn(system: &str, url: &str, n: u64) -> Self {
        // like HERALD_BENCH_REDIS_WRAP, for the worker (dumped once drained)
        let wrap = std::env::var("HERALD_BENCH_WORKER_WRAP").unwrap_or_default();
        let exe = std::env::current_exe().unwrap();
        let mut argv = wrap
            .split_whitespace()
            .map(OsStr::new)
            .chain([exe.as_os_str()]);
        let mut child = Command::new(argv.next().unwrap())
            .args(argv)
            .env(ROLE, "worker")
            .env("BENCH_SYSTEM", system)
            .env("BENCH_URL", url)
            .env("BENCH_N", n.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    fn next_line(&self, timeout: Duration) -> String {
        self.lines
            .recv_timeout(timeout)
            .expect("the worker went silent")
    }

    fn peak_rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        kb / 1024.0
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default, Debug, Clone)]
struct Run {
    enqueue: Option<f64>,
    process: f64,
    cmds_sent: f64,
    cmds_all: f64,
    pickup_p50: Option<f64>,
    pickup_p99: Option<f64>,
    rss_mb: Option<f64>,
    /// Processing phase, µs per job: Redis on a core, Redis waiting for one, and the same
    /// for the worker process.
    redis_cpu: (f64, f64),
    worker_cpu: (f64, f64),
    /// Processing phase: µs per job spent inside each command, heaviest first.
    command_us: Vec<(String, f64)>,
    /// Process rate over each tenth of the jobs.
    tenths: Vec<f64>,
}

/// Pushes for one system; `sequential` awaits each push like an API handler does.
async fn enqueue(system: &str, url: &str, n: u64, sequential: bool) -> f64 {
    let t0 = Instant::now();
    if system == "herald" {
        let q = RedisQueue::connect(url, "bench").await.unwrap();
        if sequential {
            for i in 0..n {
                q.push(QUEUE, &share(i), None, None).await.unwrap();
            }
        } else {
            futures::stream::iter((0..n).map(|i| {
                let q = q.clone();
                async move { q.push(QUEUE, &share(i), None, None).await.unwrap() }
            }))
            .buffer_unordered(128)
            .collect::<Vec<_>>()
            .await;
        }
    } else {
        let conn = apalis_redis::connect(url).await.unwrap();
        let mut s =
            apalis_redis::RedisStorage::<Share>::new(conn.clone()).with_config(apalis_config());
        if sequential {
            for i in 0..n {
                s.push(share(i)).await.unwrap();
            }
        } else {
            for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
                s.push_bulk(chunk.iter().map(|&i| share(i)).collect())
                    .await
                    .unwrap();
            }
        }
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    if system == "apalis" {
        move_apalis_backlog_to_active(url).await;
    }
    rate
}

/// The stock backend's fetch script dies on ~8,000 due ids (`unpack`), so, as the
/// reference measurement did, its backlog is moved from the scheduled set to the active list.
async fn move_apalis_backlog_to_active(url: &str) {
    let cfg = apalis_config();
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(cfg.scheduled_jobs_set())
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    for chunk in ids.chunks(1000) {
        let _: () = redis::cmd("RPUSH")
            .arg(cfg.active_jobs_list())
            .arg(chunk)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let _: () = redis::cmd("DEL")
        .arg(cfg.scheduled_jobs_set())
        .query_async(&mut conn)
        .await
        .unwrap();
}

async fn run(system: &str, n: u64, full: bool) -> Run {
    let redis = Redis::start();
    let url = redis.url();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let mut r = Run::default();
    let before = command_stats(&mut admin).await;
    let rate = enqueue(system, &url, n, full).await;
    if full {
        r.enqueue = Some(rate);
    }
    let enqueued = command_stats(&mut admin).await;
    redis.dump(&format!("enqueued-{n}"));
    let redis_before = Sched::of(redis.child.id());
    let worker = WorkerProc::spawn(system, &url, n);
    // the producer is idle meanwhile, so blocking its one-thread runtime is harmless
    let drained = worker.next_line(Duration::from_secs(900));
    callgrind_dump(
        "HERALD_BENCH_WORKER_WRAP",
        worker.child.id(),
        &format!("worker-{n}"),
    );
    let mut parts = drained
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse::<u128>().unwrap());
    let (first, last) = (parts.next().unwrap(), parts.next().unwrap());
    let worker_used = Sched {
        cpu_ns: parts.next().unwrap() as u64,
        wait_ns: parts.next().unwrap() as u64,
    };
    r.process = n as f64 / ((last - first) as f64 / 1e9);
    let mut from = first;
    r.tenths = parts
        .map(|at| {
            let rate = (n as f64 / 10.0) / ((at.saturating_sub(from)).max(1) as f64 / 1e9);
            from = at;
            rate
        })
        .collect();
    r.redis_cpu = Sched::of(redis.child.id()).since(&redis_before).us_per(n);
    redis.dump(&format!("processed-{n}"));
    r.worker_cpu = worker_used.us_per(n);
    let after = command_stats(&mut admin).await;
    let mut command_us: Vec<(String, f64)> = after
        .iter()
        .map(|(name, (_, usec))| {
            let was = enqueued.get(name).map_or(0, |c| c.1);
            (name.clone(), (usec - was) as f64 / n as f64)
        })
        .filter(|(_, us)| *us >= 0.01)
        .collect();
    command_us.sort_by(|a, b| b.1.total_cmp(&a.1));
    r.command_us = command_us;
    let calls =
        |stats: &HashMap<String, (u64, u64)>, name: &str| stats.get(name).map_or(0, |c| c.0);
    let delta = |name: &str| calls(&after, name) - calls(&before, name);
    // minus our two INFOs and, for the stock backend, the backlog move (ZRANGE, RPUSHes, DEL)
    let moved = if system == "apalis" {
        2 + n.div_ceil(1000)
    } else {
        0
    };
    let all: u64 = after.keys().map(|k| delta(k)).sum::<u64>() - 2 - moved;
    // commands clients send; everything else ran inside a script
    let sent: u64 = [
        "evalsha",
        "eval",
        "xadd",
        "xreadgroup",
        "ping",
        "client|id",
        "xgroup|create",
    ]
    .iter()
    .map(|c| delta(c))
    .sum();
    r.cmds_all = all as f64 / n as f64;
    r.cmds_sent = sent as f64 / n as f64;

    if full {
        let mut pickups = Vec::new();
        let q = RedisQueue::connect(url.as_str(), "bench").await.unwrap();
        let mut stock = apalis_redis::RedisStorage::<Share>::new(
            apalis_redis::connect(url.as_str()).await.unwrap(),
        )
        .with_config(apalis_config());
        for k in 0..PROBES {
            let gap = 50 + (now_ns() % 101) as u64;
            tokio::time::sleep(Duration::from_millis(gap)).await;
            let id = n + k;
            let t0 = now_ns();
            if system == "herald" {
                q.push(QUEUE, &share(id), None, None).await.unwrap();
            } else {
                stock.push(share(id)).await.unwrap();
            }
            let line = worker.next_line(Duration::from_secs(60));
            let mut it = line.split_whitespace().skip(1);
            assert_eq!(it.next().unwrap().parse::<u64>().unwrap(), id);
            let at: u128 = it.next().unwrap().parse().unwrap();
            pickups.push((at.saturating_sub(t0)) as f64 / 1e6);
        }
        pickups.sort_by(f64::total_cmp);
        r.pickup_p50 = Some(pickups[pickups.len() / 2]);
        r.pickup_p99 = Some(pickups[(pickups.len() * 99).div_ceil(100) - 1]);
        r.rss_mb = Some(worker.peak_rss_mb());
    }
    drop(worker);
    drop(redis);
    r
}

fn main() {
    if std::env::var(ROLE).is_ok() {
        return worker_main();
    }
    // one sequential producer: a one-thread runtime spares it a cross-thread wake-up per push
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::var("HERALD_BENCH_ONLY").as_deref() == Ok("enqueue") {
        return rt.block_on(enqueue_probe());
    }
    if std::env::var("HERALD_BENCH_ONLY").as_deref() == Ok("backlog") {
        // back to back, alternating, to separate backlog cost from machine noise
        return rt.block_on(async {
            let backlogs = std::env::var("HERALD_BENCH_BACKLOGS")
                .unwrap_or_else(|_| "20000,200000,20000,200000".into());
            for n in backlogs.split(',').map(|n| n.trim().parse::<u64>().unwrap()) {
                let r = run("herald", n, false).await;
                let cmds = r
                    .command_us
                    .iter()
                    .take(6)
                    .map(|(c, us)| format!("{c} {us:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let tenths = r
                    .tenths
                    .iter()
                    .map(|t| format!("{:.0}", t / 1000.0))
                    .collect::<Vec<_>>()
                    .join(" ");
                println!(
                    "backlog {n}: {:.0} jobs/s (k/s by tenth: {tenths}); µs/job on a core (waiting for one): redis {:.2} ({:.2}), worker {:.2} ({:.2}); in commands: {cmds}",
                    r.process, r.redis_cpu.0, r.redis_cpu.1, r.worker_cpu.0, r.worker_cpu.1
                );
            }
        });
    }
    rt.block_on(async {
        println!("N = 20,000 jobs of 314 B JSON, one worker process, 16 in flight, no-op handler, fresh redis-server per run");
        let ceiling = sequential_ceiling();
        println!("redis-benchmark, one sequential client, XADD of 314 B, right now: {ceiling:.0} requests/s");
        let herald = run("herald", 20_000, true).await;
        let apalis = run("apalis", 20_000, true).await;
        let fmt = |v: Option<f64>, d: usize| v.map_or("-".into(), |v| format!("{v:.d$}"));
        println!("\n| system | enqueue jobs/s | process jobs/s | cmds/job sent / incl. scripts | idle pickup p50 / p99 ms | worker peak RSS MB |");
        println!("|---|---|---|---|---|---|");
        for (name, r) in [("herald-queue-redis", &herald), ("apalis-redis 1.0, poll 100 ms", &apalis)] {
            println!(
                "| {name} | {} | {:.0} | {:.2} / {:.2} | {} / {} | {} |",
                fmt(r.enqueue, 0),
                r.process,
                r.cmds_sent,
                r.cmds_all,
                fmt(r.pickup_p50, 2),
                fmt(r.pickup_p99, 2),
                fmt(r.rss_mb, 1)
            );
        }
        println!(
            "\nenqueue vs the one-client ceiling: herald {:.0}%, apalis-redis {:.0}%",
            herald.enqueue.unwrap() / ceiling * 100.0,
            apalis.enqueue.unwrap() / ceiling * 100.0
        );
        println!("\nprocess jobs/s by backlog (jobs enqueued before the worker starts), and CPU per job on a core (waiting for one) while processing:");
        println!("| backlog | herald-queue-redis | its Redis µs/job | its worker µs/job | apalis-redis 1.0 |");
        println!("|---|---|---|---|---|");
        let mut rates = Vec::new();
        for n in [1_000u64, 20_000, 200_000] {
            let h = if n == 20_000 { herald.clone() } else { run("herald", n, false).await };
            // the stock backend's cost per job grows with the backlog (LREM); 200k would take many minutes
            let a = match n {
                20_000 => Some(apalis.process),
                1_000 => Some(run("apalis", n, false).await.process),
                _ => None,
            };
            println!(
                "| {n} | {:.0} | {:.2} ({:.2}) | {:.2} ({:.2}) | {} |",
                h.process, h.redis_cpu.0, h.redis_cpu.1, h.worker_cpu.0, h.worker_cpu.1, fmt(a, 0)
            );
            rates.push(h.process);
        }
        println!("\n200k / 20k: {:.0}%", rates[2] / rates[1] * 100.0);
    });
}

/// Sequential push cost of each path, interleaved, to tell client overhead from Redis'.
async fn enqueue_probe() {
    let redis = Redis::start();
    let url = redis.url();
    let n = 5000u64;
    let client = redis::Client::open(url.as_str()).unwrap();
    let q = RedisQueue::connect(url.as_str(), "bench").await.unwrap();
    let mut mux = client.get_multiplexed_async_connection().await.unwrap();
    let mut mgr = client.get_connection_manager().await.unwrap();
    let payload = serde_json::to_vec(&share(1)).unwrap();
    for round in 0..3 {
        let t = Instant::now();
        for i in 0..n {
            q.push(QUEUE, &share(i), None, None).await.unwrap();
        }
        let a = n as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..n {
            let _: String = redis::cmd("XADD")
                .arg("probe")
                .arg("*")
                .arg("d")
                .arg(&payload)
                .query_async(&mut mux)
                .await
                .unwrap();
        }
        let b = n as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..n {
            let _: String = redis::cmd("XADD")
                .arg("probe")
                .arg("*")
                .arg("d")
                .arg(&payload)
                .query_async(&mut mgr)
                .await
                .unwrap();
        }
        let c = n as f64 / t.elapsed().as_secs_f64();
        println!(
            "round {round}: RedisQueue::push {a:.0}/s, XADD multiplexed {b:.0}/s, XADD manager {c:.0}/s"
        );
    }
}

/// What one sequential client can get from this machine's Redis now: the bound on
/// enqueue from one producer that awaits each push.
fn sequential_ceiling() -> f64 {
    let redis = Redis::start();
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &redis.port.to_string(),
            "-c",
            "1",
            "-n",
            "20000",
            "--csv",
        ])
        .args(["XADD", "ceiling", "*", "d", &"x".repeat(314)])
        .output()
        .expect("redis-benchmark must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)
        .and_then(|l| l.split(',').nth(1))
        .and_then(|v| v.trim_matches('"').parse().ok())
        .unwrap_or(0.0)
}
