//! Real work at speed: `herald` processes against a platform that takes its time.
//!
//! `cargo bench --bench shares` builds the `herald` binary and, on SQLite (`herald serve`),
//! Postgres and Postgres + Redis (`herald api` + `herald worker`), measures:
//! - **the API**: a load generator posts `POST /v1/shares` (one target, a fresh `Idempotency-Key`
//!   each) from `HERALD_BENCH_CLIENTS` (64) connections while no worker runs: requests/s, p50/p99,
//!   CPU per request of the API process and of its Postgres backends, Postgres transactions per
//!   request;
//! - **the drain**: those `HERALD_BENCH_SHARES` (20,000) shares, then one worker posts them to a
//!   Mastodon-compatible server that answers after `HERALD_BENCH_PLATFORM_MS` (200) with
//!   `HERALD_BENCH_CONCURRENCY` (1,024) in flight: shares/s overall and by tenth, CPU per share
//!   of the worker, its Postgres backends and Redis, Postgres transactions per share, worker peak
//!   RSS;
//! - **latency**: `HERALD_BENCH_RATE` (1,500) shares/s offered through the API for
//!   `HERALD_BENCH_SECONDS` (10) while the worker runs: enqueue-to-post p50/p99, from the moment
//!   the request was sent to the moment the platform received the post.
//!
//! `HERALD_BENCH_ONLY=sqlite|postgres|redis` runs one backend; `HERALD_BENCH_BIN` runs another
//! `herald` binary (a build to compare against). Postgres and Redis are the
//! machine's (`HERALD_BENCH_POSTGRES_URL`, `HERALD_BENCH_REDIS_URL`); each run gets a database and
//! a key prefix of its own. CPU comes from `/proc`: a process's utime + stime, summed over the
//! Postgres backends serving the run's database (its background writers are not counted), and
//! Redis's own `used_cpu_user + used_cpu_sys` (the whole server).

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Json, Router, http::HeaderMap, routing::post};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// When the platform received each post, by share id (the `Idempotency-Key` Herald sends).
type Received = Arc<Mutex<HashMap<String, Instant>>>;

