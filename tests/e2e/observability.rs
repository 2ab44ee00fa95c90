//! What operators see is true: a real Prometheus scrapes a running Herald under a small workload of
//! successes, failures, parks, retries, rate limits and refreshes; every dashboard panel's query
//! returns data and the alert rules load. The exposition passes `promtool check metrics`, and the
//! binary's JSON logs carry one line per job outcome and never a token.

use std::{path::PathBuf, process::Stdio, time::Duration};

use serde_json::{Value, json};

use crate::support::{Engine, FakeX, Reply, TestApp, eventually, fast_settings};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn need(bin: &str, package: &str) {
    let found = std::process::Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "{bin} not found: install the Debian package `{package}` (apt-get install -y {package}); scripts/test does"
    );
}

/// Every panel query of both dashboards, with Grafana's variables filled in.
fn panel_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for file in ["herald-overview.json", "herald-platform.json"] {
        let d: Value = serde_json::from_str(
            &std::fs::read_to_string(repo().join("dashboards").join(file)).unwrap(),
        )
        .unwrap();
        fn walk(panels: &Value, file: &str, out: &mut Vec<(String, String)>) {
            for p in panels.as_array().into_iter().flatten() {
                for t in p["targets"].as_array().into_iter().flatten() {
                    if let Some(expr) = t["expr"].as_str() {
                        let expr = expr
                            .replace("$__rate_interval", "30s")
                            .replace("$__range", "1h")
                            .replace("$platform", ".+");
                        out.push((
                            format!("{file}: {}", p["title"].as_str().unwrap_or("?")),
                            expr,
                        ));
                    }
                }
                walk(&p["panels"], file, out);
            }
        }
        walk(&d["panels"], file, &mut out);
    }
    out
}

