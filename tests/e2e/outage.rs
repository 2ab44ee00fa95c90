//! Outages under a running Herald: with its Postgres stopped, `/readyz` and every request answer
//! 503 within about a second, rather than waiting and then failing with a 500; with its Redis
//! stopped, shares are still accepted (the store is the record) and are posted once Redis is back.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use herald::app;
use herald_jobs::vault::KeyRing;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::fast_settings;

/// A Postgres cluster of its own, started as user `postgres` (initdb refuses root), stopped
/// and removed on drop.
struct ThrowawayPostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Only root needs to switch user; anyone else runs the command directly.
fn as_postgres(cmd: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd);
        c
    } else {
        Command::new(cmd)
    }
}

impl ThrowawayPostgres {
    /// None when no PostgreSQL server binaries are installed.
    fn start() -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("initdb").exists())
            .max()?;
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown of the cluster's folder failed");
        }
        let data = dir.path().join("data");
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = Self { bin, dir, port };
        let out = as_postgres(&pg.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(pg.dir.path().join("log"))
            .args(["-w", "start", "-o"])
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                pg.dir.path().display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(pg)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn stop(&self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves the API (and the workers, with `workers`) until the returned sender says stop; returns
/// the API's base URL.
async fn serve(parts: &app::Parts, workers: bool) -> (String, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tokio::spawn(app::serve_api(
        listener,
        app::api_state(parts.ctx.clone(), None),
        wait(rx.clone()),
    ));
    if workers {
        tokio::spawn(app::run_worker(parts.clone(), wait(rx)));
    }
    (base, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_stopped_readiness_and_requests_answer_503_within_about_a_second() {
    let pg = ThrowawayPostgres::start().expect(
        "no PostgreSQL server binaries in /usr/lib/postgresql: install Debian's `postgresql` \
         (scripts/test does when the machine has no Postgres)",
    );
    let ring = KeyRing::parse(&KeyRing::generate_spec()).unwrap();
    let parts = app::connect(&app::Backends::store_only(&pg.url()), fast_settings(), ring)
        .await
        .unwrap();
    app::migrate(&parts.ctx.store).await.unwrap();
    let key = herald::keys::create(&parts.ctx.store, Some("acme"), false)
        .await
        .unwrap();
    let (base, stop) = serve(&parts, false).await;
    let http = reqwest::Client::new();
    let get = |path: &str| {
        http.get(format!("{base}{path}"))
            .bearer_auth(&key)
            .timeout(Duration::from_secs(15))
            .send()
    };
    assert_eq!(get("/readyz").await.unwrap().status(), StatusCode::OK);
    assert_eq!(get("/v1/shares").await.unwrap().status(), StatusCode::OK);

    pg.stop();
    for (path, body) in [
        ("/readyz", None),
        ("/v1/shares", None),
        ("/v1/connections", None),
        (
            "/v1/shares",
            Some(json!({ "url": "https://blog.example/a", "connection_ids": ["con_x"] })),
        ),
    ] {
        let started = Instant::now();
        let req = match &body {
            None => http.get(format!("{base}{path}")),
            Some(b) => http.post(format!("{base}{path}")).json(b),
        };
        let res = req
            .bearer_auth(&key)
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        let status = res.status();
        let answer: Value = res.json().await.unwrap_or_default();
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{path} {body:?}: {answer}"
        );
        if path != "/readyz" {
            assert_eq!(answer["error"]["code"], "store_unavailable", "{answer}");
        }
        // Generous, for a loaded machine; it was over 10 s before (the pool's acquire timeout).
        assert!(
            took < Duration::from_secs(5),
            "{path} took {took:?} with Postgres down"
        );
        eprintln!("{path}: 503 in {took:?}");
    }
    let _ = stop.send(true);
}

/// A `redis-server` of its own on a free port, killed on drop.
struct ThrowawayRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl ThrowawayRedis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (Debian's `redis-server`; scripts/test installs it when missing)");
        let url = format!("redis://127.0.0.1:{port}");
        let client = redis::Client::open(url.as_str()).unwrap();
        for _ in 0..100 {
            if client.get_connection().is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            port,
            child: Some(child),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ThrowawayRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_shares_are_accepted_and_posted_once_it_is_back() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = ThrowawayRedis::start(port);
    let db = crate::support::TestDb::new(crate::support::Engine::Postgres).await;
    let mastodon = crate::support::FakeMastodon::start().await;
    let backends = app::Backends {
        database_url: db.url.clone(),
        redis_url: Some(redis.url()),
        redis_prefix: "herald-outage".into(),
    };
    let ring = KeyRing::parse(&KeyRing::generate_spec()).unwrap();
    let parts = app::connect(&backends, fast_settings(), ring)
        .await
        .unwrap();
    app::migrate(&parts.ctx.store).await.unwrap();
    let key = herald::keys::create(&parts.ctx.store, Some("acme"), false)
        .await
        .unwrap();
    let (base, stop) = serve(&parts, true).await;
    let http = reqwest::Client::new();
    let post = |path: &'static str, body: Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(&key)
            .timeout(Duration::from_secs(15))
            .json(&body)
            .send()
    };
    let res = post(
        "/v1/connections",
        json!({ "platform": "mastodon", "platform_account_id": "109", "handle": "alice@social.example",
                "access_token": mastodon.token, "extras": { "instance_url": mastodon.base } }),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let conn: Value = res.json().await.unwrap();
    let conn = conn["id"].as_str().unwrap().to_owned();

    redis.stop();
    let started = Instant::now();
    let res = post(
        "/v1/shares",
        json!({ "url": "https://blog.example/redis-down", "text": "while Redis is down", "connection_ids": [conn] }),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert_eq!(
        res.status(),
        StatusCode::ACCEPTED,
        "the store is the record"
    );
    let share: Value = res.json().await.unwrap();
    let id = share["shares"][0]["id"].as_str().unwrap().to_owned();
    eprintln!("POST /v1/shares with Redis down: 202 in {took:?}");
    let ready = http
        .get(format!("{base}/readyz"))
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Redis comes back empty: the reconciler delivers the share from the store.
    let _back = ThrowawayRedis::start(port);
    let posted = crate::support::eventually(Duration::from_secs(30), || async {
        let s: Value = http
            .get(format!("{base}/v1/shares/{id}"))
            .bearer_auth(&key)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (s["state"] == "succeeded").then_some(s)
    })
    .await
    .expect("the share was not posted once Redis was back");
    assert_eq!(mastodon.statuses().len(), 1, "{posted}");
    let _ = stop.send(true);
}