async fn platform(delay: Duration, received: Received) -> String {
    let app = Router::new()
        .route(
            "/api/v1/statuses",
            post(move |headers: HeaderMap| {
                let received = received.clone();
                async move {
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let n = {
                        let mut seen = received.lock().unwrap();
                        seen.entry(key).or_insert_with(Instant::now);
                        seen.len()
                    };
                    tokio::time::sleep(delay).await;
                    Json(json!({ "id": n.to_string(), "url": format!("https://social.example/@b/{n}") }))
                }
            }),
        )
        .route(
            "/api/v1/accounts/verify_credentials",
            axum::routing::get(|| async { Json(json!({ "id": "1", "username": "b", "acct": "b" })) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// CPU seconds a process has used (utime + stime).
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0);
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Peak resident memory of a process, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// `perf record` on one process for one phase, when `HERALD_BENCH_PERF` names it (`api` or
/// `worker`); the profile goes to `$TMPDIR/herald-perf-<backend>-<role>.data` for `perf report -i`.
struct Profile(Option<Child>);

impl Profile {
    fn start(backend: &str, role: &str, pid: u32) -> anyhow::Result<Self> {
        if std::env::var("HERALD_BENCH_PERF").ok().as_deref() != Some(role) {
            return Ok(Self(None));
        }
        let out = std::env::temp_dir()
            .join(format!("herald-perf-{backend}-{role}.data"))
            .display()
            .to_string();
        let child = Command::new("perf")
            .args([
                "record",
                "-F",
                "999",
                "-g",
                "-o",
                &out,
                "-p",
                &pid.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        eprintln!("  profiling {role} into {out}");
        Ok(Self(Some(child)))
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            // perf writes its file on SIGINT.
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

/// What the run's database and Redis have used so far.
struct Meter {
    db: String,
    pg: Option<PgConnection>,
    redis_url: Option<String>,
    /// Each backend serving the run's database, with the CPU it had used when last seen (one that
    /// exits keeps what it used).
    pg_backends: HashMap<u32, f64>,
    /// Transactions this program committed itself (its probes), left out of the counts.
    probes: i64,
}

#[derive(Clone, Copy, Default)]
struct Reading {
    xacts: i64,
    pg_cpu: f64,
    redis_cpu: f64,
}

impl Meter {
    /// Postgres publishes a backend's counts up to a second after its transactions.
    async fn settle_and_read(&mut self) -> anyhow::Result<Reading> {
        if self.pg.is_some() {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        self.read().await
    }

    async fn read(&mut self) -> anyhow::Result<Reading> {
        let mut r = Reading::default();
        if let Some(pg) = &mut self.pg {
            let xacts: i64 = sqlx::query_scalar(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            )
            .fetch_one(&mut *pg)
            .await?;
            let pids: Vec<i32> = sqlx::query_scalar(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .fetch_all(&mut *pg)
            .await?;
            self.probes += 2;
            r.xacts = xacts - self.probes;
            for pid in pids {
                self.pg_backends.insert(pid as u32, cpu_secs(pid as u32));
            }
            r.pg_cpu = self.pg_backends.values().sum();
        }
        if let Some(url) = &self.redis_url {
            let out = Command::new("redis-cli")
                .args(["-u", url, "INFO", "cpu"])
                .output()?;
            let info = String::from_utf8_lossy(&out.stdout);
            r.redis_cpu = info
                .lines()
                .filter(|l| l.starts_with("used_cpu_user:") || l.starts_with("used_cpu_sys:"))
                .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
                .sum();
        }
        Ok(r)
    }

    async fn succeeded(&mut self) -> anyhow::Result<i64> {
        let q = "SELECT COUNT(*) FROM shares WHERE state = 'succeeded'";
        Ok(match &mut self.pg {
            Some(pg) => {
                self.probes += 1;
                sqlx::query_scalar(q).fetch_one(&mut *pg).await?
            }
            None => {
                let mut c = sqlx::SqliteConnection::connect(&self.db).await?;
                sqlx::query_scalar(q).fetch_one(&mut c).await?
            }
        })
    }
}

struct Herald {
    bin: &'static str,
    env: Vec<(String, String)>,
    api_base: String,
    key: String,
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Herald {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin);
        c.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        c
    }

    fn spawn(&self, args: &[&str], listen: &str) -> anyhow::Result<Proc> {
        let child = self
            .command(args)
            .env("HERALD_LISTEN", listen)
            .env("HERALD_WORKER_LISTEN", format!("127.0.0.1:{}", free_port()))
            .stdout(Stdio::null())
            .spawn()?;
        Ok(Proc(child))
    }

    async fn ready(&self, http: &reqwest::Client) -> anyhow::Result<()> {
        let t = Instant::now();
        while http
            .get(format!("{}/healthz", self.api_base))
            .send()
            .await
            .is_err()
        {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(60),
                "herald never answered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

/// Posts `n` shares from `clients` connections, or at `rate` per second when given, each of a
/// link of its own under `phase` (the duplicate guard is on, as by default). Returns each share's
/// id with the moment its request was sent, and each request's latency in ms.
async fn enqueue(
    phase: &'static str,
    h: &Herald,
    http: &reqwest::Client,
    conns: &[String],
    n: usize,
    clients: usize,
    rate: Option<f64>,
) -> anyhow::Result<(Vec<(String, Instant)>, Vec<f64>)> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, http, conns) = (next.clone(), http.clone(), conns.to_vec());
        let (url, key) = (format!("{}/v1/shares", h.api_base), h.key.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(out);
                }
                if let Some(rate) = rate {
                    tokio::time::sleep_until(
                        (start + Duration::from_secs_f64(i as f64 / rate)).into(),
                    )
                    .await;
                }
                let sent = Instant::now();
                let res = http
                    .post(&url)
                    .bearer_auth(&key)
                    .header(
                        "idempotency-key",
                        format!("bench-{i}-{}", uuid::Uuid::new_v4().simple()),
                    )
                    .json(
                        &json!({ "url": format!("https://blog.example/{phase}/{i}"), "text": "bench",
                                   "connection_ids": [conns[i % conns.len()]] }),
                    )
                    .send()
                    .await?;
                anyhow::ensure!(
                    res.status().is_success(),
                    "POST /v1/shares: {}",
                    res.status()
                );
                let body: Value = res.json().await?;
                let latency = sent.elapsed().as_secs_f64() * 1000.0;
                let id = body["shares"][0]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                out.push(((id, sent), latency));
            }
        }));
    }
    let mut shares = Vec::with_capacity(n);
    let mut latencies = Vec::with_capacity(n);
    for t in tasks {
        for (s, l) in t.await?? {
            shares.push(s);
            latencies.push(l);
        }
    }
    latencies.sort_by(f64::total_cmp);
    Ok((shares, latencies))
}

async fn run(backend: &str, platform_base: &str, received: &Received) -> anyhow::Result<()> {
    let n: usize = env_or("HERALD_BENCH_SHARES", 20_000);
    let clients: usize = env_or("HERALD_BENCH_CLIENTS", 64);
    let concurrency: usize = env_or("HERALD_BENCH_CONCURRENCY", 1024);
    let rate: f64 = env_or("HERALD_BENCH_RATE", 1500.0);
    let seconds: f64 = env_or("HERALD_BENCH_SECONDS", 10.0);
    let pg_admin: String = env_or(
        "HERALD_BENCH_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
    );
    let redis_url: String = env_or(
        "HERALD_BENCH_REDIS_URL",
        "redis://127.0.0.1:6379".to_owned(),
    );
    // Another build's binary, to compare two builds in one run of the same bench.
    let bin: &'static str = match std::env::var("HERALD_BENCH_BIN") {
        Ok(other) => Box::leak(other.into_boxed_str()),
        Err(_) => env!("CARGO_BIN_EXE_herald"),
    };
    let dir = tempfile::tempdir()?;
    let (db, pg_database) = match backend {
        "sqlite" => (
            format!("sqlite:{}", dir.path().join("bench.db").display()),
            None,
        ),
        _ => {
            let mut admin = PgConnection::connect(&pg_admin).await?;
            let name = format!("herald_bench_{}", uuid::Uuid::new_v4().simple());
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await?;
            let mut url = url::Url::parse(&pg_admin)?;
            url.set_path(&name);
            (url.to_string(), Some(name))
        }
    };
    let keys = Command::new(bin).args(["keys", "generate"]).output()?;
    let mut env = vec![
        ("DATABASE_URL".to_owned(), db.clone()),
        (
            "HERALD_ENCRYPTION_KEYS".into(),
            String::from_utf8(keys.stdout)?.trim().to_owned(),
        ),
        ("HERALD_SSRF_ALLOW_PRIVATE".into(), "true".into()),
        ("HERALD_CONCURRENCY".into(), concurrency.to_string()),
        ("HERALD_REFRESH_SWEEP_CRON".into(), "0 0 0 1 1 *".into()),
        ("HERALD_FOLLOWER_SYNC_CRON".into(), "0 0 0 1 1 *".into()),
    ];
    if backend == "redis" {
        env.push(("REDIS_URL".into(), redis_url.clone()));
        env.push((
            "HERALD_REDIS_PREFIX".into(),
            format!("bench-{}", uuid::Uuid::new_v4().simple()),
        ));
    }
    let port = free_port();
    let mut h = Herald {
        bin,
        env,
        api_base: format!("http://127.0.0.1:{port}"),
        key: String::new(),
    };
    anyhow::ensure!(
        h.command(&["migrate"]).status()?.success(),
        "herald migrate failed"
    );
    let out = h
        .command(&["keys", "create", "--tenant", "bench"])
        .output()?;
    // Logs may share stdout with the key.
    h.key = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("hk_"))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "herald keys create: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?
        .to_owned();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients * 2)
        .build()?;
    let mut meter = Meter {
        db: db.clone(),
        pg: if backend == "sqlite" {
            None
        } else {
            Some(PgConnection::connect(&db).await?)
        },
        redis_url: (backend == "redis").then(|| redis_url.clone()),
        pg_backends: HashMap::new(),
        probes: 0,
    };

    // The API alone.
    let api = h.spawn(&["api"], &format!("127.0.0.1:{port}"))?;
    h.ready(&http).await?;
    let mut conns = Vec::new();
    for i in 0..n.clamp(1, 1000) {
        let res: Value = http
            .post(format!("{}/v1/connections", h.api_base))
            .bearer_auth(&h.key)
            .json(
                &json!({ "platform": "mastodon", "platform_account_id": format!("a{i}"),
                           "handle": format!("b{i}@social.example"), "access_token": "t",
                           "extras": { "instance_url": platform_base } }),
            )
            .send()
            .await?
            .json()
            .await?;
        let id = res["id"].as_str();
        conns.push(
            id.unwrap_or_else(|| panic!("importing a connection: {res}"))
                .to_owned(),
        );
    }
    let before = meter.read().await?;
    let api_cpu = cpu_secs(api.0.id());
    let profile = Profile::start(backend, "api", api.0.id())?;
    let t = Instant::now();
    let (_, latencies) = enqueue("api", &h, &http, &conns, n, clients, None).await?;
    drop(profile);
    let secs = t.elapsed().as_secs_f64();
    let api_cpu = cpu_secs(api.0.id()) - api_cpu;
    let after = meter.settle_and_read().await?;
    println!(
        "  API: {n} POST /v1/shares from {clients} clients: {:.0} requests/s, p50 {:.1} ms, p99 {:.1} ms; \
         CPU per request: API {:.3} ms, Postgres {:.3} ms; Postgres transactions per request: {:.2}",
        n as f64 / secs,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        api_cpu * 1000.0 / n as f64,
        (after.pg_cpu - before.pg_cpu) * 1000.0 / n as f64,
        (after.xacts - before.xacts) as f64 / n as f64,
    );
    // `herald serve` is API and worker in one process: the API alone goes first.
    let api = if backend == "sqlite" {
        drop(api);
        None
    } else {
        Some(api)
    };

    // The drain.
    let before = meter.read().await?;
    let t = Instant::now();
    let worker = if backend == "sqlite" {
        h.spawn(&["serve"], &format!("127.0.0.1:{port}"))?
    } else {
        h.spawn(&["worker"], &format!("127.0.0.1:{}", free_port()))?
    };
    let profile = Profile::start(backend, "worker", worker.0.id())?;
    let mut marks = Vec::new();
    let tenth = (n / 10).max(1) as i64;
    loop {
        let done = meter.succeeded().await?;
        while (marks.len() as i64 + 1) * tenth <= done {
            marks.push(t.elapsed());
        }
        if done >= n as i64 {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(1200),
            "the drain did not finish in 20 minutes ({done} of {n})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    drop(profile);
    let worker_cpu = cpu_secs(worker.0.id());
    let after = meter.settle_and_read().await?;
    let mut prev = Duration::ZERO;
    let tenths: Vec<String> = marks
        .iter()
        .map(|m| {
            let r = tenth as f64 / (*m - prev).as_secs_f64();
            prev = *m;
            format!("{r:.0}")
        })
        .collect();
    println!(
        "  drain: {n} shares, platform {} ms, {concurrency} in flight: {:.0} shares/s (by tenth: {}); \
         CPU per share: {} {:.3} ms, Postgres {:.3} ms, Redis {:.3} ms; Postgres transactions per share: {:.2}; \
         {} peak RSS {:.1} MiB",
        env_or::<u64>("HERALD_BENCH_PLATFORM_MS", 200),
        n as f64 / secs,
        tenths.join(", "),
        if backend == "sqlite" {
            "herald serve"
        } else {
            "worker"
        },
        worker_cpu * 1000.0 / n as f64,
        (after.pg_cpu - before.pg_cpu) * 1000.0 / n as f64,
        (after.redis_cpu - before.redis_cpu) * 1000.0 / n as f64,
        (after.xacts - before.xacts) as f64 / n as f64,
        if backend == "sqlite" {
            "herald serve"
        } else {
            "worker"
        },
        peak_rss_mib(worker.0.id()),
    );

    // Latency at an offered rate, with the worker running.
    if rate > 0.0 && seconds > 0.0 {
        let offered = (rate * seconds) as usize;
        let (shares, _) = enqueue(
            "latency",
            &h,
            &http,
            &conns,
            offered,
            clients.max(rate as usize / 50),
            Some(rate),
        )
        .await?;
        let t = Instant::now();
        let mut lags = Vec::new();
        while lags.len() < shares.len() && t.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let seen = received.lock().unwrap();
            lags = shares
                .iter()
                .filter_map(|(id, sent)| {
                    seen.get(id)
                        .map(|at| at.duration_since(*sent).as_secs_f64() * 1000.0)
                })
                .collect();
        }
        lags.sort_by(f64::total_cmp);
        println!(
            "  latency: {rate:.0} shares/s offered for {seconds:.0} s: {} of {} posted; enqueue-to-post p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            lags.len(),
            shares.len(),
            percentile(&lags, 0.5),
            percentile(&lags, 0.99),
            lags.last().copied().unwrap_or(0.0),
        );
    }
    drop(worker);
    drop(api);
    // A run's database holds its 20,000-odd shares: gone with the run, as SQLite's file is.
    if let Some(name) = pg_database {
        let mut admin = PgConnection::connect(&pg_admin).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is read from the command line.
    let delay = Duration::from_millis(env_or("HERALD_BENCH_PLATFORM_MS", 200));
    let received: Received = Arc::default();
    let base = platform(delay, received.clone()).await;
    let only = std::env::var("HERALD_BENCH_ONLY").ok();
    for backend in ["sqlite", "postgres", "redis"] {
        if only.as_deref().is_some_and(|o| o != backend) {
            continue;
        }
        println!("{backend}:");
        run(backend, &base, &received).await?;
    }
    Ok(())
}
