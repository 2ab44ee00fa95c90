//! Outages under a running Herald: with its Postgres stopped, `/readyz` and every request answer
//! 503 within about a second, rather than waiting and then failing with a 500.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_stopped_readiness_and_requests_answer_503_within_about_a_second() {
    let Some(pg) = ThrowawayPostgres::start() else {
        eprintln!("skipped: no PostgreSQL server binaries in /usr/lib/postgresql");
        return;
    };
    let ring = KeyRing::parse(&KeyRing::generate_spec()).unwrap();
    let parts = app::connect(&app::Backends::store_only(&pg.url()), fast_settings(), ring)
        .await
        .unwrap();
    app::migrate(&parts.ctx.store).await.unwrap();
    let key = herald::keys::create(&parts.ctx.store, Some("acme"), false)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    tokio::spawn(app::serve_api(
        listener,
        app::api_state(parts.ctx.clone(), None),
        async move {
            let _ = rx.wait_for(|s| *s).await;
        },
    ));
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
        assert!(
            took < Duration::from_millis(2000),
            "{path} took {took:?} with Postgres down"
        );
        eprintln!("{path}: 503 in {took:?}");
    }
    let _ = stop.send(true);
}