async fn workload(app: &TestApp, x: &FakeX) {
    // Mastodon: a success, a rejection, an outage retried, a rate limit, dead credentials.
    let conn = app.mastodon_connection().await;
    app.mastodon.script([
        Reply::Unprocessable("Validation failed: Text can't be blank"),
        Reply::Unavailable,
        Reply::RateLimited(vec![("retry-after", "1".into())]),
    ]);
    let mut ids = Vec::new();
    for text in ["one", "two", "three", "four"] {
        ids.push(app.share(&conn, text).await);
    }
    for id in &ids {
        app.settled(id).await;
    }
    app.mastodon.script([Reply::InvalidToken]);
    let parked = app.share(&conn, "parked").await;
    assert_eq!(app.settled(&parked).await["state"], "parked");
    // The person reconnects: a worker verifies the new token and clears the flag (the wait is
    // herald_reauth_cleared_seconds), and the parked share posts.
    app.mastodon_connection().await;
    app.share_until(&parked, Duration::from_secs(20), |s| {
        s["state"] == "succeeded"
    })
    .await;
    // A follower sync on a healthy connection.
    let other = app
        .mastodon_connection_with(&app.key, "110", &app.mastodon.token.clone())
        .await;
    app.mastodon.set_graph(&["a", "b"], &["c"], 80);
    let sync = herald_jobs::payloads::FollowerSyncV1 {
        connection_id: other.clone(),
        resume: false,
        retry: 0,
        run: None,
    };
    app.enqueue(&sync, "obs-sync").await;

    // X through its connect flow: one login succeeds, one is denied; a post; a refresh that
    // rotates; then the user revokes the app, the next refresh is refused and a share parks.
    let id = crate::connect::connect_x(app).await;
    x.deny_next();
    let denied = crate::connect::connect(
        app,
        &app.key,
        "x",
        json!({ "user_id": "u-2", "return_url": crate::connect::RETURN_URL }),
    )
    .await;
    assert_eq!(denied.get("error").map(String::as_str), Some("denied"));
    let xs = app.share(&id, "on x").await;
    assert_eq!(app.settled(&xs).await["state"], "succeeded");
    use herald_jobs::handlers::refresh::{Refresh, refresh_connection};
    let ctx = &app.parts.ctx;
    // The sweep ticks every 2 s and may be refreshing this very connection: wait for its turn.
    let refresh = || async {
        eventually(Duration::from_secs(20), || async {
            let r = refresh_connection(ctx, &id).await.unwrap();
            (!matches!(r, Refresh::Busy)).then_some(r)
        })
        .await
        .expect("another refresh held the connection for 20 s")
    };
    assert!(matches!(refresh().await, Refresh::Refreshed(_)));
    x.revoke_user("2244994945");
    // Refused here, or already by a sweep's refresh, which flagged the connection.
    match refresh().await {
        Refresh::Dead(_) => {}
        Refresh::Skipped => {
            let row = ctx.store.connection(&id).await.unwrap().unwrap();
            assert!(
                row.needs_reauth,
                "skipped a refresh of a healthy connection"
            );
        }
        other => panic!("the refresh after the revocation was {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_returns_data_from_a_real_prometheus_scraping_herald() {
    need("prometheus", "prometheus");
    let x = FakeX::start().await;
    let mut settings = fast_settings();
    settings.refresh_sweep_cron = "*/2 * * * * *".into();
    settings.apps.x = Some(x.app());
    let app = TestApp::spawn_with(Engine::Sqlite, true, settings).await;
    let dir = tempfile::tempdir().unwrap();
    let herald = app.base.trim_start_matches("http://");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: herald\n    static_configs:\n      - targets: ['{herald}']\n",
        repo().join("dashboards/alerts.yml").display()
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let _prometheus = tokio::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let prom = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let query = |q: String| {
        let http = http.clone();
        let prom = prom.clone();
        async move {
            let res = http
                .get(format!("{prom}/api/v1/query"))
                .query(&[("query", q.as_str())])
                .send()
                .await
                .ok()?;
            let body: Value = res.json().await.ok()?;
            (body["status"] == "success").then_some(body["data"]["result"].clone())
        }
    };
    eventually(Duration::from_secs(30), || async {
        query("up{job=\"herald\"} == 1".into())
            .await
            .filter(|r| !r.as_array().unwrap().is_empty())
    })
    .await
    .expect("Prometheus never scraped Herald");

    workload(&app, &x).await;

    let mut empty = Vec::new();
    for (i, (panel, expr)) in panel_queries().into_iter().enumerate() {
        // A recording rule's group runs every minute: its panels may wait for the next
        // evaluation. Raw series need two samples for rate(), which the first one waits for.
        let wait = if expr.contains("herald:") || i == 0 {
            Duration::from_secs(75)
        } else {
            Duration::from_secs(8)
        };
        let found = eventually(wait, || async {
            query(expr.clone())
                .await
                .filter(|r| r.as_array().is_some_and(|a| !a.is_empty()))
        })
        .await;
        if found.is_none() {
            empty.push(format!("{panel}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "panels with no data:\n{}",
        empty.join("\n")
    );

    let rules: Value = http
        .get(format!("{prom}/api/v1/rules"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let groups = rules["data"]["groups"].as_array().unwrap();
    assert!(!groups.is_empty(), "no rule group loaded");
    for rule in groups.iter().flat_map(|g| g["rules"].as_array().unwrap()) {
        assert_eq!(
            rule["health"], "ok",
            "rule {} is unhealthy: {}",
            rule["name"], rule["lastError"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_exposition_passes_promtool_check_metrics() {
    need("promtool", "prometheus");
    let app = TestApp::spawn(Engine::Sqlite).await;
    let conn = app.mastodon_connection().await;
    let id = app.share(&conn, "hello").await;
    app.settled(&id).await;
    let body = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("herald_jobs_total{"), "{body}");
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .await
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{text}"
    );
    assert!(
        text.trim().is_empty(),
        "promtool check metrics found problems:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_serve_logs_one_json_line_per_job_outcome_and_never_a_token() {
    let mastodon = crate::support::FakeMastodon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("herald.db").display());
    let port = free_port();
    let bin = env!("CARGO_BIN_EXE_herald");
    // `keys create` refuses a database `herald migrate` has not prepared.
    let migrated = std::process::Command::new(bin)
        .arg("migrate")
        .env("DATABASE_URL", &db)
        .output()
        .unwrap();
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let key_out = std::process::Command::new(bin)
        .args(["keys", "create", "--tenant", "acme"])
        .env("DATABASE_URL", &db)
        .output()
        .unwrap();
    assert!(
        key_out.status.success(),
        "{}",
        String::from_utf8_lossy(&key_out.stderr)
    );
    let key = String::from_utf8(key_out.stdout).unwrap().trim().to_owned();
    let mut serve = tokio::process::Command::new(bin)
        .arg("serve")
        .env("DATABASE_URL", &db)
        .env("HERALD_LISTEN", format!("127.0.0.1:{port}"))
        .env("HERALD_LOG_FORMAT", "json")
        .env("HERALD_SSRF_ALLOW_PRIVATE", "true")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(20), || async {
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await
    .expect("herald serve never became ready");
    let conn: Value = http
        .post(format!("{base}/v1/connections"))
        .bearer_auth(&key)
        .json(&json!({ "platform": "mastodon", "platform_account_id": "109", "handle": "alice", "access_token": mastodon.token, "extras": { "instance_url": mastodon.base } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let share: Value = http
        .post(format!("{base}/v1/shares"))
        .bearer_auth(&key)
        .json(&json!({ "url": "https://blog.example/1", "text": "hi", "connection_ids": [conn["id"]] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = share["shares"][0]["id"].as_str().unwrap().to_owned();
    let posted = eventually(Duration::from_secs(60), || async {
        let s: Value = http
            .get(format!("{base}/v1/shares/{id}"))
            .bearer_auth(&key)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (s["state"] == "succeeded").then_some(())
    })
    .await;
    serve.start_kill().unwrap();
    let out = serve.wait_with_output().await.unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        posted.is_some(),
        "the share was not posted; herald serve said:\n{logs}"
    );
    assert!(!logs.contains(&mastodon.token), "a token reached the logs");
    let lines: Vec<Value> = logs
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let outcome = lines
        .iter()
        .find(|l| l["message"] == "share attempt finished")
        .unwrap_or_else(|| panic!("no outcome line in:\n{logs}"));
    assert_eq!(outcome["share.id"], id.as_str());
    assert_eq!(outcome["connection.id"], conn["id"]);
    assert_eq!(outcome["platform"], "mastodon");
    assert_eq!(outcome["outcome"], "succeeded");
    assert!(outcome["job.id"].is_string(), "{outcome}");
}
